"""Issue 15 item 6 and issue 10: hold-back scanning is linear whatever the text holds, and a
JSON call printed mid-line is held back and rescued."""

from __future__ import annotations

import json
from typing import Any

import pytest
from loop_watchdog import LoopWatchdog

from forge_core.config import GuardrailSettings
from forge_core.guardrails.holdback import HoldBack
from forge_core.guardrails.rescue import BUILTIN_PARSERS, all_markers
from forge_core.testing import WEATHER_TOOL, Reply, ScriptedBackend, chat, forge_client

MARKERS = all_markers(BUILTIN_PARSERS)
NAMES = frozenset({"get_weather"})
URL = "/v1/chat/completions"

FLOODS = {
    "tool_call": "<tool_call> ",
    "tool_call-lines": "<tool_call>\n",
    "closed-tags": "<tool_call>x</tool_call>",
    "fences": "```\n",
    "json-fences": "```json\n{",
    "brace-quote": '\n{"',
    "bracket-brace": "\n[{",
    "mid-line-brace": ' {"a',
    "mismatched": '{"a": [1}',
    "closed-json": '{"a": 1} ',
    "partial": "<tool_",
    "python-tag": "<|python_tag|> ",
    "mistral": "[TOOL_CALLS] ",
    "function": "<function=x> ",
    "function-unclosed": "<function=get_weather",  # a name that never ends: rescue was quadratic
    "mistral-tight": "[TOOL_CALLS]",  # failed decodes counted lines from the text's start
    "gemma": "<|tool_call>call:get_weather{",
    "qwen-parameters": "<function=get_weather><parameter=",
    "naming-candidates": '{"name": "nope get_weather"} ',
}


def scanned_characters(text: str, chunk: int) -> int:
    """Characters HoldBack hands to its scanners (free text, and new text of a hold) while
    splitting ``text`` like the engine does."""
    holdback = HoldBack(MARKERS)
    seen = 0
    free, scan = holdback._free, holdback._scan

    def counted_free(piece: str) -> str:
        nonlocal seen
        seen += len(piece)
        return free(piece)

    def counted_scan(hold: Any, piece: str, offset: int) -> tuple[str, str]:
        nonlocal seen
        seen += len(piece)
        return scan(hold, piece, offset)

    holdback._free = counted_free  # type: ignore[method-assign]
    holdback._scan = counted_scan  # type: ignore[method-assign]
    out = []
    for start in range(0, len(text), chunk):
        out.append(holdback.feed(text[start : start + chunk]))
        out.append(holdback.release_if_resolved(NAMES))
    out.append(holdback.flush())
    assert "".join(out) == text
    return seen


@pytest.mark.parametrize("kind", sorted(FLOODS))
@pytest.mark.parametrize("chunk", [7, 10**9])  # streamed in small pieces, or all at once
def test_a_marker_flood_costs_linear_work(kind: str, chunk: int) -> None:
    """Four times the markers, about four times the scanning (quadratic code: sixteen)."""
    small, large = (scanned_characters("Intro. " + FLOODS[kind] * n, chunk) for n in (2000, 8000))
    assert large <= 6 * small  # (linear and the bound: about 5; quadratic: 16)



def flood_reply(text: str, piece: int = 4000) -> Reply:
    chunks: list[dict[str, Any] | str] = [{"role": "assistant", "content": None}]
    chunks += [{"content": text[i : i + piece]} for i in range(0, len(text), piece)]
    return Reply(message={"role": "assistant", "content": text}, stream_chunks=chunks)


def stream_text(raw: str) -> tuple[str, list[dict[str, Any]]]:
    text, calls = "", []
    for line in raw.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        delta = json.loads(line[6:])["choices"][0]["delta"]
        text += delta.get("content") or ""
        calls += delta.get("tool_calls") or []
    return text, calls


@pytest.mark.parametrize("kind", ["tool_call", "brace-quote", "function-unclosed", "mistral-tight"])
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("auto_intent", [False, True])  # with the intent gate behind it too
async def test_100k_markers_do_not_stall_the_loop(
    kind: str, streamed: bool, auto_intent: bool
) -> None:
    text = "Intro. " + FLOODS[kind] * 100_000
    backend = ScriptedBackend().push(flood_reply(text))
    body = chat(tools=[WEATHER_TOOL], stream=streamed)
    guard = GuardrailSettings(auto_intent=auto_intent)
    async with forge_client(backend, guardrails=guard) as http, LoopWatchdog():
        response = await http.post(URL, json=body)
    assert response.status_code == 200
    if streamed:
        content, calls = stream_text(response.text)
    else:
        message = response.json()["choices"][0]["message"]
        content, calls = message["content"], message.get("tool_calls") or []
    assert content == text and calls == []


CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize(
    "printed", [json.dumps(CALL), json.dumps([CALL]), json.dumps(CALL, indent=2)]
)
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_json_call_mid_line_is_rescued(printed: str, streamed: bool) -> None:
    text = f"Sure: {printed}"
    backend = ScriptedBackend().push(flood_reply(text, piece=3))
    async with forge_client(backend) as http:
        response = await http.post(URL, json=chat(tools=[WEATHER_TOOL], stream=streamed))
    if streamed:
        content, calls = stream_text(response.text)
        names = [c["function"]["name"] for c in calls if c.get("function", {}).get("name")]
        arguments = "".join(c["function"].get("arguments") or "" for c in calls)
    else:
        message = response.json()["choices"][0]["message"]
        content, calls = message["content"] or "", message.get("tool_calls") or []
        names = [c["function"]["name"] for c in calls]
        arguments = "".join(c["function"]["arguments"] for c in calls)
    assert content.strip() == "Sure:"
    assert names == ["get_weather"] and json.loads(arguments) == {"city": "Paris"}


async def test_prose_braces_mid_line_are_not_delayed() -> None:
    pieces = ["a set ", "{1,2}", " and ", "{x}", " done"]
    holdback = HoldBack(MARKERS)
    for piece in pieces:
        assert holdback.feed(piece) == piece
        assert not holdback.holding


def test_json_finder_budgets_overlapping_failed_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``{"`` inside an unclosed value would otherwise be decoded to the end again."""
    from forge_core.guardrails import jsonscan, rescue

    unit = '{"a": [' + "1, " * 300
    text = json.dumps(CALL) + " " + unit * 2000  # 2000 unclosed values, each to the end
    handed = 0
    decode = jsonscan.DECODER.raw_decode

    def counted(doc: str, start: int = 0) -> Any:
        nonlocal handed
        handed += len(doc) - start
        return decode(doc, start)

    monkeypatch.setattr(jsonscan.DECODER, "raw_decode", counted)
    hits = rescue.find_json(text, NAMES)
    assert [call.name for _, _, calls in hits for call in calls] == ["get_weather"]
    # The budget, plus the windows each failed decode widened through (a quarter more).
    assert handed <= 2 * (rescue.JSON_SCAN_FACTOR + 2) * len(text)
