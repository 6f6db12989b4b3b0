"""Helpers for the Anthropic end-to-end tests: forge and a scripted backend, both on loopback.

The real ``anthropic`` SDK uses its own HTTP stack and needs a real socket, so forge runs on
uvicorn in a thread; the scripted OpenAI-wire backend runs on loopback too, so that streamed
chunks reach forge one by one (``httpx.ASGITransport`` would buffer a whole response).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from forge_core.app import AppState, make_app
from forge_core.backend import BackendClient, BackendSettings, BackendSpec
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.engine import Engine
from forge_core.limiter import Limiter
from forge_core.openai_client import OpenAIWireClient
from forge_core.plugins import PluginHost
from forge_core.testing import (
    WEATHER_TOOL,
    Reply,
    ScriptedBackend,
    fake_spec,
    serve_on_loopback,
)

MODEL = "fake-model"

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
"""The testing module's weather tool in Anthropic form (``city`` required, ``unit`` c|f)."""

TIME: dict[str, Any] = {
    "name": "get_time",
    "description": "Local time in a time zone",
    "input_schema": {
        "type": "object",
        "properties": {"tz": {"type": "string"}},
        "required": ["tz"],
    },
}


def llamafile_spec() -> BackendSpec:
    """The llamafile plugin's own registration (constrained decoding declared)."""
    from forge_llamafile.plugin import forge_register_backends

    specs: list[BackendSpec] = []
    forge_register_backends(specs.append)
    return specs[0]


def state_for(
    backend_url: str,
    *,
    timeout: float = 30.0,
    guardrails: GuardrailSettings | None = None,
    spec: BackendSpec | None = None,
    llamafile: bool = False,
    llamafile_options: dict[str, Any] | None = None,
    **config: Any,
) -> AppState:
    """forge's real engine in front of the OpenAI-wire server at ``backend_url``.

    The client is the generic OpenAI-wire one, or with ``llamafile`` the llamafile plugin's
    (external mode), which constrains retries with a GBNF grammar (``llamafile_options``: the
    plugin's options, e.g. ``{"constrain_with": "schema"}``).
    """
    settings = BackendSettings(
        backend_url=backend_url, model=None, timeout=timeout, options=llamafile_options or {}
    )
    client: BackendClient
    if llamafile:
        from forge_llamafile.client import LlamafileClient

        spec = spec or llamafile_spec()
        client = LlamafileClient(settings)
    else:
        spec = spec or fake_spec()
        client = OpenAIWireClient(
            settings, name=spec.name, base_url=backend_url, derive_identity=spec.derive_identity
        )
    serve = ServeConfig(
        backend=settings, plugin=spec.name, guardrails=guardrails or GuardrailSettings(), **config
    )
    host = PluginHost()
    engine = Engine(client, spec, serve.guardrails, host.rescue_parsers(), host.transforms())
    limiter = Limiter(serve.max_concurrency, serve.max_queue)
    return AppState(config=serve, spec=spec, client=client, engine=engine, limiter=limiter)


@dataclass
class Forge:
    """A running forge (``url``) in front of ``backend``; what the backend got is recorded."""

    url: str
    backend: ScriptedBackend

    def sdk(self, api_key: str = "client-key", **kw: Any) -> anthropic.Anthropic:
        """The real SDK pointed at forge, without its own retries (they would hide statuses)."""
        return anthropic.Anthropic(base_url=self.url, api_key=api_key, max_retries=0, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        """A raw, non-streamed POST (``body`` as JSON, or bytes via ``content=``)."""
        if isinstance(body, bytes | str):
            return httpx.post(self.url + path, content=body, timeout=30, **kw)
        return httpx.post(self.url + path, json=body, timeout=30, **kw)

    def stream_raw(self, body: dict[str, Any], **kw: Any) -> tuple[httpx.Response, bytes]:
        """POST a streamed request and return the response and its exact bytes."""
        with httpx.stream(
            "POST", self.url + "/v1/messages", json={**body, "stream": True}, timeout=30, **kw
        ) as response:
            return response, response.read()

    @property
    def last(self) -> dict[str, Any]:
        """The body of the last request the backend received."""
        return self.backend.requests[-1]


@contextlib.contextmanager
def run_forge(
    backend: ScriptedBackend | None = None, *, backend_url: str | None = None, **kw: Any
) -> Iterator[Forge]:
    """forge on loopback in front of ``backend`` (served on loopback too) or ``backend_url``.

    Keyword arguments go to :func:`state_for` (``timeout``, ``guardrails``, ``llamafile``) and on
    to :class:`ServeConfig` (``api_key``, ``max_body_bytes``, ``any_model``, ...).
    """
    backend = backend or ScriptedBackend()
    with contextlib.ExitStack() as stack:
        url = backend_url or stack.enter_context(serve_on_loopback(backend.app))
        forge_url = stack.enter_context(serve_on_loopback(make_app(state_for(url, **kw))))
        yield Forge(forge_url, backend)


def ask(content: str = "What is the weather in Paris?", **extra: Any) -> dict[str, Any]:
    """A minimal Messages body."""
    return {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


# --- reading streams -----------------------------------------------------------------------


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split a stream into (event, data) pairs, asserting Anthropic's exact framing.

    Every event is ``event: NAME\\n`` + ``data: JSON\\n`` + ``\\n``; the name equals the data's
    ``type``; nothing else (no comments, no CR, no multi-line data) appears.
    """
    text = raw.decode("utf-8")
    assert "\r" not in text
    assert text.endswith("\n\n"), "a stream ends with a blank line"
    out: list[tuple[str, dict[str, Any]]] = []
    for frame in text[:-2].split("\n\n"):
        lines = frame.split("\n")
        assert len(lines) == 2, f"an event is exactly two lines: {frame!r}"
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        name = lines[0][len("event: ") :]
        data = json.loads(lines[1][len("data: ") :])
        assert data["type"] == name, frame
        out.append((name, data))
    return out


def step(name: str, data: dict[str, Any]) -> tuple[Any, ...]:
    """A compact, comparable view of one event."""
    if name == "content_block_start":
        return (name, data["index"], data["content_block"]["type"])
    if name == "content_block_delta":
        delta = data["delta"]
        value = delta.get("text", delta.get("thinking", delta.get("partial_json")))
        return (name, data["index"], delta["type"], value)
    if name == "content_block_stop":
        return (name, data["index"])
    if name == "message_delta":
        return (name, data["delta"]["stop_reason"])
    if name == "error":
        return (name, data["error"]["type"])
    return (name,)


def steps(raw: bytes, *, pings: bool = False) -> list[tuple[Any, ...]]:
    return [step(n, d) for n, d in frames(raw) if pings or n != "ping"]


def sdk_steps(events: Any) -> list[tuple[Any, ...]]:
    """The same view for the SDK's parsed raw events (``messages.create(stream=True)``)."""
    return [step(event.type, event.model_dump()) for event in events]


def collapse_text(view: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Join consecutive text deltas of one block: chunking is the backend's business."""
    out: list[tuple[Any, ...]] = []
    for item in view:
        if (
            out
            and item[0] == "content_block_delta"
            and item[2] == "text_delta"
            and out[-1][0] == "content_block_delta"
            and out[-1][1:3] == item[1:3]
        ):
            out[-1] = (*out[-1][:3], out[-1][3] + item[3])
        else:
            out.append(item)
    return out


_DELTA_FOR_BLOCK = {
    "text": "text_delta",
    "thinking": "thinking_delta",
    "tool_use": "input_json_delta",
}


def assert_valid_stream(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic's stream state machine, as strict clients enforce it; returns the frames.

    One ``message_start`` first; blocks one at a time with consecutive indexes, each
    ``content_block_start`` / matching deltas / ``content_block_stop``; then ``message_delta``
    with a stop_reason and ``message_stop`` last. ``ping`` may appear anywhere in between.
    """
    events = frames(raw)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    assert names[-2:] == ["message_delta", "message_stop"], names
    assert events[-1][0] == "message_stop"
    open_block: dict[str, Any] | None = None
    next_index = 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == next_index, (name, data)
            open_block = {"index": data["index"], "type": data["content_block"]["type"]}
            next_index += 1
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == open_block["index"], data
            assert data["delta"]["type"] == _DELTA_FOR_BLOCK[open_block["type"]], data
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == open_block["index"], data
            open_block = None
        else:
            assert name == "ping", (name, data)
    assert open_block is None
    assert events[-2][1]["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use",
                                                     "stop_sequence")
    return events


def stopped_on(text: str, stop: str, *, stream: bool) -> Reply:
    """A backend answer that ended on the stop string ``stop``, reported as vLLM does (the
    choice's ``stop_reason`` holds the matched string; llama-server does not report it)."""
    choice_end = {"finish_reason": "stop", "stop_reason": stop}
    if not stream:
        body = {
            "id": "chatcmpl-vllm", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         **choice_end}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        }
        return Reply(raw_body=json.dumps(body).encode())

    def event(delta: dict[str, Any], **end: Any) -> str:
        chunk = {"object": "chat.completion.chunk", "model": MODEL,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None, **end}]}
        return f"data: {json.dumps(chunk)}\n\n"

    # Raw events up to [DONE]: forge stops reading there, before the fake's own final chunk.
    return Reply(stream_chunks=[
        event({"role": "assistant", "content": text}),
        event({}, **choice_end),
        "data: [DONE]\n\n",
    ])


class TokenizingBackend(ScriptedBackend):
    """A fake llama-server that can render and tokenize (one token per whitespace word) and
    reports its context size at ``/props``, as the llamafile client expects."""

    def __init__(self, n_ctx: int = 4096) -> None:
        super().__init__()
        self.n_ctx = n_ctx
        self.rendered: list[dict[str, Any]] = []
        self.app.router.routes += [
            Route("/apply-template", self._apply_template, methods=["POST"]),
            Route("/tokenize", self._tokenize, methods=["POST"]),
            Route("/props", self._props, methods=["GET"]),
        ]

    async def _props(self, request: Request) -> Response:
        return JSONResponse({"default_generation_settings": {"n_ctx": self.n_ctx}})

    async def _apply_template(self, request: Request) -> Response:
        body = await request.json()
        self.rendered.append(body)
        text = " ".join(str(m.get("content") or "") for m in body["messages"])
        return JSONResponse({"prompt": f"<start> {text} <assistant>"})

    async def _tokenize(self, request: Request) -> Response:
        words = (await request.json())["content"].split()
        return JSONResponse({"tokens": list(range(len(words)))})
