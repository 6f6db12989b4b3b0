"""Guardrails against the real llama-server with the demo model, through the ``openai`` SDK.

The 135M model answers prose even when a call is required; forge's constrained retry turns
that into a valid call. Few tests, small ``max_tokens``: the CPU is slow and shared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator

from forge_core.config import GuardrailSettings
from forge_core.testing import serve_forge_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "minLength": 1}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def client(llama_server: str) -> Iterator[openai.OpenAI]:
    guardrails = GuardrailSettings(max_retries=2, keepalive_interval=1.0)
    with serve_forge_on_loopback(llama_server, guardrails=guardrails) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)


def assert_valid(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    assert name in SCHEMAS and isinstance(args, dict)
    errors = [e.message for e in Draft202012Validator(SCHEMAS[name]).iter_errors(args)]
    assert errors == [], errors
    return args


def ask(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 64,
        **extra,
    }


def test_required_choice_yields_a_valid_call(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(**ask(tool_choice="required"))
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls", (choice.message, raw.headers)
    [call] = choice.message.tool_calls
    assert call.id
    assert_valid(call.function.name, call.function.arguments)


def test_required_choice_streamed_yields_one_canonical_valid_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        **ask(tool_choice={"type": "function", "function": {"name": "get_weather"}}), stream=True
    )
    deltas, finishes, text = [], [], ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            deltas += choice.delta.tool_calls or []
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    first = deltas[0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function.name == "get_weather"
    args = assert_valid("get_weather", "".join(d.function.arguments or "" for d in deltas))
    assert args["unit"] in ("celsius", "fahrenheit")
    assert "<tool_call>" not in text and '"arguments"' not in text


KELVIN = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}})
WRONG_UNIT = [
    {"role": "user", "content": "What is the weather in Paris, in kelvin?"},
    {"role": "assistant", "content": f"```json\n{KELVIN}\n```"},
    {"role": "user", "content": "And in Rome, in kelvin?"},
]


def test_a_wrong_argument_is_caught_and_corrected(client: openai.OpenAI) -> None:
    """The conversation shows the model a printed call with a unit the schema does not allow.
    The model copies it (as text, where llama-server's own tool grammar does not apply);
    forge rescues the call, its schema validation catches the enum violation, and the
    constrained retry comes back valid. Under ``auto``: a schema error is not a prose answer."""
    raw = client.chat.completions.with_raw_response.create(
        **ask(messages=WRONG_UNIT, tool_choice="auto")
    )
    notes = raw.headers.get("x-forge-guardrail", "")
    choice = raw.parse().choices[0]
    assert notes.startswith("rescued:fenced-json,retry:schema"), notes  # "kelvin" caught...
    assert choice.finish_reason == "tool_calls", (choice.message, notes)
    [call] = choice.message.tool_calls
    args = assert_valid(call.function.name, call.function.arguments)
    assert call.function.name == "get_weather" and args["unit"] != "kelvin"  # ...and fixed
