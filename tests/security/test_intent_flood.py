"""The intent gate (``--auto-intent on``) costs linear work on a flood of one long line, so a
streamed or non-streamed answer of 100,000 markers does not stall the event loop."""

from __future__ import annotations

import re
from typing import Any

import pytest
from loop_watchdog import LoopWatchdog
from test_holdback_flood import flood_reply, stream_text

from forge_core.guardrails import intent
from forge_core.guardrails.intent import IntentGate
from forge_core.guardrails.linestart import LineStart
from forge_core.testing import WEATHER_TOOL, ScriptedBackend, chat, forge_client, reply_tool_call

NAMES = frozenset({"get_weather", "search"})
URL = "/v1/chat/completions"

FLOODS = {
    "tool_call": "<tool_call> ",
    "brace-quote": '{"',
    "backticks": "`",
    "function": "get_weather(",  # a signal: everything from the first one on is held
    "name": "get_weather ",  # a plain mention: held to the line's end, then released
    "name-prefix": "get_wea ",  # a trailing word that may grow into a name, every time
    "words": "aaaa ",
    "long-word": "a",
    "prefix-lines": "get_wea\n",
    "in-backticks": "`get_weather` ",
    "open-fence-body": "x = `1`\n",  # after an opening fence that never closes
}


class CountingPattern:
    """A compiled pattern that counts the characters its searches are handed."""

    def __init__(self, pattern: re.Pattern[str] | LineStart, counter: list[int]) -> None:
        self._pattern, self._counter = pattern, counter

    def _run(self, how: str, string: str, pos: int = 0, *rest: Any) -> Any:
        end = min(rest[0], len(string)) if rest else len(string)
        self._counter[0] += end - pos
        return getattr(self._pattern, how)(string, pos, *rest)

    def search(self, *args: Any) -> Any:
        return self._run("search", *args)

    def match(self, *args: Any) -> Any:
        return self._run("match", *args)

    def fullmatch(self, *args: Any) -> Any:
        return self._run("fullmatch", *args)


MODULE_PATTERNS = [
    name for name, value in vars(intent).items()
    if isinstance(value, re.Pattern | LineStart) and name != "_FENCE"  # _FENCE: find_intent's, once
]


def gate_work(text: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """Characters the gate's scans are handed (and pending text copied for a rescan) while it
    splits ``text`` fed in ``chunk``-sized pieces."""
    counter = [0]
    with monkeypatch.context() as patch:
        for name in MODULE_PATTERNS:
            patch.setattr(intent, name, CountingPattern(getattr(intent, name), counter))

        class CountingGate(IntentGate):
            def _risk(self, pending: str) -> int:
                counter[0] += len(pending)
                return super()._risk(pending)

        gate = CountingGate(NAMES)
        gate._name_at = CountingPattern(gate._name_at, counter)  # type: ignore[arg-type,assignment]
        gate._patterns = [CountingPattern(p, counter) for p in gate._patterns]  # type: ignore[misc]
        out = [gate.feed(text[start : start + chunk]) for start in range(0, len(text), chunk)]
        out.append(gate.flush())
    assert "".join(out) == text
    return counter[0]


def flood(kind: str, n: int) -> str:
    head = "Intro.\n```python\n" if kind == "open-fence-body" else "Intro. "
    return head + FLOODS[kind] * n


@pytest.mark.parametrize("kind", sorted(FLOODS))
@pytest.mark.parametrize("chunk", [7, 1024, 10**9])  # streamed, hold-back slices, all at once
def test_a_flood_costs_the_gate_linear_work(
    kind: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four times the markers, about four times the scanning (quadratic code: sixteen)."""
    small, large = (gate_work(flood(kind, n), chunk, monkeypatch) for n in (2000, 8000))
    assert large <= 6 * small  # (linear and the bound: about 4; quadratic: 16)


@pytest.mark.parametrize("kind", ["backticks", "name", "name-prefix", "words", "tool_call"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_100k_markers_do_not_stall_the_loop_with_auto_intent(
    kind: str, streamed: bool
) -> None:
    text = flood(kind, 100_000)
    backend = ScriptedBackend().push(flood_reply(text))
    async with forge_client(backend) as http, LoopWatchdog():  # auto_intent: on by default
        response = await http.post(URL, json=chat(tools=[WEATHER_TOOL], stream=streamed))
    assert response.status_code == 200
    if streamed:
        content, calls = stream_text(response.text)
    else:
        message = response.json()["choices"][0]["message"]
        content, calls = message["content"], message.get("tool_calls") or []
    assert content == text and calls == []
    assert len(backend.requests) == 1  # no signal: the prose is the answer


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_100k_intent_flood_is_retried_without_stalling(streamed: bool) -> None:
    text = flood("function", 100_000)
    backend = ScriptedBackend().push(
        flood_reply(text), reply_tool_call("get_weather", {"city": "Paris"})
    )
    async with forge_client(backend) as http, LoopWatchdog():
        response = await http.post(URL, json=chat(tools=[WEATHER_TOOL], stream=streamed))
    assert response.status_code == 200
    if streamed:
        content, calls = stream_text(response.text)
        names = [c["function"]["name"] for c in calls if c.get("function", {}).get("name")]
    else:
        message = response.json()["choices"][0]["message"]
        content = message["content"] or ""
        names = [c["function"]["name"] for c in message["tool_calls"]]
    # The intent text never went out: only what came before the first signal.
    assert "get_weather" not in content and content.strip() in ("", "Intro.")
    assert names == ["get_weather"] and len(backend.requests) == 2
