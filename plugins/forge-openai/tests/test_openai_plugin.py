"""The generic OpenAI-compatible plugin: key handling, headers, constrained retry, forge wiring."""

from __future__ import annotations

import httpx
import pytest
from forge_openai.plugin import GenericOpenAIClient, parse_headers

from forge_core.backend import BackendRequest, BackendSettings
from forge_core.errors import PluginError
from forge_core.plugins import PluginHost
from forge_core.testing import WEATHER_TOOL, chat, forge_client, reply_text


def settings(**options: object) -> BackendSettings:
    return BackendSettings(backend_url="http://up.test/v1", model=None, timeout=5.0,
                           options=dict(options))


def test_registers_native_only_backend() -> None:
    host = PluginHost()
    host.load(["openai"])
    spec = host.backends()["openai"]
    assert spec.capabilities.native_tools and not spec.capabilities.prompt_tools
    assert spec.prompt_alternative == "llamafile"


async def test_key_from_env_sent_as_bearer_with_extra_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-secret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={
            "choices": [{"message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}]})

    client = GenericOpenAIClient(
        settings(backend_api_key_env="UPSTREAM_KEY", backend_header=("X-Team: tools",)),
        transport=httpx.MockTransport(handler),
    )
    turn = await client.complete(BackendRequest(body=chat(model="m")))
    await client.aclose()
    assert turn.content == "hi"
    assert seen[0].url.path == "/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-upstream-secret"
    assert seen[0].headers["x-team"] == "tools"
    assert "sk-upstream-secret" not in repr(client.__dict__.get("settings"))


def test_missing_key_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(PluginError, match="NOPE_KEY"):
        GenericOpenAIClient(settings(backend_api_key_env="NOPE_KEY"))


def test_bad_header_is_rejected() -> None:
    with pytest.raises(PluginError, match="Name: value"):
        parse_headers(["no-colon"])


def test_constrained_retry_names_the_tool_only_when_enabled() -> None:
    off = GenericOpenAIClient(settings())
    on = GenericOpenAIClient(settings(json_schema_retry=True))
    body = chat(tools=[WEATHER_TOOL])
    assert off.constrain_retry(body, WEATHER_TOOL) is body
    named = on.constrain_retry(body, WEATHER_TOOL)
    assert named["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert on.constrain_retry(body, None)["tool_choice"] == "required"


async def test_base_url_with_or_without_v1() -> None:
    client = GenericOpenAIClient(settings())
    assert client.base_url == "http://up.test"
    await client.aclose()


async def test_plain_answer_through_forge() -> None:
    from forge_core.testing import ScriptedBackend

    backend = ScriptedBackend().push(reply_text("hello"))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat())
    assert r.json()["choices"][0]["message"]["content"] == "hello"
