"""The real ``openai`` SDK talking to forge in front of a real llama-server (demo model)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from forge_core.config import GuardrailSettings
from forge_core.testing import WEATHER_TOOL, serve_forge_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def forge_url(llama_server: str) -> Iterator[str]:
    guardrails = GuardrailSettings(max_retries=3)
    with serve_forge_on_loopback(llama_server, timeout=300, guardrails=guardrails) as url:
        yield url


@pytest.fixture
def client(forge_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=forge_url + "/v1", api_key="not-needed", max_retries=0)


def ask(**extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_tokens": 96,
        "temperature": 0,
        **extra,
    }


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list().data]


def test_plain_chat_non_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(**ask(max_tokens=16))
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


def test_plain_chat_streamed_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        **ask(max_tokens=16), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    finishes = [f for f in finishes if f]
    assert len(finishes) == 1


def test_required_tool_call_non_streamed_is_valid(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(**ask(tools=[WEATHER_TOOL], tool_choice="required"))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args.get("city"), str) and args["city"]
    assert set(args) <= {"city", "unit"}


def test_required_tool_call_streamed_is_canonical(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        **ask(tools=[WEATHER_TOOL], tool_choice="required"), stream=True
    )
    deltas, finishes = [], []
    for chunk in stream:
        choice = chunk.choices[0]
        deltas += choice.delta.tool_calls or []
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    args = json.loads("".join(d.function.arguments or "" for d in deltas))
    assert isinstance(args["city"], str)


def test_unknown_model_is_404_from_forge(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(**{**ask(), "model": "gpt-9"})
    assert MODEL in str(info.value)
