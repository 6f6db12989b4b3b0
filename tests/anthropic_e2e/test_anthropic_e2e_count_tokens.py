"""``POST /v1/messages/count_tokens``: exact where the backend tokenizes, else the estimate."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic_e2e_support import MODEL, TIME, WEATHER, Forge, TokenizingBackend, run_forge

from forge_core.wire.anthropic import estimate_tokens, parse_count_tokens_request

MESSAGES = [{"role": "user", "content": "What is the weather in Paris today?"}]


def expected_estimate(body: dict[str, Any]) -> int:
    return estimate_tokens(parse_count_tokens_request(body))


def test_estimate_through_the_sdk(forge: Forge) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "system": "Be brief.", "tools": [WEATHER]}
    counted = forge.sdk().messages.count_tokens(**body)
    assert counted.input_tokens == expected_estimate(body)
    assert forge.backend.requests == []  # counting never generates


def test_estimate_grows_with_tools_and_history(forge: Forge) -> None:
    client = forge.sdk()
    bare = client.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens
    tools = client.messages.count_tokens(
        model=MODEL, messages=MESSAGES, tools=[WEATHER, TIME]
    ).input_tokens
    history = [
        *MESSAGES,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C and sunny " * 20}
        ]},
    ]
    longer = client.messages.count_tokens(model=MODEL, messages=history).input_tokens
    assert 0 < bare < tools
    assert bare < longer


def test_beta_resource_and_claude_code_shaped_body(forge: Forge) -> None:
    # Claude Code counts with ?beta=true and sends tools, thinking and unknown fields.
    counted = forge.sdk().beta.messages.count_tokens(
        model=MODEL,
        messages=MESSAGES,
        tools=[WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
        betas=["token-counting-2024-11-01"],
        extra_body={"context_management": {"edits": []}},
    )
    assert counted.input_tokens > 0


def test_count_tokens_errors_are_anthropic_shaped(forge: Forge) -> None:
    client = forge.sdk()
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.count_tokens(model="no-such-model", messages=MESSAGES)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    response = forge.post("/v1/messages/count_tokens", {"model": MODEL, "messages": []})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = forge.post("/v1/messages/count_tokens?beta=true", b"not json")
    assert response.status_code == 400 and response.json()["type"] == "error"


def test_exact_count_when_the_backend_tokenizes() -> None:
    backend = TokenizingBackend()
    with run_forge(backend, llamafile=True) as forge:
        counted = forge.sdk().messages.count_tokens(
            model=MODEL, system="Be brief.", messages=MESSAGES, tools=[WEATHER]
        )
    # "<start> Be brief. What is the weather in Paris today? <assistant>"
    assert counted.input_tokens == 11
    rendered = backend.rendered[-1]
    assert rendered["messages"][0] == {"role": "system", "content": "Be brief."}
    assert rendered["tools"][0]["function"]["name"] == "get_weather"
