"""Tool relevance and the placeholder-free grammar against the real llama-server with the demo
model (marker ``llama``).

* under ``auto``, a request that clearly asks for a tool ends as a call of that tool, not as
  the prose SmolLM2 writes first, streamed or not;
* a greeting next to the same tools stays prose;
* llama-server compiles the grammar that excludes placeholder values, and its answer obeys it.

``FORGE_TEST_LLAMA_URL`` points the tests at a running llama-server instead of the shared
``llama_server`` fixture.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from forge_llamafile.constrain import constrained_body

from forge_core.config import GuardrailSettings
from forge_core.testing import serve_forge_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"


def tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name, "description": description,
            "parameters": {"type": "object", "properties": properties,
                           "required": list(properties)[:1]},
        },
    }


WEATHER = tool("get_weather", "Get the current weather for a city.",
               {"city": {"type": "string", "minLength": 1}})
SEARCH = tool("web_search", "Search the web and return the top results.",
              {"query": {"type": "string", "minLength": 1}})
TOOLS = [WEATHER, SEARCH]


@pytest.fixture(scope="module")
def backend_url(request: pytest.FixtureRequest) -> str:
    return os.environ.get("FORGE_TEST_LLAMA_URL") or request.getfixturevalue("llama_server")


@pytest.fixture(scope="module")
def forge(backend_url: str) -> Iterator[str]:
    guardrails = GuardrailSettings(max_retries=2, keepalive_interval=1.0)
    with serve_forge_on_loopback(backend_url, guardrails=guardrails) as url:
        yield url


def body(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL, "messages": [{"role": "user", "content": content}], "tools": TOOLS,
        "temperature": 0, "max_tokens": 64, **extra,
    }


def test_a_request_for_the_weather_ends_as_its_call(forge: str) -> None:
    r = httpx.post(f"{forge}/v1/chat/completions", json=body("What's the weather in Lisbon?"),
                   timeout=600)
    assert r.status_code == 200, r.text
    [call] = r.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"].strip()
    # Either the model called at once, or its prose was retried as a failed call.
    header = r.headers.get("x-forge-guardrail", "")
    assert header == "" or "tool_expected" in header or "tool_intent" in header


def test_streamed_no_prose_comes_before_the_call(forge: str) -> None:
    with httpx.stream("POST", f"{forge}/v1/chat/completions",
                      json=body("What's the weather in Lisbon?", stream=True), timeout=600) as r:
        events = [
            json.loads(line[6:]) for line in r.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
    assert not "".join(d.get("content") or "" for d in deltas).strip()
    names = [c["function"]["name"] for d in deltas for c in d.get("tool_calls") or []
             if (c.get("function") or {}).get("name")]
    assert names == ["get_weather"]
    finishes = [e["choices"][0]["finish_reason"] for e in events
                if e.get("choices") and e["choices"][0].get("finish_reason")]
    assert finishes == ["tool_calls"]


def test_a_greeting_next_to_the_same_tools_stays_prose(forge: str) -> None:
    r = httpx.post(f"{forge}/v1/chat/completions", json=body("Hello there!"), timeout=600)
    message = r.json()["choices"][0]["message"]
    assert not message.get("tool_calls") and message["content"].strip()
    assert "x-forge-guardrail" not in r.headers


def test_llama_server_compiles_the_placeholder_free_grammar(backend_url: str) -> None:
    request = body("Search the web for a vegan lasagna recipe.", tool_choice="required")
    constrained = constrained_body(request, SEARCH, "grammar-avoid")
    assert "grammar" in constrained and "avoid" in constrained["grammar"]
    constrained["max_tokens"] = 128
    r = httpx.post(f"{backend_url}/v1/chat/completions", json=constrained, timeout=600)
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert answer["name"] == "web_search"
    query = answer["arguments"]["query"]
    assert query.strip() and query not in ("web_search", "web search", "query", "get_weather")
