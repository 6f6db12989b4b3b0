"""The HTTP application: routes, request limits, errors in each client's shape, streaming.

Built by :func:`make_app` from explicit parts (no import-time singletons), so tests run it on
``httpx.ASGITransport`` with a fake backend and production runs it on uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from forge_core import __version__
from forge_core.backend import BackendClient, BackendSpec, ModelIdentity
from forge_core.boundary import as_forge_error, safe_status
from forge_core.budget import ContextBudget, discover_budget, fit_request
from forge_core.config import ServeConfig
from forge_core.deadline import Deadlines
from forge_core.drain import Drain
from forge_core.engine import ChatCall, Engine
from forge_core.errors import (
    ClientError,
    ForgeError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
)
from forge_core.guardrails.records import RescueParser
from forge_core.limiter import Limiter
from forge_core.observe import observe_notes
from forge_core.ops import attach as attach_ops
from forge_core.protocols import ANTHROPIC, OPENAI, Protocol
from forge_core.redact import display_url, install_logging, register, scrub
from forge_core.status_cache import StatusCache
from forge_core.transforms import RequestTransform
from forge_core.turns import Finished, KeepAlive, Note, StreamEvent
from forge_core.wire import sse
from forge_core.wire.jsonio import SafeJSONResponse as JSONResponse  # never fails to render
from forge_core.wire.jsonio import client_json

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
    draining: bool = False
    """Shutting down: ``/ready`` answers 503 so load balancers stop sending (requests are
    still served until the listener closes)."""
    ops: Any = None
    """The operator's side (metrics, inspector, tracing), set by :func:`forge_core.ops.attach`."""
    drain: Drain = field(default_factory=Drain)
    """The end of ``--drain-timeout``: open streams end with an error event, waits with 503."""

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


def wire_state(
    config: ServeConfig,
    spec: BackendSpec,
    client: BackendClient,
    parsers: Sequence[RescueParser] = (),
    transforms: Sequence[RequestTransform] = (),
) -> AppState:
    """The app's parts wired together, in one place: ``forge serve`` and
    :mod:`forge_core.testing` both build their state here."""
    deadlines = Deadlines.from_settings(config.backend)  # first token, then silence
    engine = Engine(client, spec, config.guardrails, parsers, transforms, deadlines)
    limiter = Limiter(config.max_concurrency, config.max_queue)
    return AppState(config=config, spec=spec, client=client, engine=engine, limiter=limiter)


def make_app(state: AppState) -> Starlette:
    register(state.config.api_key)  # scrubbed from every message and log line
    install_logging()

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not state.started:  # the CLI starts the client itself, before binding the port
            await state.client.start()
            state.started = True
        state.budget = await discover_budget(state.client, state.config.backend.budget_mode)
        try:
            yield
        finally:
            await state.client.aclose()

    ops = attach_ops(state)  # metrics, inspector, tracing: proxies on the engine and limiter
    routes = [
        Route("/v1/chat/completions", _endpoint(state, OPENAI), methods=["POST"]),
        Route("/chat/completions", _endpoint(state, OPENAI), methods=["POST"]),
        Route("/v1/messages", _endpoint(state, ANTHROPIC), methods=["POST"]),
        Route("/v1/messages/count_tokens", _count_tokens(state), methods=["POST"]),
        Route("/v1/models", _models(state), methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/ready", _ready(state), methods=["GET"]),
        *ops.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=ops.middleware,
        lifespan=contextlib.asynccontextmanager(lifespan),
        exception_handlers={
            HTTPException: _http_exception,
            Exception: _unhandled(state),  # last resort for routes without their own boundary
        },  # type: ignore[dict-item]
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


def _unhandled(state: AppState) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception no route caught: still an error in the client's shape, never plain text."""

    async def handler(request: Request, exc: Exception) -> Response:
        error = as_forge_error(exc, state.client, state.spec.name)
        return _protocol_for(request.url.path).error_response(error)

    return handler


# --- request reading --------------------------------------------------------------------------


def _check_auth(state: AppState, request: Request) -> None:
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    # Constant time: the comparison must not tell an attacker how much of a guess was right.
    if not hmac.compare_digest((given or "").encode(), key.encode()):
        raise Unauthorized("Missing or invalid API key for this forge proxy.")


def _auth_failure(state: AppState, request: Request) -> Response | None:
    """For the GET endpoints: the 401 in the caller's shape (Anthropic SDKs send
    ``anthropic-version``), or None when the key is right or none is set."""
    try:
        _check_auth(state, request)
    except Unauthorized as exc:
        anthropic = "anthropic-version" in request.headers
        return (ANTHROPIC if anthropic else OPENAI).error_response(exc)
    return None


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
    # Strict: NaN, 1e400, nesting past jsonio.MAX_DEPTH are a 400; lone surrogates become U+FFFD.
    return client_json(raw)


async def _until_disconnect(request: Request, work: Awaitable[T], drain: Drain | None = None) -> T:
    """Run ``work`` but cancel it (and its backend request) if the client goes away, or with
    a 503 (:class:`~forge_core.errors.ShuttingDown`) when ``drain``'s time is over.

    ``work`` runs in the request's own task, which the watcher cancels: one task per request
    fewer than running it beside the watcher (about 25 us of CPU a request).
    """
    me = asyncio.current_task()
    assert me is not None
    left = False
    finished = False

    async def watch() -> None:
        nonlocal left
        with contextlib.suppress(Exception):  # a broken channel: nobody to answer either
            while (await request.receive())["type"] != "http.disconnect":
                pass
        if not finished:
            left = True
            me.cancel()

    if drain is not None and drain.expired:
        getattr(work, "close", lambda: None)()  # never started: no "never awaited" warning
        raise drain.error()
    watcher = asyncio.ensure_future(watch())
    try:
        if drain is None:
            return await work
        with drain.interruptible():  # a ShuttingDown when the drain's time is over
            return await work
    except asyncio.CancelledError:
        if not left or me.uncancel() > 0:
            raise  # the server is cancelling this request: work has ended with it
        log.info("client disconnected; backend request cancelled")
        raise ClientGone from None
    finally:
        finished = True  # a disconnect seen from now on cancels nothing
        watcher.cancel()


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
            notes: list[Note] = []  # the request's own, then the engine's
            if state.budget is not None:  # a clear 400 instead of a silently truncated prompt
                call.body, clamped = await fit_request(
                    call.body, state.budget.tokens, state.client.count_tokens
                )
                if clamped:
                    notes.append(Note(clamped))
            if parsed.stream:
                return await _stream(state, protocol, request, call, parsed, notes)
            async with state.limiter.slot():
                answer = await _until_disconnect(
                    request, state.engine.complete(call), state.drain
                )
            notes += answer.notes
            observe_notes(notes)
            _log_request(protocol, parsed, call, answer.turn.finish_reason, notes)
            headers = _guardrail_headers(notes)
            return JSONResponse(protocol.completion(answer.turn, parsed), headers=headers)
        except ForgeError as exc:
            _log_error(exc)
            return protocol.error_response(exc)
        except ClientGone:
            # 499 as nginx logs it; uvicorn drops writes to a closed connection.
            return Response(status_code=499)
        except Exception as exc:  # the boundary: plugin bugs answer in the client's shape
            return protocol.error_response(as_forge_error(exc, state.client, state.spec.name))

    return endpoint


def _log_request(
    protocol: Protocol, parsed: Any, call: ChatCall, finish: str, notes: list[Note]
) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s model=%s tools=%d stream=%s finish=%s guardrails=%s",
            protocol.name, parsed.model, len(call.tools), parsed.stream, finish,
            ",".join(n.text for n in notes) or "-",
        )


def _guardrail_headers(notes: list[Note]) -> dict[str, str]:
    return {"x-forge-guardrail": ",".join(n.text for n in notes)} if notes else {}


def _log_error(exc: ForgeError) -> None:
    if exc.status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.message)
    else:
        log.info("%s (%d): %s", type(exc).__name__, exc.status, exc.message)


async def _stream(
    state: AppState,
    protocol: Protocol,
    request: Request,
    call: ChatCall,
    parsed: Any,
    notes: list[Note],
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
            request, asyncio.wait({first}, timeout=state.config.stream_start_grace),
            state.drain,
        )
        if first.done():
            first.result()  # raise a failure now, while a status can still be sent
    except BaseException:
        await stack.aclose()
        raise
    emitter = protocol.stream_emitter(parsed)
    keepalive = state.config.guardrails.keepalive_interval

    drain = state.drain

    async def body() -> AsyncIterator[bytes]:
        yield emitter.start()
        try:
            while not first.done():
                with drain.interruptible():  # the drain's end interrupts waits, not writes
                    await asyncio.wait({first}, timeout=keepalive)
                if not first.done():
                    yield emitter.emit(KeepAlive())
            event: StreamEvent | None = first.result()
            while event is not None:
                if type(event) is Note:  # bookkeeping: the engine hands these out at the end
                    notes.append(event)  # type: ignore[arg-type]
                    event = await anext(events, None)
                    continue
                yield emitter.emit(event)
                if isinstance(event, Finished):  # the end is out: no error may follow it
                    event = await anext(events, None)
                    continue
                with drain.interruptible():
                    event = await anext(events, None)
        except ForgeError as exc:
            _log_error(exc)
            yield _stream_error(emitter, exc)
        except Exception as exc:  # the boundary, after the 200: an error event, then the end
            yield _stream_error(emitter, as_forge_error(exc, state.client, state.spec.name))
        finally:
            observe_notes(notes)
            _log_request(protocol, parsed, call, "streamed", notes)

    # Notes known before the answer (a clamped max_tokens) go out with the headers.
    headers = {**sse.STREAM_HEADERS, **_guardrail_headers(notes)}
    return _ClosingStream(body(), stack, headers=headers)


def _stream_error(emitter: Any, exc: ForgeError) -> bytes:
    """The protocol's in-stream error and end; nothing if the stream had already ended."""
    try:
        return emitter.error(exc)  # type: ignore[no-any-return]
    except Exception:
        log.exception("could not report %s in the stream", type(exc).__name__)
        return b""


class _ClosingStream(StreamingResponse):
    """A stream that always releases its slot and backend stream, even if never iterated.

    Its pieces go through a :class:`~forge_core.wire.sse.Coalescer`: those ready at the same
    moment leave in one write, and none waits for another. A client that goes away stops the
    coalescer's producer (and so the engine and the backend request); unlike starlette's own
    streaming response this takes one watcher task, not an anyio task group with two.
    """

    def __init__(self, content: AsyncIterator[bytes], stack: AsyncExitStack, **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self._stack = stack
        self._coalescer: sse.Coalescer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        coalescer = self._coalescer = sse.Coalescer(self.body_iterator)  # type: ignore[arg-type]

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            coalescer.cancel()  # the client left: the sender sees the end at its next take

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        finally:
            watcher.cancel()
            # The producer has finished with the engine's stream before the stack closes it.
            try:
                await coalescer.aclose()
            finally:
                await self._stack.aclose()

    async def stream_response(self, send: Send) -> None:
        coalescer = self._coalescer
        assert coalescer is not None
        await send(
            {"type": "http.response.start", "status": self.status_code,
             "headers": self.raw_headers}
        )
        done = False
        try:
            while not done:
                try:
                    data, done = await coalescer.take()
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise  # this task is being cancelled, not just the producer
                    return  # the client went away: nothing more to send
                if data or done:
                    await send({"type": "http.response.body", "body": data, "more_body": not done})
        finally:
            if not done:
                coalescer.cancel()  # waited for in __call__


def _models(state: AppState) -> Callable[[Request], Awaitable[Response]]:
    async def models(request: Request) -> Response:
        if (denied := _auth_failure(state, request)) is not None:
            return denied
        context = _context_fields(state.budget.tokens if state.budget else None)
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": f"forge/{state.spec.name}",
                **context,
            }
            for name in state.served_names()
        ]
        return JSONResponse({"object": "list", "data": data})

    return models


def _context_fields(tokens: int | None) -> dict[str, Any]:
    """The context in force under the names clients read: ``context_length`` (OpenRouter, LM
    Studio and the model-discovery plugins of agents), ``max_model_len`` (vLLM),
    ``max_input_tokens`` (Anthropic's Models API) and ``meta.n_ctx`` (llama-server). Nothing
    when the backend did not say."""
    if not tokens:
        return {}
    return {
        "context_length": tokens,
        "max_model_len": tokens,
        "max_input_tokens": tokens,
        "meta": {"n_ctx": tokens},
    }


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


def _ready(state: AppState) -> Callable[[Request], Awaitable[Response]]:
    statuses = StatusCache(lambda: safe_status(state.client, state.spec.name))

    async def ready(request: Request) -> Response:
        if (denied := _auth_failure(state, request)) is not None:
            return denied
        status = await statuses.get()  # at most one backend probe per READY_TTL
        body = {
            "ready": status.ready,
            "backend": state.spec.name,
            "backend_url": display_url(state.client.base_url),  # never with credentials
            "detail": scrub(status.detail),
            "models": state.served_names() or status.models,
            "capability": state.config.backend.capability,
            "context_size": status.context_size,
            "budget_mode": state.config.backend.budget_mode,
            "context_budget": state.budget.tokens if state.budget else status.context_size,
            **status.extra,
        }
        if state.draining:  # a load balancer must stop sending before the listener closes
            body.update(ready=False, detail="draining: forge is shutting down")
        ready = status.ready and not state.draining
        return JSONResponse(body, status_code=200 if ready else 503)

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
        except Exception as exc:  # the boundary (count_tokens is plugin code)
            return ANTHROPIC.error_response(as_forge_error(exc, state.client, state.spec.name))

    return count
