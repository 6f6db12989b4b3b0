"""The Anthropic stream emitter: exact event sequences, framing and its state machine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forge_core.errors import BackendProtocolError, BackendTimeout, Overloaded
from forge_core.turns import (
    Finished,
    KeepAlive,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallReady,
    Usage,
)
from forge_core.wire.anthropic import AnthropicStreamEmitter, StreamOrderError, error_event

PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split emitted bytes into (event name, data) pairs, asserting the exact framing."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for frame in text[:-2].split("\n\n"):
        name_line, data_line = frame.split("\n")  # exactly two lines per event
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert data["type"] == name  # the event name always matches the data's type
        events.append((name, data))
    return events


def run(events: Sequence[StreamEvent], **kwargs: Any) -> bytes:
    emitter = AnthropicStreamEmitter("qwen3", message_id="msg_test", **kwargs)
    out = emitter.start()
    for event in events:
        out += emitter.feed(event)
    return out


def shape(raw: bytes) -> list[tuple[Any, ...]]:
    """A compact view of a stream: name plus the fields that identify the step."""
    steps: list[tuple[Any, ...]] = []
    for name, data in parse_sse(raw):
        if name == "content_block_start":
            steps.append((name, data["index"], data["content_block"]["type"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            value = delta.get("text", delta.get("thinking", delta.get("partial_json")))
            steps.append((name, data["index"], delta["type"], value))
        elif name == "content_block_stop":
            steps.append((name, data["index"]))
        elif name == "message_delta":
            steps.append((name, data["delta"]["stop_reason"]))
        else:
            steps.append((name,))
    return steps


def check_valid(raw: bytes) -> None:
    """Anthropic's ordering rules, as a client's parser enforces them."""
    events = parse_sse(raw)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    next_index = 0
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None, "a block started while another is open"
            assert data["index"] == next_index, "block indexes must be consecutive"
            open_index, next_index = data["index"], next_index + 1
        elif name == "content_block_delta":
            assert data["index"] == open_index, "delta for a block that is not open"
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None, "message_delta with a block still open"


CALL_A = ToolCall("call_a", "get_weather", '{"location": "Paris"}')
CALL_B = ToolCall("toolu_b", "get_time", '{"tz":"Europe/Paris"}')


def test_text_only_exact_bytes() -> None:
    raw = run([TextDelta("Hel"), TextDelta("lo"), Finished("stop", Usage(10, 2))], input_tokens=9)
    assert raw == (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"msg_test","type":"message",'
        b'"role":"assistant","model":"qwen3","content":[],"stop_reason":null,'
        b'"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1,'
        b'"cache_creation_input_tokens":null,"cache_read_input_tokens":null}}}\n\n'
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
        b"\n\n"
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}'
        b"\n\n"
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}'
        b"\n\n"
        b"event: content_block_stop\n"
        b'data: {"type":"content_block_stop","index":0}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        b'"usage":{"input_tokens":10,"output_tokens":2}}\n\n'
        b"event: message_stop\n"
        b'data: {"type":"message_stop"}\n\n'
    )


def test_tool_only_sends_the_whole_arguments_in_one_delta() -> None:
    raw = run([ToolCallReady(0, CALL_A), Finished("tool_calls", Usage(5, 7))])
    assert shape(raw) == [
        ("message_start",),
        ("content_block_start", 0, "tool_use"),
        ("content_block_delta", 0, "input_json_delta", '{"location": "Paris"}'),
        ("content_block_stop", 0),
        ("message_delta", "tool_use"),
        ("message_stop",),
    ]
    start = parse_sse(raw)[1][1]["content_block"]
    assert start["id"].startswith("toolu_")
    assert (start["name"], start["input"]) == ("get_weather", {})


def test_text_then_two_tools() -> None:
    raw = run(
        [
            TextDelta("Let me check."),
            ToolCallReady(0, CALL_A),
            ToolCallReady(1, CALL_B),
            Finished("tool_calls", Usage(5, 30)),
        ]
    )
    assert shape(raw) == [
        ("message_start",),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Let me check."),
        ("content_block_stop", 0),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta", '{"location": "Paris"}'),
        ("content_block_stop", 1),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta", '{"tz":"Europe/Paris"}'),
        ("content_block_stop", 2),
        ("message_delta", "tool_use"),
        ("message_stop",),
    ]
    second = parse_sse(raw)[7][1]["content_block"]
    assert second["id"] == "toolu_b"  # already Anthropic-shaped ids are kept
    check_valid(raw)


def test_pings_while_a_call_is_held() -> None:
    emitter = AnthropicStreamEmitter("m")
    emitter.start()
    first = emitter.feed(TextDelta("Checking"))
    assert emitter.feed(KeepAlive()) == PING
    assert emitter.feed(KeepAlive()) == PING
    rest = emitter.feed(ToolCallReady(0, CALL_A)) + emitter.feed(Finished("tool_calls", None))
    assert shape(first + PING + PING + rest) == [
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Checking"),
        ("ping",),
        ("ping",),
        ("content_block_stop", 0),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta", '{"location": "Paris"}'),
        ("content_block_stop", 1),
        ("message_delta", "tool_use"),
        ("message_stop",),
    ]


def test_ping_before_any_block_and_exact_ping_bytes() -> None:
    raw = run([KeepAlive(), TextDelta("x"), Finished("stop", None)])
    assert raw.split(b"\n\n")[1] + b"\n\n" == PING
    check_valid(raw)


def test_reasoning_is_dropped_unless_thinking_is_enabled() -> None:
    events = [ReasoningDelta("secret plan"), TextDelta("Answer"), Finished("stop", None)]
    hidden = run(events)
    assert b"secret" not in hidden
    assert [s[0] for s in shape(hidden)].count("content_block_start") == 1
    shown = run(events, thinking=True)
    assert shape(shown)[1:5] == [
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta", "secret plan"),
        ("content_block_stop", 0),
        ("content_block_start", 1, "text"),
    ]
    check_valid(shown)


def test_interleaved_kinds_open_new_blocks() -> None:
    raw = run(
        [TextDelta("a"), ReasoningDelta("r"), TextDelta("b"), Finished("stop", None)],
        thinking=True,
    )
    starts = [s for s in shape(raw) if s[0] == "content_block_start"]
    assert starts == [
        ("content_block_start", 0, "text"),
        ("content_block_start", 1, "thinking"),
        ("content_block_start", 2, "text"),
    ]
    check_valid(raw)


def test_empty_text_opens_no_block() -> None:
    raw = run([TextDelta(""), Finished("stop", None)])
    assert shape(raw) == [("message_start",), ("message_delta", "end_turn"), ("message_stop",)]


def test_finish_reasons_and_stop_sequence() -> None:
    def last_delta(events: list[StreamEvent], **kw: Any) -> dict[str, Any]:
        emitter = AnthropicStreamEmitter("m")
        raw = emitter.start() + b"".join(emitter.feed(e, **kw) for e in events)
        return [d for n, d in parse_sse(raw) if n == "message_delta"][0]["delta"]

    assert last_delta([TextDelta("x"), Finished("length", None)])["stop_reason"] == "max_tokens"
    assert last_delta([Finished("stop", None)], matched_stop="END") == {
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
    }


def test_usage_without_backend_numbers_is_estimated() -> None:
    raw = run([TextDelta("x" * 40), Finished("stop", None)], input_tokens=123)
    events = dict((n, d) for n, d in parse_sse(raw))
    assert events["message_start"]["message"]["usage"]["input_tokens"] == 123
    # No input count from the backend: leave the message_start estimate standing.
    assert events["message_delta"]["usage"] == {"output_tokens": 10}


# --- the state machine ---------------------------------------------------------------------------


def test_feeding_before_start_starts_exactly_once() -> None:
    emitter = AnthropicStreamEmitter("m")
    raw = emitter.feed(TextDelta("hi")) + emitter.feed(Finished("stop", None))
    assert [n for n, _ in parse_sse(raw)].count("message_start") == 1
    check_valid(raw)
    assert emitter.done


def test_start_twice_is_refused() -> None:
    emitter = AnthropicStreamEmitter("m")
    emitter.start()
    with pytest.raises(StreamOrderError):
        emitter.start()


@pytest.mark.parametrize("event", [TextDelta("late"), KeepAlive(), Finished("stop", None)])
def test_nothing_after_the_end(event: StreamEvent) -> None:
    emitter = AnthropicStreamEmitter("m")
    emitter.feed(Finished("stop", None))
    with pytest.raises(StreamOrderError):
        emitter.feed(event)
    with pytest.raises(StreamOrderError):
        emitter.error(Overloaded("x"))


def test_nothing_after_an_error() -> None:
    emitter = AnthropicStreamEmitter("m")
    emitter.feed(TextDelta("partial"))
    raw = emitter.error(Overloaded("queue full"))
    assert raw == (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"queue full"}}\n\n'
    )
    with pytest.raises(StreamOrderError):
        emitter.feed(Finished("stop", None))


def test_broken_arguments_raise_before_anything_is_written() -> None:
    emitter = AnthropicStreamEmitter("m")
    emitter.start()
    emitter.feed(TextDelta("a"))
    with pytest.raises(BackendProtocolError):
        emitter.feed(ToolCallReady(0, ToolCall("c", "f", "not json")))
    # The emitter is still consistent: the open text block closes normally.
    rest = emitter.feed(Finished("stop", None))
    assert shape(rest)[0] == ("content_block_stop", 0)


def test_error_event_module_function() -> None:
    events = parse_sse(error_event(BackendTimeout("vllm", "did not answer within 300s")))
    assert events == [
        (
            "error",
            {
                "type": "error",
                "error": {
                    "type": "timeout_error",
                    "message": "Backend 'vllm' did not answer within 300s",
                },
            },
        )
    ]


# Any order of events the pipeline may produce yields a stream a strict client accepts.
_event = st.one_of(
    st.text(max_size=5).map(TextDelta),
    st.text(max_size=5).map(ReasoningDelta),
    st.just(KeepAlive()),
    st.sampled_from([CALL_A, CALL_B]).map(lambda call: ToolCallReady(0, call)),
)


@given(st.lists(_event, max_size=12), st.booleans())
def test_any_event_order_gives_a_valid_stream(events: list[StreamEvent], thinking: bool) -> None:
    raw = run([*events, Finished("stop", None)], thinking=thinking)
    check_valid(raw)
