"""The rescue driver: parser order, plugin parsers, prose, think blocks, registration."""

from __future__ import annotations

from collections.abc import Collection

import pluggy
import pytest
from guardrail_tools import NAMES

from forge_core import __version__, hookspecs
from forge_core.guardrails import builtin
from forge_core.guardrails.records import RescuedCall, RescueParser
from forge_core.guardrails.rescue import (
    BUILTIN_PARSERS,
    all_markers,
    call_from_object,
    rescue,
    strip_think,
)

CALL = '{"name": "search", "arguments": {"query": "q"}}'


def test_builtin_parsers_declare_the_documented_markers_in_order() -> None:
    orders = [p.order for p in BUILTIN_PARSERS]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert len({p.name for p in BUILTIN_PARSERS}) == len(BUILTIN_PARSERS)
    assert set(all_markers(BUILTIN_PARSERS)) == {
        "```",
        "{",
        "[",
        "<tool_call>",
        "[TOOL_CALLS]",
        "<function=",
        "<|python_tag|>",
        "<|tool_call>",
    }


def test_builtin_module_registers_every_parser_through_the_hook() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin)
    registered: list[RescueParser] = []
    manager.hook.forge_register_rescue_parsers(
        register=registered.append, forge_version=__version__
    )
    assert registered == list(BUILTIN_PARSERS)


def _fixed(name: str, calls: list[RescuedCall], order: int) -> RescueParser:
    def parse(text: str, tool_names: Collection[str]) -> list[RescuedCall]:
        return calls

    return RescueParser(name=name, parse=parse, order=order)


def test_lowest_order_wins_whatever_the_sequence() -> None:
    late = _fixed("late", [RescuedCall("search", {"query": "late"})], 200)
    early = _fixed("early", [RescuedCall("search", {"query": "early"})], 5)
    calls, _ = rescue("anything", NAMES, [late, early])
    assert calls == [RescuedCall("search", {"query": "early"})]


def test_a_parser_without_location_leaves_no_prose() -> None:
    plugin = _fixed("plugin", [RescuedCall("list_files", {})], 1)
    assert rescue("Some prose. CALL list_files", NAMES, [plugin]) == (
        [RescuedCall("list_files", {})],
        "",
    )


def test_a_raising_parser_is_skipped() -> None:
    def broken(text: str, tool_names: Collection[str]) -> list[RescuedCall]:
        raise RuntimeError("plugin bug")

    parsers = [RescueParser("broken", broken, order=1), *BUILTIN_PARSERS]
    calls, prose = rescue(f"x {CALL}", NAMES, parsers)
    assert calls == [RescuedCall("search", {"query": "q"})] and prose == "x"


def test_unusable_plugin_calls_are_dropped_and_the_next_parser_runs() -> None:
    bad = _fixed(
        "bad",
        [
            RescuedCall("unknown", {}),
            RescuedCall("search", ["not", "an", "object"]),  # type: ignore[arg-type]
            RescuedCall("search", {"x": {1, 2}}),  # a set is not JSON
            RescuedCall("search", {"x": float("nan")}),
        ],
        1,
    )
    calls, _ = rescue(CALL, NAMES, [bad, *BUILTIN_PARSERS])
    assert calls == [RescuedCall("search", {"query": "q"})]


def test_nothing_is_rescued_without_tools() -> None:
    assert rescue(CALL, frozenset(), BUILTIN_PARSERS) == ([], CALL)


def test_tool_names_may_be_any_collection() -> None:
    calls, _ = rescue(CALL, ["search"], BUILTIN_PARSERS)
    assert calls == [RescuedCall("search", {"query": "q"})]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think>b", "b"),
        ("<think>x</think>b\n<think>y</think>c", "b\nc"),
        ("a<think>x</think>b", "a<think>x</think>b"),  # mid-line: not a reasoning block
        ("reasoning\n</think>answer", "answer"),
        ("  reasoning\n  </think>\nanswer", "\nanswer"),
        ("answer\n<think>never closed", "answer\n"),
        ('{"content": "</think>"}', '{"content": "</think>"}'),
        ('{"content": "x <think> y"}', '{"content": "x <think> y"}'),
        ("[THINK]x[/THINK]b", "b"),
        ("plain", "plain"),
    ],
)
def test_strip_think(text: str, expected: str) -> None:
    assert strip_think(text) == expected


def test_remaining_prose_keeps_paragraphs_around_markup_on_its_own_lines() -> None:
    text = f"First paragraph.\n\n<tool_call>\n{CALL}\n</tool_call>\n\nSecond paragraph."
    calls, prose = rescue(text, NAMES, BUILTIN_PARSERS)
    assert len(calls) == 1
    assert prose == "First paragraph.\n\nSecond paragraph."


def test_json_nested_inside_a_non_call_object_is_not_rescued() -> None:
    text = f'Config: {{"hooks": {{"pre": {CALL}}}}}'
    assert rescue(text, NAMES, BUILTIN_PARSERS) == ([], text)


def test_a_json_error_before_a_call_does_not_hide_it() -> None:
    text = f'oops {{"broken": }} then {CALL}'
    calls, prose = rescue(text, NAMES, BUILTIN_PARSERS)
    assert calls == [RescuedCall("search", {"query": "q"})]
    assert prose == 'oops {"broken": } then'


def test_fenced_json_with_backticks_inside_a_string() -> None:
    text = '```json\n{"name": "search", "arguments": {"query": "```code```"}}\n```'
    assert rescue(text, NAMES, BUILTIN_PARSERS) == (
        [RescuedCall("search", {"query": "```code```"})],
        "",
    )


def test_xml_values_keep_strings_and_decode_json() -> None:
    text = (
        "<function=search>\n<parameter=query>\nhello world\n</parameter>\n"
        '<parameter=filters>\n{"site": "a"}\n</parameter>\n'
        "<parameter=flag>\ntrue\n</parameter>\n</function>"
    )
    calls, _ = rescue(text, NAMES, BUILTIN_PARSERS)
    assert calls == [
        RescuedCall("search", {"query": "hello world", "filters": {"site": "a"}, "flag": True})
    ]


def test_llama_builtin_call_rejects_code_that_is_not_a_literal_call() -> None:
    for text in (
        "<|python_tag|>search.call(query=open('/etc/passwd').read())",
        "<|python_tag|>search.call('positional')",
        "<|python_tag|>other.call(query='x')",
    ):
        assert rescue(text, NAMES, BUILTIN_PARSERS)[0] == []


def test_mistral_follow_up_needs_args_token() -> None:
    text = '[TOOL_CALLS]search[ARGS]{"query": "a"}list_files[ARGS]{}'
    calls, prose = rescue(text, NAMES, BUILTIN_PARSERS)
    assert calls == [RescuedCall("search", {"query": "a"}), RescuedCall("list_files", {})]
    assert prose == ""


@pytest.mark.parametrize(
    "obj",
    [
        {"name": "search", "arguments": "not json"},
        {"name": "search", "arguments": [1]},
        {"name": "search", "arguments": "[1]"},
        {"name": 3, "arguments": {}},
        {"name": "search", "value": 1},
        {"name": "search", "description": "a tool"},
        {"name": "search", "parameters": {"type": "object", "properties": {}}},
        "search",
    ],
)
def test_call_from_object_rejects_non_calls(obj: object) -> None:
    assert call_from_object(obj, NAMES) is None


def test_call_from_object_accepts_empty_argument_string() -> None:
    assert call_from_object({"name": "list_files", "arguments": ""}, NAMES) == RescuedCall(
        "list_files", {}
    )


def test_a_fence_around_tag_markup_is_removed_with_it() -> None:
    text = f"Here:\n```xml\n<tool_call>\n{CALL}\n</tool_call>\n```\nDone."
    calls, prose = rescue(text, NAMES, BUILTIN_PARSERS)
    assert calls == [RescuedCall("search", {"query": "q"})]
    assert prose == "Here:\n\nDone."
