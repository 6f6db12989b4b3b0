"""Constrained retries through a plugin that declares constrained decoding (llamafile), and the
respond tool, both through the app against the fake backend."""

from __future__ import annotations

import json
from typing import Any

from guardrails_e2e_support import SEARCH_TOOL, TOOLS, assemble, llamafile_state, message_calls

from forge_core.config import GuardrailSettings
from forge_core.guardrails.respond import RESPOND_TOOL_NAME
from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    chat,
    forge_client,
    reply_text,
    reply_tool_call,
)

URL = "/v1/chat/completions"
CONSTRAINED_ANSWER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


SCHEMA = {"constrain_with": "schema"}


async def post(
    backend: ScriptedBackend,
    body: dict[str, Any],
    guardrails: GuardrailSettings | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    state = llamafile_state(backend, guardrails, options)
    async with forge_client(backend, state=state) as http:
        return await http.post(URL, json=body)


def schema_of(request: dict[str, Any]) -> dict[str, Any]:
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    return response_format["json_schema"]["schema"]


async def test_retry_is_constrained_and_its_json_answer_becomes_a_call() -> None:
    backend = ScriptedBackend().push(reply_text("It is sunny."), reply_text(CONSTRAINED_ANSWER))
    r = await post(backend, chat(tools=[WEATHER_TOOL], tool_choice="required"), options=SCHEMA)
    assert r.status_code == 200
    first, retry = backend.requests
    assert "response_format" not in first and first["tools"] == [WEATHER_TOOL]
    # --constrain-with schema: the schema carries the tool, the tools leave the request.
    assert "tools" not in retry and "tool_choice" not in retry
    schema = schema_of(retry)
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER_TOOL["function"]["parameters"]
    # A clean context: the client's conversation as it was, the failed prose left out.
    assert retry["messages"] == first["messages"]
    message = r.json()["choices"][0]["message"]
    assert message["content"] is None
    [call] = message_calls(message)
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert r.headers["x-forge-guardrail"] == "retry:no_tool_call,constrained,rescued:json"


def grammar_root(request: dict[str, Any]) -> str:
    """The alternatives of the GBNF grammar's root rule (the calls it allows)."""
    assert "response_format" not in request and "tools" not in request
    root = request["grammar"].splitlines()[0]
    assert root.startswith("root ::= ")
    return root.removeprefix("root ::= ")


async def test_retry_is_constrained_with_a_grammar_by_default() -> None:
    backend = ScriptedBackend().push(reply_text("It is sunny."), reply_text(CONSTRAINED_ANSWER))
    r = await post(backend, chat(tools=[WEATHER_TOOL], tool_choice="required"))
    assert r.status_code == 200
    first, retry = backend.requests
    assert "grammar" not in first and first["tools"] == [WEATHER_TOOL]
    # The grammar allows exactly one call of the tool; llama-server refuses it next to tools,
    # so the tools leave the request and are described in the system message instead.
    assert "tool_choice" not in retry and grammar_root(retry) == "call-get-weather"
    assert '{\\"name\\":\\"get_weather\\",\\"arguments\\":' in retry["grammar"]
    system, *rest = retry["messages"]
    assert system["role"] == "system" and rest == first["messages"]
    assert "get_weather" in system["content"] and "city (string, required)" in system["content"]
    [call] = message_calls(r.json()["choices"][0]["message"])
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert r.headers["x-forge-guardrail"] == "retry:no_tool_call,constrained,rescued:json"


async def test_grammar_retry_targets_the_tool_or_offers_every_tool() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("search", {"query": ""}),
        reply_text('{"name": "search", "arguments": {"query": "forge"}}'),
        reply_tool_call("lookup", {"q": 1}),
        reply_text(CONSTRAINED_ANSWER),
    )
    r = await post(backend, chat(tools=TOOLS))
    assert grammar_root(backend.requests[1]) == "call-search"
    assert message_calls(r.json()["choices"][0]["message"])[0]["name"] == "search"
    await post(backend, chat(tools=TOOLS))
    assert grammar_root(backend.requests[3]) == "call-get-weather | call-search"


async def test_constrained_retry_targets_the_tool_the_failed_call_meant() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("search", {"query": ""}),
        reply_text('{"name": "search", "arguments": {"query": "forge"}}'),
    )
    r = await post(backend, chat(tools=TOOLS), options=SCHEMA)
    assert schema_of(backend.requests[1])["properties"]["name"] == {"const": "search"}
    assert message_calls(r.json()["choices"][0]["message"])[0]["name"] == "search"


async def test_constrained_retry_for_an_unknown_tool_offers_every_tool() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("lookup", {"q": 1}), reply_text(CONSTRAINED_ANSWER)
    )
    await post(backend, chat(tools=TOOLS), options=SCHEMA)
    variants = schema_of(backend.requests[1])["anyOf"]
    assert [v["properties"]["name"]["const"] for v in variants] == ["get_weather", "search"]


async def test_constrained_answer_is_read_even_with_rescue_off() -> None:
    backend = ScriptedBackend().push(reply_text("no"), reply_text(CONSTRAINED_ANSWER))
    r = await post(
        backend,
        chat(tools=[WEATHER_TOOL], tool_choice="required"),
        GuardrailSettings(rescue=False),
    )
    assert message_calls(r.json()["choices"][0]["message"])[0]["name"] == "get_weather"


async def test_no_constrained_retry_switch_sends_corrective_messages_only() -> None:
    backend = ScriptedBackend().push(
        reply_text("no"), reply_tool_call("get_weather", {"city": "P"})
    )
    r = await post(
        backend,
        chat(tools=[WEATHER_TOOL], tool_choice="required"),
        GuardrailSettings(constrained_retry=False),
    )
    retry = backend.requests[1]
    assert "response_format" not in retry and "grammar" not in retry
    assert retry["tools"] == [WEATHER_TOOL]
    assert r.headers["x-forge-guardrail"] == "retry:no_tool_call"


async def test_constrained_retry_streamed_gives_one_canonical_call() -> None:
    backend = ScriptedBackend().push(reply_text("It is sunny."), reply_text(CONSTRAINED_ANSWER))
    r = await post(backend, chat(tools=[WEATHER_TOOL], tool_choice="required", stream=True))
    out = assemble(r.text)
    assert out.content == "" and out.finish_reasons == ["tool_calls"]
    assert [c["name"] for c in out.tool_calls] == ["get_weather"]
    assert json.loads(out.tool_calls[0]["arguments"]) == {"city": "Paris"}
    assert grammar_root(backend.requests[1]) == "call-get-weather"
    assert backend.requests[1]["stream"] is True


# --- the respond tool -----------------------------------------------------------------------------


def respond_reply(message: str) -> Any:
    return reply_tool_call(RESPOND_TOOL_NAME, {"message": message})


async def test_respond_tool_is_offered_to_the_backend_and_hidden_from_the_client() -> None:
    backend = ScriptedBackend().push(respond_reply("Hello there."))
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        r = await http.post(URL, json=chat(tools=TOOLS))
    sent_tools = [t["function"]["name"] for t in backend.requests[0]["tools"]]
    assert sent_tools == ["get_weather", "search", RESPOND_TOOL_NAME]
    data = r.json()
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Hello there."}
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_respond_tool_streamed_is_plain_text() -> None:
    backend = ScriptedBackend().push(respond_reply("Hello there."))
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        r = await http.post(URL, json=chat(tools=TOOLS, stream=True))
    out = assemble(r.text)
    assert out.content == "Hello there." and out.tool_calls == []
    assert out.finish_reasons == ["stop"]


async def test_respond_mixed_with_a_real_call_is_dropped() -> None:
    from forge_core.testing import reply_tool_calls

    backend = ScriptedBackend().push(
        reply_tool_calls([(RESPOND_TOOL_NAME, {"message": "x"}), ("get_weather", {"city": "P"})])
    )
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        r = await http.post(URL, json=chat(tools=TOOLS))
    calls = message_calls(r.json()["choices"][0]["message"])
    assert [c["name"] for c in calls] == ["get_weather"]


async def test_printed_respond_call_is_rescued_into_prose() -> None:
    printed = '{"name": "respond", "arguments": {"message": "Just prose."}}'
    backend = ScriptedBackend().push(reply_text(printed))
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        r = await http.post(URL, json=chat(tools=TOOLS))
    assert r.json()["choices"][0]["message"]["content"] == "Just prose."


async def test_a_clients_own_respond_tool_is_left_alone() -> None:
    own = {"type": "function", "function": {
        "name": RESPOND_TOOL_NAME, "parameters": {
            "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}
    backend = ScriptedBackend().push(reply_tool_call(RESPOND_TOOL_NAME, {"text": "mine"}))
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        r = await http.post(URL, json=chat(tools=[own, SEARCH_TOOL]))
    assert backend.requests[0]["tools"] == [own, SEARCH_TOOL]
    [call] = message_calls(r.json()["choices"][0]["message"])
    assert call["name"] == RESPOND_TOOL_NAME and json.loads(call["arguments"]) == {"text": "mine"}


async def test_respond_tool_is_not_offered_when_a_call_is_required() -> None:
    backend = ScriptedBackend().push(reply_tool_call("search", {"query": "q"}))
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        await http.post(URL, json=chat(tools=TOOLS, tool_choice="required"))
    assert backend.requests[0]["tools"] == TOOLS
