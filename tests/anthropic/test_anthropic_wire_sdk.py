"""What forge emits, read by the real ``anthropic`` SDK (its stream accumulator and models).

The SDK talks to a ``MockTransport`` that answers with the emitter's bytes, so these
tests check the bytes against the parser real clients use, not against our own reading.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anthropic
import anthropic._base_client as sdk_base
import pytest

from forge_core.errors import Overloaded
from forge_core.turns import (
    AssistantTurn,
    Finished,
    KeepAlive,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallReady,
    Usage,
)
from forge_core.wire.anthropic import AnthropicStreamEmitter, to_anthropic_message

# Recent SDKs ship their own fork of httpx (``httpx2``) and refuse plain httpx objects; older
# ones use httpx. Build the mock transport with whichever the installed SDK uses.
SDK_HTTP: Any = getattr(sdk_base, "httpx2", None) or sdk_base.httpx


def sdk_answering(status: int, content: bytes, content_type: str) -> anthropic.Anthropic:
    def handler(request: Any) -> Any:
        assert request.url.path == "/v1/messages"
        return SDK_HTTP.Response(status, content=content, headers={"content-type": content_type})

    return anthropic.Anthropic(
        api_key="test-key",
        base_url="http://forge.test",
        max_retries=0,
        http_client=SDK_HTTP.Client(transport=SDK_HTTP.MockTransport(handler)),
    )


def emitted(events: Sequence[StreamEvent], **kwargs: object) -> bytes:
    emitter = AnthropicStreamEmitter("qwen3", **kwargs)  # type: ignore[arg-type]
    return emitter.start() + b"".join(emitter.feed(event) for event in events)


def final_message(raw: bytes, **request: object) -> anthropic.types.Message:
    client = sdk_answering(200, raw, "text/event-stream")
    with client.messages.stream(
        model="qwen3",
        max_tokens=100,
        messages=[{"role": "user", "content": "weather?"}],
        **request,  # type: ignore[arg-type]
    ) as stream:
        return stream.get_final_message()


def test_sdk_assembles_text_and_two_tool_calls() -> None:
    raw = emitted(
        [
            TextDelta("Let me "),
            TextDelta("check."),
            KeepAlive(),
            ToolCallReady(0, ToolCall("call_1", "get_weather", '{"location": "Paris, FR"}')),
            KeepAlive(),
            ToolCallReady(1, ToolCall("call_2", "get_time", '{"tz": "CET", "n": [1, 2]}')),
            Finished("tool_calls", Usage(321, 45)),
        ],
        input_tokens=300,
    )
    message = final_message(raw)
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Let me check."
    weather, time = message.content[1], message.content[2]
    assert (weather.name, weather.input) == ("get_weather", {"location": "Paris, FR"})
    assert (time.name, time.input) == ("get_time", {"tz": "CET", "n": [1, 2]})
    assert weather.id.startswith("toolu_") and weather.id != time.id
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (321, 45)


def test_sdk_assembles_text_only_and_keeps_the_estimate_without_backend_usage() -> None:
    message = final_message(
        emitted([TextDelta("Hello"), TextDelta(", world"), Finished("stop", None)], input_tokens=42)
    )
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello, world"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 42
    assert message.usage.output_tokens >= 1


def test_sdk_reads_thinking_then_text() -> None:
    raw = emitted(
        [ReasoningDelta("gcd by Euclid"), TextDelta("21"), Finished("stop", Usage(9, 9))],
        thinking=True,
    )
    message = final_message(raw, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "gcd by Euclid"
    assert message.content[1].text == "21"


def test_sdk_raises_on_an_in_stream_error() -> None:
    emitter = AnthropicStreamEmitter("qwen3")
    raw = emitter.start() + emitter.feed(TextDelta("par")) + emitter.error(Overloaded("busy"))
    with pytest.raises(anthropic.APIStatusError) as info:
        final_message(raw)
    assert "busy" in str(info.value)


def test_sdk_parses_the_non_streamed_body() -> None:
    turn = AssistantTurn(
        content="Checking.",
        tool_calls=[ToolCall("call_9", "get_weather", '{"location":"Oslo"}')],
        finish_reason="tool_calls",
        usage=Usage(100, 12),
    )
    body = json.dumps(to_anthropic_message(turn, "qwen3")).encode()
    client = sdk_answering(200, body, "application/json")
    message = client.messages.create(
        model="qwen3", max_tokens=100, messages=[{"role": "user", "content": "weather?"}]
    )
    assert message.content[1].type == "tool_use"
    assert message.content[1].input == {"location": "Oslo"}
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 12
