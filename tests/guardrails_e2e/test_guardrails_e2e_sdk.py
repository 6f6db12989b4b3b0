"""The main guardrail flows seen through the real ``openai`` SDK (forge on loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from guardrails_e2e_support import TOOLS

from forge_core.app import make_app
from forge_core.config import GuardrailSettings
from forge_core.testing import (
    ScriptedBackend,
    build_state,
    reply_text,
    reply_tool_call,
    serve_on_loopback,
)

MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
PARIS = {"city": "Paris"}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ScriptedBackend, openai.OpenAI]]:
    backend = ScriptedBackend()
    state = build_state(backend, guardrails=GuardrailSettings(max_retries=2))
    with serve_on_loopback(make_app(state)) as url:
        yield backend, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def backend(served: tuple[ScriptedBackend, openai.OpenAI]) -> ScriptedBackend:
    fake = served[0]
    fake.replies.clear()
    fake.requests.clear()
    return fake


@pytest.fixture
def client(
    served: tuple[ScriptedBackend, openai.OpenAI], backend: ScriptedBackend
) -> openai.OpenAI:
    return served[1]


def create(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="fake-model", messages=MESSAGES, tools=TOOLS, **kw
    )


def test_required_prose_is_retried_into_a_valid_call(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    backend.push(reply_text("Probably sunny."), reply_tool_call("get_weather", PARIS))
    raw = create(client, tool_choice="required")
    completion = raw.parse()
    assert raw.headers["x-forge-guardrail"] == "retry:no_tool_call"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == PARIS
    assert completion.usage.total_tokens == 30


def test_streamed_retry_reaches_the_sdk_as_one_clean_stream(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    backend.push(
        reply_tool_call("get_weather", {"town": "Paris"}), reply_tool_call("get_weather", PARIS)
    )
    stream = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, tools=TOOLS, stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    assert deltas[0].id and deltas[0].type == "function"
    assert deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == PARIS
    assert usage is not None and usage.completion_tokens == 10


def test_rescued_printed_call_with_the_sdk(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    backend.push(reply_text('```json\n{"name": "search", "arguments": {"query": "forge"}}\n```'))
    raw = create(client)
    message = raw.parse().choices[0].message
    assert raw.headers["x-forge-guardrail"] == "rescued:fenced-json"
    assert message.content is None
    assert message.tool_calls[0].function.name == "search"
    assert json.loads(message.tool_calls[0].function.arguments) == {"query": "forge"}


def test_exhausted_retries_give_the_sdk_a_plain_message(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    backend.push(reply_text("a"), reply_text("b"), reply_text("c"))
    raw = create(client, tool_choice="required")
    choice = raw.parse().choices[0]
    assert choice.message.content == "c" and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert raw.headers["x-forge-guardrail"].endswith("retries-exhausted:no_tool_call")


def test_prose_under_auto_streams_to_the_sdk_untouched(
    client: openai.OpenAI, backend: ScriptedBackend
) -> None:
    # A request that asks for no tool (one asking for the weather would hold the prose for
    # the relevance check).
    backend.push(reply_text("Paris is the capital of France."))
    messages = [{"role": "user", "content": "Tell me one fact about Paris."}]
    stream = client.chat.completions.create(
        model="fake-model", messages=messages, tools=TOOLS, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the capital of France."
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert len(backend.requests) == 1
