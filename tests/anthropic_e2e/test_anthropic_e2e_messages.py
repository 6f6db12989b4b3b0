"""Non-streamed ``/v1/messages`` through forge with the real SDK, and what the backend receives.

Covers the request translation end to end (system, multi-turn tool use with tool_result
blocks, sampling fields, tool_choice), the response mapping (content blocks, stop_reason,
usage, ids), and what Claude Code sends (``?beta=true``, anthropic-* headers, unknown fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from anthropic_e2e_support import (
    MODEL,
    TIME,
    WEATHER,
    Forge,
    ask,
    frames,
    run_forge,
    stopped_on,
)

from forge_core.testing import reply_text, reply_tool_call, reply_tool_calls

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"


def test_tool_use_answer_maps_to_content_blocks(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call(
            "get_weather",
            {"city": "Paris"},
            content="Let me check.",
            usage={"prompt_tokens": 57, "completion_tokens": 21, "total_tokens": 78},
        )
    )
    message = forge.sdk().messages.create(
        model=MODEL, max_tokens=100, messages=ask()["messages"], tools=[WEATHER]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == MODEL
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."
    call = message.content[1]
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    assert call.id.startswith("toolu_")
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (57, 21)
    assert forge.last["stream"] is False


def test_plain_answer_is_one_text_block_with_end_turn(forge: Forge) -> None:
    forge.backend.push(reply_text("Bonjour."))
    message = forge.sdk().messages.create(**ask("Say hello in French."))
    assert [(b.type, b.text) for b in message.content] == [("text", "Bonjour.")]
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("finish_reason", "with_call", "stop_reason"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("stop", True, "tool_use"),  # a call next to "stop" must still be run by the client
    ],
)
def test_stop_reason_mapping(
    forge: Forge, finish_reason: str, with_call: bool, stop_reason: str
) -> None:
    if with_call:
        reply = reply_tool_call("get_weather", {"city": "Oslo"}, finish_reason=finish_reason)
    else:
        reply = reply_text("Some words", finish_reason=finish_reason)
    forge.backend.push(reply)
    kwargs: dict[str, Any] = {"tools": [WEATHER]} if with_call else {}
    message = forge.sdk().messages.create(**ask(), **kwargs)
    assert message.stop_reason == stop_reason


def test_multi_turn_with_tool_results_reaches_the_backend_translated(forge: Forge) -> None:
    forge.backend.push(reply_text("Paris is sunny; the time lookup failed."))
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris, and the time in CET?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_w", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_t", "name": "get_time", "input": {"tz": "CET"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_w",
                    "content": [
                        {"type": "text", "text": "18 C"},
                        {"type": "text", "text": "sunny"},
                    ],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_t",
                    "content": "time service unreachable",
                    "is_error": True,
                },
                {"type": "text", "text": "Summarize."},
            ],
        },
    ]
    message = forge.sdk().messages.create(
        model=MODEL,
        max_tokens=200,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=messages,
        tools=[WEATHER, TIME],
    )
    assert message.content[0].text == "Paris is sunny; the time lookup failed."
    assert forge.last["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris, and the time in CET?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {"id": "toolu_w", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_t", "type": "function",
                 "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_w", "content": "18 C\n\nsunny"},
        {"role": "tool", "tool_call_id": "toolu_t", "content": "Error: time service unreachable"},
        {"role": "user", "content": "Summarize."},
    ]


def test_a_call_id_from_the_backend_round_trips_through_the_next_turn(forge: Forge) -> None:
    forge.backend.push(reply_tool_call("get_weather", {"city": "Rome"}))
    client = forge.sdk()
    first = client.messages.create(**ask(), tools=[WEATHER])
    call = first.content[0]
    forge.backend.push(reply_text("Rome: 25 C."))
    client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            *ask()["messages"],
            {"role": "assistant", "content": [c.model_dump() for c in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "25 C"}
            ]},
        ],
    )
    sent = forge.last["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.id
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "25 C"}


def test_request_fields_are_translated_for_the_backend(forge: Forge) -> None:
    forge.backend.push(reply_text("ok"))
    forge.sdk().messages.create(
        model=MODEL,
        max_tokens=77,
        messages=ask()["messages"],
        stop_sequences=["END", "STOP"],
        # The current SDK no longer takes sampling arguments; the API still accepts them.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 40},
        metadata={"user_id": "user-7"},
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    sent = forge.last
    assert sent["max_tokens"] == 77
    assert sent["stop"] == ["END", "STOP"]
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.2, 0.9, 40)
    assert sent["user"] == "user-7"
    assert sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_time"},
         {"type": "function", "function": {"name": "get_time"}}),
    ],
)
def test_tool_choice_mapping(forge: Forge, choice: dict[str, Any], expected: Any) -> None:
    if choice["type"] == "tool":
        forge.backend.push(reply_tool_call("get_time", {"tz": "UTC"}))
    else:
        forge.backend.push(reply_text("ok"))
    forge.sdk().messages.create(**ask(), tools=[WEATHER, TIME], tool_choice=choice)
    assert forge.last["tool_choice"] == expected


def test_beta_query_and_anthropic_headers_are_tolerated_and_not_forwarded(forge: Forge) -> None:
    forge.backend.push(reply_text("ok"))
    # The beta resource posts to /v1/messages?beta=true with an anthropic-beta header.
    message = forge.sdk().beta.messages.create(
        **ask(), betas=["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    )
    assert message.content[0].text == "ok"
    backend_headers = forge.backend.headers[-1]
    for name in ("anthropic-beta", "anthropic-version", "x-api-key", "authorization"):
        assert name not in backend_headers


def test_the_raw_wire_with_query_string_and_claude_code_headers(forge: Forge) -> None:
    forge.backend.push(reply_text("ok"))
    response = forge.post(
        "/v1/messages?beta=true",
        ask(),
        headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "claude-code-20250219,fine-grained-tool-streaming-2025-05-14",
            "x-api-key": "anything",
            "x-app": "cli",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["content"] == [{"type": "text", "text": "ok"}]


def test_unknown_fields_and_block_kinds_are_tolerated(forge: Forge) -> None:
    forge.backend.push(reply_text("ok"))
    body = ask(
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        output_config={"effort": "high"},
        service_tier="auto",
        thinking={"type": "adaptive"},
        some_future_field={"nested": [1, 2]},
    )
    body["messages"] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Read this.", "citations": None, "future": 1},
                {"type": "document", "source": {"type": "text", "data": "x"}, "text": "Doc."},
                {"type": "search_result", "title": "no text here"},
            ],
        }
    ]
    response = forge.post("/v1/messages", body)
    assert response.status_code == 200, response.text
    assert forge.last["messages"] == [{"role": "user", "content": "Read this.\n\nDoc."}]
    for name in ("context_management", "output_config", "service_tier", "some_future_field"):
        assert name not in forge.last


def test_mid_conversation_system_messages_as_claude_code_sends_them(forge: Forge) -> None:
    # Claude Code 2.1 (beta mid-conversation-system) puts system messages inside `messages`.
    forge.backend.push(reply_text("hi"))
    body = ask()
    body["system"] = "You are terse."
    body["messages"] = [
        {"role": "system", "content": "Available agents: none."},
        {"role": "user", "content": "say hi"},
        {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
    ]
    response = forge.post("/v1/messages?beta=true", body)
    assert response.status_code == 200, response.text
    assert forge.last["messages"] == [
        {"role": "system", "content": "You are terse.\n\nAvailable agents: none."},
        {"role": "user", "content": "say hi"},
        {"role": "system", "content": "Answer in one word."},
    ]


def test_claude_code_request_fixture_is_served(forge: Forge) -> None:
    forge.backend.push(reply_text("Done."))
    body = json.loads((FIXTURES / "request_claude_code.json").read_text())
    body["model"] = MODEL
    assert body["stream"] is True
    response, raw = forge.stream_raw(body)
    assert response.status_code == 200, raw
    texts = [d["delta"]["text"] for n, d in frames(raw) if n == "content_block_delta"]
    assert "".join(texts) == "Done."
    # Server tools cannot run locally and are dropped; client tools keep their schemas.
    sent_tools = {t["function"]["name"]: t["function"]["parameters"] for t in forge.last["tools"]}
    client_tools = {t["name"]: t["input_schema"] for t in body["tools"] if "input_schema" in t}
    assert sent_tools == client_tools


def test_model_names_answer_with_the_requested_name() -> None:
    # With --any-model, Claude Code's own model names are served by the backend's model.
    with run_forge(any_model=True) as forge:
        forge.backend.push(reply_text("ok"))
        message = forge.sdk().messages.create(**{**ask(), "model": "claude-opus-4-8"})
        assert message.model == "claude-opus-4-8"
        assert forge.last["model"] == MODEL


def test_parallel_calls_non_streamed(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_calls([("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"})])
    )
    message = forge.sdk().messages.create(**ask(), tools=[WEATHER, TIME])
    assert [(b.name, b.input) for b in message.content] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {"tz": "CET"}),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_when_the_backend_reports_the_match(forge: Forge, stream: bool) -> None:
    forge.backend.push(stopped_on("1, 2, 3, ", "4", stream=stream))
    body = {**ask("Count to ten."), "stop_sequences": ["4", "five"]}
    client = forge.sdk()
    if stream:
        with client.messages.stream(**body) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**body)
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "4"
    assert message.content[0].text == "1, 2, 3, "
    assert forge.last["stop"] == ["4", "five"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_reported_stop_the_client_never_asked_for_is_end_turn(
    forge: Forge, stream: bool
) -> None:
    # Only the client's own stop sequences count (a template's stop token is not one).
    forge.backend.push(stopped_on("Done.", "<|im_end|>", stream=stream))
    body = {**ask(), "stop_sequences": ["END"]}
    if stream:
        _, raw = forge.stream_raw(body)
        delta = [d for n, d in frames(raw) if n == "message_delta"][0]["delta"]
        assert delta == {"stop_reason": "end_turn", "stop_sequence": None}
    else:
        message = forge.sdk().messages.create(**body)
        assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


def test_without_a_report_a_stop_is_end_turn(forge: Forge) -> None:
    # llama-server (OpenAI wire) does not say which stop matched: end_turn, documented.
    forge.backend.push(reply_text("1, 2, 3, "))
    message = forge.sdk().messages.create(**{**ask(), "stop_sequences": ["4"]})
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


def test_a_recorded_claude_code_2_1_request_is_served(forge: Forge) -> None:
    # Recorded through forge (long texts trimmed): mid-conversation system message with its own
    # output_config, a deferred tool, thinking adaptive with display omitted, 128000 max_tokens.
    recorded = json.loads((FIXTURES / "claude_code_2_1_331_request.json").read_text())
    body = {**recorded["body"], "model": MODEL}
    forge.backend.push(reply_text("hi"))
    with httpx.stream(
        "POST", forge.url + recorded["path"], json=body, headers=recorded["headers"], timeout=30
    ) as response:
        raw = response.read()
    assert response.status_code == 200, raw
    assert [n for n, _ in frames(raw)][-2:] == ["message_delta", "message_stop"]
    sent = forge.last
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
    # The per-request billing header is stripped (strip-billing-header): it would change the
    # prompt's first tokens on every turn and defeat the backend's prefix cache.
    assert "x-anthropic-billing-header" not in json.dumps(sent)
    assert sent["messages"][0]["content"].startswith("You are a Claude agent")
    assert sent["messages"][1]["content"].endswith("say hi")
    deferred = [t["name"] for t in body["tools"] if t.get("defer_loading")]
    assert deferred and not {t["function"]["name"] for t in sent["tools"]} & set(deferred)
    assert len(sent["tools"]) == len(body["tools"]) - len(deferred)
    assert sent["max_tokens"] == body["max_tokens"] == 128000
    for name in ("thinking", "context_management", "output_config", "metadata"):
        assert name not in sent
