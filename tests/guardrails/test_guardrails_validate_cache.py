"""Compiled tool-schema validators are reused across requests, notes included."""

from __future__ import annotations

import copy

from guardrail_tools import TOOLS

from forge_core.guardrails.validate import ToolIndex, validate_call
from forge_core.turns import ToolCall


def test_same_schema_in_a_new_request_reuses_the_compiled_validator() -> None:
    first = ToolIndex(TOOLS)
    second = ToolIndex(copy.deepcopy(TOOLS))
    name = next(iter(first))
    assert first.validator(name) is not None
    assert first.validator(name) is second.validator(name)


def test_cached_validator_still_rejects_and_invalid_schema_still_noted() -> None:
    bad_schema_tool = {"type": "function", "function": {
        "name": "odd", "parameters": {"type": "object", "properties": {"x": {"type": 12}}}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    for _ in range(2):  # the second round is served from the cache
        index = ToolIndex([tool, bad_schema_tool])
        problems = validate_call(ToolCall("c1", "f", '{"n": "x"}'), index, 0)
        assert [p.kind for p in problems] == ["schema"]
        assert index.validator("odd") is None and "not enforced" in index.notes["odd"]
