"""The retry strategy of issue 10, through the app with the llamafile plugin client in front of
a scripted backend: clean-context constrained retries, room for the call, honest answers on
exhaustion (never the constrained JSON), placeholder arguments rejected."""

from __future__ import annotations

import json
from typing import Any

import pytest
from guardrails_e2e_support import assemble, llamafile_state, message_calls

from forge_core.config import GuardrailSettings
from forge_core.engine import CALL_ROOM, FALLBACK
from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    chat,
    forge_client,
    reply_text,
    reply_tool_call,
)

URL = "/v1/chat/completions"
GOOD = '{"name":"get_weather","arguments":{"city":"Paris"}}'
BAD = '{"name":"get_weather","arguments":{"city":"Paris","unit":"kelvin"}}'
CUT = '{"name":"get_weather","arguments":{"city":"Par'


async def post(
    backend: ScriptedBackend, body: dict[str, Any], **settings: Any
) -> Any:
    state = llamafile_state(backend, GuardrailSettings(**settings))
    async with forge_client(backend, state=state) as http:
        return await http.post(URL, json=body)


def required(**extra: Any) -> dict[str, Any]:
    return chat("Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required",
                max_tokens=32, **extra)


async def test_constrained_retry_asks_the_clean_conversation_with_room_for_the_call() -> None:
    backend = ScriptedBackend().push(reply_text("It is sunny in Paris."), reply_text(GOOD))
    r = await post(backend, required())
    first, retry = backend.requests
    assert first["max_tokens"] == 32 and "grammar" not in first
    assert retry["max_tokens"] == CALL_ROOM
    # The client's conversation, the tools described in front, no trace of the failed prose.
    assert retry["messages"][1:] == first["messages"]
    assert "get_weather" in retry["messages"][0]["content"]
    assert not any("sunny" in str(m.get("content")) for m in retry["messages"])
    [call] = message_calls(r.json()["choices"][0]["message"])
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert r.headers["x-forge-guardrail"] == "retry:no_tool_call,constrained,rescued:json"


async def test_feedback_context_carries_the_failed_turn_and_a_correction() -> None:
    backend = ScriptedBackend().push(reply_text("It is sunny in Paris."), reply_text(GOOD))
    await post(backend, required(), retry_context="feedback")
    retry = backend.requests[1]
    texts = [str(m.get("content")) for m in retry["messages"]]
    assert any("sunny" in t for t in texts)
    assert "a tool call is required" in texts[-1]


async def test_a_second_constrained_retry_sees_only_the_constrained_attempts_feedback() -> None:
    backend = ScriptedBackend().push(
        reply_text("It is sunny in Paris."), reply_text(BAD), reply_text(GOOD)
    )
    r = await post(backend, required())
    third = backend.requests[2]
    texts = json.dumps(third["messages"])
    assert "sunny" not in texts  # the unconstrained prose stays out
    assert "kelvin" in texts  # the constrained attempt's error is explained
    assert message_calls(r.json()["choices"][0]["message"])[0]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
async def test_exhaustion_never_returns_the_constrained_json(stream: bool) -> None:
    backend = ScriptedBackend().push(
        reply_text("I think it is sunny."), reply_text(CUT, finish_reason="length"),
        reply_text(BAD),
    )
    r = await post(backend, required(stream=stream), max_retries=2)
    if stream:
        out = assemble(r.text)
        content, finishes = out.content, out.finish_reasons
        assert out.tool_calls == []
    else:
        message = r.json()["choices"][0]["message"]
        content, finishes = message["content"], [r.json()["choices"][0]["finish_reason"]]
        assert "tool_calls" not in message
        assert r.headers["x-forge-guardrail"].endswith("retries-exhausted:schema")
    # The model's own prose from the unconstrained attempt; no JSON from the constrained ones.
    assert content == "I think it is sunny."
    assert '"arguments"' not in content and finishes == ["stop"]


async def test_exhaustion_without_honest_prose_says_why_in_one_line() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", {"town": "Paris"}), reply_text(BAD), reply_text(BAD)
    )
    r = await post(backend, required(), max_retries=2)
    content = r.json()["choices"][0]["message"]["content"]
    assert content.startswith(FALLBACK) and "kelvin" in content
    assert "{" not in content


async def test_placeholder_arguments_are_retried() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", {"city": "city"}), reply_text(GOOD)
    )
    r = await post(backend, required())
    assert r.headers["x-forge-guardrail"].startswith("retry:placeholder,constrained")
    [call] = message_calls(r.json()["choices"][0]["message"])
    assert json.loads(call["arguments"]) == {"city": "Paris"}


async def test_placeholder_check_can_be_turned_off_and_spares_the_users_words() -> None:
    backend = ScriptedBackend().push(reply_tool_call("get_weather", {"city": "city"}))
    r = await post(backend, required(), placeholder_check=False)
    assert "x-forge-guardrail" not in r.headers
    backend = ScriptedBackend().push(reply_tool_call("get_weather", {"city": "<city>"}))
    body = required()
    body["messages"][0]["content"] = "Weather in the town called <city>?"
    r = await post(backend, body)
    assert message_calls(r.json()["choices"][0]["message"])[0]["arguments"] == (
        '{"city": "<city>"}'
    )
