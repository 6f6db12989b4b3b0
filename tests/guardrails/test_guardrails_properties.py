"""Property tests: the guardrail building blocks never raise and never lose text."""

from __future__ import annotations

import json
from typing import Any

from guardrail_tools import NAMES, TOOLS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_core.guardrails.holdback import HoldBack
from forge_core.guardrails.records import RescuedCall
from forge_core.guardrails.rescue import BUILTIN_PARSERS, all_markers, rescue
from forge_core.guardrails.validate import ToolIndex, validate_call
from forge_core.turns import ToolCall

INDEX = ToolIndex(TOOLS)
MARKERS = all_markers(BUILTIN_PARSERS)
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

FRAGMENTS = [
    "{",
    "}",
    "[",
    "]",
    '"',
    ":",
    ",",
    "\\",
    " ",
    "\n",
    "\t",
    '"name"',
    '"arguments"',
    '"parameters"',
    '"tool"',
    '"args"',
    '"search"',
    '"get_weather"',
    '"list_files"',
    "search",
    "get_weather",
    '"query"',
    '"q"',
    "1",
    "-2.5e3",
    "true",
    "null",
    "NaN",
    "Infinity",
    "<tool_call>",
    "</tool_call>",
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    "<function=search>",
    "<function=",
    "<parameter=query>",
    "</parameter>",
    "</function>",
    "<|python_tag|>",
    "<|eom_id|>",
    "```",
    "```json\n",
    "``",
    "`",
    "<think>",
    "</think>",
    "[THINK]",
    "[/THINK]",
    ".call(",
    ")",
    "(",
    ";",
    "query=",
    "'x'",
    '"type"',
    '"function"',
    '"tool_calls"',
    "<tool",
]

json_ish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map(
    "".join
)
any_text = st.one_of(st.text(max_size=200), json_ish)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
arguments = st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4)
prose = st.text(alphabet="abcdefghij klmnop.,!?", max_size=40)


def _check_rescued(calls: list[RescuedCall]) -> None:
    for position, call in enumerate(calls):
        assert call.name in NAMES
        assert isinstance(call.arguments, dict)
        problems = validate_call(
            ToolCall("c", call.name, json.dumps(call.arguments)), INDEX, position
        )
        assert all(p.kind == "schema" for p in problems), problems


@PROPERTY_SETTINGS
@given(any_text)
def test_rescue_never_raises_and_only_rescues_checkable_calls(text: str) -> None:
    calls, remaining = rescue(text, NAMES, BUILTIN_PARSERS)
    assert isinstance(remaining, str)
    assert remaining == remaining.strip()
    _check_rescued(calls)


@PROPERTY_SETTINGS
@given(any_text)
def test_every_builtin_parser_never_raises(text: str) -> None:
    for parser in BUILTIN_PARSERS:
        calls = parser.parse(text, NAMES)
        _check_rescued(calls)


def _render(fmt: str, name: str, args: dict[str, Any]) -> str:
    payload = json.dumps({"name": name, "arguments": args})
    return {
        "fenced": f"```json\n{payload}\n```",
        "bare": payload,
        "list": f"[{payload}]",
        "hermes": f"<tool_call>\n{payload}\n</tool_call>",
        "mistral-list": f"[TOOL_CALLS][{payload}]",
        "mistral-args": f"[TOOL_CALLS]{name}[ARGS]{json.dumps(args)}",
        "llama": "<|python_tag|>" + json.dumps({"name": name, "parameters": args}),
        "string-args": json.dumps({"name": name, "arguments": json.dumps(args)}),
    }[fmt]


FORMATS = st.sampled_from(
    ["fenced", "bare", "list", "hermes", "mistral-list", "mistral-args", "llama", "string-args"]
)


@PROPERTY_SETTINGS
@given(FORMATS, st.sampled_from(sorted(NAMES)), arguments, prose, prose)
def test_a_printed_call_round_trips(
    fmt: str, name: str, args: dict[str, Any], before: str, after: str
) -> None:
    text = f"{before}\n{_render(fmt, name, args)}\n{after}"
    calls, remaining = rescue(text, NAMES, BUILTIN_PARSERS)
    assert calls == [RescuedCall(name, args)]
    assert remaining == "\n\n".join(p.strip() for p in (before, after) if p.strip())


@st.composite
def chunked(draw: st.DrawFn, text_strategy: st.SearchStrategy[str]) -> list[str]:
    text = draw(text_strategy)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@PROPERTY_SETTINGS
@given(chunked(any_text), st.booleans(), st.integers(4, 64))
def test_holdback_emits_exactly_the_input(chunks: list[str], resolve: bool, bound: int) -> None:
    holdback = HoldBack(MARKERS, max_held=bound)
    out = ""
    for chunk in chunks:
        out += holdback.feed(chunk)
        if resolve:
            out += holdback.release_if_resolved(NAMES)
        assert holdback.holding == bool(holdback.held)
    out += holdback.flush()
    assert out == "".join(chunks)


@PROPERTY_SETTINGS
@given(chunked(st.text(alphabet="abc xyz.,;:!?'\"()}]\n\t0123456789", max_size=200)))
def test_holdback_never_delays_text_without_marker_openings(chunks: list[str]) -> None:
    holdback = HoldBack(MARKERS)
    for chunk in chunks:
        assert holdback.feed(chunk) == chunk
    assert holdback.flush() == ""


@PROPERTY_SETTINGS
@given(FORMATS, st.sampled_from(sorted(NAMES)), arguments, prose, st.data())
def test_holdback_holds_a_printed_call_from_its_first_character(
    fmt: str, name: str, args: dict[str, Any], before: str, data: st.DataObject
) -> None:
    call = _render(fmt, name, args)
    text = f"{before}\n{call}"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    bounds = [0, *cuts, len(text)]
    holdback = HoldBack(MARKERS)
    emitted = ""
    for a, b in zip(bounds, bounds[1:], strict=False):
        emitted += holdback.feed(text[a:b])
        emitted += holdback.release_if_resolved(NAMES)
    assert emitted == f"{before}\n"
    held = holdback.flush()
    assert held == call
    assert rescue(held, NAMES, BUILTIN_PARSERS)[0] == [RescuedCall(name, args)]
