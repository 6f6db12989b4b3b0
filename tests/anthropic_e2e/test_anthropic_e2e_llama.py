"""The Anthropic flows against a real llama-server (SmolLM2-135M demo model), marked ``llama``.

forge runs with the llamafile plugin's client in external mode. The tiny model's answers do
not matter; the protocol does: valid event sequences, exact stop reasons, tool_use blocks whose
input satisfies the schema (under ``tool_choice: any`` forge's constrained retry guarantees a
call), usage, and exact token counts from the server's own tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest
from anthropic_e2e_support import WEATHER, assert_valid_stream

from forge_core.config import GuardrailSettings
from forge_core.testing import serve_forge_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def forge_url(llama_server: str) -> Iterator[str]:
    guardrails = GuardrailSettings(max_retries=3)
    with serve_forge_on_loopback(
        llama_server, timeout=300, guardrails=guardrails, any_model=True
    ) as url:
        yield url


@pytest.fixture
def client(forge_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=forge_url, api_key="dummy", max_retries=0, timeout=300)


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 48,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "extra_body": {"temperature": 0},
        **extra,
    }


def raw_stream(url: str, request: dict[str, Any]) -> bytes:
    request = {**request, **request.pop("extra_body", {}), "stream": True}
    with httpx.stream("POST", url + "/v1/messages?beta=true", json=request, timeout=300) as r:
        assert r.status_code == 200, r.read()
        return r.read()


def test_plain_text_non_streamed(client: anthropic.Anthropic) -> None:
    message = client.messages.create(**body())
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.model == MODEL


def test_plain_text_streamed_is_a_valid_sequence(forge_url: str) -> None:
    raw = raw_stream(forge_url, body())
    events = assert_valid_stream(raw)
    blocks = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert blocks == ["text"]
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert len(deltas) > 1  # streamed as it arrives, not in one piece
    assert events[-2][1]["usage"]["output_tokens"] > 0


def test_max_tokens_cut(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        **body(max_tokens=3, messages=[{"role": "user", "content": "Tell me a long story."}])
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def check_weather_call(block: Any) -> None:
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.id.startswith("toolu_")
    jsonschema.validate(block.input, WEATHER["input_schema"])


def test_tool_choice_any_non_streamed_gives_a_valid_call(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        **body(max_tokens=120, messages=WEATHER_Q, tools=[WEATHER], tool_choice={"type": "any"})
    )
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) >= 1
    for call in calls:
        check_weather_call(call)
    assert message.stop_reason == "tool_use"


def test_tool_choice_any_streamed_gives_a_valid_call(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        **body(max_tokens=120, messages=WEATHER_Q, tools=[WEATHER], tool_choice={"type": "any"})
    ) as stream:
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls
    for call in calls:
        check_weather_call(call)
    assert message.stop_reason == "tool_use"


def test_named_tool_streamed_on_the_raw_wire(forge_url: str) -> None:
    raw = raw_stream(
        forge_url,
        body(
            max_tokens=120,
            messages=WEATHER_Q,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        ),
    )
    events = assert_valid_stream(raw)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    tool_starts = [b for b in starts if b["type"] == "tool_use"]
    assert tool_starts and all(b["name"] == "get_weather" for b in tool_starts)
    arguments = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert len(arguments) == len(tool_starts)
    for text in arguments:
        jsonschema.validate(json.loads(text), WEATHER["input_schema"])
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_multi_turn_with_a_tool_result(forge_url: str) -> None:
    messages = [
        *WEATHER_Q,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
             "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01",
             "content": [{"type": "text", "text": "18 C"}, {"type": "text", "text": "sunny"}]},
        ]},
    ]
    raw = raw_stream(forge_url, body(max_tokens=60, messages=messages, tools=[WEATHER]))
    events = assert_valid_stream(raw)
    has_call = any(
        n == "content_block_start" and d["content_block"]["type"] == "tool_use"
        for n, d in events
    )
    stop_reason = events[-2][1]["delta"]["stop_reason"]
    assert stop_reason == "tool_use" if has_call else stop_reason in ("end_turn", "max_tokens")


def test_count_tokens_is_exact(llama_server: str, client: anthropic.Anthropic) -> None:
    request = {"model": MODEL, "messages": WEATHER_Q, "tools": [WEATHER], "system": "Be brief."}
    counted = client.messages.count_tokens(**request)
    # llama-server's own Anthropic endpoint tokenizes the same rendered prompt.
    own = httpx.post(llama_server + "/v1/messages/count_tokens", json=request, timeout=60)
    assert own.status_code == 200
    assert counted.input_tokens == own.json()["input_tokens"]


def test_claude_code_model_names_are_served(client: anthropic.Anthropic) -> None:
    message = client.messages.create(**body(model="claude-opus-4-8", max_tokens=8))
    assert message.model == "claude-opus-4-8"
    assert message.content and message.content[0].type == "text"


def test_errors_from_llama_server_keep_anthropic_shape(forge_url: str) -> None:
    # A prompt far beyond the 2048-token slot: refused before any stream, in Anthropic's shape.
    request = body(messages=[{"role": "user", "content": "word " * 6000}])
    request.update(request.pop("extra_body"))
    response = httpx.post(
        forge_url + "/v1/messages", json={**request, "stream": True}, timeout=120
    )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
