"""Replay of real vLLM responses (tests/fixtures/vllm, see its README) through MockTransport.

A uniquely named helper module rather than conftest.py, so that ``from vllm_replay import ...``
cannot collide with another plugin's test helpers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from forge_vllm.client import VllmClient
from forge_vllm.plugin import forge_register_backends

from forge_core.backend import BackendSettings, BackendSpec

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "vllm"
SERVED = "smollm2-135m"  # the --served-model-name of the recordings


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded exchange: the raw body and what it answered to."""

    name: str
    status: int
    content_type: str
    body: bytes
    request: dict[str, Any] | None


def recording(name: str) -> Recording:
    """Load ``NAME.body`` and ``NAME.meta.json`` from the fixture folder."""
    meta = json.loads((FIXTURES / f"{name}.meta.json").read_text())
    return Recording(
        name=name,
        status=meta["status"],
        content_type=meta["content_type"],
        body=(FIXTURES / f"{name}.body").read_bytes(),
        request=meta["request"],
    )


class ChoppedStream(httpx.AsyncByteStream):
    """The recorded bytes in small uneven pieces, so SSE events straddle network reads."""

    def __init__(self, data: bytes, size: int = 37) -> None:
        self.data = data
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start : start + self.size]


Route = str | Callable[[dict[str, Any]], str]


@dataclass
class FakeVllm:
    """A MockTransport handler answering each (method, path) with a recording.

    A route is a recording name, or a function of the JSON request body returning one.
    Every request is kept in ``requests`` (path, parsed JSON body) for assertions.
    """

    routes: dict[tuple[str, str], Route]
    requests: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        name = route if isinstance(route, str) else route(body or {})
        rec = recording(name)
        headers = {"content-type": rec.content_type}
        if rec.content_type.startswith("text/event-stream"):
            return httpx.Response(rec.status, headers=headers, stream=ChoppedStream(rec.body))
        return httpx.Response(rec.status, headers=headers, content=rec.body)

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [b for p, b in self.requests if p == "/v1/chat/completions" and b is not None]

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def with_flags(chat: Route) -> dict[tuple[str, str], Route]:
    """Routes of a vLLM started with the tool flags; ``chat`` answers real requests."""

    def answer(body: dict[str, Any]) -> str:
        if body.get("max_tokens") == 1 and body.get("tool_choice") == "auto":
            return "probe_ok"
        return chat if isinstance(chat, str) else chat(body)

    return {
        ("GET", "/v1/models"): "models",
        ("POST", "/v1/chat/completions"): answer,
        ("POST", "/tokenize"): "tokenize_chat",
    }


def external_client(
    fake: FakeVllm, model: str | None = None, **options: Any
) -> VllmClient:
    """A VllmClient in external mode talking to ``fake``."""
    settings = BackendSettings(
        backend_url="http://vllm.test:8000", model=model, timeout=30.0, options=options
    )
    return VllmClient(settings, transport=fake.transport)


def vllm_spec() -> BackendSpec:
    """The spec the plugin registers (as ``forge serve --plugin vllm`` loads it)."""
    specs: list[BackendSpec] = []
    forge_register_backends(specs.append)
    return specs[0]


def weather_tool() -> dict[str, Any]:
    """The tool the recordings were made with, as the recording client sent it."""
    rec = recording("tool_call_required")
    assert rec.request is not None
    return rec.request["tools"][0]
