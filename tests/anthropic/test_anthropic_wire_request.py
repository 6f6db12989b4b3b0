"""Anthropic request parsing and translation to the OpenAI body (and back, for the plugin)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from forge_core import tokens
from forge_core.errors import InvalidRequest
from forge_core.wire.anthropic import (
    estimate_tokens,
    openai_tools_from,
    parse_count_tokens_request,
    parse_messages_request,
    to_openai_request,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["location"],
}


def _req(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    body.update(fields)
    return body


def _translate(**fields: Any) -> dict[str, Any]:
    return to_openai_request(parse_messages_request(_req(**fields)))


# --- parsing ---------------------------------------------------------------------------------


def test_parse_keeps_unknown_fields_at_every_level() -> None:
    req = parse_messages_request(
        _req(
            service_tier="auto",
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "x", "citations": None}]}
            ],
        )
    )
    assert req.model_extra == {"service_tier": "auto"}
    block = req.messages[0].content[0]
    assert block.model_extra == {"citations": None}


def test_parse_requires_max_tokens_but_count_tokens_does_not() -> None:
    body = _req()
    del body["max_tokens"]
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(body)
    assert info.value.param == "max_tokens"
    assert "max_tokens" in info.value.message
    assert parse_count_tokens_request(body).model == "claude-test"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_req(messages=[]), "messages"),
        (_req(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
        (_req(tools=[{"name": "t"}]), "tools.0"),
        (_req(tool_choice={"type": "tool"}), "tool_choice"),
        (_req(max_tokens=0), "max_tokens"),
    ],
)
def test_parse_rejects_invalid_fields_naming_them(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(body)
    assert info.value.param == param
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"type": "text"}], "messages.0.content.0.text: Field required"),
        (
            [
                {"type": "text", "text": "a"},
                {"type": "tool_use", "id": "x", "name": "n", "input": 1},
            ],
            "messages.0.content.1.input: Input should be a valid dictionary",
        ),
        (
            [{"type": "image", "source": {"type": "base64", "data": "AA"}}],
            "messages.0.content.0.source.media_type: Field required",
        ),
    ],
)
def test_errors_inside_blocks_name_the_exact_field(content: list[Any], message: str) -> None:
    # Not "content: Input should be a valid string" (the str branch of the union).
    with pytest.raises(InvalidRequest) as info:
        parse_messages_request(_req(messages=[{"role": "user", "content": content}]))
    assert info.value.message == message


def test_parse_rejects_a_non_object_body() -> None:
    with pytest.raises(InvalidRequest):
        parse_messages_request(["not", "an", "object"])


def test_unknown_block_kinds_parse_instead_of_failing() -> None:
    req = parse_messages_request(
        _req(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "text", "data": "d"}},
                        {"type": "search_result", "text": "found it"},
                    ],
                }
            ]
        )
    )
    assert [b.type for b in req.messages[0].content] == ["document", "search_result"]


# --- system, text and images -------------------------------------------------------------------


def test_system_string_becomes_the_first_message() -> None:
    body = _translate(system="Be brief.")
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1] == {"role": "user", "content": "Hi"}


def test_system_blocks_join_and_lose_cache_control() -> None:
    body = _translate(
        system=[
            {"type": "text", "text": "One."},
            {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}},
        ]
    )
    assert body["messages"][0] == {"role": "system", "content": "One.\n\nTwo."}


def test_text_blocks_join_into_one_string() -> None:
    body = _translate(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert body["messages"] == [{"role": "user", "content": "a\n\nb"}]


def test_images_become_image_url_parts_in_order() -> None:
    body = _translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            }
        ]
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
    ]


def test_image_from_a_file_id_is_dropped_not_failed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="forge_core.wire.anthropic"):
        body = _translate(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                    ],
                }
            ]
        )
    assert body["messages"] == [{"role": "user", "content": "see"}]
    assert "file" in caplog.text


# --- tools in the history ------------------------------------------------------------------------


def test_claude_code_fixture_translates_history() -> None:
    raw = json.loads((FIXTURES / "request_claude_code.json").read_text())
    body = to_openai_request(parse_messages_request(raw))
    messages = body["messages"]
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("You are Claude Code")
    assert messages[1] == {
        "role": "user",
        "content": "<system-reminder>\nThis is a reminder.\n</system-reminder>\n\n"
        "What is in README.md?",
    }
    # The thinking block is gone; text and tool_use stay, arguments as compact JSON.
    assert messages[2] == {
        "role": "assistant",
        "content": "I'll read the file.",
        "tool_calls": [
            {
                "id": "toolu_01A09q90qw90lq917835lq9",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"file_path":"/repo/README.md"}'},
            }
        ],
    }
    assert "user wants" not in json.dumps(body)
    # The tool result comes first, then the user's text of the same turn.
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
        "content": "     1\t# forge\n     2\tA proxy.",
    }
    assert messages[4] == {"role": "user", "content": "Summarize it in one line."}
    assert len(messages) == 5
    assert body["user"] == "user_abc_account__session_123"
    assert body["temperature"] == 1
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_assistant_with_only_tool_use_has_null_content() -> None:
    body = _translate(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {"k": "ü"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}},
                ],
            },
        ]
    )
    assistant = body["messages"][1]
    assert assistant["content"] is None
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == ['{"k":"ü"}', "{}"]
    assert [c["id"] for c in assistant["tool_calls"]] == ["toolu_1", "toolu_2"]


def test_multi_block_tool_result_and_error_flag() -> None:
    body = _translate(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}},
                    {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}},
                    {"type": "tool_use", "id": "toolu_3", "name": "c", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [
                            {"type": "text", "text": "line one"},
                            {"type": "text", "text": "line two"},
                        ],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": "file not found",
                        "is_error": True,
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_3",
                        "content": "Error: command timed out",
                        "is_error": True,
                    },
                ],
            },
        ]
    )
    tool_messages = body["messages"][2:]
    assert tool_messages == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "line one\n\nline two"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: file not found"},
        # Already says so: no double prefix.
        {"role": "tool", "tool_call_id": "toolu_3", "content": "Error: command timed out"},
    ]


def test_empty_error_result_still_says_error() -> None:
    body = _translate(
        messages=[
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": True}],
            }
        ]
    )
    assert body["messages"] == [{"role": "tool", "tool_call_id": "t", "content": "Error"}]


def test_image_in_tool_result_moves_to_a_user_message_after_the_tool_messages() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "AA"},
    }
    body = _translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what now?"},
                    {"type": "tool_result", "tool_use_id": "toolu_9", "content": [image]},
                ],
            }
        ]
    )
    tool, user = body["messages"]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "toolu_9"
    assert "image" in tool["content"]
    assert user["role"] == "user"
    assert user["content"] == [
        {"type": "text", "text": "Image returned by tool call toolu_9:"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}},
        {"type": "text", "text": "what now?"},
    ]


# --- tools, tool_choice and sampling -------------------------------------------------------------


def test_tools_become_function_tools_with_the_schema_verbatim() -> None:
    schema = {**WEATHER_SCHEMA, "$defs": {"x": {"type": "integer"}}, "additionalProperties": False}
    body = _translate(
        tools=[
            {"name": "get_weather", "description": "Weather.", "input_schema": schema},
            {"type": "custom", "name": "bare", "input_schema": {"type": "object"}},
        ]
    )
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather.", "parameters": schema},
        },
        {"type": "function", "function": {"name": "bare", "parameters": {"type": "object"}}},
    ]


def test_server_tools_are_dropped_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    req = parse_messages_request(
        _req(
            tools=[
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"name": "get_weather", "input_schema": WEATHER_SCHEMA},
            ]
        )
    )
    with caplog.at_level(logging.INFO, logger="forge_core.wire.anthropic"):
        tools = openai_tools_from(req)
    assert [t["function"]["name"] for t in tools] == ["get_weather"]
    assert "web_search" in caplog.text


def test_only_server_tools_means_no_tools_and_no_tool_choice() -> None:
    body = _translate(
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "any"},
    )
    assert "tools" not in body
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_mapping(choice: dict[str, Any], expected: Any) -> None:
    body = _translate(
        tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}], tool_choice=choice
    )
    assert body["tool_choice"] == expected
    assert "parallel_tool_calls" not in body


def test_disable_parallel_tool_use() -> None:
    body = _translate(
        tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert body["parallel_tool_calls"] is False


def test_sampling_fields_and_stop_sequences_pass() -> None:
    body = _translate(
        stop_sequences=["\n\nHuman:", "END"], temperature=0.2, top_p=0.9, top_k=40, stream=False
    )
    assert body["stop"] == ["\n\nHuman:", "END"]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.2, 0.9, 40)
    assert body["max_tokens"] == 256
    assert body["stream"] is False
    assert "stream_options" not in body
    assert "user" not in body


# --- token estimate ------------------------------------------------------------------------------


def test_the_estimate_measures_calls_and_tools_but_not_image_data() -> None:
    body = to_openai_request(
        parse_count_tokens_request(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "Z" * 999,
                                },
                            },
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "t", "name": "zap", "input": {"q": 1}}
                        ],
                    },
                ],
                "tools": [{"name": "zap", "input_schema": {"type": "object"}}],
            }
        )
    )
    size = tokens.measure(body)
    # "look" + "zap" + '{"q":1}' + the tool's compact JSON; the image counts as an image.
    tool = len(json.dumps(body["tools"][0]["function"], separators=(",", ":")))
    assert size.text_bytes == 4 + 3 + 7 + tool
    assert (size.messages, size.tools, size.images) == (2, 1, 1)


def test_estimate_grows_with_text_tools_and_images() -> None:
    small = estimate_tokens(parse_count_tokens_request(_req()))
    longer = estimate_tokens(parse_count_tokens_request(_req(system="word " * 400)))
    with_tool = estimate_tokens(
        parse_count_tokens_request(_req(tools=[{"name": "t", "input_schema": WEATHER_SCHEMA}]))
    )
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    with_image = estimate_tokens(
        parse_count_tokens_request(_req(messages=[{"role": "user", "content": [image]}]))
    )
    assert 0 < small < 20
    assert 480 <= longer - small <= 520  # 2000 characters of system prompt, about 500 tokens
    assert with_tool > small + 12
    assert with_image >= 1600


def test_estimate_counts_bytes_so_cjk_is_not_undercounted() -> None:
    ascii_est = estimate_tokens(parse_count_tokens_request(_req(system="a" * 400)))
    cjk_est = estimate_tokens(parse_count_tokens_request(_req(system="字" * 400)))
    assert cjk_est >= ascii_est * 2.5


# --- what newer Claude Code versions send ------------------------------------------------------


def test_system_messages_inside_messages() -> None:
    body = _translate(
        system="Top.",
        messages=[
            {"role": "system", "content": "Leading."},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": [{"type": "text", "text": "Later."}]},
            {"role": "assistant", "content": "Hello."},
        ],
    )
    assert body["messages"] == [
        {"role": "system", "content": "Top.\n\nLeading."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Later."},
        {"role": "assistant", "content": "Hello."},
    ]


def test_a_leading_system_message_without_a_system_prompt_becomes_it() -> None:
    messages = [{"role": "system", "content": "S."}, {"role": "user", "content": "Q"}]
    body = _translate(messages=messages)
    assert body["messages"] == [
        {"role": "system", "content": "S."},
        {"role": "user", "content": "Q"},
    ]


def _tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "input_schema": WEATHER_SCHEMA, **extra}


def test_deferred_tools_are_hidden_until_loaded() -> None:
    tools = [_tool("Read"), _tool("Lookup", defer_loading=True), _tool("Other", defer_loading=True)]
    body = _translate(tools=tools)
    assert [t["function"]["name"] for t in body["tools"]] == ["Read"]
    loaded = _translate(
        tools=tools,
        messages=[
            {"role": "user", "content": "find a lookup tool"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_s", "name": "Read", "input": {"location": "x"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_s",
                 "content": [{"type": "tool_reference", "tool_name": "Lookup"}]}
            ]},
        ],
    )
    assert [t["function"]["name"] for t in loaded["tools"]] == ["Read", "Lookup"]
    assert loaded["messages"][-1] == {
        "role": "tool", "tool_call_id": "toolu_s", "content": "Tool loaded: Lookup"
    }


def test_a_deferred_tool_called_earlier_stays_loaded() -> None:
    body = _translate(
        tools=[_tool("Lookup", defer_loading=True)],
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "Lookup", "input": {"location": "x"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
            ]},
        ],
    )
    assert [t["function"]["name"] for t in body["tools"]] == ["Lookup"]
