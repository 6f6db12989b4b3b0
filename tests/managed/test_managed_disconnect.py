"""A client that disconnects cancels its backend request and frees its slot at once, streamed
or not. Both forge and a slow scripted backend run on loopback, so the backend sees a real
closed connection, and forge runs with one slot and no waiting line: a slot that was not freed
would turn the next request into a 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from forge_core.app import AppState, make_app
from forge_core.backend import BackendSettings
from forge_core.config import ServeConfig
from forge_core.engine import Engine
from forge_core.limiter import Limiter
from forge_core.openai_client import OpenAIWireClient
from forge_core.plugins import PluginHost
from forge_core.testing import (
    WEATHER_TOOL,
    Reply,
    ScriptedBackend,
    chat,
    fake_spec,
    reply_text,
    reply_tool_call,
    serve_on_loopback,
)


@contextlib.contextmanager
def forge_over_loopback(backend: ScriptedBackend) -> Iterator[tuple[str, AppState]]:
    """The backend and forge (one slot, no queue), each on its own loopback port."""
    with serve_on_loopback(backend.app) as backend_url:
        spec = fake_spec()
        settings = BackendSettings(backend_url=backend_url, model=None, timeout=60.0)
        client = OpenAIWireClient(settings, name=spec.name, base_url=backend_url)
        config = ServeConfig(backend=settings, plugin=spec.name, max_concurrency=1,
                             max_queue=0)
        host = PluginHost()
        engine = Engine(client, spec, config.guardrails, host.rescue_parsers(),
                        host.transforms())
        state = AppState(config=config, spec=spec, client=client, engine=engine,
                         limiter=Limiter(1, 0))
        with serve_on_loopback(make_app(state)) as forge_url:
            yield forge_url, state


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a state change (a hang guard, not a speed assertion)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def assert_slot_free_and_usable(
    http: httpx.AsyncClient, backend: ScriptedBackend, state: AppState
) -> None:
    await until(lambda: state.limiter.in_use == 0)
    backend.push(reply_text("next one"))
    response = await http.post("/v1/chat/completions", json=chat("again"))
    assert response.status_code == 200, response.text  # not 503: the slot was released
    assert response.json()["choices"][0]["message"]["content"] == "next one"


async def test_disconnect_cancels_a_non_streamed_request() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("too late", delay=60))
    with forge_over_loopback(backend) as (url, state):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat()))
            await until(lambda: backend.in_flight == 1)
            assert state.limiter.in_use == 1
            pending.cancel()  # the client gives up: httpx closes the connection
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            await until(lambda: backend.cancelled == 1)
            assert backend.in_flight == 0
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await assert_slot_free_and_usable(http, backend, state)


async def test_disconnect_mid_stream_cancels_the_backend_stream() -> None:
    backend = ScriptedBackend()
    words = " ".join(f"w{i}" for i in range(50))
    backend.push(reply_text(words, delay=0.3))
    with forge_over_loopback(backend) as (url, state):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            received: list[str] = []
            async with http.stream(
                "POST", "/v1/chat/completions", json=chat(stream=True)
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if '"content":"w' in line:
                        received.append(line)
                        break  # leave mid-stream; closing the response drops the connection
            assert received
            await until(lambda: backend.cancelled == 1)
            assert len(backend.requests) == 1
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await assert_slot_free_and_usable(http, backend, state)


@pytest.mark.parametrize("tools", [False, True])
async def test_disconnect_before_the_first_event_cancels_too(tools: bool) -> None:
    """Nothing has been sent yet (the backend is still processing the prompt, or forge is
    holding a tool call for validation): the disconnect must still be noticed."""
    backend = ScriptedBackend()
    reply: Reply = (
        reply_tool_call("get_weather", {"city": "Paris"}, delay=60)
        if tools else reply_text("slow start", delay=60)
    )
    backend.push(reply)
    body: dict[str, Any] = chat(stream=True)
    if tools:
        body["tools"] = [WEATHER_TOOL]
    with forge_over_loopback(backend) as (url, state):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
            await until(lambda: backend.in_flight == 1)
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            await until(lambda: backend.cancelled == 1)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await assert_slot_free_and_usable(http, backend, state)
