"""Test helpers for forge and for plugin authors: a scripted OpenAI-wire backend, an app
builder that wires it to forge without a network, and a loopback server runner.

Typical use::

    backend = ScriptedBackend()
    backend.push(reply_tool_call("get_weather", {"city": "Paris"}))
    async with forge_client(backend) as http:     # httpx.AsyncClient talking to forge
        r = await http.post("/v1/chat/completions", json=...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from forge_core.backend import BackendClient, BackendSettings, BackendSpec, Capabilities
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.openai_client import OpenAIWireClient
from forge_core.turns import new_id

# --- scripted replies -------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted backend answer. ``stream_chunks`` overrides the automatic chunking."""

    message: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"
    status: int = 200
    error_body: Any = None
    stream_chunks: list[dict[str, Any] | str] | None = None
    delay: float = 0.0
    """Seconds to wait before each streamed chunk (and before a non-streamed answer)."""
    usage: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    )
    raw_body: bytes | None = None


def reply_text(content: str, **kw: Any) -> Reply:
    return Reply(message={"role": "assistant", "content": content}, **kw)


def reply_tool_call(
    name: str, arguments: str | dict[str, Any], *, content: str | None = None,
    call_id: str | None = None, **kw: Any,
) -> Reply:
    return reply_tool_calls([(name, arguments)], content=content, ids=[call_id], **kw)


def reply_tool_calls(
    calls: Sequence[tuple[str, str | dict[str, Any]]], *, content: str | None = None,
    ids: Sequence[str | None] = (), **kw: Any,
) -> Reply:
    tool_calls = []
    for i, (name, args) in enumerate(calls):
        call_id = (ids[i] if i < len(ids) else None) or new_id("call_")
        text = args if isinstance(args, str) else json.dumps(args)
        tool_calls.append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}
        )
    kw.setdefault("finish_reason", "tool_calls")
    message = {"role": "assistant", "content": content, "tool_calls": tool_calls}
    return Reply(message=message, **kw)


def reply_error(status: int, body: Any) -> Reply:
    return Reply(status=status, error_body=body)


def auto_chunks(reply: Reply) -> list[dict[str, Any]]:
    """How a typical llama-server streams ``reply``: word-sized text, then call fragments."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None}]
    content = reply.message.get("content") or ""
    words = content.split(" ")
    for i, word in enumerate(words):
        piece = word if i == len(words) - 1 else word + " "
        if piece:
            deltas.append({"content": piece})
    for index, call in enumerate(reply.message.get("tool_calls") or []):
        args = call["function"]["arguments"]
        half = len(args) // 2
        deltas.append({"tool_calls": [{
            "index": index, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": args[:half]},
        }]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]})
    return deltas


class ScriptedBackend:
    """A fake OpenAI-wire server answering from a queue of :class:`Reply` objects.

    It records every request body and header set it receives, and whether a streamed
    response was cut off by the client (``cancelled``).

    The wire is in four small methods (:meth:`routes`, :meth:`completion_body`,
    :meth:`stream_pieces`, :meth:`error_response`): a fake for another wire (Ollama, Anthropic)
    subclasses this and overrides them, keeping the queue, the recording and the cancellation
    tracking. Replies stay OpenAI-shaped (``Reply.message`` is an OpenAI assistant message).
    """

    chat_path = "/v1/chat/completions"

    def __init__(self, models: Sequence[str] = ("fake-model",)) -> None:
        self.models = list(models)
        self.replies: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.raw_requests: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = Starlette(routes=self.routes())

    def routes(self) -> list[Route]:
        return [
            Route(self.chat_path, self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
        ]

    def push(self, *replies: Reply) -> ScriptedBackend:
        self.replies.extend(replies)
        return self

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "test"} for m in self.models
        ]})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # --- the wire: override these for another protocol ----------------------------------

    def is_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream"))

    def completion_body(self, reply: Reply, body: dict[str, Any]) -> Any:
        """The JSON answer to a non-streamed request."""
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body.get("model"),
            "choices": [{"index": 0, "message": reply.message,
                         "finish_reason": reply.finish_reason}],
            "usage": reply.usage,
        }

    def stream_pieces(self, reply: Reply, body: dict[str, Any]) -> list[bytes]:
        """The bytes of a streamed answer, one piece per event (each after ``reply.delay``)."""
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                "model": body.get("model")}
        chunks = reply.stream_chunks if reply.stream_chunks is not None else auto_chunks(reply)
        pieces: list[bytes] = []
        for delta in chunks:
            if isinstance(delta, str):
                pieces.append(delta.encode())  # raw bytes, for malformed-stream tests
                continue
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            pieces.append(f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode())
        final = {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
        pieces.append(f"data: {json.dumps({**head, 'choices': [final]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**head, "choices": [], "usage": reply.usage}
            pieces.append(f"data: {json.dumps(usage)}\n\n".encode())
        pieces.append(b"data: [DONE]\n\n")
        return pieces

    def error_response(self, reply: Reply) -> Response:
        return JSONResponse(reply.error_body, status_code=reply.status)

    stream_media_type = "text/event-stream"

    # --- serving ---------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        self.raw_requests.append(raw)
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        reply = self.replies.pop(0) if self.replies else reply_text("(script exhausted)")
        if reply.raw_body is not None:
            return Response(reply.raw_body, status_code=reply.status,
                            media_type="application/json")
        if reply.status != 200:
            return self.error_response(reply)
        if self.is_stream(body):
            return StreamingResponse(self._stream(reply, body), media_type=self.stream_media_type)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.delay and not await _sleep_unless_gone(request, reply.delay):
                # Like a real server noticing the closed connection: stop, answer nobody.
                self.cancelled += 1
                return Response(status_code=499)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return JSONResponse(self.completion_body(reply, body))

    async def _stream(self, reply: Reply, body: dict[str, Any]) -> AsyncIterator[bytes]:
        pieces = self.stream_pieces(reply, body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        finished = False
        try:
            for piece in pieces:
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                yield piece
            finished = True
        finally:
            self.in_flight -= 1
            if not finished:
                self.cancelled += 1


async def _sleep_unless_gone(request: Request, delay: float) -> bool:
    """Sleep ``delay`` seconds; False as soon as the client disconnects instead.

    On loopback (uvicorn) a disconnect does not cancel a plain endpoint, it only shows up as an
    ``http.disconnect`` message; in-process (ASGITransport) the request task is cancelled.
    """
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    sleeper, watcher = asyncio.ensure_future(asyncio.sleep(delay)), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, watcher):
            task.cancel()
    return sleeper.done() and not sleeper.cancelled()


# --- wiring forge to a fake, without a network --------------------------------------------------


def fake_spec(name: str = "fake", **caps: Any) -> BackendSpec:
    """A spec for an OpenAI-wire backend reached through ``transport``."""

    def factory(settings: BackendSettings) -> OpenAIWireClient:  # pragma: no cover - unused
        return OpenAIWireClient(settings, name=name, base_url=settings.backend_url or "")

    return BackendSpec(
        name=name, description="test backend", client_factory=factory,
        capabilities=Capabilities(**caps),
    )


def build_state(
    backend: ScriptedBackend | httpx.AsyncBaseTransport,
    *,
    spec: BackendSpec | None = None,
    model: str | None = None,
    guardrails: GuardrailSettings | None = None,
    host: Any = None,
    **config: Any,
) -> Any:
    """An AppState with forge's real engine in front of ``backend`` (an ASGI fake or transport).

    ``host`` (a :class:`~forge_core.plugins.PluginHost`) supplies the rescue parsers and
    request transforms: register your parser or transform plugin on one to test it in the
    whole pipeline. By default only forge's built-in ones.
    """
    from forge_core.app import wire_state
    from forge_core.plugins import PluginHost

    transport = (
        httpx.ASGITransport(app=backend.app) if isinstance(backend, ScriptedBackend) else backend
    )
    spec = spec or fake_spec()
    settings = BackendSettings(backend_url="http://backend.test", model=model, timeout=30.0)
    client = OpenAIWireClient(
        settings, name=spec.name, base_url="http://backend.test",
        derive_identity=spec.derive_identity, transport=transport,
    )
    serve = ServeConfig(
        backend=settings, plugin=spec.name, guardrails=guardrails or GuardrailSettings(), **config
    )
    host = host or PluginHost()
    return wire_state(serve, spec, client, host.rescue_parsers(), host.transforms())


@contextlib.asynccontextmanager
async def forge_client(
    backend: ScriptedBackend | httpx.AsyncBaseTransport, **kw: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to a forge app (ASGI, in-process) in front of ``backend``."""
    state = kw.pop("state", None) or build_state(backend, **kw)
    async with _serving(state, start=True) as http:
        http.forge_state = state  # type: ignore[attr-defined]
        yield http


@contextlib.asynccontextmanager
async def forge_in_front_of(
    client: BackendClient, spec: BackendSpec, *, start: bool = True, **config: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to a forge app (ASGI, in-process) in front of your own
    backend ``client``, the way ``forge serve`` wires it (``start``: run ``client.start()``
    first, as serving does)."""
    from forge_core.app import wire_state

    settings = getattr(client, "settings", None)
    if not isinstance(settings, BackendSettings):
        settings = BackendSettings(backend_url=client.base_url, model=None, timeout=30.0)
    serve = ServeConfig(backend=settings, plugin=spec.name, **config)
    async with _serving(wire_state(serve, spec, client), start=start) as http:
        yield http


@contextlib.asynccontextmanager
async def _serving(state: Any, *, start: bool) -> AsyncIterator[httpx.AsyncClient]:
    """``state``'s app on ``httpx.ASGITransport``; the backend client is closed at the end."""
    from forge_core.app import make_app

    app = make_app(state)
    if start:
        await state.client.start()
    state.started = True
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://forge.test", timeout=30
        ) as http:
            yield http
    finally:
        await state.client.aclose()


# --- real servers on loopback -------------------------------------------------------------------


@contextlib.contextmanager
def serve_on_loopback(app: Any, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread; yields its base URL."""
    from forge_core.managed import free_port

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="on",
    ))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("loopback server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_forge_on_loopback(
    backend_url: str,
    plugin: str = "llamafile",
    *,
    timeout: float = 300,
    guardrails: GuardrailSettings | None = None,
    **config: Any,
) -> Iterator[str]:
    """Run the whole forge app, with ``plugin``'s real client, in front of a running backend at
    ``backend_url`` (e.g. a real llama-server); yields forge's base URL. ``config`` goes to
    :class:`~forge_core.config.ServeConfig`."""
    from forge_core.app import make_app
    from forge_core.cli import build_state as build_serve_state
    from forge_core.plugins import PluginHost

    host = PluginHost()
    host.load([plugin])
    serve = ServeConfig(
        backend=BackendSettings(backend_url=backend_url, model=None, timeout=timeout),
        plugin=plugin, guardrails=guardrails or GuardrailSettings(), **config,
    )
    app = make_app(build_serve_state(host, host.backends()[plugin], serve))
    with serve_on_loopback(app) as url:
        yield url


def chat(content: str = "hi", model: str = "fake-model", **extra: Any) -> dict[str, Any]:
    """A minimal OpenAI chat body with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
