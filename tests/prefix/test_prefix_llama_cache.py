"""Cache figures and the clamp against a real llama-server (marked ``llama``).

Two requests share a long prefix: llama-server keeps the first one's prompt in its slot
(``cache_prompt``), so the second reports most of its prompt as cached, and forge passes that
on in each protocol's own field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from forge_core.config import GuardrailSettings
from forge_core.testing import serve_forge_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"
SYSTEM = " ".join(f"Rule {n}: answer briefly and never use more words than needed." for n in
                  range(40))
"""About 600 tokens: the shared prefix."""


@pytest.fixture(scope="module")
def forge_url(llama_server: str) -> Iterator[str]:
    guardrails = GuardrailSettings(max_retries=0)
    with serve_forge_on_loopback(llama_server, guardrails=guardrails) as url:
        yield url


def openai_body(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": question}], **extra}


def anthropic_body(question: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 4, "temperature": 0, "system": SYSTEM,
            "messages": [{"role": "user", "content": question}], **extra}


def last_usage(response: httpx.Response, stream: bool, anthropic: bool) -> dict[str, Any]:
    if not stream:
        return response.json()["usage"]  # type: ignore[no-any-return]
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    if anthropic:
        deltas = [e for e in events if e["type"] == "message_delta"]
        return deltas[-1]["usage"]  # type: ignore[no-any-return]
    return [e for e in events if e.get("usage")][-1]["usage"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_second_request_reports_cached_tokens(forge_url: str, stream: bool) -> None:
    extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    url = forge_url + "/v1/chat/completions"
    httpx.post(url, json=openai_body("What is two plus two?", **extra), timeout=300)
    response = httpx.post(url, json=openai_body("What is three plus three?", **extra), timeout=300)
    assert response.status_code == 200, response.text
    usage = last_usage(response, stream, anthropic=False)
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0.8 * usage["prompt_tokens"] > 400


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_second_request_reports_cache_read_tokens(forge_url: str, stream: bool) -> None:
    url = forge_url + "/v1/messages"
    httpx.post(url, json=anthropic_body("Name a colour.", stream=stream), timeout=300)
    response = httpx.post(url, json=anthropic_body("Name a fruit.", stream=stream), timeout=300)
    assert response.status_code == 200, response.text
    usage = last_usage(response, stream, anthropic=True)
    assert usage["cache_read_input_tokens"] > 400
    assert usage["input_tokens"] < usage["cache_read_input_tokens"]  # only the new tail


def test_an_agent_sized_max_tokens_is_clamped_and_served(forge_url: str) -> None:
    body = openai_body("Say hi.", max_tokens=128000)
    response = httpx.post(forge_url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    note = response.headers["x-forge-guardrail"]
    clamped = int(note.split("max-tokens-clamped:")[1].split(",")[0])
    prompt = response.json()["usage"]["prompt_tokens"]
    # The budget is llama-server's per-slot n_ctx (-c divided among its parallel slots).
    budget = httpx.get(forge_url + "/ready", timeout=30).json()["context_budget"]
    # The exact count (llama-server's own template and tokenizer) leaves just the room.
    assert abs(clamped - (budget - prompt)) <= 16
    models = httpx.get(forge_url + "/v1/models", timeout=30).json()["data"][0]
    assert models["context_length"] == models["max_model_len"] == budget
