"""Streaming increments over real sockets: prose is not held, a printed call is, keep-alives
flow while holding, and a client that goes away closes the backend stream.

Ordering, not timing, is asserted: the fake backend stops at a gate that only the client
opens, once it has seen what it must see *before* the backend goes on. If forge held what it
should pass, the gate would time out and the test would fail.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from guardrails_e2e_support import TOOLS, loopback_state
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from forge_core.app import make_app
from forge_core.config import GuardrailSettings
from forge_core.testing import chat, serve_on_loopback

GATE = None
GATE_TIMEOUT = 10.0


class GatedBackend:
    """Streams scripted deltas; at a ``GATE`` it waits until the test opens the gate."""

    def __init__(
        self,
        deltas: list[dict[str, Any] | None],
        finish_reason: str = "stop",
        gate_timeout: float = GATE_TIMEOUT,
    ) -> None:
        self.deltas = deltas
        self.gate_timeout = gate_timeout
        self.finish_reason = finish_reason
        self.gate = threading.Event()
        self.opened_in_time: bool | None = None
        self.finished = threading.Event()
        self.cut_off = False
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        await request.body()
        return StreamingResponse(self.events(request), media_type="text/event-stream")

    async def wait_at_gate(self, request: Request | None) -> None:
        """Wait for the gate; if forge closes the connection first, stop (cut off)."""
        opened = asyncio.ensure_future(asyncio.to_thread(self.gate.wait, self.gate_timeout))
        waits: set[asyncio.Future[Any]] = {opened}
        if request is not None:  # the body is read: the next message can only be a disconnect
            waits.add(asyncio.ensure_future(request.receive()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits - {opened}:
            wait.cancel()
        if not opened.done():
            raise ConnectionResetError("forge closed the stream")
        self.opened_in_time = opened.result()

    async def events(self, request: Request | None = None) -> AsyncIterator[bytes]:
        head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        try:
            for delta in self.deltas:
                if delta is GATE:
                    await self.wait_at_gate(request)
                    continue
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode()
            final = {"index": 0, "delta": {}, "finish_reason": self.finish_reason}
            yield f"data: {json.dumps({**head, 'choices': [final]})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except BaseException:
            self.cut_off = True
            raise
        finally:
            self.finished.set()


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[GatedBackend, str]]:
    backend, guard = request.param
    with serve_on_loopback(backend.app) as backend_url:
        state = loopback_state(backend_url, guard)
        with serve_on_loopback(make_app(state)) as forge_url:
            try:
                yield backend, forge_url
            finally:
                backend.gate.set()


def events_of(lines: list[str]) -> list[Any]:
    """``data:`` payloads decoded, comments as the string ``"keep-alive"``."""
    out: list[Any] = []
    for line in lines:
        if line.startswith(":"):
            out.append("keep-alive")
        elif line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def content_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def calls_of(events: list[Any]) -> list[dict[str, Any]]:
    return [
        piece
        for e in events
        if isinstance(e, dict) and e.get("choices")
        for piece in e["choices"][0]["delta"].get("tool_calls") or []
    ]


async def read_until(lines: AsyncIterator[str], seen: list[str], done: Any) -> None:
    async for line in lines:
        if line:
            seen.append(line)
        if done(events_of(seen)):
            return
    raise AssertionError(f"stream ended before the condition held: {seen}")


def gated(
    name: str,
    deltas: list[dict[str, Any] | None],
    guard: GuardrailSettings | None = None,
    finish_reason: str = "stop",
) -> Any:
    return pytest.param((GatedBackend(deltas, finish_reason), guard), id=name)


PROSE = gated("prose", [{"role": "assistant", "content": ""}, {"content": "Hello "},
               {"content": "world. "}, GATE, {"content": "Bye."}])


@pytest.mark.parametrize("servers", [PROSE], indirect=True)
async def test_prose_reaches_the_client_before_the_backend_finishes(servers: Any) -> None:
    backend, url = servers
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", url + "/v1/chat/completions", json=chat(tools=TOOLS, stream=True)
    ) as r:
        lines = r.aiter_lines()
        await read_until(lines, seen, lambda ev: content_of(ev) == "Hello world. ")
        backend.gate.set()
        async for line in lines:
            seen.append(line)
    assert backend.opened_in_time is True
    assert content_of(events_of(seen)) == "Hello world. Bye."


CALL_AFTER_TEXT = gated("call-after-text", [
    {"role": "assistant", "content": ""},
    {"content": "Let me check.\n"},
    {"content": '<tool_call>\n{"name": "get_weather", '},
    GATE,
    {"content": '"arguments": {"city": "Paris"}}\n</tool_call>'},
])


@pytest.mark.parametrize("servers", [CALL_AFTER_TEXT], indirect=True)
async def test_text_before_a_printed_call_streams_while_the_call_is_held(servers: Any) -> None:
    backend, url = servers
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", url + "/v1/chat/completions", json=chat(tools=TOOLS, stream=True)
    ) as r:
        lines = r.aiter_lines()
        await read_until(lines, seen, lambda ev: content_of(ev) == "Let me check.\n")
        assert calls_of(events_of(seen)) == []
        backend.gate.set()
        async for line in lines:
            seen.append(line)
    events = events_of(seen)
    assert backend.opened_in_time is True
    assert content_of(events) == "Let me check.\n"  # the markup itself never went out
    calls = calls_of(events)
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}


HELD_CALL = gated(
    "held-call",
    [
        {"role": "assistant", "content": None},
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": '}}]},
        GATE,
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ],
    GuardrailSettings(keepalive_interval=0.05),
    finish_reason="tool_calls",
)


@pytest.mark.parametrize("servers", [HELD_CALL], indirect=True)
async def test_keep_alives_flow_while_a_call_is_held(servers: Any) -> None:
    backend, url = servers
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", url + "/v1/chat/completions", json=chat(tools=TOOLS, stream=True)
    ) as r:
        lines = r.aiter_lines()
        await read_until(lines, seen, lambda ev: ev.count("keep-alive") >= 2)
        assert calls_of(events_of(seen)) == []  # the incomplete call is still held
        backend.gate.set()
        async for line in lines:
            seen.append(line)
    events = events_of(seen)
    assert backend.opened_in_time is True
    assert seen.count(": keep-alive") >= 2
    calls = calls_of(events)
    assert calls[0]["id"] == "c1"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    finishes = [e["choices"][0]["finish_reason"] for e in events
                if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]


REQUIRED_SLOW = gated(
    "required",
    [{"role": "assistant", "content": ""}, GATE, {"content": "prose only"}],
    GuardrailSettings(keepalive_interval=0.05, max_retries=0),
)


@pytest.mark.parametrize("servers", [REQUIRED_SLOW], indirect=True)
async def test_keep_alives_flow_while_a_required_answer_is_judged(servers: Any) -> None:
    backend, url = servers
    seen: list[str] = []
    body = chat(tools=TOOLS, tool_choice="required", stream=True)
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", url + "/v1/chat/completions", json=body
    ) as r:
        lines = r.aiter_lines()
        await read_until(lines, seen, lambda ev: "keep-alive" in ev)
        backend.gate.set()
        async for line in lines:
            seen.append(line)
    assert backend.opened_in_time is True
    assert content_of(events_of(seen)) == "prose only"  # retries exhausted: plain text


def wait_for(event: threading.Event) -> bool:
    return event.wait(GATE_TIMEOUT)


DISCONNECT_PROSE = gated("prose", [{"role": "assistant", "content": ""}, {"content": "Hi"}, GATE,
                          {"content": " never"}])
DISCONNECT_HOLDING = gated(
    "holding-a-call",
    [{"role": "assistant", "content": None},
     {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{"}}]},
     GATE, {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}],
    GuardrailSettings(keepalive_interval=0.05),
)


@pytest.mark.parametrize("servers", [DISCONNECT_PROSE, DISCONNECT_HOLDING], indirect=True)
async def test_client_disconnect_closes_the_backend_stream(servers: Any) -> None:
    backend, url = servers
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http, http.stream(
        "POST", url + "/v1/chat/completions", json=chat(tools=TOOLS, stream=True)
    ) as r:
        await read_until(
            r.aiter_lines(), seen, lambda ev: content_of(ev) == "Hi" or "keep-alive" in ev
        )
    # The client is gone; forge must close its backend stream while the backend still waits.
    assert await asyncio.to_thread(wait_for, backend.finished)
    assert backend.cut_off is True
    assert backend.opened_in_time is None  # cut off while still waiting at the gate


def test_an_unopened_gate_is_reported() -> None:
    """The harness itself: a gate nobody opens reports False, so the tests above can fail."""
    backend = GatedBackend([{"content": "a"}, GATE, {"content": "b"}], gate_timeout=0.01)

    async def drain() -> list[bytes]:
        return [chunk async for chunk in backend.events()]

    chunks = asyncio.run(drain())
    assert backend.opened_in_time is False and len(chunks) == 4
