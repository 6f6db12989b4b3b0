"""Placeholder arguments are a validation failure, unless the conversation holds the value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge_core.guardrails.placeholders import conversation_text, placeholder_messages
from forge_core.guardrails.validate import ToolIndex, validate_call
from forge_core.turns import ToolCall


def tool(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": properties}}}


TOOLS = [
    tool("read_file", {"path": {"type": "string", "description": "File path to read"}}),
    tool("get_stock_price", {"symbol": {"type": "string"}}),
    tool("send_email", {"to": {"type": "array", "items": {"type": "string"}},
                        "meta": {"type": "object", "properties": {"subject": {"type": "string"}}}}),
]


def problems(name: str, arguments: dict[str, Any], said: str = "Please help.") -> list[str]:
    index = ToolIndex(TOOLS, conversation=said)
    found = validate_call(ToolCall("c1", name, json.dumps(arguments)), index, 0)
    assert all(p.kind == "placeholder" and p.tool == name and p.call_index == 0 for p in found)
    return [p.message for p in found]


@pytest.mark.parametrize(("name", "arguments", "why"), [
    ("read_file", {"path": "path"}, "the parameter's own name"),
    ("read_file", {"path": "PATH "}, "the parameter's own name"),
    ("get_stock_price", {"symbol": "get_stock_price"}, "a tool name"),
    ("read_file", {"path": "<path>"}, "a template"),
    ("read_file", {"path": "{file_name}"}, "a template"),
    ("read_file", {"path": "YOUR_FILE_PATH"}, "a template"),
    ("read_file", {"path": "string"}, "a type"),
    ("read_file", {"path": "File path to read"}, "description"),
    ("send_email", {"to": ["<email>"]}, "a template"),
    ("send_email", {"meta": {"subject": "subject"}}, "the parameter's own name"),
])
def test_placeholders_are_rejected_with_a_reason(
    name: str, arguments: dict[str, Any], why: str
) -> None:
    [message] = problems(name, arguments)
    assert why in message and "placeholder" in message


def test_the_message_names_the_argument_path() -> None:
    [message] = problems("send_email", {"to": ["bob@example.com", "<second>"]})
    assert "argument 'to[1]'" in message


@pytest.mark.parametrize(("name", "arguments"), [
    ("read_file", {"path": "README.md"}),
    ("get_stock_price", {"symbol": "AAPL"}),
    ("send_email", {"to": ["a@b.org"], "meta": {"subject": "Lunch"}}),
    ("read_file", {"path": "src/path.py"}),  # contains a parameter name, is not one
    ("read_file", {"path": ""}),
])
def test_real_values_pass(name: str, arguments: dict[str, Any]) -> None:
    assert problems(name, arguments) == []


def test_a_value_the_user_gave_is_never_a_placeholder() -> None:
    said = "Translate the word path, then read the file called <path>."
    assert problems("read_file", {"path": "path"}, said) == []
    assert problems("read_file", {"path": "<path>"}, said) == []
    assert problems("get_stock_price", {"symbol": "get_stock_price"}, said) != []


def test_the_check_is_off_without_a_conversation() -> None:
    index = ToolIndex(TOOLS)
    assert validate_call(ToolCall("c1", "read_file", '{"path": "path"}'), index, 0) == []


def test_schema_problems_come_first() -> None:
    index = ToolIndex([tool("t", {"n": {"type": "integer"}})], conversation="")
    [problem] = validate_call(ToolCall("c1", "t", '{"n": "n"}'), index, 0)
    assert problem.kind == "schema"


def test_conversation_text_reads_strings_and_text_parts() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url"}]},
        {"role": "assistant", "content": "mine"},
        {"role": "tool", "content": "result"},
        "junk",
    ]
    assert conversation_text(messages) == "sys\npart\nresult"
    assert conversation_text(None) == ""


def test_many_values_are_bounded() -> None:
    arguments = {"to": [f"user{i}@x.org" for i in range(5000)] + ["<late>"]}
    assert placeholder_messages("send_email", arguments, None, ["send_email"], "") == []
