"""The streaming hold-back scanner."""

from __future__ import annotations

import pytest
from guardrail_tools import NAMES

from forge_core.guardrails.holdback import HoldBack
from forge_core.guardrails.rescue import BUILTIN_PARSERS, all_markers

MARKERS = all_markers(BUILTIN_PARSERS)
CALL_JSON = '{"name": "search", "arguments": {"query": "q"}}'


def run(chunks: list[str], names: frozenset[str] = NAMES, **kwargs: int) -> tuple[str, str]:
    """Feed like the engine does; return (everything emitted, what flush returned)."""
    holdback = HoldBack(MARKERS, **kwargs)
    emitted = ""
    for chunk in chunks:
        emitted += holdback.feed(chunk)
        emitted += holdback.release_if_resolved(names)
    held = holdback.flush()
    assert emitted + held == "".join(chunks)
    assert not holdback.holding and holdback.held == ""
    return emitted, held


def chars(text: str) -> list[str]:
    return list(text)


@pytest.mark.parametrize(
    "prose",
    [
        "Hello there, how are you?",
        "A set {1,2} and a list [1, 2] in the middle of a line.",
        "Python dicts look like {'a': 1}; sets like {1, 2}.",
        "Use `ls -la` to list files.\nThen done.",
        "Multi\nline\ntext with <b>html</b> and a < b > c.",
        "Arrays: x[0] = y[1];",
    ],
)
def test_prose_is_never_delayed(prose: str) -> None:
    holdback = HoldBack(MARKERS)
    for word in prose.split(" "):
        piece = word + " "
        assert holdback.feed(piece) == piece
        assert not holdback.holding


def test_brace_holds_only_when_a_quote_follows_even_mid_line() -> None:
    holdback = HoldBack(MARKERS)
    assert holdback.feed("value {") == "value "  # the next character decides
    assert holdback.feed("1}") == "{1}"
    assert holdback.feed(" and {") == " and "
    assert holdback.feed('"a"') == ""
    assert holdback.holding and holdback.held == '{"a"'


def test_mid_line_json_that_is_not_a_call_is_released_once_closed() -> None:
    text = 'JSON like {"a": 1}. Done.'
    holdback = HoldBack(MARKERS)
    emitted = ""
    for word in text.split(" "):
        emitted += holdback.feed(word + " ") + holdback.release_if_resolved(NAMES)
    assert emitted == text + " " and not holdback.holding


@pytest.mark.parametrize(
    "call", [CALL_JSON, f"[{CALL_JSON}]", '{\n  "name": "search",\n  "arguments": {}\n}']
)
def test_mid_line_json_call_is_held_for_rescue(call: str) -> None:
    emitted, held = run(chars(f"Sure: {call} ok"))
    assert emitted == "Sure: "
    assert held == f"{call} ok"


def test_brace_at_response_start_holds() -> None:
    emitted, held = run(chars(CALL_JSON))
    assert emitted == "" and held == CALL_JSON


def test_a_call_keeps_everything_after_it_held() -> None:
    text = f"Let me search.\n{CALL_JSON}\nI'll report back."
    emitted, held = run(chars(text))
    assert emitted == "Let me search.\n"
    assert held == f"{CALL_JSON}\nI'll report back."


@pytest.mark.parametrize(
    "call",
    [
        f"<tool_call>\n{CALL_JSON}\n</tool_call>",
        f"```json\n{CALL_JSON}\n```",
        f"[TOOL_CALLS][{CALL_JSON}]",
        '[TOOL_CALLS]search[ARGS]{"query": "q"}',
        '<|python_tag|>{"name": "search", "parameters": {"query": "q"}}',
        "<function=search>\n<parameter=query>\nq\n</parameter>\n</function>",
        CALL_JSON,
        f"[{CALL_JSON}]",
    ],
)
def test_every_split_point_holds_the_whole_call(call: str) -> None:
    prose = "Sure, one moment.\n"
    text = prose + call
    for cut in range(1, len(text)):
        emitted, held = run([text[:cut], text[cut:]])
        assert emitted == prose, cut
        assert held == call


@pytest.mark.parametrize(
    "call", [f"<tool_call>{CALL_JSON}</tool_call>", f"```json\n{CALL_JSON}\n```"]
)
def test_char_by_char_mid_line_markers(call: str) -> None:
    emitted, held = run(chars(f"Calling now: {call}"))
    assert emitted == "Calling now: "
    assert held == call


def test_partial_marker_that_does_not_complete_is_released_on_next_feed() -> None:
    holdback = HoldBack(MARKERS)
    assert holdback.feed("a <tool") == "a "
    assert holdback.held == "<tool"
    assert holdback.feed("bar> b") == "<toolbar> b"
    assert not holdback.holding


def test_line_start_bracket_that_becomes_tool_calls_marker() -> None:
    emitted, held = run(["ok\n[", "TOOL_CALLS]search", '[ARGS]{"query": "q"}'])
    assert emitted == "ok\n"
    assert held == '[TOOL_CALLS]search[ARGS]{"query": "q"}'


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{1, 2} is a set\n", "after '{1'"),
        ("[link](https://x.y) text\n", "after '[l'"),
        ("{} empty\n", "after '{}'"),
        ("[ ] todo\n", "after '[ ]'"),
    ],
)
def test_openings_that_cannot_be_calls_are_released_without_names(text: str, where: str) -> None:
    holdback = HoldBack(MARKERS)
    emitted = "".join(holdback.feed(c) for c in text)
    assert emitted == text, where
    assert not holdback.holding


def test_balanced_json_that_is_not_a_call_is_released_when_resolved() -> None:
    holdback = HoldBack(MARKERS)
    assert holdback.feed('{"config": {"a": "}"}}') == ""
    assert holdback.holding
    assert holdback.release_if_resolved(NAMES) == '{"config": {"a": "}"}}'
    assert holdback.feed(" and more") == " and more"


def test_json_for_an_unknown_tool_is_released() -> None:
    text = '{"name": "rm_rf", "arguments": {}}\nok'
    emitted, held = run(chars(text))
    assert emitted == text and held == ""


def test_a_second_candidate_after_a_released_one_is_held() -> None:
    text = f'{{"a": 1}}\n{CALL_JSON}'
    emitted, held = run(chars(text))
    assert emitted == '{"a": 1}\n'
    assert held == CALL_JSON


def test_code_block_streams_through_until_its_closing_fence() -> None:
    holdback = HoldBack(MARKERS)
    assert holdback.feed("Here:\n```python\n") == "Here:\n"
    assert holdback.feed("d = {\n") == "```python\nd = {\n"
    assert holdback.feed('{"name": "search"}\n') == '{"name": "search"}\n'
    assert holdback.feed("```\nAfter.\n") == "```\nAfter.\n"
    assert holdback.feed("{") == ""  # back to normal scanning after the fence
    assert holdback.holding


def test_fenced_json_that_is_not_a_call_is_released_at_the_closing_fence() -> None:
    text = '```json\n{"port": 8080}\n```\nDone.'
    emitted, held = run(chars(text))
    assert emitted == text and held == ""


def test_inline_triple_backticks_are_not_a_fence() -> None:
    emitted, held = run(chars("Run ```make``` then rest.\n"))
    assert held == "" and emitted == "Run ```make``` then rest.\n"


def test_closed_tag_for_unknown_tool_is_released() -> None:
    text = '<tool_call>{"name": "nope", "arguments": {}}</tool_call> fine'
    emitted, held = run(chars(text))
    assert emitted == text and held == ""


def test_unclosed_tag_stays_held_until_flush() -> None:
    holdback = HoldBack(MARKERS)
    assert holdback.feed(f"<tool_call>{CALL_JSON}") == ""
    assert holdback.release_if_resolved(NAMES) == ""
    assert holdback.flush() == f"<tool_call>{CALL_JSON}"


def test_long_hold_without_a_tool_name_is_released_at_the_bound() -> None:
    text = '{"data": "' + "x" * 300
    holdback = HoldBack(MARKERS, max_held=100)
    assert holdback.feed(text) == ""
    released = holdback.release_if_resolved(NAMES)
    assert released == text
    assert holdback.feed(" more") == " more"


def test_long_call_in_progress_is_kept_past_the_bound() -> None:
    text = '{"name": "search", "arguments": {"query": "' + "x" * 300
    holdback = HoldBack(MARKERS, max_held=100)
    assert holdback.feed(text) == ""
    assert holdback.release_if_resolved(NAMES) == ""
    assert holdback.feed('"}}') == ""
    assert holdback.release_if_resolved(NAMES) == ""
    assert holdback.flush() == text + '"}}'


def test_unknown_plugin_marker_holds_until_flush_or_bound() -> None:
    holdback = HoldBack([*MARKERS, "<<CALL>>"], max_held=50)
    assert holdback.feed("hi <<CAL") == "hi "
    assert holdback.feed("L>> x") == ""
    assert holdback.release_if_resolved(NAMES) == ""
    holdback.feed("y" * 60)
    assert holdback.release_if_resolved(NAMES) == "<<CALL>> x" + "y" * 60


def test_without_markers_everything_streams() -> None:
    holdback = HoldBack([])
    assert holdback.feed(CALL_JSON) == CALL_JSON
    assert holdback.flush() == ""


def test_whole_answer_at_once_like_the_non_streaming_path() -> None:
    text = f"Intro.\n```json\n{CALL_JSON}\n```\nOutro."
    holdback = HoldBack(MARKERS)
    sent = holdback.feed(text) + holdback.release_if_resolved(NAMES)
    assert sent == "Intro.\n"
    assert holdback.flush() == f"```json\n{CALL_JSON}\n```\nOutro."


def test_long_prose_stream_never_holds() -> None:
    holdback = HoldBack(MARKERS)
    line = "The quick brown fox {jumps} over [the] lazy dog, a < b.\n"
    total = ""
    for _ in range(5000):
        total += holdback.feed(line)
    assert total == line * 5000
    assert not holdback.holding


def test_long_held_call_is_accumulated_exactly() -> None:
    holdback = HoldBack(MARKERS)
    head = '<tool_call>{"name": "search", "arguments": {"query": "'
    pieces = [head] + ["y" * 1000] * 500 + ['"}}</tool_call>']
    for piece in pieces:
        assert holdback.feed(piece) == ""
        assert holdback.release_if_resolved(NAMES) == ""
    assert holdback.flush() == "".join(pieces)


def test_closing_tag_inside_a_json_string_does_not_end_the_call() -> None:
    call = '<tool_call>{"name": "search", "arguments": {"query": "a </tool_call> b"}}</tool_call>'
    emitted, held = run(chars(f"Writing.\n{call}"))
    assert emitted == "Writing.\n"
    assert held == call


def test_malformed_json_in_a_tag_falls_back_to_the_closing_tag() -> None:
    text = "<tool_call>{'name': 'search'}</tool_call> after"
    emitted, held = run(chars(text))
    assert emitted == text and held == ""


def test_fenced_tag_call_is_held() -> None:
    call = f"```xml\n<tool_call>\n{CALL_JSON}\n</tool_call>\n```"
    emitted, held = run(chars(f"Here:\n{call}"))
    assert emitted == "Here:\n"
    assert held == call


@pytest.mark.parametrize(
    "block",
    [
        "```html\n<!DOCTYPE html>\n<p>hi</p>\n```\n",
        "```\n```\n",
        "```text\n<tool>not a marker</tool>\n```\n",
    ],
)
def test_code_blocks_that_only_look_like_tags_stream(block: str) -> None:
    holdback = HoldBack(MARKERS)
    text = block + "After the block.\n"
    emitted = ""
    for c in text:
        emitted += holdback.feed(c) + holdback.release_if_resolved(NAMES)
    assert emitted == text
    assert not holdback.holding
