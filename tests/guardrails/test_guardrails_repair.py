"""Repair before retrying: sure JSON repairs and schema coercions, never a changed value."""

from __future__ import annotations

import json

import pytest
from guardrail_tools import TOOLS

from forge_core.guardrails.repair import (
    coerce,
    repair_calls,
    repair_json_text,
    repaired_arguments,
    typed_text_values,
)
from forge_core.guardrails.validate import ToolIndex
from forge_core.turns import ToolCall

INDEX = ToolIndex(TOOLS)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{'city': 'Paris'}", {"city": "Paris"}),
        ('{"city": "Paris",}', {"city": "Paris"}),
        ('{city: "Paris"}', {"city": "Paris"}),
        ('{"city": "Paris"', {"city": "Paris"}),  # the model stopped before the brace
        ('{"a": True, "b": None}', {"a": True, "b": None}),
        ('{"a": "x" "b": 2}', {"a": "x", "b": 2}),
    ],
)
def test_sure_syntax_repairs_are_made(text: str, value: dict) -> None:
    assert repair_json_text(text) == value


@pytest.mark.parametrize(
    "text",
    [
        '{"city": "Par',  # cut inside a string: the value's end is unknown
        '{"a": 1 garbage, "b": 2}',  # the repairer would drop a word
        '{"city": }',  # the repairer would invent ""
        "hello",
        "",
    ],
)
def test_repairs_that_could_change_meaning_are_refused(text: str) -> None:
    assert repair_json_text(text) is None


def test_an_answer_cut_by_length_is_never_repaired() -> None:
    assert repaired_arguments('{"city": "Paris"', None, truncated=True) is None
    assert repaired_arguments('{"city": "Paris"', None, truncated=False) == (
        {"city": "Paris"}, ["json"]
    )


SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "name": {"type": "string"},
        "either": {"type": ["integer", "string"]},
        "filters": {"type": "object", "properties": {"year": {"type": "integer"}}},
    },
}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"n": "5"}, {"n": 5}),
        ({"n": " -12 "}, {"n": -12}),
        ({"x": "2.5"}, {"x": 2.5}),
        ({"flag": "true"}, {"flag": True}),
        ({"flag": "False"}, {"flag": False}),
        ({"tags": "red"}, {"tags": ["red"]}),
        ({"tags": '["a", "b"]'}, {"tags": ["a", "b"]}),
        ({"ids": "7"}, {"ids": [7]}),
        ({"filters": '{"year": "2024"}'}, {"filters": {"year": 2024}}),
    ],
)
def test_unambiguous_scalars_are_coerced_per_schema(given: dict, expected: dict) -> None:
    assert coerce(given, SCHEMA) == (expected, True)


@pytest.mark.parametrize(
    "given",
    [
        {"n": "five"},
        {"n": "5.5"},  # not an integer: leave it to the retry
        {"flag": "yes"},
        {"name": 42},  # a string parameter is never turned into something else
        {"name": "42"},
        {"either": "5"},  # two types allowed: ambiguous
        {"unknown": "5"},
    ],
)
def test_ambiguous_values_are_left_alone(given: dict) -> None:
    assert coerce(given, SCHEMA) == (given, False)


def test_repair_calls_fixes_in_place_only_what_then_validates() -> None:
    calls = [
        ToolCall("a", "get_weather", "{'city': 'Oslo', 'days': '3'}"),
        ToolCall("b", "get_weather", '{"city": "Oslo", "days": "many"}'),  # still invalid
        ToolCall("c", "get_weather", '{"city": "Rome"}'),  # already valid: untouched
    ]
    assert repair_calls(calls, INDEX, truncated=False) == ["json", "types"]
    assert json.loads(calls[0].arguments) == {"city": "Oslo", "days": 3}
    assert calls[1].arguments == '{"city": "Oslo", "days": "many"}'
    assert calls[2].arguments == '{"city": "Rome"}'


def test_xml_text_values_keep_string_parameters_as_written() -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string"}, "n": {"type": "integer"},
                                               "unit": {"enum": ["1", "2"]}}}
    arguments = {"code": 42, "n": 42, "unit": 1}
    texts = {"code": "42", "n": "42", "unit": "1"}
    assert typed_text_values(arguments, texts, schema) == {"code": "42", "n": 42, "unit": "1"}
    assert typed_text_values(arguments, None, schema) == arguments
