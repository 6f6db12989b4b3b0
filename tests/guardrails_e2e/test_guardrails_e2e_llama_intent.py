"""Issue 10 part B against the real llama-server with the demo model (marker ``llama``).

* llama-server's own tool-call parser failing (HTTP 500, forced here deterministically with
  an assistant prefill holding a malformed call) is a failed attempt that forge retries,
  not a 502;
* a greeting under ``auto`` with tools offered stays prose (auto-intent does not invent a call);
* the same request through the llamafile client's error mapping with a streamed request.

``FORGE_TEST_LLAMA_URL`` points the tests at a running llama-server instead of the shared
``llama_server`` fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from forge_core.config import GuardrailSettings
from forge_core.testing import serve_forge_on_loopback

pytestmark = pytest.mark.llama

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1}},
            "required": ["city"],
        },
    },
}
BROKEN_PREFILL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {\'city\': \'Paris\'}}\n</tool_call>'
)
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def backend_url(request: pytest.FixtureRequest) -> str:
    return os.environ.get("FORGE_TEST_LLAMA_URL") or request.getfixturevalue("llama_server")


@pytest.fixture(scope="module")
def forge(backend_url: str) -> Iterator[str]:
    guardrails = GuardrailSettings(max_retries=2, keepalive_interval=1.0)
    with serve_forge_on_loopback(backend_url, guardrails=guardrails) as url:
        yield url


def prefilled(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": BROKEN_PREFILL},
        ],
        "tools": [WEATHER],
        "temperature": 0,
        "max_tokens": 48,
        **extra,
    }


def test_llama_server_rejects_the_prefill_with_a_parse_error(backend_url: str) -> None:
    """The premise: llama-server alone answers this request with HTTP 500."""
    r = httpx.post(f"{backend_url}/v1/chat/completions", json=prefilled(max_tokens=3), timeout=300)
    assert r.status_code == 500
    assert "parse" in r.text or "does not match the expected" in r.text


def test_a_backend_parse_failure_is_retried_not_a_502(forge: str) -> None:
    r = httpx.post(f"{forge}/v1/chat/completions", json=prefilled(),
                   timeout=600)
    assert r.status_code == 200, r.text
    assert r.headers["x-forge-guardrail"].startswith("unparsed:500")
    message = r.json()["choices"][0]["message"]
    assert message.get("tool_calls") or message.get("content")  # a real answer, not an error


def test_a_streamed_backend_parse_failure_is_retried_too(forge: str) -> None:
    with httpx.stream("POST", f"{forge}/v1/chat/completions",
                      json=prefilled(stream=True), timeout=600) as r:
        body = r.read().decode()
    assert r.status_code == 200
    assert '"error"' not in body and body.rstrip().endswith("data: [DONE]")


def test_a_greeting_under_auto_stays_prose(forge: str) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello! How are you today?"}],
        "tools": [WEATHER], "temperature": 0, "max_tokens": 32,
    }
    r = httpx.post(f"{forge}/v1/chat/completions", json=body, timeout=600)
    assert r.status_code == 200
    message = r.json()["choices"][0]["message"]
    assert not message.get("tool_calls") and message["content"].strip()
    assert "tool_intent" not in r.headers.get("x-forge-guardrail", "")
