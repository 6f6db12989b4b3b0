"""The forge-anthropic backend against llama-server's own ``/v1/messages`` (marked ``llama``).

llama.cpp's server speaks the Anthropic Messages API next to the OpenAI one. forge runs the
anthropic plugin's client in front of it: an Anthropic client's body goes there verbatim, an
OpenAI client's request is translated, and the guardrails judge what comes back. Skipped with
a reason when the installed llama-server has no ``/v1/messages``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest
from forge_anthropic.client import AnthropicClient
from forge_anthropic.plugin import forge_register_backends

from forge_core.app import AppState, make_app
from forge_core.backend import BackendSettings, BackendSpec
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.engine import Engine
from forge_core.limiter import Limiter
from forge_core.plugins import PluginHost
from forge_core.testing import serve_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture(scope="module")
def messages_server(llama_server: str) -> str:
    """llama-server's URL, if its build serves the Messages API."""
    probe = httpx.post(
        llama_server + "/v1/messages",
        json={"model": MODEL, "max_tokens": 1, "messages": HELLO},
        timeout=120,
    )
    if probe.status_code == 404:
        pytest.skip("this llama-server build has no /v1/messages (added to llama.cpp in 2025)")
    assert probe.status_code == 200, probe.text
    return llama_server


@pytest.fixture(scope="module")
def forge_url(messages_server: str) -> Iterator[str]:
    specs: list[BackendSpec] = []
    forge_register_backends(specs.append)
    spec = specs[0]
    # 300 s: a loaded CI machine decodes slowly
    settings = BackendSettings(backend_url=messages_server, model=MODEL, timeout=300)
    client = AnthropicClient(settings, environ={})  # a local server needs no key
    config = ServeConfig(
        backend=settings,
        plugin="anthropic",
        guardrails=GuardrailSettings(max_retries=1),
        any_model=True,
    )
    host = PluginHost()
    engine = Engine(client, spec, config.guardrails, host.rescue_parsers(), host.transforms())
    state = AppState(config=config, spec=spec, client=client, engine=engine, limiter=Limiter(0, 8))
    with serve_on_loopback(make_app(state)) as url:
        yield url


@pytest.fixture
def claude(forge_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=forge_url, api_key="dummy", max_retries=0, timeout=300)


@pytest.fixture
def gpt(forge_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=forge_url + "/v1", api_key="dummy", max_retries=0, timeout=300)


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 40, "messages": HELLO,
            "extra_body": {"temperature": 0}, **extra}


def test_anthropic_client_non_streamed(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(**ask())
    assert [b.type for b in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.id.startswith("msg_")  # forge's own ids, not the backend's


def test_anthropic_client_streamed(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(**ask()) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") > 1  # streamed, not one piece
    assert message.content[0].text


def test_openai_client_is_translated_both_ways(gpt: openai.OpenAI) -> None:
    completion = gpt.chat.completions.create(
        model=MODEL, max_tokens=30, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, *HELLO],
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    chunks = list(gpt.chat.completions.create(
        model=MODEL, max_tokens=20, temperature=0, messages=HELLO, stream=True
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    # llama-server's /v1/messages names the matched stop (next to stop_reason "end_turn");
    # forge passes it on as Anthropic does: stop_reason "stop_sequence".
    message = claude.messages.create(
        **ask(messages=[{"role": "user", "content": "Tell me about the sun."}],
              stop_sequences=["the"])
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "the"
    assert "the" not in message.content[0].text


def test_tools_give_a_valid_call_or_plain_text_never_a_broken_call(
    claude: anthropic.Anthropic,
) -> None:
    message = claude.messages.create(
        **ask(max_tokens=60,
              messages=[{"role": "user", "content": "What is the weather in Paris?"}],
              tools=[WEATHER], tool_choice={"type": "any"})
    )
    calls = [b for b in message.content if b.type == "tool_use"]
    if calls:
        for call in calls:
            assert call.name == "get_weather"
            jsonschema.validate(call.input, WEATHER["input_schema"])
        assert message.stop_reason == "tool_use"
    else:  # the tiny model never called: forge gave up cleanly after its retry
        assert [b.type for b in message.content] == ["text"]
        assert message.stop_reason == "end_turn"


def test_count_tokens_comes_from_the_backend(
    claude: anthropic.Anthropic, messages_server: str
) -> None:
    request = {"model": MODEL, "messages": HELLO, "tools": [WEATHER]}
    counted = claude.messages.count_tokens(**request)
    own = httpx.post(messages_server + "/v1/messages/count_tokens", json=request, timeout=60)
    assert counted.input_tokens == own.json()["input_tokens"]
