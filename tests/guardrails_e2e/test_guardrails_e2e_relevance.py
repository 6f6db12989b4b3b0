"""Requests that clearly ask for a tool, through the app and the llamafile client against the
fake backend: under auto a prose answer is a failed call (``tool_expected``), retried
constrained to the tool asked for; under required, a constrained retry among several tools
targets it. Streamed and non-streamed answers agree."""

from __future__ import annotations

import json
from typing import Any

from guardrails_e2e_support import TOOLS, assemble, llamafile_state, message_calls

from forge_core.config import GuardrailSettings
from forge_core.testing import ScriptedBackend, chat, forge_client, reply_text, reply_tool_call

URL = "/v1/chat/completions"
PROSE = "Paris is usually mild in spring, with some rain."
CONSTRAINED = '{"name":"get_weather","arguments":{"city":"Paris"}}'
ASKS = "What's the weather in Paris?"  # "weather": the object word of get_weather's name


async def post(
    backend: ScriptedBackend, body: dict[str, Any], guardrails: GuardrailSettings | None = None
) -> Any:
    state = llamafile_state(backend, guardrails)
    async with forge_client(backend, state=state) as http:
        return await http.post(URL, json=body)


def grammar_root(request: dict[str, Any]) -> str:
    return request["grammar"].splitlines()[0].removeprefix("root ::= ")


async def test_prose_to_a_request_for_a_tool_is_retried_constrained_to_it() -> None:
    backend = ScriptedBackend().push(reply_text(PROSE), reply_text(CONSTRAINED))
    r = await post(backend, chat(ASKS, tools=TOOLS))
    assert r.status_code == 200
    assert r.headers["x-forge-guardrail"] == "retry:tool_expected,constrained,rescued:json"
    message = r.json()["choices"][0]["message"]
    [call] = message_calls(message)
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert not message["content"]  # the prose is not shown next to the call
    first, retry = backend.requests
    assert first["tools"] == TOOLS and first.get("tool_choice") is None  # attempt 0 verbatim
    # Two tools offered, the request asks for one: the grammar allows only that one.
    assert grammar_root(retry) == "call-get-weather"


async def test_streamed_the_prose_is_held_and_never_shown() -> None:
    backend = ScriptedBackend().push(reply_text(PROSE), reply_text(CONSTRAINED))
    state = llamafile_state(backend)
    async with forge_client(backend, state=state) as http:
        r = await http.post(URL, json=chat(ASKS, tools=TOOLS, stream=True))
    out = assemble(r.text)
    assert out.content == "" and out.finish_reasons == ["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in out.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


async def test_a_request_for_no_tool_keeps_its_prose_streaming() -> None:
    backend = ScriptedBackend().push(reply_text("Hello! How can I help?"))
    state = llamafile_state(backend)
    async with forge_client(backend, state=state) as http:
        r = await http.post(URL, json=chat("Hello there!", tools=TOOLS, stream=True))
    out = assemble(r.text)
    assert out.content == "Hello! How can I help?" and out.finish_reasons == ["stop"]
    assert len(backend.requests) == 1


async def test_exhausted_retries_give_the_prose_as_written() -> None:
    backend = ScriptedBackend().push(reply_text(PROSE), *[reply_text("{") for _ in range(2)])
    r = await post(backend, chat(ASKS, tools=TOOLS), GuardrailSettings(max_retries=2))
    message = r.json()["choices"][0]["message"]
    assert message["content"] == PROSE and not message.get("tool_calls")
    assert "retry:tool_expected" in r.headers["x-forge-guardrail"]
    assert len(backend.requests) == 3


async def test_tool_relevance_off_accepts_the_prose() -> None:
    backend = ScriptedBackend().push(reply_text(PROSE))
    r = await post(backend, chat(ASKS, tools=TOOLS), GuardrailSettings(auto_relevance=False))
    assert r.json()["choices"][0]["message"]["content"] == PROSE
    assert "x-forge-guardrail" not in r.headers and len(backend.requests) == 1


async def test_auto_intent_off_turns_the_prose_check_off_too() -> None:
    backend = ScriptedBackend().push(reply_text(PROSE))
    r = await post(backend, chat(ASKS, tools=TOOLS), GuardrailSettings(auto_intent=False))
    assert r.json()["choices"][0]["message"]["content"] == PROSE and len(backend.requests) == 1


async def test_after_a_tool_result_prose_is_the_final_answer() -> None:
    messages = [
        {"role": "user", "content": ASKS},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
    ]
    backend = ScriptedBackend().push(reply_text("It is 18C and sunny in Paris."))
    r = await post(backend, {"model": "fake-model", "messages": messages, "tools": TOOLS})
    assert r.json()["choices"][0]["message"]["content"] == "It is 18C and sunny in Paris."
    assert len(backend.requests) == 1


async def test_a_call_of_another_tool_is_not_overruled() -> None:
    # The request's words are evidence for prose only; the model's valid call stands.
    backend = ScriptedBackend().push(reply_tool_call("search", {"query": "Paris weather"}))
    r = await post(backend, chat(ASKS, tools=TOOLS))
    assert message_calls(r.json()["choices"][0]["message"])[0]["name"] == "search"
    assert len(backend.requests) == 1


async def test_required_retry_among_several_tools_targets_the_one_asked_for() -> None:
    backend = ScriptedBackend().push(reply_text(PROSE), reply_text(CONSTRAINED))
    r = await post(backend, chat(ASKS, tools=TOOLS, tool_choice="required"))
    assert grammar_root(backend.requests[1]) == "call-get-weather"
    assert r.headers["x-forge-guardrail"] == "retry:no_tool_call,constrained,rescued:json"
    # Without the ranking, the grammar offers every tool.
    backend = ScriptedBackend().push(reply_text(PROSE), reply_text(CONSTRAINED))
    await post(backend, chat(ASKS, tools=TOOLS, tool_choice="required"),
               GuardrailSettings(auto_relevance=False))
    assert grammar_root(backend.requests[1]) == "call-get-weather | call-search"


# --- the decision retry (--auto-intent decide) ---------------------------------------------------

REFUSAL = "I'm sorry, I can't access real-time data about umbrellas."
UMBRELLA = "Do I need an umbrella in Seoul today?"  # no tool's own words: relevance is silent
DECIDE = GuardrailSettings(auto_decide=True)


async def test_decide_retries_a_refusal_with_a_call_or_respond() -> None:
    answer = '{"name":"get_weather","arguments":{"city":"Seoul"}}'
    backend = ScriptedBackend().push(reply_text(REFUSAL), reply_text(answer))
    r = await post(backend, chat(UMBRELLA, tools=TOOLS), DECIDE)
    assert r.headers["x-forge-guardrail"] == "retry:tool_decision,constrained,rescued:json"
    [call] = message_calls(r.json()["choices"][0]["message"])
    assert call["name"] == "get_weather"
    # Every tool, plus the escape into prose; respond() is described to the model too.
    retry = backend.requests[1]
    assert grammar_root(retry) == "call-get-weather | call-search | call-respond"
    assert "respond" in retry["messages"][0]["content"]


async def test_decide_a_respond_answer_is_the_final_prose() -> None:
    answer = '{"name":"respond","arguments":{"message":"Take one, rain is likely."}}'
    backend = ScriptedBackend().push(reply_text(REFUSAL), reply_text(answer))
    r = await post(backend, chat(UMBRELLA, tools=TOOLS), DECIDE)
    message = r.json()["choices"][0]["message"]
    assert message["content"] == "Take one, rain is likely." and not message.get("tool_calls")
    assert len(backend.requests) == 2


async def test_decide_streamed_shows_only_the_final_answer() -> None:
    answer = '{"name":"respond","arguments":{"message":"Take one."}}'
    backend = ScriptedBackend().push(reply_text(REFUSAL), reply_text(answer))
    state = llamafile_state(backend, DECIDE)
    async with forge_client(backend, state=state) as http:
        r = await http.post(URL, json=chat(UMBRELLA, tools=TOOLS, stream=True))
    out = assemble(r.text)
    assert out.content == "Take one." and out.finish_reasons == ["stop"]


async def test_decide_leaves_an_answer_alone_and_is_off_by_default() -> None:
    backend = ScriptedBackend().push(reply_text("Yes, rain is likely in Seoul."))
    r = await post(backend, chat(UMBRELLA, tools=TOOLS), DECIDE)
    assert r.json()["choices"][0]["message"]["content"] == "Yes, rain is likely in Seoul."
    backend = ScriptedBackend().push(reply_text(REFUSAL))
    r = await post(backend, chat(UMBRELLA, tools=TOOLS))
    assert r.json()["choices"][0]["message"]["content"] == REFUSAL
    assert len(backend.requests) == 1


async def test_the_request_outweighs_the_tool_a_broken_call_meant() -> None:
    # A broken call of search for a request about the weather: the retry targets get_weather.
    broken = reply_tool_call("search", {"query": ""})
    backend = ScriptedBackend().push(broken, reply_text(CONSTRAINED))
    await post(backend, chat(ASKS, tools=TOOLS, tool_choice="required"))
    assert grammar_root(backend.requests[1]) == "call-get-weather"
    # A request that asks for no tool in particular: the tool the broken call meant.
    backend = ScriptedBackend().push(reply_tool_call("search", {"query": ""}),
                                     reply_text('{"name":"search","arguments":{"query":"x"}}'))
    await post(backend, chat("hi", tools=TOOLS, tool_choice="required"))
    assert grammar_root(backend.requests[1]) == "call-search"
