"""The guardrail-rate benchmark's own pieces: its prompt set and how it judges an answer."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "guardrail_rate_bench", ROOT / "bench" / "guardrail_rate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
PROMPTS = bench.load_prompts(bench.PROMPTS, bench.TOOLS)


def test_prompt_set_is_large_varied_and_well_formed() -> None:
    assert len(PROMPTS) >= 30
    assert len({p.id for p in PROMPTS}) == len(PROMPTS)
    choices = [p.tool_choice if isinstance(p.tool_choice, str) else "named" for p in PROMPTS]
    assert {"required", "named", "auto"} <= set(choices)
    assert choices.count("auto") < choices.count("required")
    for prompt in PROMPTS:
        assert prompt.messages[-1]["role"] == "user" and prompt.tools
        for tool in prompt.tools:
            Draft202012Validator.check_schema(tool["function"]["parameters"])
        if isinstance(prompt.tool_choice, dict):
            named = prompt.tool_choice["function"]["name"]
            assert named in [t["function"]["name"] for t in prompt.tools]


def answer(*calls: tuple[str, Any], content: str | None = None) -> dict[str, Any]:
    tool_calls = [
        {"id": f"c{i}", "type": "function",
         "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)}}
        for i, (n, a) in enumerate(calls)
    ]
    message = {"role": "assistant", "content": content, "tool_calls": tool_calls or None}
    return {"choices": [{"message": message, "finish_reason": "stop"}]}


def prompt(pid: str) -> Any:
    return next(p for p in PROMPTS if p.id == pid)


@pytest.mark.parametrize(
    ("pid", "data", "outcome"),
    [
        ("weather-paris", answer(("get_weather", {"city": "Paris"})), "call"),
        ("weather-paris", answer(("get_weather", {"city": "Paris", "unit": "K"})), "invalid"),
        ("weather-paris", answer(("get_weather", '{"city": "Par')), "invalid"),
        ("weather-paris", answer(("get_weather", "[1]")), "invalid"),
        ("weather-paris", answer(("launch", {})), "invalid"),
        ("weather-paris", answer(content="It is sunny."), "missing"),
        ("weather-named", answer(("get_forecast", {"city": "Tokyo", "days": 1})), "invalid"),
        ("auto-chat", answer(content="Hello!"), "prose"),
        ("flight-nested", answer(("book_flight", {
            "origin": "JFK", "destination": "LHR", "date": "2025-07-01",
            "passengers": {"adults": 0}})), "invalid"),
    ],
)
def test_judge(pid: str, data: dict[str, Any], outcome: str) -> None:
    assert bench.judge(prompt(pid), 200, data) == outcome


def test_judge_counts_http_errors() -> None:
    assert bench.judge(prompt("weather-paris"), 502, {"error": {"message": "x"}}) == "error"


def test_modes_are_forge_command_lines() -> None:
    assert bench.MODES["direct"].forge_args is None
    assert "--no-constrained-retry" in bench.MODES["retry"].forge_args
    assert bench.parse_args(["--modes", "direct,constrained"]).modes == ["direct", "constrained"]
