"""Corrective retry messages and same-role merging."""

from __future__ import annotations

import copy
from typing import Any

from guardrail_tools import TOOLS

from forge_core.guardrails.feedback import corrective_messages, merge_same_role, signature
from forge_core.guardrails.validate import ToolIndex, validate_turn
from forge_core.turns import AssistantTurn, ToolCall

INDEX = ToolIndex(TOOLS)


def messages_for(turn: AssistantTurn, tool_choice: Any = "auto") -> list[dict[str, Any]]:
    problems = validate_turn(turn, INDEX, tool_choice)
    assert problems, "these tests are about failed answers"
    return corrective_messages(turn, problems, INDEX)


def test_schema_error_gets_a_tool_result_per_call() -> None:
    turn = AssistantTurn(
        content="Checking.",
        tool_calls=[
            ToolCall("c1", "get_weather", '{"city": "Paris", "unit": "kelvin"}'),
            ToolCall("c2", "search", '{ "query" : "x" }'),
        ],
    )
    assistant, first, second = messages_for(turn)
    assert assistant == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"city":"Paris","unit":"kelvin"}',
                },
            },
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "search", "arguments": '{"query":"x"}'},
            },
        ],
    }
    assert first["role"] == "tool" and first["tool_call_id"] == "c1"
    assert first["content"].splitlines() == [
        "Error: tool 'get_weather': argument 'unit' must be one of ['c', 'f'], got 'kelvin'.",
        "Expected arguments: get_weather(city: string, unit?: 'c' | 'f', days?: integer)",
        "Call the tool again with corrected arguments (one JSON object).",
    ]
    assert second["tool_call_id"] == "c2"
    assert second["content"].startswith("Not executed. Another call in this answer was invalid")


def test_unknown_tool_result_suggests_the_closest_name() -> None:
    turn = AssistantTurn(tool_calls=[ToolCall("c1", "get_wether", '{"city": "Paris"}')])
    assistant, result = messages_for(turn)
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"]["name"] == "get_wether"
    assert result["content"].splitlines() == [
        "Error: unknown tool 'get_wether'; available tools: get_weather, list_files, search.",
        "Did you mean 'get_weather'?",
        "Call one of the available tools instead.",
    ]


def test_unparseable_arguments_are_echoed_as_text_with_one_user_message() -> None:
    turn = AssistantTurn(
        content="Let me see.",
        tool_calls=[ToolCall("c1", "get_weather", '{"city": "Paris" "unit"')],
    )
    assistant, user = messages_for(turn)
    assert assistant == {
        "role": "assistant",
        "content": 'Let me see.\n{"name": "get_weather", "arguments": {"city": "Paris" "unit"}',
    }
    assert "tool_calls" not in assistant
    assert user["role"] == "user"
    lines = user["content"].splitlines()
    assert lines[0] == "Your last answer could not be used:"
    assert lines[1].startswith("- tool 'get_weather': arguments are not valid JSON (")
    assert "Available tools: get_weather, list_files, search." in lines
    assert "- get_weather(city: string, unit?: 'c' | 'f', days?: integer)" in lines
    assert lines[-1].endswith('{"name": "<tool name>", "arguments": {<arguments>}}')


def test_duplicate_ids_cannot_be_echoed_as_structured_calls() -> None:
    turn = AssistantTurn(
        tool_calls=[ToolCall("x", "list_files", "{}"), ToolCall("x", "list_files", "{}")]
    )
    messages = messages_for(turn)
    assert [m["role"] for m in messages] == ["assistant", "user"]
    assert "tool_calls" not in messages[0]
    assert "call id 'x' is used twice" in messages[1]["content"]


def test_required_but_prose_gets_a_user_nudge_listing_tools_once() -> None:
    turn = AssistantTurn(content="I would rather chat.")
    assistant, user = messages_for(turn, "required")
    assert assistant == {"role": "assistant", "content": "I would rather chat."}
    assert user["content"].count("available tools") + user["content"].count("Available tools") == 1
    assert "- list_files()" in user["content"]
    assert "- search(query: string, filters?: object{site, year}" in user["content"]


def test_empty_answer_is_not_echoed() -> None:
    messages = messages_for(AssistantTurn(content=""), "required")
    assert [m["role"] for m in messages] == ["user"]


def test_named_choice_violation_is_attached_to_the_last_tool_result() -> None:
    turn = AssistantTurn(tool_calls=[ToolCall("c1", "list_files", "{}")])
    choice = {"type": "function", "function": {"name": "search"}}
    _, result = messages_for(turn, choice)
    lines = result["content"].splitlines()
    assert lines[0] == "Not executed."
    assert "Error: a call to tool 'search' is required, but the answer has none." in lines
    assert any(line.startswith("Expected arguments: search(query: string") for line in lines)


def test_no_problems_means_no_messages() -> None:
    turn = AssistantTurn(tool_calls=[ToolCall("c1", "list_files", "")])
    assert corrective_messages(turn, [], INDEX) == []


def test_the_failed_turn_is_never_mutated() -> None:
    turn = AssistantTurn(
        content="x", tool_calls=[ToolCall("c1", "nope", ""), ToolCall("c1", "search", "{")]
    )
    before = copy.deepcopy(turn)
    corrective_messages(turn, validate_turn(turn, INDEX, "required"), INDEX)
    assert turn == before


def test_signature_handles_odd_schemas() -> None:
    odd = ToolIndex(
        [
            {"name": "a", "parameters": {"type": "object"}},
            {"name": "b", "parameters": "nonsense"},
            {
                "name": "c",
                "parameters": {
                    "properties": {"x": {"type": ["string", "null"]}},
                    "required": ["x"],
                },
            },
            {"name": "d", "parameters": {"properties": {f"p{i}": {} for i in range(200)}}},
        ]
    )
    assert signature("a", odd) == "a(...)"
    assert signature("b", odd) == "b(...)"
    assert signature("c", odd) == "c(x: string | null)"
    assert len(signature("d", odd)) <= 400 and signature("d", odd).endswith("...)")


# --- merge_same_role ------------------------------------------------------------------------


def test_merges_consecutive_user_and_assistant_text() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "sys2"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "e"},
    ]
    assert merge_same_role(messages) == [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "sys2"},
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c\n\nd"},
        {"role": "user", "content": "e"},
    ]


def test_never_merges_tool_calls_or_tool_results() -> None:
    call = {"id": "1", "type": "function", "function": {"name": "x", "arguments": "{}"}}
    messages = [
        {"role": "assistant", "content": "thinking"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "1", "content": "r1"},
        {"role": "tool", "tool_call_id": "2", "content": "r2"},
        {"role": "assistant", "content": "done"},
    ]
    assert merge_same_role(messages) == messages


def test_merges_list_content_parts_and_keeps_images() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look"}, image]},
        {"role": "user", "content": "what is it?"},
        {"role": "user", "content": [{"type": "text", "text": "be brief"}]},
    ]
    merged = merge_same_role(messages)
    assert merged == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                image,
                {"type": "text", "text": "what is it?\n\nbe brief"},
            ],
        }
    ]


def test_empty_content_does_not_leave_blank_lines() -> None:
    messages = [
        {"role": "user", "content": ""},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": None},
    ]
    assert merge_same_role(messages) == [{"role": "user", "content": "hi"}]


def test_merge_never_mutates_its_input() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "x", "name": "bot"},
        {"role": "assistant", "content": "y"},
    ]
    snapshot = copy.deepcopy(messages)
    merged = merge_same_role(messages)
    assert messages == snapshot
    assert merged[0]["content"] == [{"type": "text", "text": "a\n\nb"}]
    assert merged[1] == {"role": "assistant", "content": "x\n\ny", "name": "bot"}


def test_thousands_of_calls_each_get_their_own_result() -> None:
    """A flood of rescued calls (every other one invalid): one pass over the problems, each
    result naming only its own call's error (per-call filtering was calls x problems)."""
    calls = [
        ToolCall(f"c{n}", "get_weather", '{"city": "Paris", "unit": "kelvin"}' if n % 2 else
                 '{"city": "Paris"}')
        for n in range(20_000)
    ]
    turn = AssistantTurn(content="", tool_calls=calls)
    _, *results = messages_for(turn)
    assert [r["tool_call_id"] for r in results] == [c.id for c in calls]
    assert all(r["content"].startswith("Error:") for r in results[1::2])
    assert all(r["content"].startswith("Not executed. Another") for r in results[::2])
