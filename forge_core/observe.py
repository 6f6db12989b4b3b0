"""What happened to each request, collected once for metrics, the inspector and tracing.

An ASGI middleware opens a :class:`RequestRecord` per API request and puts it in a context
variable; thin proxies around the engine, the backend client and the limiter fill it in (the
client's :class:`~forge_core.engine.ChatCall`, every backend attempt with its timing, usage,
error and, when the inspector is on, its output), and the app hands over the guardrail notes
(:func:`observe_notes`). When the response
has gone out, the record is handed to the sinks. Nothing here touches the engine's loops.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge_core.backend import BackendRequest
from forge_core.errors import (
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
)
from forge_core.turns import AssistantTurn, BackendChunk, Note, Usage

log = logging.getLogger("forge.observe")

ENDPOINTS: dict[str, str] = {
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic",
    "/v1/models": "openai",
}
"""Paths observed (and their protocol); probes, /metrics and /forge/ are not."""
CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions", "/v1/messages"})
CAPTURE_LIMIT = 64 * 1024
"""Bytes of a request or response body the inspector keeps (the rest is cut and counted)."""

CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "forge_request", default=None
)


@dataclass(slots=True)
class Attempt:
    """One backend call made for a request."""

    index: int
    streamed: bool
    started: float
    """``time.perf_counter()`` at the call."""
    sent: dict[str, Any] | None = None
    """The body forge sent (inspector only)."""
    seconds: float = 0.0
    first_chunk: float | None = None
    usage: Usage | None = None
    error_kind: str | None = None
    error_status: int | None = None
    error: str | None = None
    output: dict[str, Any] | None = None
    """What the backend answered, normalized (inspector only, or the respond tool check)."""


@dataclass(slots=True)
class RequestRecord:
    path: str
    method: str
    protocol: str
    capture: bool
    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    status: int = 0
    streamed: bool = False
    first_byte: float | None = None
    seconds: float = 0.0
    call: Any = None
    """The engine's ``ChatCall``: the request as the backend saw it."""
    guardrail_notes: list[Note] = field(default_factory=list)
    """What the guardrails did, as the app handed it over (:func:`observe_notes`)."""
    attempts: list[Attempt] = field(default_factory=list)
    request_body: bytearray = field(default_factory=bytearray)
    request_cut: int = 0
    response_body: bytearray = field(default_factory=bytearray)
    response_cut: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    trace_headers: dict[str, str] | None = None
    """The client's ``traceparent``/``tracestate``, when tracing is on."""

    @property
    def notes(self) -> list[str]:
        return [note.text for note in self.guardrail_notes]

    @property
    def backend_seconds(self) -> float:
        return sum(a.seconds for a in self.attempts)

    @property
    def usage(self) -> Usage | None:
        total: Usage | None = None
        for attempt in self.attempts:
            if attempt.usage is not None:
                total = attempt.usage if total is None else total + attempt.usage
        return total

    def attempt_notes(self) -> list[list[str]]:
        """The notes of each attempt, in order (the request's own notes belong to none)."""
        out: list[list[str]] = [[] for _ in self.attempts]
        for note in self.guardrail_notes:
            if note.attempt is not None and note.attempt < len(out):
                out[note.attempt].append(note.text)
        return out


Sink = Callable[[RequestRecord], None]


def observe_notes(notes: Sequence[Note]) -> None:
    """Hand a request's guardrail notes to its record (nothing when nobody observes)."""
    record = CURRENT.get()
    if record is not None:
        record.guardrail_notes.extend(notes)


def error_kind(exc: BaseException) -> tuple[str, int | None]:
    """A backend failure's kind for metrics: unreachable, timeout, http, protocol or other."""
    if isinstance(exc, BackendHTTPError):
        return "http", exc.backend_status
    if isinstance(exc, BackendTimeout):
        return "timeout", None
    if isinstance(exc, BackendUnavailable):
        return "unreachable", None
    if isinstance(exc, BackendProtocolError):
        return "protocol", None
    return "other", None


# --- proxies -----------------------------------------------------------------------------------


class ObservedEngine:
    """The engine, noting which ``ChatCall`` the current request is."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def complete(self, call: Any) -> Any:
        record = CURRENT.get()
        if record is not None:
            record.call = call
        return await self._inner.complete(call)

    def stream(self, call: Any) -> AsyncIterator[Any]:
        record = CURRENT.get()
        if record is not None:
            record.call = call
        return self._inner.stream(call)  # type: ignore[no-any-return]


class ObservedClient:
    """The backend client as the engine sees it: each call becomes an :class:`Attempt`."""

    def __init__(self, inner: Any, *, watch_names: Sequence[str] = ()) -> None:
        self._inner = inner
        self._watch = frozenset(watch_names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _begin(self, request: BackendRequest, streamed: bool) -> Attempt | None:
        record = CURRENT.get()
        if record is None:
            return None
        attempt = Attempt(
            index=len(record.attempts),
            streamed=streamed,
            started=time.perf_counter(),
            sent=request.body if record.capture else None,
        )
        record.attempts.append(attempt)
        return attempt

    async def complete(self, request: BackendRequest) -> AssistantTurn:
        attempt = self._begin(request, False)
        if attempt is None:
            return await self._inner.complete(request)  # type: ignore[no-any-return]
        try:
            turn: AssistantTurn = await self._inner.complete(request)
        except BaseException as exc:
            _failed(attempt, exc)
            raise
        attempt.seconds = time.perf_counter() - attempt.started
        attempt.usage = turn.usage
        record = CURRENT.get()
        if (record is not None and record.capture) or self._watched(turn.tool_calls):
            attempt.output = _turn_output(turn)
        return turn

    def _watched(self, calls: Sequence[Any]) -> bool:
        return bool(self._watch) and any(c.name in self._watch for c in calls)

    async def stream(self, request: BackendRequest) -> AsyncIterator[BackendChunk]:
        attempt = self._begin(request, True)
        source = self._inner.stream(request)
        if attempt is None:
            async with contextlib.aclosing(source):
                async for chunk in source:
                    yield chunk
            return
        record = CURRENT.get()
        collect = _StreamOutput() if (record is not None and record.capture) or self._watch \
            else None
        try:
            async with contextlib.aclosing(source):
                async for chunk in source:
                    if attempt.first_chunk is None:
                        attempt.first_chunk = time.perf_counter() - attempt.started
                    if chunk.usage is not None:
                        attempt.usage = chunk.usage
                    if collect is not None:
                        collect.add(chunk)
                    yield chunk
        except BaseException as exc:
            _failed(attempt, exc)
            raise
        finally:
            if not attempt.seconds:
                attempt.seconds = time.perf_counter() - attempt.started
            if collect is not None and (record is not None and record.capture
                                        or self._watch & collect.names):
                attempt.output = collect.output()


def _failed(attempt: Attempt, exc: BaseException) -> None:
    attempt.seconds = time.perf_counter() - attempt.started
    if isinstance(exc, Exception):
        attempt.error_kind, attempt.error_status = error_kind(exc)
        attempt.error = getattr(exc, "message", None) or type(exc).__name__
    else:  # cancelled: the client went away
        attempt.error_kind, attempt.error = "cancelled", "cancelled"


def _turn_output(turn: AssistantTurn) -> dict[str, Any]:
    out: dict[str, Any] = {"content": turn.content, "finish_reason": turn.finish_reason}
    if turn.reasoning:
        out["reasoning"] = turn.reasoning
    if turn.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in turn.tool_calls
        ]
    return out


class _StreamOutput:
    """A streamed attempt's output put back together (text, reasoning, calls by index)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.names: set[str] = set()

    def add(self, chunk: BackendChunk) -> None:
        if chunk.text:
            self.text.append(chunk.text)
        if chunk.reasoning:
            self.reasoning.append(chunk.reasoning)
        for fragment in chunk.tool_calls:
            entry = self.calls.setdefault(fragment.index, {"id": None, "name": "", "arguments": ""})
            if fragment.id:
                entry["id"] = fragment.id
            if fragment.name:
                entry["name"] += fragment.name
                self.names.add(entry["name"])
            entry["arguments"] += fragment.arguments
        if chunk.finish_reason:
            self.finish = chunk.finish_reason

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {"content": "".join(self.text), "finish_reason": self.finish}
        if self.reasoning:
            out["reasoning"] = "".join(self.reasoning)
        if self.calls:
            out["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return out


class ObservedLimiter:
    """The limiter, reporting requests waiting for a backend slot and slots held."""

    def __init__(self, inner: Any, on_change: Callable[[int, int], None]) -> None:
        self._inner = inner
        self._on_change = on_change
        """Called with (change in waiting, change in slots held)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        manager = self._inner.slot()
        self._on_change(1, 0)
        try:
            await manager.__aenter__()
        finally:
            self._on_change(-1, 0)
        self._on_change(0, 1)
        try:
            yield
        except BaseException as exc:
            self._on_change(0, -1)
            if not await manager.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            self._on_change(0, -1)
            await manager.__aexit__(None, None, None)


# --- the middleware ----------------------------------------------------------------------------


class ObserveMiddleware:
    """Opens a record for each API request, notes status and first byte, hands it to sinks."""

    def __init__(
        self,
        app: ASGIApp,
        sinks: Sequence[Sink],
        capture: bool = False,
        on_flight: Callable[[int], None] | None = None,
        trace_context: bool = False,
    ) -> None:
        self.app = app
        self.sinks = list(sinks)
        self.capture = capture
        self.on_flight = on_flight
        self.trace_context = trace_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        protocol = ENDPOINTS.get(path)
        if protocol is None or not self.sinks:
            await self.app(scope, receive, send)
            return
        capture = self.capture and path in CHAT_PATHS
        record = RequestRecord(path, scope.get("method", ""), protocol, capture)
        if self.trace_context:
            record.trace_headers = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in scope.get("headers", ())
                if name in (b"traceparent", b"tracestate")
            }
        token = CURRENT.set(record)
        if self.on_flight:
            self.on_flight(1)

        async def observed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                _keep(record, "request", message.get("body", b""))
            return message

        async def observed_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                record.status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        record.streamed = value.startswith(b"text/event-stream")
                        if capture:
                            record.headers["content-type"] = value.decode("latin-1")
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if body and record.first_byte is None:
                    record.first_byte = time.perf_counter() - record.started
                if capture:
                    _keep(record, "response", body)
            await send(message)

        try:
            await self.app(scope, observed_receive if capture else receive, observed_send)
        except BaseException:
            if not record.status:
                record.status = 500
            raise
        finally:
            record.seconds = time.perf_counter() - record.started
            CURRENT.reset(token)
            if self.on_flight:
                self.on_flight(-1)
            for sink in self.sinks:
                try:
                    sink(record)
                except Exception:  # an observer's bug must never fail a request
                    log.exception("request observer %r failed", sink)


def _keep(record: RequestRecord, which: str, data: bytes) -> None:
    buffer = record.request_body if which == "request" else record.response_body
    room = CAPTURE_LIMIT - len(buffer)
    if room > 0:
        buffer += data[:room]
    cut = max(0, len(data) - max(room, 0))
    if which == "request":
        record.request_cut += cut
    else:
        record.response_cut += cut
