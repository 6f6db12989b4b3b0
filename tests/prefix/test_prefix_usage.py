"""Cache reporting: what the backend says it took from its prefix cache reaches the client, in
each protocol's own field, streamed or not; a figure the backend did not give is never a 0."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from forge_core.openai_client import parse_chunk, parse_completion, parse_usage
from forge_core.testing import Reply, ScriptedBackend, chat, forge_client, reply_text
from forge_core.turns import Usage

LLAMA_USAGE = {
    "prompt_tokens": 1200, "completion_tokens": 4, "total_tokens": 1204,
    "prompt_tokens_details": {"cached_tokens": 1150},
}


def test_parse_usage_reads_cached_tokens_and_llama_timings() -> None:
    assert parse_usage(LLAMA_USAGE) == Usage(1200, 4, 1150)
    plain = {"prompt_tokens": 10, "completion_tokens": 2}
    assert parse_usage(plain) == Usage(10, 2, None)
    assert parse_usage(plain, {"cache_n": 7, "prompt_n": 3}) == Usage(10, 2, 7)
    assert parse_usage(plain, {"cache_n": 70}) == Usage(10, 2, 10)  # never more than the prompt
    assert parse_usage({**plain, "prompt_tokens_details": {"cached_tokens": None}}) == Usage(10, 2)


def test_completion_and_chunk_take_timings_from_the_envelope() -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": "x"}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 1},
            "timings": {"cache_n": 25, "prompt_n": 5}}
    turn = parse_completion("llamafile", body)
    assert turn.usage == Usage(30, 1, 25)
    chunk = parse_chunk("llamafile", json.dumps({**body, "choices": []}))
    assert chunk is not None and chunk.usage == Usage(30, 1, 25)


def test_retries_add_cached_tokens_and_keep_unknown_as_none() -> None:
    assert Usage(10, 1, 8) + Usage(12, 1, 10) == Usage(22, 2, 18)
    assert Usage(10, 1) + Usage(12, 1) == Usage(22, 2, None)
    assert Usage(10, 1).as_openai() == {"prompt_tokens": 10, "completion_tokens": 1,
                                        "total_tokens": 11}
    assert Usage(10, 1, 4).as_openai()["prompt_tokens_details"] == {"cached_tokens": 4}


def post(path: str, body: dict[str, Any], reply: Reply) -> tuple[int, bytes]:
    async def run() -> tuple[int, bytes]:
        backend = ScriptedBackend().push(reply)
        async with forge_client(backend) as http:
            response = await http.post(path, json=body)
            return response.status_code, await response.aread()

    return asyncio.run(run())


def sse_data(raw: bytes) -> list[dict[str, Any]]:
    lines = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


ANTHROPIC_ASK = {"model": "fake-model", "max_tokens": 50,
                 "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_clients_get_prompt_tokens_details(stream: bool) -> None:
    body = chat(stream=stream, stream_options={"include_usage": True}) if stream else chat()
    status, raw = post("/v1/chat/completions", body, reply_text("hi", usage=LLAMA_USAGE))
    assert status == 200
    usage = sse_data(raw)[-1]["usage"] if stream else json.loads(raw)["usage"]
    assert usage["prompt_tokens"] == 1200
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1150}


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_clients_get_cache_read_input_tokens(stream: bool) -> None:
    status, raw = post("/v1/messages", {**ANTHROPIC_ASK, "stream": stream},
                       reply_text("hi", usage=LLAMA_USAGE))
    assert status == 200
    if stream:
        usage = [e for e in sse_data(raw) if e["type"] == "message_delta"][0]["usage"]
    else:
        usage = json.loads(raw)["usage"]
    assert usage["cache_read_input_tokens"] == 1150
    assert usage["input_tokens"] == 50  # the part the backend had to process


def test_a_stream_without_usage_reports_none_rather_than_zeros() -> None:
    silent = reply_text("hello there", usage=None)  # type: ignore[arg-type]
    body = chat(stream=True, stream_options={"include_usage": True})
    status, raw = post("/v1/chat/completions", body, silent)
    assert status == 200
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in sse_data(raw))
    status, raw = post("/v1/messages", {**ANTHROPIC_ASK, "stream": True}, silent)
    events = sse_data(raw)
    start = events[0]["message"]["usage"]
    delta = [e for e in events if e["type"] == "message_delta"][0]["usage"]
    # Estimates (documented as such), and no cache figure at all.
    assert start["input_tokens"] > 0 and start["cache_read_input_tokens"] is None
    assert delta["output_tokens"] == 3 and "cache_read_input_tokens" not in delta
