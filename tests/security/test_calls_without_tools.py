"""Issue 15 item 13: when the request offers no tools (or tool_choice none), a call the backend
still returns never reaches the client: it is an unknown tool, retried like any failed call,
and the client gets the text answer (after retries run out: the text the model wrote)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge_core.config import GuardrailSettings
from forge_core.testing import WEATHER_TOOL, ScriptedBackend, forge_client, reply_text
from forge_core.testing import reply_tool_call as call_reply

WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}

CASES = {
    "no-tools": ({}, {}),
    "choice-none": (
        {"tools": [WEATHER_TOOL], "tool_choice": "none"},
        {"tools": [WEATHER_ANTHROPIC], "tool_choice": {"type": "none"}},
    ),
}


def body(protocol: str, case: str, streamed: bool) -> dict[str, Any]:
    openai_extra, anthropic_extra = CASES[case]
    base: dict[str, Any] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": streamed,
    }
    if protocol == "openai":
        return {**base, **openai_extra}
    return {**base, "max_tokens": 100, **anthropic_extra}


def answer(protocol: str, streamed: bool, raw: str) -> tuple[str, list[str]]:
    """(the text the client got, the names of the calls it got)."""
    text, calls = "", []
    if not streamed:
        data = json.loads(raw)
        if protocol == "openai":
            message = data["choices"][0]["message"]
            return message["content"] or "", [
                c["function"]["name"] for c in message.get("tool_calls") or []
            ]
        for block in data["content"]:
            if block["type"] == "text":
                text += block["text"]
            elif block["type"] == "tool_use":
                calls.append(block["name"])
        return text, calls
    for line in raw.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if protocol == "openai":
            delta = event["choices"][0]["delta"] if event.get("choices") else {}
            text += delta.get("content") or ""
            calls += [c["function"]["name"] for c in delta.get("tool_calls") or []
                      if c.get("function", {}).get("name")]
        elif event["type"] == "content_block_start":
            block = event["content_block"]
            calls += [block["name"]] if block["type"] == "tool_use" else []
        elif event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
            text += event["delta"]["text"]
    return text, calls


async def post(backend: ScriptedBackend, protocol: str, payload: dict[str, Any]) -> str:
    url = "/v1/chat/completions" if protocol == "openai" else "/v1/messages"
    async with forge_client(backend, guardrails=GuardrailSettings(max_retries=1)) as http:
        response = await http.post(url, json=payload)
    assert response.status_code == 200, response.text
    return response.text


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_call_that_was_not_offered_is_retried_into_text(
    protocol: str, case: str, streamed: bool
) -> None:
    backend = ScriptedBackend().push(
        call_reply("get_weather", "{broken"), reply_text("It is sunny in Paris.")
    )
    raw = await post(backend, protocol, body(protocol, case, streamed))
    text, calls = answer(protocol, streamed, raw)
    assert calls == [] and text == "It is sunny in Paris."
    assert len(backend.requests) == 2
    feedback = json.dumps(backend.requests[1]["messages"])
    assert "unknown tool 'get_weather'; no tools are available" in feedback


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_model_that_insists_ends_in_honest_text(protocol: str, streamed: bool) -> None:
    backend = ScriptedBackend().push(
        call_reply("get_weather", {"city": "Paris"}, content="Let me look."),
        call_reply("get_weather", {"city": "Paris"}, content="Let me look."),
    )
    raw = await post(backend, protocol, body(protocol, "no-tools", streamed))
    text, calls = answer(protocol, streamed, raw)
    assert calls == [] and "Let me look." in text


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_text_without_tools_still_takes_one_request(protocol: str, streamed: bool) -> None:
    backend = ScriptedBackend().push(reply_text("Hello."))
    raw = await post(backend, protocol, body(protocol, "no-tools", streamed))
    assert answer(protocol, streamed, raw) == ("Hello.", [])
    assert len(backend.requests) == 1
