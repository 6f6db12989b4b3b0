"""Decoding Anthropic answers into forge shapes, and the SSE reader, without HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from forge_anthropic.decode import StreamDecoder, finish_reason_from, turn_from_message
from forge_anthropic.sse import ServerSentEvent, iter_sse

from forge_core.errors import BackendHTTPError, BackendProtocolError


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def read(*lines: str) -> list[ServerSentEvent]:
    return [event async for event in iter_sse(_lines(*lines))]


async def test_sse_reader_fields_comments_and_multiline_data() -> None:
    events = await read(
        ": a comment",
        "event: ping",
        "id: 7",
        'data: {"type":',
        'data: "ping"}',
        "",
        "",  # a stray blank line dispatches nothing
        "data:no-space",
        "",
        "event: message_stop",
        'data: {"type":"message_stop"}',  # no final blank line
    )
    assert events == [
        ServerSentEvent("ping", '{"type":\n"ping"}'),
        ServerSentEvent("message", "no-space"),
        ServerSentEvent("message_stop", '{"type":"message_stop"}'),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
        ("brand_new_reason", "stop"),
    ],
)
def test_finish_reason_mapping(stop_reason: Any, finish: str) -> None:
    assert finish_reason_from(stop_reason) == finish


def test_turn_keeps_thinking_as_reasoning_and_sums_cached_prompt_tokens() -> None:
    turn = turn_from_message(
        {
            "content": [
                {"type": "thinking", "thinking": "step 1", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "The answer "},
                {"type": "text", "text": "is 21.", "citations": []},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
            ],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "output_tokens": 7,
            },
        }
    )
    assert turn.content == "The answer is 21."
    assert turn.reasoning == "step 1"
    assert turn.tool_calls == []
    assert turn.finish_reason == "stop"
    assert turn.usage is not None
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens) == (1110, 7)


def feed_all(decoder: StreamDecoder, *events: dict[str, Any]) -> list[Any]:
    chunks = []
    for event in events:
        chunks += decoder.feed(event["type"], json.dumps(event))
    return chunks


def test_decoder_thinking_deltas_become_reasoning_and_signatures_are_ignored() -> None:
    decoder = StreamDecoder()
    chunks = feed_all(
        decoder,
        {"type": "message_start", "message": {"usage": {"input_tokens": 5}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "s"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "some_future_event", "payload": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}},
        {"type": "message_stop"},
    )
    assert [c.reasoning for c in chunks[:-1]] == ["hmm"]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.prompt_tokens == 5  # from message_start; the delta had no usage
    assert decoder.finished


def test_decoder_numbers_tool_calls_in_order_across_text_blocks() -> None:
    def tool_start(index: int, call_id: str) -> dict[str, Any]:
        block = {"type": "tool_use", "id": call_id, "name": "f", "input": {}}
        return {"type": "content_block_start", "index": index, "content_block": block}

    chunks = feed_all(
        StreamDecoder(),
        {"type": "message_start", "message": {}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_stop", "index": 0},
        tool_start(1, "toolu_a"),
        {"type": "content_block_stop", "index": 1},
        tool_start(2, "toolu_b"),
        {"type": "content_block_stop", "index": 2},
    )
    firsts = [f for c in chunks for f in c.tool_calls if f.id]
    assert [(f.index, f.id) for f in firsts] == [(0, "toolu_a"), (1, "toolu_b")]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not an object"),
        ('{"type": "content_block_delta", "delta": {}}', "integer index"),
        ('{"type": "message_start"}', "without a message"),
    ],
)
def test_decoder_protocol_errors(data: str, match: str) -> None:
    with pytest.raises(BackendProtocolError, match=match):
        StreamDecoder().feed("x", data)


def test_decoder_error_event_without_a_known_type_is_a_500() -> None:
    with pytest.raises(BackendHTTPError) as info:
        StreamDecoder().feed("error", '{"type": "error", "error": {"message": "strange"}}')
    assert info.value.backend_status == 500
    assert info.value.detail == "strange"


@pytest.mark.parametrize("stop_reason", ["stop_sequence", "end_turn"])
def test_matched_stop_sequence_is_kept(stop_reason: str) -> None:
    # Anthropic says stop_reason "stop_sequence"; llama-server says "end_turn" next to it.
    turn = turn_from_message(
        {"content": [{"type": "text", "text": "1, 2, "}], "stop_reason": stop_reason,
         "stop_sequence": "3", "usage": {"input_tokens": 5, "output_tokens": 3}}
    )
    assert (turn.finish_reason, turn.stop_sequence) == ("stop", "3")
    decoder = StreamDecoder()
    decoder.feed("message_start", json.dumps({"type": "message_start", "message": {}}))
    [chunk] = decoder.feed("message_delta", json.dumps({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": "3"},
        "usage": {"output_tokens": 3},
    }))
    assert (chunk.finish_reason, chunk.stop_sequence) == ("stop", "3")


def test_no_stop_sequence_when_none_matched() -> None:
    turn = turn_from_message({"content": [], "stop_reason": "end_turn", "stop_sequence": None})
    assert turn.stop_sequence is None
