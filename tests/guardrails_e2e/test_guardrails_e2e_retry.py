"""Validation, rescue and corrective retries through the app, non-streamed, against the fake.

Each failure class is checked on what matters: the corrective turns the fake backend received
in the retry request, and what the client finally got.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from guardrails_e2e_support import (
    SEARCH_TOOL,
    TOOLS,
    last_messages,
    message_calls,
    plain_roles_alternate,
)

from forge_core.config import GuardrailSettings
from forge_core.testing import (
    WEATHER_TOOL,
    Reply,
    ScriptedBackend,
    chat,
    forge_client,
    reply_error,
    reply_text,
    reply_tool_call,
    reply_tool_calls,
)

URL = "/v1/chat/completions"
PARIS = {"city": "Paris"}


async def ask(
    backend: ScriptedBackend, body: dict[str, Any], **kw: Any
) -> tuple[int, dict[str, Any], str]:
    async with forge_client(backend, **kw) as http:
        r = await http.post(URL, json=body)
    return r.status_code, r.json(), r.headers.get("x-forge-guardrail", "")


def message_of(data: dict[str, Any]) -> dict[str, Any]:
    return data["choices"][0]["message"]


# --- each failure class -> its corrective turn ---------------------------------------------------


async def test_prose_under_required_is_retried_with_a_user_correction() -> None:
    backend = ScriptedBackend().push(
        reply_text("I think it is sunny."), reply_tool_call("get_weather", PARIS)
    )
    status, data, header = await ask(backend, chat(tools=TOOLS, tool_choice="required"))
    assert status == 200
    assert len(backend.requests) == 2
    assistant, user = last_messages(backend.requests[1], 2)
    assert assistant == {"role": "assistant", "content": "I think it is sunny."}
    assert user["role"] == "user"
    assert "a tool call is required" in user["content"]
    assert "available tools: get_weather, search" in user["content"]
    assert "get_weather(city: string, unit?: 'c' | 'f')" in user["content"]
    assert plain_roles_alternate(backend.requests[1]["messages"])
    # The retry keeps the client's tool definitions exactly.
    assert backend.requests[1]["tools"] == TOOLS
    calls = message_calls(message_of(data))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", PARIS)]
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    assert message_of(data)["content"] is None
    assert header == "retry:no_tool_call"


async def test_unknown_tool_gets_a_tool_result_naming_the_available_tools() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_wether", PARIS, call_id="call_a"),
        reply_tool_call("get_weather", PARIS),
    )
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200
    assistant, result = last_messages(backend.requests[1], 2)
    assert assistant["tool_calls"][0]["function"]["name"] == "get_wether"
    assert result["role"] == "tool" and result["tool_call_id"] == "call_a"
    assert "unknown tool 'get_wether'; available tools: get_weather, search" in result["content"]
    assert "Did you mean 'get_weather'?" in result["content"]
    assert message_calls(message_of(data))[0]["name"] == "get_weather"
    assert header == "retry:unknown_tool"


async def test_schema_violation_names_the_argument_and_the_expected_signature() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", {"city": "Paris", "unit": "kelvin"}, call_id="call_b"),
        reply_tool_call("get_weather", {"city": "Paris", "unit": "c"}),
    )
    status, data, header = await ask(backend, chat(tools=TOOLS, tool_choice="required"))
    assert status == 200
    result = last_messages(backend.requests[1], 1)[0]
    assert result["role"] == "tool" and result["tool_call_id"] == "call_b"
    assert "argument 'unit' must be one of ['c', 'f'], got 'kelvin'" in result["content"]
    assert "Expected arguments: get_weather(city: string, unit?: 'c' | 'f')" in result["content"]
    args = json.loads(message_calls(message_of(data))[0]["arguments"])
    assert args == {"city": "Paris", "unit": "c"}
    assert header == "retry:schema"


async def test_missing_required_argument_is_named() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("search", {"limit": 3}), reply_tool_call("search", {"query": "x"})
    )
    await ask(backend, chat(tools=TOOLS))
    result = last_messages(backend.requests[1], 1)[0]
    assert "tool 'search': missing required argument 'query'" in result["content"]


async def test_malformed_argument_json_is_retried_not_a_502() -> None:
    """The uniform error principle: broken argument JSON is the model's mistake (a string
    left open cannot be repaired without guessing its end, so it is retried)."""
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", '{"city": "Par'), reply_tool_call("get_weather", PARIS)
    )
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200
    assistant, user = last_messages(backend.requests[1], 2)
    # Not echoable as a structured call: printed as text, explained by the user.
    assert assistant["role"] == "assistant" and "tool_calls" not in assistant
    assert '"name": "get_weather"' in assistant["content"]
    assert user["role"] == "user" and "arguments are not valid JSON" in user["content"]
    assert message_calls(message_of(data))[0]["name"] == "get_weather"
    assert header == "retry:invalid_json"


async def test_arguments_that_are_not_an_object_are_retried() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", '["Paris"]'), reply_tool_call("get_weather", PARIS)
    )
    status, _, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200
    assert "arguments must be a JSON object, got array" in last_messages(
        backend.requests[1], 1
    )[0]["content"]
    assert header == "retry:not_object"


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "x", "object": "chat.completion", "choices": []},
        {"id": "x", "choices": [{"index": 0, "finish_reason": "stop"}]},
        {"choices": [{"message": {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": [1]}}
        ]}}]},
    ],
    ids=["no-choices", "no-message", "arguments-a-list"],
)
async def test_broken_envelope_is_a_502_naming_the_backend(raw: dict[str, Any]) -> None:
    backend = ScriptedBackend().push(Reply(raw_body=json.dumps(raw).encode()))
    status, data, _ = await ask(backend, chat(tools=TOOLS, tool_choice="required"))
    assert status == 502
    assert data["error"]["type"] == "backend_error"
    assert "Backend 'fake'" in data["error"]["message"]
    assert len(backend.requests) == 1  # never retried


async def test_named_tool_choice_rejects_a_call_to_another_tool() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", PARIS), reply_tool_call("search", {"query": "Paris"})
    )
    choice = {"type": "function", "function": {"name": "search"}}
    status, data, header = await ask(backend, chat(tools=TOOLS, tool_choice=choice))
    assert status == 200
    result = last_messages(backend.requests[1], 1)[0]
    assert "a call to tool 'search' is required, but the answer has none" in result["content"]
    assert "Expected arguments: search(query: string, limit?: integer)" in result["content"]
    assert backend.requests[1]["tool_choice"] == choice
    assert message_calls(message_of(data))[0]["name"] == "search"
    assert header == "retry:no_tool_call"


# --- what is not a failure ------------------------------------------------------------------------


async def test_prose_under_auto_is_a_valid_answer_and_never_retried() -> None:
    backend = ScriptedBackend().push(reply_text("Paris is sunny, no tool needed."))
    status, data, header = await ask(backend, chat(tools=TOOLS, tool_choice="auto"))
    assert status == 200 and len(backend.requests) == 1
    assert message_of(data)["content"] == "Paris is sunny, no tool needed."
    assert data["choices"][0]["finish_reason"] == "stop"
    assert header == ""


async def test_prose_without_tool_choice_is_accepted() -> None:
    backend = ScriptedBackend().push(reply_text("Hello!"))
    status, data, _ = await ask(backend, chat(tools=TOOLS))
    assert status == 200 and len(backend.requests) == 1
    assert message_of(data)["content"] == "Hello!"


async def test_tool_choice_none_neither_rescues_nor_retries() -> None:
    printed = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    backend = ScriptedBackend().push(reply_text(printed))
    status, data, header = await ask(backend, chat(tools=TOOLS, tool_choice="none"))
    assert status == 200 and len(backend.requests) == 1
    assert message_of(data)["content"] == printed
    assert "tool_calls" not in message_of(data)
    assert header == ""


async def test_json_for_an_unknown_tool_stays_prose() -> None:
    printed = '{"name": "launch_rocket", "arguments": {"to": "Mars"}}'
    backend = ScriptedBackend().push(reply_text(printed))
    _, data, header = await ask(backend, chat(tools=TOOLS))
    assert message_of(data)["content"] == printed and header == ""


# --- rescue -------------------------------------------------------------------------------------


async def test_printed_hermes_call_is_rescued_with_a_fresh_id_and_prose_kept() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n' \
        "</tool_call>"
    backend = ScriptedBackend().push(reply_text(text))
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200 and len(backend.requests) == 1
    message = message_of(data)
    assert message["content"] == "Let me check.\n"
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    assert header == "rescued:hermes"


async def test_rescued_call_with_a_schema_error_is_echoed_once_in_the_retry() -> None:
    """The retry's assistant turn carries the rescued call as tool_calls, not also as text."""
    text = 'Sure.\n<tool_call>{"name": "get_weather", "arguments": {"town": "Oslo"}}</tool_call>'
    backend = ScriptedBackend().push(reply_text(text), reply_tool_call("get_weather", PARIS))
    status, _, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200
    assistant, result = last_messages(backend.requests[1], 2)
    assert assistant["content"] == "Sure.\n"
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result["role"] == "tool" and "missing required argument 'city'" in result["content"]
    assert header == "rescued:hermes,retry:schema"


# --- parallel calls and ids ---------------------------------------------------------------------


async def test_duplicate_and_missing_ids_are_made_unique() -> None:
    raw = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "same", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "A"}'}},
            {"id": "same", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "B"}'}},
            {"type": "function", "function": {"name": "search", "arguments": '{"query": "q"}'}},
        ]}}]}
    backend = ScriptedBackend().push(Reply(raw_body=json.dumps(raw).encode()))
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200 and len(backend.requests) == 1
    calls = message_calls(message_of(data))
    ids = [c["id"] for c in calls]
    assert ids[0] == "same" and all(ids) and len(set(ids)) == 3
    assert [json.loads(c["arguments"]) for c in calls] == [
        {"city": "A"}, {"city": "B"}, {"query": "q"}
    ]
    assert header == "ids-fixed"


async def test_one_bad_parallel_call_retries_all_and_explains_each() -> None:
    backend = ScriptedBackend().push(
        reply_tool_calls(
            [("get_weather", PARIS), ("search", {"query": ""})], ids=["call_1", "call_2"]
        ),
        reply_tool_calls([("get_weather", PARIS), ("search", {"query": "Paris"})]),
    )
    status, data, _ = await ask(backend, chat(tools=TOOLS))
    assert status == 200
    ok_result, bad_result = last_messages(backend.requests[1], 2)
    assert ok_result["tool_call_id"] == "call_1" and "Not executed" in ok_result["content"]
    assert bad_result["tool_call_id"] == "call_2"
    assert "argument 'query' must have at least 1 character" in bad_result["content"]
    assert [c["name"] for c in message_calls(message_of(data))] == ["get_weather", "search"]


# --- exhaustion, usage, role alternation ----------------------------------------------------------


async def test_exhausted_retries_return_the_last_text_as_a_plain_message() -> None:
    backend = ScriptedBackend().push(
        reply_text("one"), reply_text("two"), reply_text("three")
    )
    guard = GuardrailSettings(max_retries=2)
    status, data, header = await ask(
        backend, chat(tools=TOOLS, tool_choice="required"), guardrails=guard
    )
    assert status == 200 and len(backend.requests) == 3
    assert message_of(data) == {"role": "assistant", "content": "three"}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert header == "retry:no_tool_call,retry:no_tool_call,retries-exhausted:no_tool_call"
    # Usage is summed over the three backend calls.
    assert data["usage"] == {"prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45}
    for request in backend.requests[1:]:
        assert plain_roles_alternate(request["messages"])
    # Each retry extends the previous one: the conversation keeps every corrective turn.
    assert [m["role"] for m in backend.requests[2]["messages"]] == [
        "user", "assistant", "user", "assistant", "user"
    ]


async def test_exhausted_broken_calls_never_reach_the_client() -> None:
    bad = reply_tool_call("get_weather", {"city": 42})
    backend = ScriptedBackend().push(bad, reply_tool_call("nope", {}))
    guard = GuardrailSettings(max_retries=1)
    status, data, header = await ask(backend, chat(tools=TOOLS), guardrails=guard)
    assert status == 200
    message = message_of(data)
    assert "tool_calls" not in message
    assert message["content"].startswith("[forge] The model did not produce a valid tool call:")
    assert "unknown tool 'nope'" in message["content"]
    assert header == "retry:schema,retries-exhausted:unknown_tool"


async def test_zero_retries_gives_up_at_once() -> None:
    backend = ScriptedBackend().push(reply_text("prose"))
    guard = GuardrailSettings(max_retries=0)
    _, data, header = await ask(
        backend, chat(tools=TOOLS, tool_choice="required"), guardrails=guard
    )
    assert len(backend.requests) == 1
    assert message_of(data)["content"] == "prose"
    assert header == "retries-exhausted:no_tool_call"


async def test_client_conversation_ending_in_a_tool_result_keeps_alternation() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris, then search it."},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c0", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
    ]
    backend = ScriptedBackend().push(reply_text("ok"), reply_tool_call("search", {"query": "x"}))
    body = {**chat(tools=TOOLS, tool_choice="required"), "messages": messages}
    await ask(backend, body)
    sent = backend.requests[1]["messages"]
    assert sent[:4] == messages
    assert [m["role"] for m in sent[4:]] == ["assistant", "user"]
    assert plain_roles_alternate(sent)


async def test_retry_after_a_trailing_user_message_merges_nothing_of_the_client() -> None:
    """An empty failed answer leaves two user messages in a row: they are merged."""
    backend = ScriptedBackend().push(reply_text(""), reply_tool_call("get_weather", PARIS))
    await ask(backend, chat("Weather?", tools=TOOLS, tool_choice="required"))
    sent = backend.requests[1]["messages"]
    assert len(sent) == 1 and sent[0]["role"] == "user"
    assert sent[0]["content"].startswith("Weather?\n\nYour last answer could not be used:")


async def test_a_rejected_retry_returns_the_previous_answer_as_text() -> None:
    backend = ScriptedBackend().push(
        reply_text("It is sunny."),
        reply_error(400, {"error": {"message": "context full"}}),
    )
    status, data, header = await ask(backend, chat(tools=TOOLS, tool_choice="required"))
    assert status == 200
    assert message_of(data)["content"] == "It is sunny."
    assert header == "retry:no_tool_call,retry-failed:400"


async def test_a_first_attempt_error_is_passed_on() -> None:
    backend = ScriptedBackend().push(reply_error(400, {"error": {"message": "bad sampler"}}))
    status, data, _ = await ask(backend, chat(tools=TOOLS, tool_choice="required"))
    assert status == 400 and "bad sampler" in data["error"]["message"]


async def test_no_rescue_switch_leaves_printed_calls_as_text() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    backend = ScriptedBackend().push(reply_text(text))
    _, data, _ = await ask(backend, chat(tools=TOOLS), guardrails=GuardrailSettings(rescue=False))
    assert message_of(data)["content"] == text


async def test_request_without_tools_never_gets_a_call() -> None:
    """Issue 15 item 13: a call the request did not offer is an unknown tool, retried."""
    backend = ScriptedBackend().push(
        reply_tool_call("anything", "{broken"), reply_text("Plain answer.")
    )
    status, data, header = await ask(backend, chat())
    assert status == 200 and len(backend.requests) == 2
    assert not message_calls(message_of(data))
    assert message_of(data)["content"] == "Plain answer."
    assert header == "retry:unknown_tool"


async def test_single_tool_schema_error_with_search_only() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("search", {"query": "q", "limit": 99}),
        reply_tool_call("search", {"query": "q", "limit": 5}),
    )
    await ask(backend, chat(tools=[SEARCH_TOOL], tool_choice="required"))
    result = last_messages(backend.requests[1], 1)[0]
    assert "argument 'limit' must be <= 10, got 99" in result["content"]


async def test_anthropic_client_gets_a_retried_tool_use_block() -> None:
    backend = ScriptedBackend().push(reply_text("Sunny."), reply_tool_call("get_weather", PARIS))
    body = {
        "model": "fake-model",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [{
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }],
        "tool_choice": {"type": "any"},
    }
    async with forge_client(backend) as http:
        r = await http.post("/v1/messages", json=body)
    assert r.status_code == 200
    assert r.headers["x-forge-guardrail"] == "retry:no_tool_call"
    data = r.json()
    assert data["stop_reason"] == "tool_use"
    [block] = [b for b in data["content"] if b["type"] == "tool_use"]
    assert block["name"] == "get_weather" and block["input"] == PARIS
    assert "a tool call is required" in last_messages(backend.requests[1], 1)[0]["content"]
