"""Issue 10's retry strategy against the real llama-server with the demo model: the compact
grammar's call is never cut by the client's small ``max_tokens``, exhaustion answers honestly
(never the constrained JSON), and a placeholder argument copied from the context is rejected.
Few requests, small outputs: the CPU is slow and shared."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from jsonschema import Draft202012Validator

from forge_core.config import GuardrailSettings
from forge_core.engine import FALLBACK
from forge_core.testing import serve_forge_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"


def function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties,
                       "required": list(properties), "additionalProperties": False}}}


FLIGHT = function("book_flight", "Book a flight.", {
    "origin": {"type": "string", "description": "IATA code"},
    "destination": {"type": "string", "description": "IATA code"},
    "date": {"type": "string", "description": "YYYY-MM-DD"},
    "passengers": {"type": "object", "properties": {"adults": {"type": "integer"}},
                   "required": ["adults"]},
})
# A pattern the grammar leaves to forge's validation, and no value for it in the prompt.
VOUCHER = function("redeem_voucher", "Redeem a voucher code.", {
    "code": {"type": "string", "pattern": "^zq[0-9]{9}qz$"},
})
READ = function("read_file", "Read a file.", {"path": {"type": "string"}})


@pytest.fixture(scope="module")
def forge_url(llama_server: str) -> Iterator[str]:
    guardrails = GuardrailSettings(max_retries=1, keepalive_interval=1.0)
    with serve_forge_on_loopback(llama_server, guardrails=guardrails) as url:
        yield url


@pytest.fixture(scope="module")
def client(forge_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=forge_url + "/v1", api_key="unused", max_retries=0,
                         timeout=600)


def test_a_constrained_call_is_not_cut_by_a_small_max_tokens(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0, max_tokens=12, tools=[FLIGHT], tool_choice="required",
        messages=[{"role": "user", "content": "Book a flight from CDG to JFK on 2025-11-03."}],
    )
    notes = raw.headers.get("x-forge-guardrail", "")
    choice = raw.parse().choices[0]
    assert "constrained" in notes, notes
    assert choice.finish_reason == "tool_calls", (choice.message, notes)
    [call] = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    schema = FLIGHT["function"]["parameters"]
    assert list(Draft202012Validator(schema).iter_errors(args)) == []


def test_exhaustion_answers_honestly_never_with_constrained_json(
    client: openai.OpenAI,
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0, max_tokens=24, tools=[VOUCHER],
        tool_choice={"type": "function", "function": {"name": "redeem_voucher"}},
        messages=[{"role": "user", "content": "Redeem my voucher please."}],
    )
    notes = raw.headers.get("x-forge-guardrail", "")
    choice = raw.parse().choices[0]
    assert "retries-exhausted:" in notes and "constrained" in notes, notes
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    content = choice.message.content or ""
    assert content and '"arguments"' not in content and '"name"' not in content, content
    assert content.startswith(FALLBACK) or "{" not in content, content


PLACEHOLDER = json.dumps({"name": "read_file", "arguments": {"path": "path"}})


def test_a_copied_placeholder_is_rejected(client: openai.OpenAI) -> None:
    """The conversation shows the model a printed call whose argument is the parameter's name;
    the model copies it (as text), forge rescues it and rejects the placeholder."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0, max_tokens=48, tools=[READ], tool_choice="auto",
        messages=[
            {"role": "user", "content": "Read the file notes.txt."},
            {"role": "assistant", "content": f"```json\n{PLACEHOLDER}\n```"},
            {"role": "user", "content": "And the other file?"},
        ],
    )
    notes = raw.headers.get("x-forge-guardrail", "")
    message = raw.parse().choices[0].message
    assert notes.startswith("rescued:fenced-json,retry:placeholder"), notes
    # Whatever the retry made of it, the placeholder never reaches the client.
    for call in message.tool_calls or []:
        assert json.loads(call.function.arguments)["path"].strip().lower() != "path"
    assert '"path": "path"' not in (message.content or "")
