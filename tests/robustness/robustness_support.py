"""Shared rig for the robustness tests: forge in front of each backend wire, raw answers that
can be broken anywhere, and checks that any response is well-formed for its client protocol.

* :class:`Rig` builds forge (in-process, ASGI) in front of one wire: ``openai`` (the shared
  OpenAI-wire client every llama-server/vLLM/llamafile plugin uses), ``ollama`` (the plugin's
  NDJSON client against ``fake_ollama``) or ``anthropic`` (the plugin's Messages client).
  :meth:`Rig.answer` sets the raw bytes the backend answers every chat request with.
* :func:`good_answer` is a well-formed answer per wire as a tree (one body, or a list of
  stream events); :func:`mutate` breaks it at a path; :func:`encode` frames it as the wire's
  bytes. :class:`Raw` puts text in verbatim (``NaN``, ``"\\ud800"``, 1,000 nested arrays).
* :func:`check_response` asserts what every answer must be (never 500, never empty, valid
  UTF-8 JSON in the client's shape, or an SSE stream ending properly) and returns the tool
  calls it carried; :func:`assert_calls_valid` checks them against the offered schema.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parents[2]
_OLLAMA_TESTS = ROOT / "plugins" / "forge-ollama" / "tests"
if str(_OLLAMA_TESTS) not in sys.path:  # fake_ollama lives with the plugin's tests
    sys.path.insert(0, str(_OLLAMA_TESTS))

from fake_ollama import NDJSON_TYPE, FakeOllama, Recorded, Reply  # noqa: E402
from forge_anthropic.client import AnthropicClient  # noqa: E402
from forge_anthropic.plugin import forge_register_backends as register_anthropic  # noqa: E402
from forge_ollama.client import OllamaClient  # noqa: E402
from forge_ollama.plugin import backend_spec as ollama_spec  # noqa: E402

from forge_core.app import AppState, make_app  # noqa: E402
from forge_core.backend import BackendClient, BackendSettings, BackendSpec  # noqa: E402
from forge_core.config import GuardrailSettings, ServeConfig  # noqa: E402
from forge_core.engine import Engine  # noqa: E402
from forge_core.limiter import Limiter  # noqa: E402
from forge_core.openai_client import OpenAIWireClient  # noqa: E402
from forge_core.plugins import PluginHost  # noqa: E402
from forge_core.testing import fake_spec  # noqa: E402

WIRES = ("openai", "ollama", "anthropic")
PROTOCOLS = ("openai", "anthropic")
BACKEND_NAMES = {"openai": "fake", "ollama": "ollama", "anthropic": "anthropic"}
MODEL = "any-model"  # every rig serves any name (any_model), so clients may send this
SSE_TYPE = "text/event-stream"

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
    "additionalProperties": False,
}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_SCHEMA},
}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
GOOD_ARGS = {"city": "Paris"}


# --- raw JSON text ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """JSON text written verbatim: what Python's json cannot or will not produce."""

    text: str


def deep(levels: int = 1000) -> Raw:
    return Raw("[" * levels + "]" * levels)


def render(node: Any) -> str:
    """JSON text of a tree that may hold :class:`Raw` pieces (strings escaped to ASCII, so a
    lone surrogate in a Python string is written as its ``\\udXXX`` escape)."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{render(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list | tuple):
        return "[" + ",".join(render(v) for v in node) + "]"
    return json.dumps(node)  # floats may come out as NaN/Infinity: on purpose


# --- request bodies -----------------------------------------------------------------------------


def request_body(protocol: str, *, stream: bool, tools: bool, text: Any = "Hi") -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if protocol == "anthropic":
        body["max_tokens"] = 64
    if stream:
        body["stream"] = True
    if tools:
        body["tools"] = [copy.deepcopy(ANTHROPIC_TOOL if protocol == "anthropic" else OPENAI_TOOL)]
    return body


def endpoint(protocol: str) -> str:
    return "/v1/messages" if protocol == "anthropic" else "/v1/chat/completions"


# --- good answers per wire, and breaking them ---------------------------------------------------


def good_answer(wire: str, *, stream: bool, tools: bool) -> Any:
    """A well-formed answer: "Hello there" (and a valid get_weather call with ``tools``)."""
    args_text = json.dumps(GOOD_ARGS)
    if wire == "openai":
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "Hello there"}
            if tools:
                message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": args_text}}]
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                    "model": MODEL, "choices": [{"index": 0, "message": message,
                    "finish_reason": "tool_calls" if tools else "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events = [chunk({"role": "assistant", "content": "Hello "}), chunk({"content": "there"})]
        if tools:
            events.append(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                 "function": {"name": "get_weather",
                                                              "arguments": args_text}}]}))
        events.append(chunk({}, "tool_calls" if tools else "stop"))
        events.append({"id": "c", "object": "chat.completion.chunk", "created": 0,
                       "model": MODEL, "choices": [],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
        return events
    if wire == "ollama":
        call = {"function": {"name": "get_weather", "arguments": dict(GOOD_ARGS)}}
        if not stream:
            message = {"role": "assistant", "content": "Hello there"}
            if tools:
                message["tool_calls"] = [call]
            return {"model": "qwen3:8b", "created_at": "2025-01-01T00:00:00Z", "message": message,
                    "done": True, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2}
        lines: list[Any] = [
            {"model": "qwen3:8b", "message": {"role": "assistant", "content": "Hello "},
             "done": False},
            {"model": "qwen3:8b", "message": {"role": "assistant", "content": "there"},
             "done": False},
        ]
        if tools:
            lines.append({"model": "qwen3:8b", "message": {"role": "assistant", "content": "",
                                                           "tool_calls": [call]}, "done": False})
        lines.append({"model": "qwen3:8b", "message": {"role": "assistant", "content": ""},
                      "done": True, "done_reason": "stop", "prompt_eval_count": 5,
                      "eval_count": 2})
        return lines
    # anthropic
    if not stream:
        content: list[Any] = [{"type": "text", "text": "Hello there"}]
        if tools:
            content.append({"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                            "input": dict(GOOD_ARGS)})
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
                "content": content, "stop_reason": "tool_use" if tools else "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 2}}
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message",
         "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
         "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                      "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Hello "}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "there"}},
        {"type": "content_block_stop", "index": 0},
    ]
    if tools:
        events += [
            {"type": "content_block_start", "index": 1, "content_block": {
                "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
            {"type": "content_block_delta", "index": 1,
             "delta": {"type": "input_json_delta", "partial_json": args_text}},
            {"type": "content_block_stop", "index": 1},
        ]
    events += [
        {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tools else "end_turn"},
         "usage": {"output_tokens": 2}},
        {"type": "message_stop"},
    ]
    return events


def mutate(tree: Any, path: Sequence[Any], value: Any) -> Any:
    """A copy of ``tree`` with the node at ``path`` set to ``value`` (a new key is added)."""
    out = copy.deepcopy(tree)
    if not path:
        return value
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``tree`` (containers and leaves), for choosing what to break."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += paths(value, (*prefix, index))
    return found


def encode(wire: str, answer: Any, *, stream: bool) -> tuple[bytes, str]:
    """The answer framed as the wire sends it: (body bytes, content type)."""
    if not stream:
        return render(answer).encode(), "application/json"
    if isinstance(answer, Raw):
        return answer.text.encode(), SSE_TYPE if wire != "ollama" else NDJSON_TYPE
    if wire == "ollama":
        return "".join(render(line) + "\n" for line in answer).encode(), NDJSON_TYPE
    if wire == "openai":
        frames = [f"data: {render(event)}\n\n" for event in answer]
        return ("".join(frames) + "data: [DONE]\n\n").encode(), SSE_TYPE
    frames = []
    for event in answer:
        name = event.get("type", "message") if isinstance(event, dict) else "message"
        name = json.dumps(name if isinstance(name, str) else "x")[1:-1]  # ASCII, one line
        frames.append(f"event: {name}\ndata: {render(event)}\n\n")
    return "".join(frames).encode(), SSE_TYPE


# --- forge in front of each wire ----------------------------------------------------------------


class _Answering(FakeOllama):
    """fake_ollama for discovery (tags, show, ps) that answers generation with :attr:`reply`,
    or with ``reply_for(body)`` when that is set."""

    reply: Reply | None = None
    reply_for: Callable[[Any], Reply] | None = None

    def respond(self, method: str, path: str, body: Any) -> Reply:
        generating = (method, path) == ("POST", "/api/chat") and (
            not isinstance(body, dict) or body.get("messages") != []
        )
        if generating and (self.reply is not None or self.reply_for is not None):
            self.requests.append(Recorded(method, path, body))
            return self.reply_for(body) if self.reply_for is not None else self.reply  # type: ignore[return-value]
        return super().respond(method, path, body)


@dataclass
class Rig:
    """forge (ASGI, in-process) in front of one backend wire whose chat answer is scripted."""

    wire: str
    http: httpx.AsyncClient
    state: AppState
    ollama: _Answering | None = None
    sent: list[bytes] = field(default_factory=list)
    """The raw body of every chat request forge sent to the backend."""
    _answer: tuple[int, bytes, str] = (500, b"{}", "application/json")

    good_with_tools: bool | None = None
    """Set by :meth:`answer_good`: answer every request well, in the form it asked for."""

    def answer(
        self, body: bytes, content_type: str = "application/json", status: int = 200
    ) -> None:
        self._answer = (status, body, content_type)
        self.good_with_tools = None
        if self.ollama is not None:
            self.ollama.reply, self.ollama.reply_for = Reply(status, body, content_type), None

    def answer_tree(self, tree: Any, *, stream: bool) -> None:
        self.answer(*encode(self.wire, tree, stream=stream))

    def answer_good(self, *, tools: bool) -> None:
        """A good answer (with a valid call when ``tools``), streamed when the request is."""
        self.good_with_tools = tools
        if self.ollama is not None:
            self.ollama.reply_for = self._ollama_good

    def _good(self, request_body: Any) -> tuple[bytes, str]:
        default = self.wire == "ollama"  # Ollama streams unless told not to
        wanted = request_body.get("stream", default) if isinstance(request_body, dict) else False
        stream = wanted is not False if self.wire == "ollama" else wanted is True
        tree = good_answer(self.wire, stream=stream, tools=bool(self.good_with_tools))
        return encode(self.wire, tree, stream=stream)

    def _ollama_good(self, body: Any) -> Reply:
        data, content_type = self._good(body)
        return Reply(200, data, content_type)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.wire == "openai" and path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model"}]})
        self.sent.append(request.content)
        if self.good_with_tools is not None and path.endswith(("/chat/completions", "/messages")):
            data, content_type = self._good(json.loads(request.content))
            return httpx.Response(200, content=data, headers={"content-type": content_type})
        status, body, content_type = self._answer
        return httpx.Response(status, content=body, headers={"content-type": content_type})


@asynccontextmanager
async def rig(wire: str, **config: Any) -> AsyncIterator[Rig]:
    """forge in front of ``wire``; ``config`` goes to :class:`ServeConfig`."""
    holder: dict[str, Rig] = {}
    ollama = _Answering()
    ollama_transport = ollama.transport()

    async def ollama_handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/chat":
            holder["rig"].sent.append(request.content)
        return await ollama_transport.handle_async_request(request)

    def raw_handler(request: httpx.Request) -> httpx.Response:
        return holder["rig"].handler(request)

    spec: BackendSpec
    client: BackendClient
    settings: BackendSettings
    if wire == "openai":
        spec = fake_spec()
        settings = BackendSettings(backend_url="http://backend.test", model=None, timeout=30.0)
        client = OpenAIWireClient(settings, name="fake", base_url="http://backend.test",
                                  transport=httpx.MockTransport(raw_handler))
    elif wire == "ollama":
        spec = ollama_spec()
        settings = BackendSettings(backend_url="http://ollama.test", model="qwen3:8b",
                                   timeout=30.0)
        client = OllamaClient(settings, transport=httpx.MockTransport(ollama_handler))
    else:
        specs: list[BackendSpec] = []
        register_anthropic(specs.append)
        spec = specs[0]
        settings = BackendSettings(backend_url="https://anthropic.test", model="claude-x",
                                   timeout=30.0)
        client = AnthropicClient(settings, transport=httpx.MockTransport(raw_handler),
                                 environ={})
    config.setdefault("guardrails", GuardrailSettings(max_retries=1))
    serve = ServeConfig(backend=settings, plugin=spec.name, any_model=True, **config)
    host = PluginHost()
    engine = Engine(client, spec, serve.guardrails, host.rescue_parsers(), host.transforms())
    state = AppState(config=serve, spec=spec, client=client, engine=engine,
                     limiter=Limiter(serve.max_concurrency, serve.max_queue))
    app = make_app(state)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://forge.test", timeout=30
    ) as http:
        holder["rig"] = Rig(
            wire=wire, http=http, state=state, ollama=ollama if wire == "ollama" else None
        )
        await client.start()
        state.started = True
        try:
            yield holder["rig"]
        finally:
            await client.aclose()


# --- what every response must be ----------------------------------------------------------------


def strict_json(text: str) -> Any:
    """Parse as RFC 8259 JSON and refuse what strict clients (serde_json, Go) refuse."""

    def constant(name: str) -> Any:
        raise AssertionError(f"forge wrote {name}, which is not JSON")

    value = json.loads(text, parse_constant=constant)
    _no_lone_surrogates(value)
    return value


def _no_lone_surrogates(value: Any) -> None:
    if isinstance(value, str):
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in value), f"lone surrogate in {value!r}"
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_lone_surrogates(key)
            _no_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_lone_surrogates(item)


@dataclass
class Outcome:
    status: int
    streamed: bool
    body: Any = None
    """The JSON body (not streamed), else the list of SSE (event name, data) pairs."""
    text: str = ""
    """The answer's text (completions only)."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(name, arguments JSON text) of every tool call that reached the client."""
    error: str | None = None
    """The error message, whether as the JSON body or as the stream's error event."""


def check_response(
    protocol: str, response: httpx.Response, *, count_tokens: bool = False
) -> Outcome:
    """Assert ``response`` is well-formed for ``protocol`` (or ``count_tokens``) and say what
    it carried."""
    raw = response.content
    assert response.status_code != 500, raw[:500]
    assert 200 <= response.status_code < 600
    assert raw, f"empty body with status {response.status_code}"
    text = raw.decode("utf-8")  # strict: forge must write valid UTF-8
    assert "Traceback" not in text
    if response.headers.get("content-type", "").startswith(SSE_TYPE):
        assert response.status_code == 200
        return _check_stream(protocol, text)
    assert response.headers.get("content-type", "").startswith("application/json")
    body = strict_json(text)
    outcome = Outcome(response.status_code, False, body)
    if response.status_code >= 400:
        outcome.error = _error_message(protocol, body)
        return outcome
    assert response.status_code == 200
    if count_tokens:
        assert set(body) == {"input_tokens"} and isinstance(body["input_tokens"], int), body
    elif protocol == "openai":
        message = body["choices"][0]["message"]
        outcome.text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            outcome.calls.append((call["function"]["name"], call["function"]["arguments"]))
    else:
        assert body["type"] == "message" and isinstance(body["content"], list)
        for block in body["content"]:
            if block["type"] == "text":
                outcome.text += block["text"]
            elif block["type"] == "tool_use":
                assert isinstance(block["input"], dict)
                outcome.calls.append((block["name"], json.dumps(block["input"])))
    return outcome


def _error_message(protocol: str, body: Any) -> str:
    if protocol == "openai":
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param",
                                                                 "code"}, body
    else:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    # The error boundary's last-resort answers mean an exception nothing handled: a bug.
    assert "failed in its plugin code" not in message, message
    assert "failed internally" not in message, message
    return message


def _sse_events(text: str) -> list[tuple[str, str]]:
    assert text.endswith("\n\n"), f"stream cut mid-event: {text[-200:]!r}"
    events: list[tuple[str, str]] = []
    for block in text.split("\n\n")[:-1]:
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            if key == "event":
                name = value.strip()
            elif key == "data":
                data.append(value.removeprefix(" "))
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        if data:
            events.append((name, "\n".join(data)))
    return events


def _check_stream(protocol: str, text: str) -> Outcome:
    events = _sse_events(text)
    outcome = Outcome(200, True, events)
    assert events, "a stream without a single event"
    if protocol == "openai":
        assert events[-1][1] == "[DONE]", "the stream must end with [DONE]"
        chunks = [strict_json(data) for _, data in events[:-1]]
        assert "[DONE]" not in [data for _, data in events[:-1]]
        calls: dict[int, list[str]] = {}
        finished = False
        for chunk in chunks:
            if "error" in chunk:
                assert chunk is chunks[-1], "nothing may follow an in-stream error"
                outcome.error = _error_message(protocol, chunk)
                continue
            assert not finished or chunk["choices"] == [], "only usage may follow the finish"
            for choice in chunk["choices"]:
                delta = choice["delta"]
                outcome.text += delta.get("content") or ""
                for fragment in delta.get("tool_calls") or []:
                    slot = calls.setdefault(fragment["index"], ["", ""])
                    function = fragment.get("function") or {}
                    slot[0] += function.get("name") or ""
                    slot[1] += function.get("arguments") or ""
                finished = finished or choice["finish_reason"] is not None
        assert finished or outcome.error is not None, "no finish chunk and no error"
        outcome.calls = [(name, args) for name, args in (calls[i] for i in sorted(calls))]
        return outcome
    # Anthropic: message_start, blocks, then message_delta + message_stop, or an error event
    payloads = [(name, strict_json(data)) for name, data in events]
    for name, data in payloads:
        assert data["type"] == name, (name, data)
    kinds = [name for name, _ in payloads if name != "ping"]
    assert kinds[0] == "message_start", kinds
    if kinds[-1] == "error":
        assert kinds.count("error") == 1
        outcome.error = _error_message(protocol, payloads[-1][1])
    else:
        assert kinds[-2:] == ["message_delta", "message_stop"], kinds
    assert "message_stop" not in kinds[:-1]
    blocks: dict[int, list[str]] = {}
    for name, data in payloads:
        if name == "content_block_start" and data["content_block"]["type"] == "tool_use":
            blocks[data["index"]] = [data["content_block"]["name"], ""]
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                outcome.text += delta["text"]
            elif delta["type"] == "input_json_delta":
                blocks[data["index"]][1] += delta["partial_json"]
    outcome.calls = [(name, args) for name, args in (blocks[i] for i in sorted(blocks))]
    return outcome


def assert_calls_valid(outcome: Outcome, tools_offered: bool) -> None:
    """No call that fails validation reaches the client: each names an offered tool and its
    arguments are a JSON object that satisfies the tool's schema."""
    for name, arguments in outcome.calls:
        assert tools_offered, f"a call to {name!r} reached the client but no tool was offered"
        assert name == "get_weather", name
        parsed = strict_json(arguments) if arguments.strip() else {}
        jsonschema.validate(parsed, WEATHER_SCHEMA)


def backend_named(wire: str) -> str:
    return f"Backend '{BACKEND_NAMES[wire]}'"
