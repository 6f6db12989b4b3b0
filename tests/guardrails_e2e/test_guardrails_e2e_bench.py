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
    tool = [p for p in PROMPTS if p.expect is not None]
    prose = [p for p in PROMPTS if p.expect is None]
    assert len(tool) >= 40 and len(prose) >= 12
    assert len({p.id for p in PROMPTS}) == len(PROMPTS)
    choices = [p.tool_choice if isinstance(p.tool_choice, str) else "named" for p in tool]
    assert {"required", "named", "auto"} <= set(choices)
    assert sum(len(p.tools) > 1 for p in tool) >= 20  # multi-tool offers
    assert sum(p.messages[-1]["role"] == "tool" for p in prose) >= 4  # after a tool result
    for prompt in PROMPTS:
        assert prompt.tools
        names = [t["function"]["name"] for t in prompt.tools]
        for t in prompt.tools:
            Draft202012Validator.check_schema(t["function"]["parameters"])
        if isinstance(prompt.tool_choice, dict):
            assert prompt.tool_choice["function"]["name"] in names
        if prompt.expect is not None:
            assert prompt.expect["tool"] in names, prompt.id


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
        ("weather-lisbon", answer(("get_weather", {"city": "Lisbon"})), "correct"),
        ("weather-lisbon", answer(("get_weather", {"city": " lisbon ", "unit": "celsius"})),
         "correct"),
        ("weather-lisbon", answer(("get_weather", {"city": "Lisbon, Portugal"})), "wrong"),
        ("weather-lisbon", answer(("get_weather", {"city": "Lisbon", "unit": "K"})), "broken"),
        ("weather-lisbon", answer(("get_weather", '{"city": "Lis')), "broken"),
        ("weather-lisbon", answer(("get_weather", "[1]")), "broken"),
        ("weather-lisbon", answer(("launch", {})), "broken"),
        ("weather-lisbon", answer(content="It is sunny."), "prose"),
        ("weather-lisbon", answer(content='{\n  "name": "get_weather", "argu'), "broken"),
        ("weather-lisbon", answer(content="<tool_call>{}</tool_call>"), "broken"),
        ("weather-fahrenheit", answer(("web_search", {"query": "Denver"})), "wrong"),
        ("weather-named-seoul", answer(("get_forecast", {"city": "Seoul", "days": 1})),
         "broken"),
        ("calc-product", answer(("calculator", {"expression": "36 * 12"})), "correct"),
        ("calc-product", answer(("calculator", {"expression": "12 x 36"})), "wrong"),
        ("convert-miles", answer(("convert_units", {"value": 10.0, "from_unit": "mi",
                                                    "to_unit": "km"})), "correct"),
        ("search-recipe", answer(("web_search", {"query": "Vegan LASAGNA"})), "correct"),
        ("email-dave", answer(("send_email", {"to": ["Dave@example.com"], "subject": "lunch",
                                              "body": "x"})), "correct"),
        ("dir-auto-home", answer(("list_directory", {"path": "/home/user", "recursive": 1})),
         "broken"),
        ("prose-hello", answer(content="Hello!"), "correct"),
        ("prose-hello", answer(("get_weather", {"city": "Paris"})), "wrong"),
    ],
)
def test_judge(pid: str, data: dict[str, Any], outcome: str) -> None:
    assert bench.judge(prompt(pid), 200, data) == outcome


def test_judge_counts_http_errors() -> None:
    assert bench.judge(prompt("weather-lisbon"), 502, {"error": {"message": "x"}}) == "error"


def test_the_baseline_reads_its_json_answer_as_the_call() -> None:
    good = answer(content='{"name": "get_weather", "arguments": {"city": "Lisbon"}}')
    assert bench.judge(prompt("weather-lisbon"), 200, good, one_constrained=True) == "correct"
    cut = answer(content='{"name": "get_weather", "arguments": {"ci')
    assert bench.judge(prompt("weather-lisbon"), 200, cut, one_constrained=True) == "broken"
    body = bench.request_body(prompt("weather-named-seoul"), bench.MODES["one-constrained"],
                              "m", prompt("weather-named-seoul").tool_choice, 64)
    assert "tools" not in body and body["max_tokens"] >= 512
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["name"] == {"const": "get_weather"}  # the named tool only


def test_modes_override_the_choice_and_skip_prose_under_required() -> None:
    required, auto = bench.MODES["forge-required"], bench.MODES["forge-auto"]
    assert bench.choice_for(prompt("weather-auto-cairo"), required) == "required"
    named = prompt("weather-named-seoul")
    assert bench.choice_for(named, required) == named.tool_choice
    assert bench.choice_for(named, auto) == "auto"
    assert bench.choice_for(prompt("prose-hello"), required) is None
    assert bench.MODES["direct"].forge_args is None
    assert "--no-constrained-retry" in bench.MODES["unconstrained"].forge_args
    assert bench.parse_args(["--modes", "direct,forge-auto"]).modes == ["direct", "forge-auto"]


def test_summary_figures() -> None:
    summary = bench.Summary("m", [
        bench.Result("a", "tool", "correct", 1.0, "retry:schema,constrained,rescued:json"),
        bench.Result("b", "tool", "broken", 3.0),
        bench.Result("c", "prose", "correct", 2.0),
    ])
    figures = summary.figures()
    assert figures["correct"] == 1 and figures["tool_prompts"] == 2
    assert figures["prose_kept"] == 1 and figures["usable"] == 2 and figures["broken"] == 1
    assert figures["mean_s"] == 2.0 and figures["p90_s"] == 3.0
    assert figures["calls_per_answer"] == pytest.approx(4 / 3)


@pytest.mark.parametrize(
    ("content", "broken"),
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {}}</tool_call>', True),
        ('Sure: {"name": "get_weather", "arguments": {"city": "Paris"}}', True),
        ("<function=get_weather>", True),
        ("Put calls within <tool_call></tool_call> XML tags.", False),
        ('```python\nreturn {"name": "buy groceries"}\n```', False),
        ("It is sunny in Paris.", False),
    ],
)
def test_call_text_is_a_call_for_an_offered_tool_printed_as_prose(
    content: str, broken: bool
) -> None:
    assert bench.call_text(content, ["get_weather", "search"]) is broken
