"""Tool intent under auto: which prose counts as a failed call, and the streaming gate."""

from __future__ import annotations

import pytest

from forge_core.guardrails import intent as intent_module
from forge_core.guardrails.attempt import Splitter
from forge_core.guardrails.intent import (
    GatedSplitter,
    IntentGate,
    applies,
    asked_about,
    find_intent,
)
from forge_core.guardrails.rescue import BUILTIN_PARSERS

NAMES = frozenset({"get_weather", "get_stock_price", "send_email", "search"})

POSITIVE = [
    ("You can use the `get_stock_price` function to get the price.", "get_stock_price"),
    ("get_weather(city='Paris')", "get_weather"),
    ("Let me check: get_weather(\"Paris\")", "get_weather"),
    ("```python\ndef send_email(to, subject, body):\n    pass\n```", "send_email"),
    ("```python\nresult = tools.search('cats')\nprint(result)\n```", "search"),
    ("```\nprice = get_stock_price\n```", "get_stock_price"),
    ('{"name": "get_weather", "arguments": {"city": "Paris"', "get_weather"),
    ("Call `get_weather(\"Oslo\")` for that.", "get_weather"),
]

NEGATIVE = [
    "Hello! How can I help you today?",
    "The capital of France is Paris.",
    "I can check the weather for you if you tell me the city.",
    "The get_weather tool is not needed for this question.",  # a plain mention
    "I searched my memory: 2 + 2 = 4.",
    "Use `ls -la` to list files.",  # backticks, but not an offered tool
    "```python\nprint(sum([1, 2, 3]))\n```",  # code, but no offered tool
    "get_weatherman(3) is not a tool",  # a longer identifier
    "<think>maybe get_weather(Paris)</think>It is sunny there, as far as I know.",
]


@pytest.mark.parametrize(("text", "tool"), POSITIVE)
def test_clear_attempts_to_use_a_tool_are_intent(text: str, tool: str) -> None:
    assert find_intent(text, NAMES) == tool


@pytest.mark.parametrize("text", NEGATIVE)
def test_honest_prose_is_not_intent(text: str) -> None:
    assert find_intent(text, NAMES) is None


def test_a_tool_the_user_asked_about_is_no_sign_of_intent() -> None:
    messages = [{"role": "user", "content": "What does get_stock_price return?"}]
    asked = asked_about(messages, NAMES)
    assert asked == {"get_stock_price"}
    text = "`get_stock_price(symbol)` returns the latest price of a stock."
    assert find_intent(text, NAMES, asked) is None
    assert find_intent("Try `send_email(...)`.", NAMES, asked) == "send_email"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": "hi"}], True),
        ([{"role": "system", "content": "s"}], True),
        ([{"role": "user", "content": "w?"}, {"role": "assistant", "tool_calls": []},
          {"role": "tool", "tool_call_id": "c", "content": "12C"}], False),
        ([{"role": "tool", "content": "x"}, {"role": "user", "content": "and Oslo?"}], True),
        ([{"role": "user", "content": [{"type": "tool_result", "content": "12C"}]}], False),
    ],
)
def test_intent_applies_only_before_a_tool_result(messages: list, expected: bool) -> None:
    assert applies(messages) is expected


def _split(text: str, pieces: list[str]) -> tuple[str, str]:
    gate = GatedSplitter(Splitter("scan", BUILTIN_PARSERS, NAMES), IntentGate(NAMES))
    sent = "".join(gate.feed(piece) for piece in pieces)
    sent += gate.drain()
    return sent, gate.flush()


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("text", [t for t, _ in POSITIVE] + NEGATIVE)
@pytest.mark.parametrize("size", [1, 3, 7, 10_000])
def test_the_gate_splits_alike_however_the_text_arrives(text: str, size: int) -> None:
    whole = _split(text, [text])
    assert _split(text, _chunks(text, size)) == whole
    sent, held = whole
    assert sent + held == text
    if find_intent(text, NAMES):
        assert find_intent(held, NAMES) is not None  # the signal is never shown early
    else:
        assert held == ""  # plain prose is all shown


def test_plain_prose_streams_as_it_comes() -> None:
    gate = IntentGate(NAMES)
    assert gate.feed("Hello there, ") == "Hello there, "
    assert gate.feed("how can") == "how can"
    assert gate.feed(" I help? get_") == " I help? "  # may grow into get_weather
    assert gate.feed("ready.\n") == "get_ready.\n"
    assert gate.feed("Use `x") == "Use "  # from a backtick on, the line waits
    assert gate.feed("` now.\n") == "`x` now.\n"
    assert gate.feed("```python\nprint(1)\n") == ""  # an open code block waits
    assert gate.feed("```\n") == "```python\nprint(1)\n```\n"


def test_after_a_signal_everything_is_held() -> None:
    gate = IntentGate(NAMES)
    assert gate.feed("Sure.\nCall `get_weather` now.\nIt works.") == "Sure.\nCall "
    assert gate.drain() == ""
    assert gate.flush() == "`get_weather` now.\nIt works."


LINES = [
    "Plain line.\n", "{\"\n", "\n", "It says get_weather is a tool.\n", "Use `x` here.\n",
    "get_wea\n", "```python\nprint(1)\n```\n", "Then get_weather(city) runs.\n", "tail get_",
]


@pytest.mark.parametrize("scan", [1, 5, 16, 4096])
def test_whole_plain_lines_go_out_at_once_and_split_like_a_stream(
    scan: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole lines without a backtick or a name are released together (any window size),
    and the split is the one a character-by-character stream gives."""
    monkeypatch.setattr(intent_module, "PLAIN_SCAN", scan)
    for start in range(len(LINES)):
        text = "".join(LINES[start:] + LINES[:start]) * 3
        whole = _split(text, [text])
        assert _split(text, _chunks(text, 1)) == whole
        assert _split(text, _chunks(text, 7)) == whole
        sent, held = whole
        assert sent + held == text
    gate = IntentGate(NAMES)
    plain = "No tool here.\n" * 1000
    assert gate.feed(plain + "Call `get") == plain + "Call "
