"""A fake Ollama that replays recorded wire fixtures byte for byte.

The fixtures live in ``tests/fixtures/ollama`` at the repository root; their README names the
source of each. The fake behaves like Ollama where the plugin depends on it: model names resolve
with an implicit ``:latest``; an unknown model gets Ollama's 404 body; tools sent to a model whose
``/api/show`` capabilities lack ``tools`` get Ollama's 400; ``{"messages": [], "keep_alive": 0}``
is an unload; unknown routes get gin's plain-text ``404 page not found``. Chat answers are
scripted per test. Streamed bodies are cut at odd byte boundaries (``chunk_sizes``), including
inside multi-byte UTF-8 characters.

Two ways to serve it: :meth:`FakeOllama.transport` (an ``httpx.MockTransport``, no sockets) and
:func:`serve_on_loopback` (a Starlette app under uvicorn on 127.0.0.1, for end-to-end tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import httpx

from forge_core.turns import AssistantTurn, BackendChunk, ToolCall, Usage

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "ollama"

JSON_TYPE = "application/json; charset=utf-8"  # gin's c.JSON
NDJSON_TYPE = "application/x-ndjson"  # Ollama's streamed responses
TEXT_TYPE = "text/plain"  # gin's default 404 for an unknown route

DEFAULT_MODELS: dict[str, str] = {
    "qwen3:8b": "show_qwen3_8b.json",
    "llama3.2:latest": "show_llama3.2.json",
    "gemma:2b": "show_gemma_2b.json",
}
"""Installed model -> its /api/show fixture (the same three names as tags.json)."""


def fixture_bytes(name: str) -> bytes:
    """The exact bytes of one fixture file."""
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    """A JSON fixture, parsed."""
    return json.loads(fixture_bytes(name))


def fixture_lines(name: str) -> list[Any]:
    """An NDJSON fixture, one parsed value per line."""
    return [json.loads(line) for line in fixture_bytes(name).splitlines() if line.strip()]


def go_json(value: Any) -> bytes:
    """Encode like Go's ``json.Marshal``: compact, raw UTF-8, ``<>&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer: status, content type and the exact body bytes."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE

    @classmethod
    def json_fixture(cls, name: str, status: int = 200) -> Reply:
        return cls(status, fixture_bytes(name), JSON_TYPE)

    @classmethod
    def ndjson_fixture(cls, name: str) -> Reply:
        return cls(200, fixture_bytes(name), NDJSON_TYPE)

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls(status, go_json({"error": message}), JSON_TYPE)


@dataclass(frozen=True, slots=True)
class Exchange:
    """A scripted chat answer in both forms; the fake picks by the request's ``stream`` flag."""

    stream: str | None = None
    json: str | None = None


@dataclass(slots=True)
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class FakeOllama:
    """Scriptable Ollama. Script ``/api/chat`` answers with :meth:`script`."""

    installed: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    tags_fixture: str = "tags.json"
    ps_fixture: str = "ps.json"
    chunk_sizes: Sequence[int] = (1, 7, 3, 13, 2, 29, 5)
    refuse_connections: bool = False
    fail_with: type[httpx.TransportError] | None = None
    requests: list[Recorded] = field(default_factory=list)
    closed_streams: int = 0
    _script: deque[Reply | Exchange] = field(default_factory=deque)

    def script(self, *answers: Reply | Exchange) -> None:
        """Queue answers for the next ``/api/chat`` generation requests, in order."""
        self._script.extend(answers)

    @property
    def chat_requests(self) -> list[Any]:
        return [r.body for r in self.requests if r.path == "/api/chat"]

    # --- Ollama's behaviour -----------------------------------------------------------------

    def resolve(self, name: Any) -> str | None:
        if not isinstance(name, str):
            return None
        for candidate in (name, name + ":latest"):
            if candidate in self.installed:
                return candidate
        return None

    def capabilities(self, model: str) -> list[str]:
        return list(fixture_json(self.installed[model]).get("capabilities", []))

    def respond(self, method: str, path: str, body: Any) -> Reply:
        """Ollama's answer to one request (recorded in :attr:`requests`)."""
        self.requests.append(Recorded(method, path, body))
        if (method, path) == ("GET", "/api/tags"):
            return Reply.json_fixture(self.tags_fixture)
        if (method, path) == ("GET", "/api/ps"):
            return Reply.json_fixture(self.ps_fixture)
        if (method, path) == ("POST", "/api/show"):
            model = body.get("model") if isinstance(body, dict) else None
            resolved = self.resolve(model)
            if resolved is None:
                return Reply.error(404, f"model '{model}' not found")
            return Reply.json_fixture(self.installed[resolved])
        if (method, path) == ("POST", "/api/chat"):
            return self._chat(body if isinstance(body, dict) else {})
        return Reply(404, b"404 page not found", TEXT_TYPE)

    def _chat(self, body: dict[str, Any]) -> Reply:
        model = body.get("model")
        resolved = self.resolve(model)
        if resolved is None:
            return Reply.error(404, f'model "{model}" not found, try pulling it first')
        if body.get("tools") and "tools" not in self.capabilities(resolved):
            return Reply.error(400, f"registry.ollama.ai/library/{resolved} does not support tools")
        if body.get("messages") == [] and body.get("keep_alive") == 0:
            return Reply.json_fixture("chat_unload.json")
        if not self._script:
            return Reply.error(500, "fake ollama: no scripted answer left")
        answer = self._script.popleft()
        if isinstance(answer, Reply):
            return answer
        streamed = body.get("stream", True) is not False  # Ollama streams by default
        name = answer.stream if streamed else answer.json
        if name is None:
            return Reply.error(500, "fake ollama: scripted answer lacks this form")
        return Reply.ndjson_fixture(name) if streamed else Reply.json_fixture(name)

    def split(self, body: bytes) -> Iterator[bytes]:
        """The body cut at the configured odd sizes."""
        sizes = cycle(self.chunk_sizes)
        position = 0
        while position < len(body):
            size = next(sizes)
            yield body[position : position + size]
            position += size

    # --- httpx transport --------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` serving this fake without sockets."""
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        if self.refuse_connections:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.fail_with is not None:
            raise self.fail_with("simulated by the fake", request=request)
        content = await request.aread()
        body = json.loads(content) if content else None
        reply = self.respond(request.method, request.url.path, body)
        return httpx.Response(
            reply.status,
            headers={"content-type": reply.content_type},
            stream=_ChunkedStream(self, list(self.split(reply.body))),
        )


class _ChunkedStream(httpx.AsyncByteStream):
    def __init__(self, fake: FakeOllama, chunks: list[bytes]) -> None:
        self._fake = fake
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        self._fake.closed_streams += 1


# --- loopback server ---------------------------------------------------------------------------


def make_app(fake: FakeOllama) -> Any:
    """A Starlette app answering every route through ``fake.respond``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def endpoint(request: Request) -> StreamingResponse:
        content = await request.body()
        reply = fake.respond(request.method, request.url.path, json.loads(content or b"null"))

        async def body() -> AsyncIterator[bytes]:
            for chunk in fake.split(reply.body):
                yield chunk
                await asyncio.sleep(0)  # let each piece go out on its own

        return StreamingResponse(body(), status_code=reply.status, media_type=reply.content_type)

    methods = ["GET", "POST", "DELETE", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)])


@contextlib.asynccontextmanager
async def serve_on_loopback(fake: FakeOllama) -> AsyncIterator[str]:
    """Run the fake under uvicorn on 127.0.0.1 (a free port); yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(fake), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(2000):  # bounded wait for start-up, not a timing assertion
            if server.started or task.done():
                break
            await asyncio.sleep(0.005)
        if not server.started:
            raise RuntimeError("the fake Ollama server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


# --- test helper -------------------------------------------------------------------------------


def assemble(chunks: Sequence[BackendChunk]) -> AssistantTurn:
    """Rebuild the whole turn from canonical chunks (what a pipeline would do)."""
    text = "".join(c.text for c in chunks)
    reasoning = "".join(c.reasoning for c in chunks)
    calls: dict[int, ToolCall] = {}
    for chunk in chunks:
        for fragment in chunk.tool_calls:
            if fragment.index in calls:
                calls[fragment.index].arguments += fragment.arguments
            else:
                calls[fragment.index] = ToolCall(
                    fragment.id or "", fragment.name or "", fragment.arguments
                )
    finish = [c.finish_reason for c in chunks if c.finish_reason]
    usage: Usage | None = next((c.usage for c in reversed(chunks) if c.usage), None)
    return AssistantTurn(
        content=text,
        tool_calls=[calls[i] for i in sorted(calls)],
        finish_reason=finish[-1] if finish else "",
        usage=usage,
        reasoning=reasoning,
    )
