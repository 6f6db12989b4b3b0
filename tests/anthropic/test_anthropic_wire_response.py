"""The non-streamed Anthropic response body, stop reasons and the error shape."""

from __future__ import annotations

import pytest

from forge_core.errors import (
    BackendProtocolError,
    BackendTimeout,
    ForgeError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
)
from forge_core.turns import AssistantTurn, ToolCall, Usage
from forge_core.wire.anthropic import (
    anthropic_error_body,
    anthropic_stop_reason,
    anthropic_tool_id,
    to_anthropic_message,
)


def test_text_answer_shape() -> None:
    turn = AssistantTurn(content="Hello!", finish_reason="stop", usage=Usage(12, 3))
    body = to_anthropic_message(turn, "qwen3", "msg_fixed")
    assert body == {
        "id": "msg_fixed",
        "type": "message",
        "role": "assistant",
        "model": "qwen3",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 3,
            # The backend reported no cache figures: null, not a made-up 0.
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        },
    }


def test_cached_prompt_tokens_are_reported_apart_from_input_tokens() -> None:
    # Anthropic counts cache reads apart: input_tokens is the part the backend processed.
    turn = AssistantTurn(content="Hi", usage=Usage(1200, 3, cached_tokens=1100))
    usage = to_anthropic_message(turn, "qwen3", "msg_fixed")["usage"]
    assert usage["input_tokens"] == 100 and usage["cache_read_input_tokens"] == 1100
    assert usage["output_tokens"] == 3


def test_without_any_usage_output_tokens_are_estimated_not_zero() -> None:
    turn = AssistantTurn(content="x" * 40)
    usage = to_anthropic_message(turn, "qwen3", "msg_fixed", input_tokens=7)["usage"]
    assert usage["input_tokens"] == 7 and usage["output_tokens"] == 10
    assert usage["cache_read_input_tokens"] is None


def test_fresh_message_id_when_none_given() -> None:
    a = to_anthropic_message(AssistantTurn(content="x"), "m")
    b = to_anthropic_message(AssistantTurn(content="x"), "m")
    assert a["id"].startswith("msg_") and b["id"].startswith("msg_")
    assert a["id"] != b["id"]


def test_text_and_tool_calls() -> None:
    turn = AssistantTurn(
        content="Checking.",
        tool_calls=[
            ToolCall("call_abc", "get_weather", '{"location": "Paris"}'),
            ToolCall("toolu_keep", "noop", ""),
        ],
        finish_reason="tool_calls",
        usage=Usage(40, 20),
    )
    body = to_anthropic_message(turn, "m")
    text, first, second = body["content"]
    assert text == {"type": "text", "text": "Checking."}
    assert first["type"] == "tool_use"
    assert first["id"].startswith("toolu_") and first["id"] != "call_abc"
    assert (first["name"], first["input"]) == ("get_weather", {"location": "Paris"})
    assert second == {"type": "tool_use", "id": "toolu_keep", "name": "noop", "input": {}}
    assert body["stop_reason"] == "tool_use"


def test_tool_only_answer_has_no_text_block() -> None:
    turn = AssistantTurn(tool_calls=[ToolCall("c", "f", "{}")], finish_reason="tool_calls")
    body = to_anthropic_message(turn, "m")
    assert [b["type"] for b in body["content"]] == ["tool_use"]


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("something_new", "end_turn"),
    ],
)
def test_each_stop_reason(finish_reason: str, expected: str) -> None:
    turn = AssistantTurn(content="x", finish_reason=finish_reason)
    body = to_anthropic_message(turn, "m")
    assert body["stop_reason"] == expected
    assert body["stop_sequence"] is None


def test_stop_sequence_when_the_backend_matched_one() -> None:
    turn = AssistantTurn(content="1, 2, 3", finish_reason="stop")
    body = to_anthropic_message(turn, "m", matched_stop="4")
    assert body["stop_reason"] == "stop_sequence"
    assert body["stop_sequence"] == "4"


def test_calls_mean_tool_use_even_when_the_backend_said_stop() -> None:
    assert anthropic_stop_reason("stop", has_tool_calls=True) == "tool_use"
    assert anthropic_stop_reason(None) == "end_turn"


def test_reasoning_only_when_thinking_was_enabled() -> None:
    turn = AssistantTurn(content="21", reasoning="1071 = 2*462 + 147 ...")
    hidden = to_anthropic_message(turn, "m")
    assert [b["type"] for b in hidden["content"]] == ["text"]
    assert "1071" not in str(hidden)
    shown = to_anthropic_message(turn, "m", thinking=True)
    assert shown["content"][0] == {
        "type": "thinking",
        "thinking": "1071 = 2*462 + 147 ...",
        "signature": "",
    }
    assert shown["content"][1] == {"type": "text", "text": "21"}


def test_missing_usage_reports_the_estimate() -> None:
    body = to_anthropic_message(AssistantTurn(content="x"), "m", input_tokens=77)
    assert body["usage"]["input_tokens"] == 77
    assert body["usage"]["output_tokens"] == 1  # estimated from the text, not a fake 0


def test_empty_answer_has_empty_content() -> None:
    body = to_anthropic_message(AssistantTurn(content="", finish_reason="length"), "m")
    assert body["content"] == []
    assert body["stop_reason"] == "max_tokens"


def test_arguments_that_are_not_an_object_raise() -> None:
    turn = AssistantTurn(tool_calls=[ToolCall("c", "f", "[1, 2]")], finish_reason="tool_calls")
    with pytest.raises(BackendProtocolError, match="'f'"):
        to_anthropic_message(turn, "m")


def test_tool_id_mapping() -> None:
    assert anthropic_tool_id("toolu_01A09q90qw90lq917835lq9") == "toolu_01A09q90qw90lq917835lq9"
    mapped = anthropic_tool_id("call_1")
    assert mapped.startswith("toolu_") and len(mapped) > len("toolu_")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (InvalidRequest("max_tokens: Field required"), "invalid_request_error"),
        (ModelNotFound("x", ["qwen3"]), "not_found_error"),
        (Overloaded("queue full"), "overloaded_error"),
        (BackendTimeout("vllm", "did not answer"), "timeout_error"),
        (ForgeError("boom"), "api_error"),
    ],
)
def test_error_body_shape(exc: ForgeError, kind: str) -> None:
    body = anthropic_error_body(exc)
    assert body == {"type": "error", "error": {"type": kind, "message": exc.message}}
    assert body["error"]["message"]
