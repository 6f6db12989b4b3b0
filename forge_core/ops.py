"""The operator's endpoints and their wiring: ``/metrics``, ``/forge/requests``, ``/forge/``.

:func:`attach` installs the observation proxies on an app state (once) and returns the routes
and middleware the app factory adds. The endpoints follow forge's API-key rule; ``/metrics``
can be opened with ``--metrics-public``. The inspector also accepts the key as the password of
HTTP Basic authentication, so a person can open ``/forge/`` in a browser, which asks for it.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from forge_core.errors import Unauthorized
from forge_core.guardrails.respond import RESPOND_TOOL_NAME
from forge_core.observe import ObservedClient, ObservedEngine, ObservedLimiter, ObserveMiddleware
from forge_core.protocols import OPENAI

log = logging.getLogger("forge.ops")


@dataclass(slots=True)
class Ops:
    metrics: Any = None
    inspector: Any = None
    tracer: Any = None
    routes: list[Route] = field(default_factory=list)
    middleware: list[Middleware] = field(default_factory=list)


def attach(state: Any) -> Ops:
    """Observation for ``state``'s requests, as configured; idempotent per state."""
    if state.ops is not None:
        return state.ops  # type: ignore[no-any-return]
    config = state.config
    ops = Ops()
    sinks = []
    if config.metrics:
        from forge_core.metrics import Metrics

        ops.metrics = Metrics(state.spec.name)
        sinks.append(ops.metrics.observe)
        ops.routes.append(Route("/metrics", _metrics_endpoint(state, ops), methods=["GET"]))
    if config.inspect > 0:
        from forge_core.inspector import Inspector, Redactor, secrets_of

        ops.inspector = Inspector(config.inspect, Redactor(secrets_of(config)))
        sinks.append(ops.inspector.add)
        ops.routes += [
            Route("/forge/requests", _inspector_json(state, ops), methods=["GET"]),
            Route("/forge/", _inspector_page(state, ops), methods=["GET"]),
            Route("/forge", _inspector_page(state, ops), methods=["GET"]),
        ]
    from forge_core import tracing

    if tracing.available():
        ops.tracer = tracing.Tracer(state.spec.name, state.client.base_url)
        sinks.append(ops.tracer.observe)
    if sinks:
        watch = (RESPOND_TOOL_NAME,) if config.guardrails.inject_respond_tool else ()
        engine = state.engine
        engine.client = ObservedClient(engine.client, watch_names=watch)
        state.engine = ObservedEngine(engine)
        if ops.metrics is not None:
            state.limiter = ObservedLimiter(state.limiter, ops.metrics.limiter)
        ops.middleware.append(Middleware(
            ObserveMiddleware,  # type: ignore[arg-type]
            sinks=sinks,
            capture=ops.inspector is not None,
            on_flight=ops.metrics.flight if ops.metrics is not None else None,
            trace_context=ops.tracer is not None,
        ))
    state.ops = ops
    return ops


def allowed(state: Any, request: Request, basic: bool = False) -> bool:
    """forge's API-key rule: Bearer or x-api-key (and, for pages, HTTP Basic's password)."""
    key = state.config.api_key
    if not key:
        return True
    given = [request.headers.get("x-api-key", "")]
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        given.append(value.strip())
    elif basic and scheme.lower() == "basic":
        with contextlib.suppress(ValueError):  # UnicodeDecodeError is a ValueError
            given.append(base64.b64decode(value.strip()).decode().partition(":")[2])
    return any(g and hmac.compare_digest(g.encode(), key.encode()) for g in given)


def _denied(basic: bool = False) -> Response:
    response = OPENAI.error_response(Unauthorized("Missing or invalid API key for this forge "
                                                  "proxy."))
    if basic:
        response.headers["WWW-Authenticate"] = 'Basic realm="forge", charset="UTF-8"'
    return response


def _metrics_endpoint(state: Any, ops: Ops) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        if not state.config.metrics_public and not allowed(state, request):
            return _denied()
        body, content_type = ops.metrics.render()
        return Response(body, media_type=None, headers={"Content-Type": content_type})

    return metrics


def _inspector_json(state: Any, ops: Ops) -> Callable[[Request], Awaitable[Response]]:
    async def requests(request: Request) -> Response:
        if not allowed(state, request, basic=True):
            return _denied(basic=True)
        return JSONResponse(ops.inspector.snapshot(), headers={"Cache-Control": "no-store"})

    return requests


def _inspector_page(state: Any, ops: Ops) -> Callable[[Request], Awaitable[Response]]:
    from forge_core.inspector import render_page

    async def page(request: Request) -> Response:
        if not allowed(state, request, basic=True):
            return _denied(basic=True)
        return HTMLResponse(render_page(ops.inspector.snapshot()), headers={
            "Cache-Control": "no-store",
            # Nothing external, no script: the page is only inline style.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        })

    return page
