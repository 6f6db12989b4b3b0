"""Streaming ``/v1/messages`` through forge, read by the real ``anthropic`` SDK.

forge runs on loopback in front of the scripted OpenAI-wire backend; every test asserts the
exact Anthropic event sequence and what the SDK assembles from it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from anthropic_e2e_support import (
    MODEL,
    TIME,
    WEATHER,
    Forge,
    collapse_text,
    frames,
    run_forge,
    sdk_steps,
    steps,
)

from forge_core.config import GuardrailSettings
from forge_core.testing import Reply, reply_text, reply_tool_call, reply_tool_calls

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_text_then_tool_use_is_the_exact_event_sequence(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call("get_weather", {"city": "Paris"}, content="Let me check.", call_id="c1")
    )
    events = forge.sdk().messages.create(
        model=MODEL, max_tokens=100, messages=ASK, tools=[WEATHER], stream=True
    )
    view = collapse_text(sdk_steps(events))
    assert view == [
        ("message_start",),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Let me check."),
        ("content_block_stop", 0),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta", '{"city": "Paris"}'),
        ("content_block_stop", 1),
        ("message_delta", "tool_use"),
        ("message_stop",),
    ]


def test_sdk_assembles_the_final_message_with_usage(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call(
            "get_weather",
            {"city": "Paris", "unit": "c"},
            content="Checking.",
            usage={"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366},
        )
    )
    with forge.sdk().messages.stream(
        model=MODEL, max_tokens=100, messages=ASK, tools=[WEATHER]
    ) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Checking."
    call = message.content[1]
    assert call.name == "get_weather" and call.input == {"city": "Paris", "unit": "c"}
    assert call.id.startswith("toolu_")
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (321, 45)
    assert message.model == MODEL and message.id.startswith("msg_")
    # What forge asked the backend: a streamed OpenAI request with the tool translated.
    sent = forge.last
    assert sent["stream"] is True and sent["max_tokens"] == 100
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


def test_two_parallel_calls_are_two_tool_use_blocks(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_calls([("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"})])
    )
    with forge.sdk().messages.stream(
        model=MODEL, max_tokens=100, messages=ASK, tools=[WEATHER, TIME]
    ) as stream:
        raw_view = [(e.type, getattr(e, "index", None)) for e in stream]
        message = stream.get_final_message()
    starts = [index for kind, index in raw_view if kind == "content_block_start"]
    assert starts == [0, 1]
    assert [(b.name, b.input) for b in message.content] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"tz": "CET"}),
    ]
    assert message.content[0].id != message.content[1].id
    assert message.stop_reason == "tool_use"


def test_plain_text_streams_and_ends_with_end_turn(forge: Forge) -> None:
    forge.backend.push(reply_text("Hello there, friend."))
    events = forge.sdk().messages.create(model=MODEL, max_tokens=50, messages=ASK, stream=True)
    view = sdk_steps(events)
    assert view[0] == ("message_start",)
    assert view[1] == ("content_block_start", 0, "text")
    deltas = [s for s in view if s[0] == "content_block_delta"]
    assert len(deltas) == 3  # the backend's three word chunks are passed on one by one
    assert "".join(d[3] for d in deltas) == "Hello there, friend."
    assert view[2:-3] == deltas  # nothing but text between the block's start and stop
    assert view[-3:] == [
        ("content_block_stop", 0),
        ("message_delta", "end_turn"),
        ("message_stop",),
    ]


def test_text_reaches_the_client_while_the_backend_still_streams() -> None:
    # Each backend chunk waits 0.15 s: when the first text delta is read, the backend
    # is still sending (it has several chunks to go).
    with run_forge() as forge:
        forge.backend.push(reply_text("one two three four five six", delay=0.15))
        with httpx.stream(
            "POST",
            forge.url + "/v1/messages",
            json={"model": MODEL, "max_tokens": 50, "messages": ASK, "stream": True},
            timeout=30,
        ) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: ") and '"text_delta"' in line:
                    break
            assert forge.backend.in_flight == 1
            rest = "\n".join(lines)
        assert forge.backend.in_flight == 0
        assert "message_stop" in rest


def test_ping_is_sent_while_a_tool_call_is_held() -> None:
    # The call's fragments are slow; forge holds the call until it is complete and valid,
    # sending pings meanwhile (keep-alive interval 0.05 s, fragments 0.25 s apart).
    guardrails = GuardrailSettings(keepalive_interval=0.05)
    with run_forge(guardrails=guardrails) as forge:
        forge.backend.push(reply_tool_call("get_weather", {"city": "Paris"}, delay=0.25))
        body = {"model": MODEL, "max_tokens": 100, "messages": ASK, "tools": [WEATHER]}
        response, raw = forge.stream_raw(body)
        view = steps(raw, pings=True)
        assert response.status_code == 200
        first_block = view.index(("content_block_start", 0, "tool_use"))
        assert view[0] == ("message_start",)
        assert ("ping",) in view[1:first_block]
        assert ("ping",) not in view[first_block:]  # nothing is held once the call is out
        assert [s for s in view if s != ("ping",)] == [
            ("message_start",),
            ("content_block_start", 0, "tool_use"),
            ("content_block_delta", 0, "input_json_delta", '{"city": "Paris"}'),
            ("content_block_stop", 0),
            ("message_delta", "tool_use"),
            ("message_stop",),
        ]
        # The SDK skips the pings and still assembles the call.
        forge.backend.push(reply_tool_call("get_weather", {"city": "Rome"}, delay=0.1))
        with forge.sdk().messages.stream(
            model=MODEL, max_tokens=100, messages=ASK, tools=[WEATHER]
        ) as stream:
            message = stream.get_final_message()
        assert message.content[0].input == {"city": "Rome"}


# --- a tool_use block's input is never empty when the backend gave arguments ----------------

HEAD = {"role": "assistant", "content": None}


def _call(index: int | None = 0, **fields: Any) -> dict[str, Any]:
    call: dict[str, Any] = {} if index is None else {"index": index}
    function = {k: v for k, v in fields.items() if k in ("name", "arguments")}
    call.update({k: v for k, v in fields.items() if k in ("id", "type")})
    if function:
        call["function"] = function
    return {"tool_calls": [call]}


ARGUMENT_SHAPES = {
    "all arguments in the last delta": [
        HEAD,
        _call(id="call_1", type="function", name="get_weather", arguments=""),
        _call(arguments='{"city": "Paris", "unit": "c"}'),
    ],
    "name and arguments in one delta": [
        HEAD,
        _call(id="call_1", type="function", name="get_weather",
              arguments='{"city": "Paris", "unit": "c"}'),
    ],
    "many small fragments": [
        HEAD,
        _call(id="call_1", type="function", name="get_weather"),
        *[_call(arguments=piece) for piece in ['{"ci', 'ty": "Pa', 'ris", "un', 'it": "c"}']],
    ],
    "later deltas without an index": [
        HEAD,
        _call(id="call_1", type="function", name="get_weather", arguments='{"city": '),
        _call(index=None, arguments='"Paris", "unit": "c"}'),
    ],
    "arguments as a JSON object (Ollama style)": [
        HEAD,
        _call(id="call_1", type="function", name="get_weather",
              arguments={"city": "Paris", "unit": "c"}),
    ],
    "no id from the backend": [
        HEAD,
        _call(type="function", name="get_weather", arguments='{"city": "Paris", '),
        _call(arguments='"unit": "c"}'),
    ],
}


@pytest.mark.parametrize("chunks", ARGUMENT_SHAPES.values(), ids=ARGUMENT_SHAPES.keys())
def test_tool_input_is_complete_however_the_arguments_arrive(
    forge: Forge, chunks: list[dict[str, Any]]
) -> None:
    forge.backend.push(Reply(stream_chunks=chunks, finish_reason="tool_calls"))
    body = {"model": MODEL, "max_tokens": 100, "messages": ASK, "tools": [WEATHER]}
    _, raw = forge.stream_raw(body)
    tool_deltas = [d for n, d in frames(raw) if n == "content_block_delta"]
    assert len(tool_deltas) == 1
    assert json.loads(tool_deltas[0]["delta"]["partial_json"]) == {"city": "Paris", "unit": "c"}
    start = next(d for n, d in frames(raw) if n == "content_block_start")
    assert start["content_block"]["id"].startswith("toolu_")
    assert start["content_block"]["input"] == {}  # the input arrives in the delta
    # The same through the SDK's accumulator.
    forge.backend.push(Reply(stream_chunks=chunks, finish_reason="tool_calls"))
    with forge.sdk().messages.stream(
        model=MODEL, max_tokens=100, messages=ASK, tools=[WEATHER]
    ) as stream:
        message = stream.get_final_message()
    assert message.content[-1].input == {"city": "Paris", "unit": "c"}


def test_finish_reason_stop_next_to_a_call_is_still_tool_use(forge: Forge) -> None:
    # Some backends say "stop" next to tool calls; the client must still run them.
    forge.backend.push(reply_tool_call("get_weather", {"city": "Paris"}, finish_reason="stop"))
    with forge.sdk().messages.stream(
        model=MODEL, max_tokens=100, messages=ASK, tools=[WEATHER]
    ) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"


def test_max_tokens_cut_is_stop_reason_max_tokens(forge: Forge) -> None:
    forge.backend.push(reply_text("It was a dark and", finish_reason="length"))
    with forge.sdk().messages.stream(model=MODEL, max_tokens=5, messages=ASK) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "It was a dark and"
    assert forge.last["max_tokens"] == 5


# --- thinking ----------------------------------------------------------------------------------

REASONING_CHUNKS: list[dict[str, Any]] = [
    HEAD,
    {"reasoning_content": "The user wants "},
    {"reasoning_content": "a greeting."},
    {"content": "Hi!"},
]


def test_reasoning_becomes_a_thinking_block_when_thinking_is_enabled(forge: Forge) -> None:
    forge.backend.push(Reply(stream_chunks=REASONING_CHUNKS))
    events = forge.sdk().messages.create(
        model=MODEL,
        max_tokens=2048,
        messages=ASK,
        thinking={"type": "enabled", "budget_tokens": 1024},
        stream=True,
    )
    view = sdk_steps(events)
    assert view == [
        ("message_start",),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta", "The user wants "),
        ("content_block_delta", 0, "thinking_delta", "a greeting."),
        ("content_block_stop", 0),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta", "Hi!"),
        ("content_block_stop", 1),
        ("message_delta", "end_turn"),
        ("message_stop",),
    ]


def test_reasoning_never_leaks_into_text_without_thinking(forge: Forge) -> None:
    forge.backend.push(Reply(stream_chunks=REASONING_CHUNKS))
    with forge.sdk().messages.stream(model=MODEL, max_tokens=100, messages=ASK) as stream:
        message = stream.get_final_message()
    assert [(b.type, b.text) for b in message.content] == [("text", "Hi!")]
