"""ToolIndex robustness, schema dialects and argument normalization."""

from __future__ import annotations

import pytest
from guardrail_tools import TOOLS

from forge_core.guardrails.validate import (
    ToolIndex,
    argument_path,
    normalize_arguments,
    required_tool,
    validate_call,
)
from forge_core.turns import ToolCall


def _call(name: str, arguments: str) -> ToolCall:
    return ToolCall("call_1", name, arguments)


def test_index_maps_names_to_the_clients_tool_dicts() -> None:
    index = ToolIndex(TOOLS)
    assert index.names == frozenset({"get_weather", "search", "list_files"})
    assert index.get("search") is TOOLS[1]
    assert index.get("nope") is None
    assert "search" in index and "nope" not in index
    assert bool(index) and len(index) == 3
    assert not ToolIndex([]) and not ToolIndex(None)


@pytest.mark.parametrize(
    "tools",
    [
        None,
        "tools",
        {"type": "function"},
        [None, 3, "x", [], {}],
        [{"type": "function"}, {"type": "function", "function": None}],
        [{"type": "function", "function": {"name": ""}}, {"function": {"name": 5}}],
    ],
)
def test_weird_tool_lists_give_an_empty_index(tools: object) -> None:
    index = ToolIndex(tools)  # type: ignore[arg-type]
    assert not index
    assert validate_call(_call("x", "{}"), index, 0)[0].message == (
        "unknown tool 'x'; no tools are available"
    )


def test_first_definition_of_a_duplicated_name_wins() -> None:
    first = {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}
    second = {"type": "function", "function": {"name": "a", "parameters": {"type": "string"}}}
    assert ToolIndex([first, second]).get("a") is first


@pytest.mark.parametrize("parameters", [None, {}, True])
def test_missing_or_empty_parameters_accept_any_object(parameters: object) -> None:
    function: dict[str, object] = {"name": "t"}
    if parameters is not None:
        function["parameters"] = parameters
    index = ToolIndex([{"type": "function", "function": function}])
    assert validate_call(_call("t", '{"anything": [1, 2]}'), index, 0) == []
    # ... but arguments must still be a JSON object.
    assert [p.kind for p in validate_call(_call("t", "3"), index, 0)] == ["not_object"]


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "objekt"},
        {"type": "object", "properties": {"a": {"type": 12}}},
        {"type": "object", "required": "a"},
        ["not", "a", "schema"],
        "string",
    ],
)
def test_invalid_schema_is_noted_and_not_enforced(parameters: object) -> None:
    index = ToolIndex([{"type": "function", "function": {"name": "t", "parameters": parameters}}])
    assert validate_call(_call("t", '{"a": 1}'), index, 0) == []
    assert "t" in index.notes


def test_flat_tool_shape_is_accepted() -> None:
    index = ToolIndex([{"name": "flat", "parameters": {"type": "object", "required": ["x"]}}])
    problems = validate_call(_call("flat", "{}"), index, 0)
    assert [p.message for p in problems] == ["tool 'flat': missing required argument 'x'"]


def test_dollar_schema_draft_07_is_honoured() -> None:
    # Tuple validation with an array "items" exists in draft-07 only; in 2020-12 it is invalid.
    schema = {
        "type": "object",
        "properties": {
            "pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}
        },
    }
    draft7 = ToolIndex(
        [
            {
                "name": "t",
                "parameters": {**schema, "$schema": "http://json-schema.org/draft-07/schema#"},
            }
        ]
    )
    problems = validate_call(_call("t", '{"pair": ["a", "b"]}'), draft7, 0)
    assert [p.message for p in problems] == [
        "tool 't': argument 'pair[1]' must be of type integer, got string 'b'"
    ]
    default = ToolIndex([{"name": "t", "parameters": schema}])
    assert validate_call(_call("t", '{"pair": ["a", "b"]}'), default, 0) == []
    assert "t" in default.notes


def test_unresolvable_remote_ref_is_not_fetched_and_not_enforced() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "https://example.invalid/s.json"}}}
    index = ToolIndex([{"name": "t", "parameters": schema}])
    assert validate_call(_call("t", '{"a": 1}'), index, 0) == []
    assert "not enforced" in index.notes["t"]


def test_local_refs_and_defs_are_enforced() -> None:
    schema = {
        "type": "object",
        "$defs": {"unit": {"enum": ["c", "f"]}},
        "properties": {"unit": {"$ref": "#/$defs/unit"}},
    }
    index = ToolIndex([{"name": "t", "parameters": schema}])
    problems = validate_call(_call("t", '{"unit": "k"}'), index, 0)
    assert [p.message for p in problems] == [
        "tool 't': argument 'unit' must be one of ['c', 'f'], got 'k'"
    ]


def test_validator_is_compiled_once_per_tool() -> None:
    index = ToolIndex(TOOLS)
    assert index.validator("search") is index.validator("search")
    assert index.validator("list_files") is None


def test_several_missing_required_arguments_are_one_sentence() -> None:
    index = ToolIndex([{"name": "t", "parameters": {"type": "object", "required": ["a", "b"]}}])
    problems = validate_call(_call("t", "{}"), index, 0)
    assert [p.message for p in problems] == ["tool 't': missing required arguments 'a', 'b'"]


def test_schema_problems_are_capped() -> None:
    props = {f"p{i}": {"type": "integer"} for i in range(10)}
    index = ToolIndex([{"name": "t", "parameters": {"type": "object", "properties": props}}])
    arguments = "{" + ", ".join(f'"p{i}": "x"' for i in range(10)) + "}"
    problems = validate_call(_call("t", arguments), index, 4)
    assert len(problems) == 5
    assert all(p.call_index == 4 and p.tool == "t" for p in problems)


def test_problem_values_are_shortened() -> None:
    index = ToolIndex(
        [{"name": "t", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]
    )
    problems = validate_call(_call("t", '{"a": "' + "x" * 500 + '"}'), index, 0)
    assert len(problems[0].message) < 160
    assert problems[0].message.endswith("...")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "{}"),
        ("   ", "{}"),
        ('{ "b" : 1,\n "a" : [1, 2] }', '{"b":1,"a":[1,2]}'),
        ('{"city": "Zürich"}', '{"city":"Zürich"}'),
        ("[1]", "[1]"),
    ],
)
def test_normalize_arguments(text: str, expected: str) -> None:
    assert normalize_arguments(text) == expected


@pytest.mark.parametrize("text", ['{"a": }', "{'a': 1}", '{"a": NaN}', "nope"])
def test_normalize_arguments_rejects_invalid_json(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_arguments(text)


def test_argument_path() -> None:
    assert argument_path([]) == ""
    assert argument_path(["location", "tags", 2, "name"]) == "location.tags[2].name"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, (False, None)),
        ("auto", (False, None)),
        ("none", (False, None)),
        ("required", (True, None)),
        ({"type": "function", "function": {"name": "a"}}, (True, "a")),
        ({"type": "any"}, (True, None)),
        ({"type": "tool", "name": "a"}, (True, "a")),
        ({"type": "auto"}, (False, None)),
        ({"type": "function", "function": {"name": 3}}, (False, None)),
        ([], (False, None)),
    ],
)
def test_required_tool(choice: object, expected: tuple[bool, str | None]) -> None:
    assert required_tool(choice) == expected


@pytest.mark.parametrize(
    ("schema", "arguments", "message"),
    [
        (
            {"properties": {"ids": {"type": "array", "maxItems": 2}}},
            '{"ids": [1, 2, 3]}',
            "argument 'ids' must have at most 2 items, got 3",
        ),
        (
            {"properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
            '{"code": "abc"}',
            "argument 'code' must match the pattern '^[A-Z]{3}$', got 'abc'",
        ),
        (
            {"properties": {"kind": {"const": "file"}}},
            '{"kind": "dir"}',
            "argument 'kind' must be 'file', got 'dir'",
        ),
        (
            {"properties": {"n": {"type": "number", "exclusiveMinimum": 0}}},
            '{"n": 0}',
            "argument 'n' must be > 0, got 0",
        ),
        (
            {"properties": {"v": {"type": ["string", "null"]}}},
            '{"v": 1.5}',
            "argument 'v' must be of type string or null, got number 1.5",
        ),
        (
            {"minProperties": 1},
            "{}",
            "arguments must have at least 1 key, got 0",
        ),
        (
            {
                "properties": {
                    "rows": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"id": {"type": "integer"}},
                            "required": ["id"],
                        },
                    }
                }
            },
            '{"rows": [{"id": 1}, {}]}',
            "missing required argument 'rows[1].id'",
        ),
        (
            {"properties": {"x": {"not": {"type": "string"}}}},
            '{"x": "s"}',
            "argument 'x': 's' should not be valid under {'type': 'string'}",
        ),
    ],
)
def test_schema_error_wording(schema: dict[str, object], arguments: str, message: str) -> None:
    index = ToolIndex([{"name": "t", "parameters": {"type": "object", **schema}}])
    problems = validate_call(_call("t", arguments), index, 0)
    assert [p.message for p in problems] == [f"tool 't': {message}"]


def test_light_schemas_are_small_and_free_of_references() -> None:
    small = {"type": "function", "function": {"name": "small", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    refs = {"type": "function", "function": {"name": "refs", "parameters": {
        "type": "object", "$defs": {"a": {"type": "string"}},
        "properties": {"x": {"$ref": "#/$defs/a"}}}}}
    big = {"type": "function", "function": {"name": "big", "parameters": {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "x" * 40} for i in range(60)},
    }}}
    index = ToolIndex([small, refs, big])
    assert [index.light(n) for n in ("small", "refs", "big")] == [True, False, False]
