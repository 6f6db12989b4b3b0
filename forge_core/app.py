"""The HTTP application: routes, request limits, errors in each client's shape, streaming.

Built by :func:`make_app` from explicit parts (no import-time singletons), so tests run it on
``httpx.ASGITransport`` with a fake backend and production runs it on uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from forge_core import __version__
from forge_core.backend import BackendClient, BackendSpec, ModelIdentity
from forge_core.budget import ContextBudget, check_prompt, discover_budget
from forge_core.config import ServeConfig
from forge_core.engine import ChatCall, Engine
from forge_core.errors import (
    ClientError,
    ForgeError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
)
from forge_core.limiter import Limiter
from forge_core.protocols import ANTHROPIC, OPENAI, Protocol
from forge_core.turns import KeepAlive, StreamEvent
from forge_core.wire import sse

log = logging.getLogger("forge.http")
T = TypeVar("T")


@dataclass(slots=True)
class AppState:
    config: ServeConfig
    spec: BackendSpec
    client: BackendClient
    engine: Engine
    limiter: Limiter
    started: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    budget: ContextBudget | None = None
    """The context in force, learned after start; None (or no tokens) means no prompt check."""

    def served_names(self) -> list[str]:
        names: list[str] = []
        for identity in self.client.models():
            names += [n for n in identity.names if n not in names]
        return names

    def resolve_model(self, requested: str) -> ModelIdentity | None:
        identities = self.client.models()
        if not identities:
            return None  # nothing discovered: let the backend judge the name
        for identity in identities:
            if requested in identity.names:
                return identity
        if self.config.any_model:
            return identities[0]
        raise ModelNotFound(requested, self.served_names())


def make_app(state: AppState) -> Starlette:
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not state.started:  # the CLI starts the client itself, before binding the port
            await state.client.start()
            state.started = True
        state.budget = await discover_budget(state.client, state.config.backend.budget_mode)
        try:
            yield
        finally:
            await state.client.aclose()

    routes = [
        Route("/v1/chat/completions", _endpoint(state, OPENAI), methods=["POST"]),
        Route("/chat/completions", _endpoint(state, OPENAI), methods=["POST"]),
        Route("/v1/messages", _endpoint(state, ANTHROPIC), methods=["POST"]),
        Route("/v1/messages/count_tokens", _count_tokens(state), methods=["POST"]),
        Route("/v1/models", _models(state), methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/ready", _ready(state), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=contextlib.asynccontextmanager(lifespan),
        exception_handlers={HTTPException: _http_exception},  # type: ignore[dict-item]
    )
    app.state.forge = state
    return app


def _protocol_for(path: str) -> Protocol:
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 in the client's error shape instead of plain text."""
    protocol = _protocol_for(request.url.path)
    if exc.status_code == 405:
        error = ClientError(f"Method {request.method} is not allowed on {request.url.path}.")
    else:
        error = ClientError(f"No route for {request.method} {request.url.path}.")
    error.status = exc.status_code
    if exc.status_code == 404:
        error.anthropic_type = "not_found_error"
    response = protocol.error_response(error)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


# --- request reading --------------------------------------------------------------------------


def _check_auth(state: AppState, request: Request) -> None:
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    if given != key:
        raise Unauthorized("Missing or invalid API key for this forge proxy.")


async def _read_json(state: AppState, request: Request) -> Any:
    limit = state.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the {limit}-byte limit.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the {limit}-byte limit.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it (and its backend request) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The server is cancelling this request (shutdown after the drain timeout): the
        # backend request must end with it, not run on detached.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("client disconnected; backend request cancelled")
        raise ClientGone
    return task.result()


class ClientGone(Exception):
    """The client disconnected before the answer was ready; nothing is left to send."""


# --- endpoints --------------------------------------------------------------------------------


def _endpoint(state: AppState, protocol: Protocol) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            _check_auth(state, request)
            body = await _read_json(state, request)
            parsed = protocol.parse(body)
            identity = state.resolve_model(parsed.model)
            call = parsed.call
            if identity is not None:
                call.body = {**call.body, "model": identity.wire_name}
            if state.budget is not None:  # a clear 400 instead of a silently truncated prompt
                await check_prompt(call.body, state.budget.tokens, state.client.count_tokens)
            if parsed.stream:
                return await _stream(state, protocol, request, parsed.model, call, parsed)
            async with state.limiter.slot():
                turn = await _until_disconnect(request, state.engine.complete(call))
            _log_request(protocol, parsed, call, turn.finish_reason)
            headers = _guardrail_headers(call)
            return JSONResponse(protocol.completion(turn, parsed), headers=headers)
        except ForgeError as exc:
            _log_error(exc)
            return protocol.error_response(exc)
        except ClientGone:
            # 499 as nginx logs it; uvicorn drops writes to a closed connection.
            return Response(status_code=499)

    return endpoint


def _log_request(protocol: Protocol, parsed: Any, call: ChatCall, finish: str) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s model=%s tools=%d stream=%s finish=%s guardrails=%s",
            protocol.name, parsed.model, len(call.tools), parsed.stream, finish,
            ",".join(call.notes) or "-",
        )


def _guardrail_headers(call: ChatCall) -> dict[str, str]:
    return {"x-forge-guardrail": ",".join(call.notes)} if call.notes else {}


def _log_error(exc: ForgeError) -> None:
    if exc.status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.message)
    else:
        log.info("%s (%d): %s", type(exc).__name__, exc.status, exc.message)


async def _stream(
    state: AppState,
    protocol: Protocol,
    request: Request,
    model: str,
    call: ChatCall,
    parsed: Any,
) -> Response:
    """Wait for the backend's first event before answering 200, so early failures (backend
    down, unknown model, bad request) get a real status; but not longer than the stream-start
    grace: a slow prompt on a CPU backend must not trip the client's timeout, so after it the
    stream starts and keep-alives (pings for Anthropic) flow until the first event arrives.
    """
    stack = AsyncExitStack()
    await stack.enter_async_context(state.limiter.slot())
    events = state.engine.stream(call)
    stack.push_async_callback(events.aclose)  # type: ignore[attr-defined]
    first: asyncio.Future[StreamEvent] = asyncio.ensure_future(anext(events))

    async def cancel_first() -> None:  # before events.aclose: its anext must not be running
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first

    stack.push_async_callback(cancel_first)
    try:
        # A client that leaves meanwhile must cancel the backend request and free the slot.
        await _until_disconnect(
            request, asyncio.wait({first}, timeout=state.config.stream_start_grace)
        )
        if first.done():
            first.result()  # raise a failure now, while a status can still be sent
    except BaseException:
        await stack.aclose()
        raise
    emitter = protocol.stream_emitter(parsed)
    keepalive = state.config.guardrails.keepalive_interval

    async def body() -> AsyncIterator[bytes]:
        yield emitter.start()
        try:
            while not first.done():
                await asyncio.wait({first}, timeout=keepalive)
                if not first.done():
                    yield emitter.emit(KeepAlive())
            event: StreamEvent | None = first.result()
            while event is not None:
                yield emitter.emit(event)
                event = await anext(events, None)
        except ForgeError as exc:
            _log_error(exc)
            yield emitter.error(exc)
        finally:
            _log_request(protocol, parsed, call, "streamed")

    return _ClosingStream(body(), stack, headers=dict(sse.STREAM_HEADERS))


class _ClosingStream(StreamingResponse):
    """A stream that always releases its slot and backend stream, even if never iterated.

    Its pieces go through a :class:`~forge_core.wire.sse.Coalescer`: those ready at the same
    moment leave in one write, and none waits for another.
    """

    def __init__(self, content: AsyncIterator[bytes], stack: AsyncExitStack, **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self._stack = stack
        self._coalescer: sse.Coalescer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Out here no cancelled scope interrupts the wait: the producer has finished with
            # the engine's stream before the stack closes it.
            try:
                if self._coalescer is not None:
                    await self._coalescer.aclose()
            finally:
                await self._stack.aclose()

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code,
             "headers": self.raw_headers}
        )
        coalescer = self._coalescer = sse.Coalescer(self.body_iterator)  # type: ignore[arg-type]
        done = False
        try:
            while not done:
                data, done = await coalescer.take()
                if data or done:
                    await send({"type": "http.response.body", "body": data, "more_body": not done})
        finally:
            if not done:
                coalescer.cancel()  # waited for in __call__


def _models(state: AppState) -> Callable[[Request], Awaitable[Response]]:
    async def models(request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": f"forge/{state.spec.name}"}
            for name in state.served_names()
        ]
        return JSONResponse({"object": "list", "data": data})

    return models


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


def _ready(state: AppState) -> Callable[[Request], Awaitable[Response]]:
    async def ready(request: Request) -> Response:
        status = await state.client.status()
        body = {
            "ready": status.ready,
            "backend": state.spec.name,
            "backend_url": state.client.base_url,
            "detail": status.detail,
            "models": state.served_names() or status.models,
            "capability": state.config.backend.capability,
            "context_size": status.context_size,
            "budget_mode": state.config.backend.budget_mode,
            "context_budget": state.budget.tokens if state.budget else status.context_size,
            **status.extra,
        }
        return JSONResponse(body, status_code=200 if status.ready else 503)

    return ready


def _count_tokens(state: AppState) -> Callable[[Request], Awaitable[Response]]:
    async def count(request: Request) -> Response:
        try:
            _check_auth(state, request)
            body = await _read_json(state, request)
            parsed = ANTHROPIC.parse(body, count_only=True)
            identity = state.resolve_model(parsed.model)  # 404 as on /v1/messages
            if identity is not None:
                parsed.call.body["model"] = identity.wire_name
            exact = await state.client.count_tokens(parsed.call.body)
            tokens = exact if exact is not None else ANTHROPIC.estimate_tokens(parsed)
            return JSONResponse({"input_tokens": tokens})
        except ForgeError as exc:
            return ANTHROPIC.error_response(exc)

    return count
