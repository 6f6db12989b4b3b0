"""The prompt capability against a scripted backend: what llama-server receives (no ``tools``,
the tools in the system prompt, the history as text) and what the client gets back (native
``tool_calls``), streamed and not, with the guardrails' retry unchanged."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from forge_llamafile.client import LlamafileClient

from forge_core.app import AppState
from forge_core.backend import BackendSettings
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.engine import Engine
from forge_core.limiter import Limiter
from forge_core.plugins import PluginHost
from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    chat,
    forge_client,
    reply_text,
)

CALL_TEXT = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call>"
)


def prompt_state(
    backend: ScriptedBackend, capability: str = "prompt", **guardrails: Any
) -> AppState:
    host = PluginHost()
    host.load(["llamafile"])
    spec = host.backends()["llamafile"]
    settings = BackendSettings(
        backend_url="http://llama.test", model="fake-model", timeout=30.0,
        capability=capability,  # type: ignore[arg-type]
    )
    client = LlamafileClient(settings, transport=httpx.ASGITransport(app=backend.app))
    config = ServeConfig(backend=settings, plugin="llamafile",
                         guardrails=GuardrailSettings(**guardrails))
    engine = Engine(client, spec, config.guardrails, host.rescue_parsers(), host.transforms())
    return AppState(config=config, spec=spec, client=client, engine=engine, limiter=Limiter(0, 0))


def weather_request(**extra: Any) -> dict[str, Any]:
    return chat("What is the weather in Paris?", tools=[WEATHER_TOOL], **extra)


def system_text(sent: dict[str, Any]) -> str:
    first = sent["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


async def test_tools_go_into_the_prompt_and_calls_come_back_native() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text(CALL_TEXT))
    async with forge_client(backend, state=prompt_state(backend)) as http:
        response = await http.post(
            "/v1/chat/completions",
            json=weather_request(tool_choice="auto", parallel_tool_calls=False),
        )
    assert response.status_code == 200
    message = response.json()["choices"][0]["message"]
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert message["content"].strip() == "Let me check."

    sent = backend.requests[0]
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)
    prompt = system_text(sent)
    assert "## get_weather" in prompt and "Current weather for a city" in prompt
    assert json.dumps(WEATHER_TOOL["function"]["parameters"]) in prompt  # the whole schema
    assert "city (string, required)" in prompt and '"c", "f"' in prompt
    assert "<tool_call>" in prompt and '{"name": "get_weather", "arguments": ' in prompt
    assert sent["messages"][1] == {"role": "user", "content": "What is the weather in Paris?"}


async def test_streamed_answer_is_parsed_into_a_native_call() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text(CALL_TEXT))
    async with forge_client(backend, state=prompt_state(backend)) as http:
        response = await http.post("/v1/chat/completions", json=weather_request(stream=True))
    events = [
        json.loads(line[6:]) for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    calls = [
        c for e in events if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls") or []
    ]
    finish = [e["choices"][0]["finish_reason"] for e in events
              if e["choices"] and e["choices"][0]["finish_reason"]]
    assert "<tool_call>" not in text and text.strip() == "Let me check."
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(c["function"].get("arguments") or "" for c in calls)
    assert json.loads(arguments) == {"city": "Paris"}
    assert finish == ["tool_calls"]
    assert "tools" not in backend.requests[0] and backend.requests[0]["stream"] is True


async def test_history_is_downgraded_to_text() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("It is sunny in Paris."))
    body = weather_request()
    body["messages"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
    ]
    async with forge_client(backend, state=prompt_state(backend)) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == "It is sunny in Paris."
    sent = backend.requests[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert system_text(backend.requests[0]).startswith("Be brief.\n\n# Tools")
    assert all("tool_calls" not in m and "tool_call_id" not in m for m in sent)
    assert sent[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    assert sent[3]["content"] == (
        '<tool_response name="get_weather">\nsunny\n</tool_response>\n'
        '<tool_response name="get_weather">\nrain\n</tool_response>'
    )


async def test_text_is_parsed_even_with_no_rescue() -> None:
    """With tools in the prompt, reading calls from text is the protocol, not a rescue."""
    backend = ScriptedBackend()
    backend.push(reply_text(CALL_TEXT))
    state = prompt_state(backend, rescue=False)
    async with forge_client(backend, state=state) as http:
        response = await http.post("/v1/chat/completions", json=weather_request())
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == (
        "get_weather"
    )


async def test_invalid_call_is_retried_constrained_with_tools_still_in_the_prompt() -> None:
    backend = ScriptedBackend()
    backend.push(
        reply_text('<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n'
                   "</tool_call>"),
        reply_text('{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    )
    async with forge_client(backend, state=prompt_state(backend)) as http:
        response = await http.post("/v1/chat/completions", json=weather_request())
    message = response.json()["choices"][0]["message"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert "retry" in response.headers["x-forge-guardrail"]
    retry = backend.requests[1]
    assert "tools" not in retry and "tool_choice" not in retry
    # The compact grammar (allowed: prepare_body already took the tools into the prompt).
    assert '{\\"name\\":\\"get_weather\\",\\"arguments\\":' in retry["grammar"]
    prompt = system_text(retry)
    assert "## get_weather" in prompt and "You must call the tool get_weather now." in prompt
    # A clean context: the constraint corrects, the rejected call is not shown again.
    texts = [str(m.get("content")) for m in retry["messages"]]
    assert not any('"town"' in t for t in texts)
    assert all(m["role"] in ("system", "user", "assistant") for m in retry["messages"])


async def test_prose_is_allowed_when_tool_choice_is_auto() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("Hello! How can I help?"))
    # A request that asks for no tool (one for the weather would retry prose, tool relevance).
    body = chat("Hello there!", tools=[WEATHER_TOOL])
    async with forge_client(backend, state=prompt_state(backend)) as http:
        response = await http.post("/v1/chat/completions", json=body)
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "Hello! How can I help?"
    assert "tool_calls" not in message
    assert len(backend.requests) == 1


async def test_tool_choice_none_renders_no_tools() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("Just text."))
    async with forge_client(backend, state=prompt_state(backend)) as http:
        await http.post("/v1/chat/completions", json=weather_request(tool_choice="none"))
    sent = backend.requests[0]
    assert "tools" not in sent and "tool_choice" not in sent
    assert all("# Tools" not in str(m.get("content")) for m in sent["messages"])


async def test_native_capability_still_forwards_tools_verbatim() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("ok"))
    async with forge_client(backend, state=prompt_state(backend, capability="native")) as http:
        await http.post("/v1/chat/completions", json=weather_request())
    assert backend.requests[0]["tools"] == [WEATHER_TOOL]
    assert backend.requests[0]["messages"][0]["role"] == "user"


@pytest.mark.parametrize("path", ["/v1/messages"])
async def test_anthropic_clients_get_tool_use_blocks(path: str) -> None:
    backend = ScriptedBackend()
    backend.push(reply_text(CALL_TEXT))
    body = {
        "model": "fake-model", "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"name": "get_weather", "description": "Current weather for a city",
                   "input_schema": WEATHER_TOOL["function"]["parameters"]}],
    }
    async with forge_client(backend, state=prompt_state(backend)) as http:
        response = await http.post(path, json=body)
    blocks = response.json()["content"]
    assert [b["type"] for b in blocks] == ["text", "tool_use"]
    assert blocks[1]["input"] == {"city": "Paris"}
    assert response.json()["stop_reason"] == "tool_use"
    assert "tools" not in backend.requests[0]
