"""Serialization of backend calls: defaults per mode, one at a time when on, and a full waiting
line answering 503 with Retry-After instead of hanging (slow scripted backend)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from forge_core import cli
from forge_core.testing import ScriptedBackend, chat, fake_spec, forge_client, reply_text

BASE_OPTS: dict[str, Any] = {
    "backend_capability": "native", "backend_url": "http://x", "model": None,
    "backend_timeout": 300.0, "serialize": None, "api_key_env": "FORGE_TEST_KEY_UNSET",
    "host": "127.0.0.1", "port": 1, "max_body_bytes": 10, "max_retries": 3,
    "no_rescue": False, "inject_respond_tool": False, "keepalive_interval": 5.0,
    "max_queue": 4, "any_model": False,
}


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a state change (a hang guard, not a speed assertion)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("external", "flag", "slots"),
    [(False, None, 1), (True, None, 0), (True, True, 1), (False, False, 0)],
)
def test_serialization_default_and_override(
    external: bool, flag: bool | None, slots: int
) -> None:
    spec = fake_spec("m", managed=True)
    opts = {**BASE_OPTS, "backend_url": "http://x" if external else None, "serialize": flag}
    assert cli.build_config(spec, opts, {}).max_concurrency == slots


async def test_serialized_requests_reach_the_backend_one_at_a_time() -> None:
    backend = ScriptedBackend()
    backend.push(*(reply_text(f"answer {i}", delay=0.2) for i in range(3)))
    async with forge_client(backend, max_concurrency=1, max_queue=8) as http:
        results = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=chat(f"q{i}")) for i in range(3))
        )
    assert [r.status_code for r in results] == [200, 200, 200]
    assert backend.max_in_flight == 1


async def test_without_serialization_requests_overlap() -> None:
    backend = ScriptedBackend()
    backend.push(*(reply_text(f"answer {i}", delay=0.5) for i in range(3)))
    async with forge_client(backend, max_concurrency=0) as http:
        results = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=chat(f"q{i}")) for i in range(3))
        )
    assert [r.status_code for r in results] == [200, 200, 200]
    assert backend.max_in_flight == 3


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_full_waiting_line_answers_503_with_retry_after(path: str) -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("first", delay=1.0), reply_text("second"))
    body: dict[str, Any] = chat("hi")
    if path == "/v1/messages":
        body["max_tokens"] = 16
    async with forge_client(backend, max_concurrency=1, max_queue=1) as http:
        state = http.forge_state  # type: ignore[attr-defined]
        first = asyncio.ensure_future(http.post(path, json=body))
        await until(lambda: backend.in_flight == 1)
        second = asyncio.ensure_future(http.post(path, json=body))
        await until(lambda: state.limiter.waiting == 1)
        third = await http.post(path, json=body)
        assert third.status_code == 503
        assert third.headers["retry-after"] == "1"
        assert "busy" in third.text
        if path == "/v1/messages":
            assert third.json()["error"]["type"] == "overloaded_error"
        else:
            assert third.json()["error"]["message"]
        done: list[httpx.Response] = await asyncio.gather(first, second)
    assert [r.status_code for r in done] == [200, 200]
    assert len(backend.requests) == 2  # the rejected request never reached the backend


async def test_streamed_requests_share_the_same_slots() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("one two three", delay=0.3), reply_text("later"))
    async with forge_client(backend, max_concurrency=1, max_queue=0) as http:
        state = http.forge_state  # type: ignore[attr-defined]
        streaming = asyncio.ensure_future(
            http.post("/v1/chat/completions", json=chat("s", stream=True))
        )
        await until(lambda: backend.in_flight == 1)
        rejected = await http.post("/v1/chat/completions", json=chat("x"))
        assert rejected.status_code == 503
        assert (await streaming).status_code == 200
        assert state.limiter.in_use == 0
        accepted = await http.post("/v1/chat/completions", json=chat("y"))
    assert accepted.status_code == 200
