"""``--backend-timeout`` is a deadline to the first token (the whole answer when not streamed)
and ``--backend-idle-timeout`` a bound on silence once tokens flow; keep-alive bytes (SSE
comments, Anthropic pings, blank NDJSON lines, whitespace) are not progress.

Each fake backend trickles for a minute; the hang guard (20 s) is far above the 1 s bounds
under test, so these are not speed checks: without the deadline the request would simply hang.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from plugin_states import PLUGINS, TrickleBackend, cli_state, guard, sse_frames

from forge_core.testing import (
    WEATHER_TOOL,
    Reply,
    ScriptedBackend,
    forge_client,
    serve_on_loopback,
)

OPENAI_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}

# What each wire sends while it has nothing to say: none of it is a token.
KEEPALIVE = {
    "openai": b": keep-alive\n\n",
    "llamafile": b": keep-alive\n\n",
    "vllm": b"data: {\"choices\": [{\"index\": 0, \"delta\": {}}]}\n\n",  # empty deltas
    "ollama": b"\n",
    "anthropic": b'event: ping\ndata: {"type": "ping"}\n\n',
}


def first_token(plugin: str) -> bytes:
    """One event carrying the text ``Hello`` in the plugin's wire format."""
    if plugin == "ollama":
        line = {"model": "m", "message": {"role": "assistant", "content": "Hello"}, "done": False}
        return json.dumps(line).encode() + b"\n"
    if plugin == "anthropic":
        start = {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 0}}}
        block = {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}
        delta = {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": "Hello"}}
        return b"".join(
            f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (start, block, delta)
        )
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def post(state: Any, protocol: str, stream: bool) -> httpx.Response:
    async with forge_client(None, state=state) as http:
        path, body = (
            ("/v1/chat/completions", OPENAI_BODY) if protocol == "openai"
            else ("/v1/messages", ANTHROPIC_BODY)
        )
        return await guard(http.post(path, json={**body, "stream": stream}))


def bounded_state(plugin: str, url: str, **kw: Any) -> Any:
    kw.setdefault("backend_timeout", 1.0)
    kw.setdefault("backend_idle_timeout", 1.0)
    return cli_state(plugin, backend_url=url, model="m", **kw)


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_non_streamed_answer_trickling_whitespace_is_504(plugin: str) -> None:
    backend = TrickleBackend(b" ", head=b"{", media_type="application/json")
    with serve_on_loopback(backend.app) as url:
        r = await post(bounded_state(plugin, url), "openai", stream=False)
        assert r.status_code == 504, r.text
        assert "--backend-timeout" in r.json()["error"]["message"]
        assert f"Backend '{plugin}'" in r.json()["error"]["message"]


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("plugin", PLUGINS)
async def test_stream_of_keepalives_only_is_504_before_the_200(plugin: str, protocol: str) -> None:
    backend = TrickleBackend(KEEPALIVE[plugin])
    with serve_on_loopback(backend.app) as url:
        r = await post(bounded_state(plugin, url), protocol, stream=True)
        assert r.status_code == 504, r.text
        assert "--backend-timeout" in r.json()["error"]["message"]


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_silence_after_the_first_token_ends_the_stream_with_an_error(plugin: str) -> None:
    backend = TrickleBackend(KEEPALIVE[plugin], head=first_token(plugin))
    with serve_on_loopback(backend.app) as url:
        # A short grace: the first token opens the stream, the silence comes after the 200.
        r = await post(bounded_state(plugin, url, stream_start_grace=0.5), "openai", stream=True)
    assert r.status_code == 200
    frames = sse_frames(r.content)
    assert "Hello" in r.text
    assert frames[-1] == "data: [DONE]"
    error = json.loads(frames[-2].removeprefix("data: "))["error"]
    assert "--backend-idle-timeout" in error["message"]
    assert f"Backend '{plugin}'" in error["message"]


async def test_silence_mid_stream_is_an_anthropic_timeout_error_event() -> None:
    backend = TrickleBackend(KEEPALIVE["llamafile"], head=first_token("llamafile"))
    with serve_on_loopback(backend.app) as url:
        state = bounded_state("llamafile", url, stream_start_grace=0.5)
        r = await post(state, "anthropic", stream=True)
    assert r.status_code == 200
    last = sse_frames(r.content)[-1]
    assert last.startswith("event: error\n")
    assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "timeout_error"


async def test_the_backend_request_is_closed_when_the_deadline_passes() -> None:
    backend = TrickleBackend(KEEPALIVE["openai"])
    with serve_on_loopback(backend.app) as url:
        r = await post(bounded_state("openai", url), "openai", stream=True)
        assert r.status_code == 504
        for _ in range(100):  # the backend sees its connection closed, not held for a minute
            if backend.closed == backend.requests:
                break
            await asyncio.sleep(0.1)
        assert backend.closed == backend.requests == 1


async def test_steady_tokens_outlast_the_first_token_deadline() -> None:
    """The deadlines bound waiting, not the answer: 8 tokens 0.4 s apart take 3 s > 1 s."""
    backend = ScriptedBackend(models=["m"])
    words = [{"content": f"w{i} "} for i in range(8)]
    backend.push(Reply(message={"role": "assistant"}, stream_chunks=words, delay=0.4))
    with serve_on_loopback(backend.app) as url:
        r = await post(bounded_state("llamafile", url), "openai", stream=True)
    assert r.status_code == 200
    assert "w7" in r.text and '"error"' not in r.text


async def test_keepalives_still_flow_while_a_slow_tool_call_is_held() -> None:
    backend = ScriptedBackend(models=["m"])
    args = json.dumps({"city": "Paris"})
    fragments = [{"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": ""}}]}]
    fragments += [{"tool_calls": [{"index": 0, "function": {"arguments": c}}]} for c in args]
    backend.push(Reply(message={"role": "assistant"}, stream_chunks=fragments, delay=0.3,
                       finish_reason="tool_calls"))
    with serve_on_loopback(backend.app) as url:
        state = bounded_state("llamafile", url, keepalive_interval=0.5, backend_idle_timeout=2.0)
        async with forge_client(None, state=state) as http:
            body = {**OPENAI_BODY, "stream": True, "tools": [WEATHER_TOOL]}
            r = await guard(http.post("/v1/chat/completions", json=body))
    assert r.status_code == 200
    assert ": keep-alive" in r.text and "get_weather" in r.text and '"error"' not in r.text


def test_cli_idle_timeout_option_defaults_and_bounds() -> None:
    from click.testing import CliRunner

    from forge_core.cli import main

    state = cli_state("llamafile", backend_url="http://127.0.0.1:9", model="m")
    assert state.config.backend.timeout == 300.0
    assert state.config.backend.idle_timeout == 60.0
    short = cli_state("llamafile", backend_url="http://127.0.0.1:9", model="m", backend_timeout=5)
    assert short.config.backend.idle_timeout == 5.0  # never longer than the first-token wait
    result = CliRunner().invoke(main, ["serve", "--plugin", "llamafile", "--backend-url",
                                       "http://127.0.0.1:9", "--backend-idle-timeout", "0"])
    assert result.exit_code != 0 and "backend-idle-timeout" in result.output


# --- the deadline on its own ---------------------------------------------------------------------


async def test_a_slow_consumer_never_counts_against_the_backend() -> None:
    from forge_core.deadline import Deadlines

    async def eager() -> Any:
        for i in range(3):
            yield i

    got = []
    async for item in Deadlines(first_token=0.2, idle=0.2).paced("b", eager()):
        got.append(item)
        await asyncio.sleep(0.5)  # the consumer dawdles: 2.5 bounds between chunks
    assert got == [0, 1, 2]


async def test_a_silent_source_ends_in_a_timeout_naming_the_option() -> None:
    from forge_core.deadline import Deadlines
    from forge_core.errors import BackendTimeout

    closed = asyncio.Event()

    async def hangs() -> Any:
        try:
            yield "first"
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.set()

    paced = Deadlines(first_token=5, idle=0.2).paced("b", hangs())
    assert await guard(anext(paced)) == "first"
    with pytest.raises(BackendTimeout, match="--backend-idle-timeout"):
        await guard(anext(paced))
    assert closed.is_set()  # the backend's stream was closed, not left running


async def test_cancelling_the_consumer_stays_a_cancellation() -> None:
    from forge_core.deadline import Deadlines

    async def hangs() -> Any:
        await asyncio.Event().wait()
        yield None

    task = asyncio.ensure_future(anext(Deadlines(first_token=5, idle=5).paced("b", hangs())))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await guard(task)
