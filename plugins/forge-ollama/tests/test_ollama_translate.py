"""Pure translation: OpenAI body -> /api/chat request, /api/chat response -> AssistantTurn.

Request shapes follow Ollama's docs/api.md ("Chat request (With history, with tools)": assistant
``tool_calls`` with object ``arguments``, tool results with ``tool_name``) and
docs/capabilities/tool-calling.mdx; response fixtures are described in
tests/fixtures/ollama/README.md.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_ollama import fixture_json
from forge_ollama.translate import (
    DROPPED_FIELDS,
    RAW_ARGUMENTS_KEY,
    dropped_fields,
    from_ollama_response,
    to_ollama_request,
)

from forge_core.errors import BackendError, BackendProtocolError, InvalidRequest

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def translate(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    options = {"wire_model": "qwen3:8b", "num_ctx": None, "stream": False, **kwargs}
    return to_ollama_request(body, **options)


def history_body() -> dict[str, Any]:
    return {
        "model": "qwen3:8b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Toronto and Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Toronto"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_b", "content": "10:42"},
            {"role": "tool", "tool_call_id": "call_a", "content": "11 degrees celsius"},
        ],
        "tools": [WEATHER_TOOL],
    }


# --- requests --------------------------------------------------------------------------------


def test_history_tool_calls_become_objects_and_results_carry_tool_name() -> None:
    out = translate(history_body())
    assistant = out["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_a",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Toronto"}},
            },
            {"id": "call_b", "function": {"index": 1, "name": "get_time", "arguments": {}}},
        ],
    }
    # Results answer in a different order than the calls: the name comes from the id.
    assert out["messages"][3] == {
        "role": "tool",
        "content": "10:42",
        "tool_name": "get_time",
        "tool_call_id": "call_b",
    }
    assert out["messages"][4]["tool_name"] == "get_weather"
    assert out["model"] == "qwen3:8b"
    assert out["stream"] is False


def test_tools_are_passed_through_unchanged() -> None:
    body = history_body()
    out = translate(body)
    assert out["tools"] == [WEATHER_TOOL]


def test_tool_choice_none_leaves_the_tools_out() -> None:
    body = {**history_body(), "tool_choice": "none"}
    assert "tools" not in translate(body)


def test_malformed_history_arguments_are_kept_verbatim() -> None:
    body = history_body()
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Tor'
    body["messages"][2]["tool_calls"][1]["function"]["arguments"] = "[1, 2]"
    calls = translate(body)["messages"][2]["tool_calls"]
    assert calls[0]["function"]["arguments"] == {RAW_ARGUMENTS_KEY: '{"city": "Tor'}
    assert calls[1]["function"]["arguments"] == {RAW_ARGUMENTS_KEY: "[1, 2]"}


def test_tool_result_without_a_matching_call_uses_its_name_field() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_zzz", "name": "lookup", "content": "42"},
        ]
    }
    assert translate(body)["messages"][1]["tool_name"] == "lookup"


def test_content_arrays_are_flattened_and_data_images_extracted() -> None:
    body = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Rules."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "text", "text": "Answer briefly.", "cache_control": {"x": 1}},
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
        ]
    }
    messages = translate(body)["messages"]
    assert messages[0] == {"role": "system", "content": "Rules."}
    assert messages[1] == {
        "role": "user",
        "content": "What is in this image?\nAnswer briefly.",
        "images": ["iVBORw0K"],
    }
    assert messages[2]["content"] == "ok"


def test_remote_images_are_refused_with_a_clear_message() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
            }
        ]
    }
    with pytest.raises(InvalidRequest, match="data: URL") as info:
        translate(body)
    assert info.value.param == "messages[0].content[0]"


def test_unsupported_content_parts_are_refused() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}
    with pytest.raises(InvalidRequest, match="input_audio"):
        translate(body)


def test_assistant_reasoning_in_history_is_sent_as_thinking() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "17*23?"},
            {"role": "assistant", "content": "391", "reasoning_content": "17*20+17*3"},
        ]
    }
    assert translate(body)["messages"][1] == {
        "role": "assistant",
        "content": "391",
        "thinking": "17*20+17*3",
    }


def test_sampling_fields_map_to_options_with_num_ctx() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "seed": 7,
        "stop": "END",
        "max_tokens": 128,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repeat_penalty": 1.1,
    }
    out = translate(body, num_ctx=16384, stream=True)
    assert out["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "seed": 7,
        "stop": ["END"],  # Ollama requires an array
        "num_predict": 128,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repeat_penalty": 1.1,
        "num_ctx": 16384,
    }
    assert out["stream"] is True


def test_option_spellings_and_precedence() -> None:
    body = {
        "messages": [],
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "repetition_penalty": 1.3,
        "repeat_penalty": 1.05,
        "stop": ["a", "b"],
        "options": {"num_ctx": 2048, "mirostat": 1},  # Ollama-native extension
    }
    options = translate(body, num_ctx=8192)["options"]
    assert options["num_predict"] == 20
    assert options["repeat_penalty"] == 1.05
    assert options["stop"] == ["a", "b"]
    assert options["mirostat"] == 1
    assert options["num_ctx"] == 8192  # forge's budget wins over the client's


def test_no_options_key_when_nothing_to_send() -> None:
    assert "options" not in translate({"messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json"),
    ],
)
def test_response_format_becomes_format(response_format: dict[str, Any], expected: Any) -> None:
    out = translate({"messages": [], "response_format": response_format})
    assert out["format"] == expected


def test_text_response_format_sends_no_format() -> None:
    assert "format" not in translate({"messages": [], "response_format": {"type": "text"}})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"think": True}, True),
        ({"think": "high"}, "high"),
        ({"reasoning_effort": "low"}, "low"),
        ({"reasoning_effort": "none"}, False),
        ({"chat_template_kwargs": {"enable_thinking": False}}, False),
        ({"think": False, "reasoning_effort": "high"}, False),
    ],
)
def test_think_passthrough_and_mappings(fields: dict[str, Any], expected: Any) -> None:
    assert translate({"messages": [], **fields})["think"] == expected


def test_unknown_fields_are_dropped_never_fatal() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "parallel_tool_calls": False,
        "stream_options": {"include_usage": True},
        "logit_bias": {"1": 2},
        "vendor_x": {"a": 1},
        "tool_choice": "required",
    }
    out = translate(body)
    assert set(out) == {"model", "messages", "stream"}
    dropped = dropped_fields(body)
    assert set(dropped) == {
        "parallel_tool_calls",
        "stream_options",
        "logit_bias",
        "vendor_x",
        "tool_choice",
    }
    assert dropped["logit_bias"] == DROPPED_FIELDS["logit_bias"]
    assert "not understood" in dropped["vendor_x"]


def test_auto_tool_choice_is_not_reported_as_dropped() -> None:
    assert dropped_fields({"messages": [], "tool_choice": "auto"}) == {}


def test_messages_must_be_a_list() -> None:
    with pytest.raises(InvalidRequest):
        translate({"messages": "hi"})


# --- non-streamed responses ------------------------------------------------------------------


def test_documented_tool_call_response() -> None:
    turn = from_ollama_response(fixture_json("chat_tool_call.json"))
    assert turn.content == ""
    assert turn.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("get_weather", '{"city":"Tokyo"}')]
    assert turn.tool_calls[0].id.startswith("call_")
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens) == (169, 18)


def test_parallel_calls_get_distinct_fresh_ids() -> None:
    turn = from_ollama_response(fixture_json("chat_parallel.json"))
    assert [json.loads(c.arguments) for c in turn.tool_calls] == [
        {"city": "New York"},
        {"city": "London"},
    ]
    ids = [c.id for c in turn.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    again = from_ollama_response(fixture_json("chat_parallel.json"))
    assert not set(ids) & {c.id for c in again.tool_calls}


def test_text_response_and_usage() -> None:
    turn = from_ollama_response(fixture_json("chat_text.json"))
    assert turn.content == "The sky is blue because of Rayleigh scattering."
    assert turn.tool_calls == []
    assert turn.finish_reason == "stop"
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens) == (26, 10)


def test_thinking_becomes_reasoning() -> None:
    turn = from_ollama_response(fixture_json("chat_thinking.json"))
    assert turn.reasoning.startswith("Okay, 17 × 23:")
    assert turn.content == "17 × 23 = 391."


def test_null_arguments_mean_no_arguments() -> None:
    turn = from_ollama_response(fixture_json("chat_tool_call_null_arguments.json"))
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("get_current_time", "{}")]


def test_length_done_reason_maps_to_length() -> None:
    data = {**fixture_json("chat_text.json"), "done_reason": "length"}
    assert from_ollama_response(data).finish_reason == "length"


def test_string_arguments_that_parse_as_an_object_are_accepted() -> None:
    data = fixture_json("broken_arguments_string.json")
    data["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "London"}'
    turn = from_ollama_response(data)
    assert turn.tool_calls[0].arguments == '{"city":"London"}'


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("broken_arguments_string.json", "string that is not a JSON object"),
        ("broken_arguments_list.json", "of type array"),
        ("broken_no_message.json", "without a `message`"),
    ],
)
def test_protocol_violations_raise(fixture: str, message: str) -> None:
    with pytest.raises(BackendProtocolError, match=message) as info:
        from_ollama_response(fixture_json(fixture))
    assert info.value.backend == "ollama"
    assert info.value.status == 502


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.__setitem__("message", "text"),
        lambda d: d["message"].__setitem__("content", 5),
        lambda d: d["message"].__setitem__("tool_calls", {"function": {}}),
        lambda d: d["message"].__setitem__("tool_calls", [{"function": {"arguments": {}}}]),
        lambda d: d["message"]["tool_calls"][0]["function"].__setitem__("arguments", 3),
    ],
)
def test_broken_envelopes_raise(mutate: Any) -> None:
    data = fixture_json("chat_tool_call.json")
    mutate(data)
    with pytest.raises(BackendProtocolError):
        from_ollama_response(data)


def test_not_an_object_raises() -> None:
    with pytest.raises(BackendProtocolError):
        from_ollama_response(["not", "an", "object"])


def test_error_body_raises_backend_error() -> None:
    with pytest.raises(BackendError, match="an error was encountered"):
        from_ollama_response({"error": "an error was encountered while running the model"})
