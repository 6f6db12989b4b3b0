"""VllmClient against recorded vLLM 0.32.0 responses, replayed byte for byte.

Formats come from the recordings in tests/fixtures/vllm (README there: command, date,
version); they match vLLM's OpenAI-compatible server docs (docs.vllm.ai, "OpenAI-Compatible
Server" and "Tool Calling"): tool-call deltas carry id/type/name first, then argument
fragments; named tool_choice finishes with "stop" (vllm-project/vllm PR #25054 aligned this
with OpenAI); a wrong model name is a 404 NotFoundError.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from vllm_replay import (
    SERVED,
    FakeVllm,
    external_client,
    recording,
    vllm_spec,
    weather_tool,
    with_flags,
)

from forge_core.backend import BackendRequest
from forge_core.errors import BackendHTTPError
from forge_core.testing import forge_in_front_of
from forge_core.turns import BackendChunk


def request_of(name: str, **changes: Any) -> BackendRequest:
    """The recorded request body, as forge would hand it to the client."""
    rec = recording(name)
    assert rec.request is not None
    return BackendRequest(body={**rec.request, **changes})


async def collect(client: Any, request: BackendRequest) -> list[BackendChunk]:
    return [chunk async for chunk in client.stream(request)]


def assemble(chunks: list[BackendChunk]) -> dict[int, dict[str, str]]:
    """Concatenate tool-call fragments by index, as a client would."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for frag in chunk.tool_calls:
            call = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = frag.id or call["id"]
            call["name"] = frag.name or call["name"]
            call["arguments"] += frag.arguments
    return calls


# --- non-streamed ----------------------------------------------------------------------------


async def test_required_tool_call_is_parsed_with_vllm_id_and_raw_arguments() -> None:
    fake = FakeVllm(with_flags("tool_call_required"))
    client = external_client(fake, model=SERVED)
    turn = await client.complete(request_of("tool_call_required"))
    await client.aclose()

    assert [c.name for c in turn.tool_calls] == ["get_weather"]
    call = turn.tool_calls[0]
    assert call.id.startswith("chatcmpl-tool-")
    # Kept verbatim: the 135M model's arguments violate the schema; judging that is forge's job.
    assert json.loads(call.arguments) == {"city": {"type": "string", "description": "Paris"}}
    assert turn.finish_reason == "tool_calls"
    assert turn.content == ""
    assert turn.usage is not None
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens) == (253, 50)


async def test_named_tool_call_keeps_vllm_finish_reason_stop() -> None:
    fake = FakeVllm(with_flags("tool_call_named"))
    client = external_client(fake, model=SERVED)
    turn = await client.complete(request_of("tool_call_named"))
    await client.aclose()
    assert [c.name for c in turn.tool_calls] == ["get_weather"]
    assert turn.finish_reason == "stop"  # vLLM's (and OpenAI's) choice for a named tool


async def test_text_answer_and_length_finish() -> None:
    fake = FakeVllm(with_flags(lambda b: "text_length" if b["max_tokens"] == 3 else "text"))
    client = external_client(fake, model=SERVED)
    text = await client.complete(request_of("text"))
    cut = await client.complete(request_of("text_length"))
    await client.aclose()
    assert text.content == "Awesome, welcome to the world of the sea!"
    assert text.tool_calls == [] and text.finish_reason == "stop"
    assert cut.content == "Awesome" and cut.finish_reason == "length"


# --- streamed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "finish"),
    [("tool_call_required_stream", "tool_calls"), ("tool_call_named_stream", "stop")],
)
async def test_streamed_tool_call_deltas_assemble_to_one_call(name: str, finish: str) -> None:
    fake = FakeVllm(with_flags(name))
    client = external_client(fake, model=SERVED)
    chunks = await collect(client, request_of(name))
    await client.aclose()

    fragments = [f for c in chunks for f in c.tool_calls]
    first = fragments[0]
    assert first.index == 0 and first.id and first.id.startswith("chatcmpl-tool-")
    assert first.name == "get_weather" and first.arguments == ""
    assert all(f.id is None and f.name is None for f in fragments[1:])
    calls = assemble(chunks)
    assert list(calls) == [0]
    assert json.loads(calls[0]["arguments"]) == {
        "city": {"type": "string", "description": "Paris"}
    }
    finishes = [c.finish_reason for c in chunks if c.finish_reason]
    assert finishes == [finish]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 50


async def test_streamed_text_concatenates_to_the_recorded_answer() -> None:
    fake = FakeVllm(with_flags("text_stream"))
    client = external_client(fake, model=SERVED)
    chunks = await collect(client, request_of("text_stream"))
    await client.aclose()
    assert "".join(c.text for c in chunks) == "Awesome, welcome to the world of the sea!"
    assert not any(c.tool_calls for c in chunks)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]


async def test_stream_asks_for_usage_and_sends_stream_true() -> None:
    fake = FakeVllm(with_flags("text_stream"))
    client = external_client(fake, model=SERVED)
    await collect(client, request_of("text_stream", stream_options={"include_usage": False}))
    await client.aclose()
    sent = fake.chat_bodies()[-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


# --- errors ----------------------------------------------------------------------------------


async def test_wrong_model_is_vllm_404_passed_on_as_not_found() -> None:
    fake = FakeVllm(with_flags("wrong_model"))
    # No --model and no discovery: the client's name goes to vLLM untouched.
    client = external_client(fake)
    with pytest.raises(BackendHTTPError) as info:
        await client.complete(request_of("wrong_model"))
    await client.aclose()
    err = info.value
    assert err.backend_status == 404 and err.status == 404
    assert err.anthropic_type == "not_found_error"
    assert "Qwen3-8B" in err.message and "Valid aliases: smollm2-135m" in err.message


async def test_wrong_model_while_streaming_is_the_same_404() -> None:
    fake = FakeVllm(with_flags("wrong_model_stream"))
    client = external_client(fake)
    with pytest.raises(BackendHTTPError) as info:
        await collect(client, request_of("wrong_model_stream"))
    await client.aclose()
    assert info.value.backend_status == 404
    assert "does not exist" in info.value.detail


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("invalid_messages", "Input should be a valid list"),
        ("max_tokens_too_large", "cannot be greater than max_model_len=2048"),
    ],
)
async def test_invalid_request_is_a_400_with_vllm_message(name: str, fragment: str) -> None:
    fake = FakeVllm(with_flags(name))
    client = external_client(fake, model=SERVED)
    with pytest.raises(BackendHTTPError) as info:
        await client.complete(request_of(name))
    await client.aclose()
    assert info.value.backend_status == 400 and info.value.status == 400
    assert info.value.openai_type == "invalid_request_error"
    assert fragment in info.value.detail


async def test_tool_choice_without_tool_flags_is_a_400_naming_the_flags() -> None:
    fake = FakeVllm(
        {
            ("GET", "/v1/models"): "noflags_models",
            ("POST", "/v1/chat/completions"): "noflags_required",
        }
    )
    client = external_client(fake, model=SERVED)
    with pytest.raises(BackendHTTPError) as info:
        await client.complete(request_of("tool_call_required"))
    await client.aclose()
    assert info.value.backend_status == 400
    assert "--tool-call-parser" in info.value.detail


# --- what the client sends -------------------------------------------------------------------

PASSTHROUGH: dict[str, Any] = {
    "max_tokens": 77,
    "stop": ["</s>", "END"],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_object"},
    "seed": 1234,
    "temperature": 0.3,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "repetition_penalty": 1.05,
    "chat_template_kwargs": {"enable_thinking": False},
    "parallel_tool_calls": False,
    "logprobs": False,
    "n": 1,
    "user": "someone",
}


@pytest.mark.parametrize("streamed", [False, True])
async def test_client_fields_pass_through_untouched(streamed: bool) -> None:
    fake = FakeVllm(with_flags("tool_call_named_stream" if streamed else "tool_call_named"))
    client = external_client(fake, model=SERVED)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    tools = [weather_tool()]
    request = BackendRequest(
        body={"model": SERVED, "messages": messages, "tools": tools, **PASSTHROUGH}
    )
    if streamed:
        await collect(client, request)
    else:
        await client.complete(request)
    await client.aclose()
    sent = fake.chat_bodies()[-1]
    for key, value in PASSTHROUGH.items():
        assert sent[key] == value, key
    assert sent["messages"] == messages and sent["tools"] == tools
    assert sent["model"] == SERVED


async def test_llama_cpp_repeat_penalty_becomes_vllm_repetition_penalty() -> None:
    # vLLM ignores unknown fields silently, so llama.cpp's name would be lost without this.
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake, model=SERVED)
    await client.complete(request_of("text", repeat_penalty=1.15))
    await client.complete(request_of("text", repeat_penalty=1.15, repetition_penalty=1.3))
    await client.aclose()
    renamed, both = fake.chat_bodies()
    assert "repeat_penalty" not in renamed and renamed["repetition_penalty"] == 1.15
    assert "repeat_penalty" not in both and both["repetition_penalty"] == 1.3


async def test_short_key_is_sent_as_the_served_wire_name() -> None:
    # The client names the model by its short key; forge maps it once (in the app) to the
    # name vLLM serves, which vLLM needs verbatim (it answers 404 to anything else).
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake, model="/models/smollm2-135m")  # as configured, not started
    async with forge_in_front_of(client, vllm_spec(), start=False) as http:
        r = await http.post("/v1/chat/completions", json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert fake.chat_bodies()[-1]["model"] == "/models/smollm2-135m"


# --- constrained retry and token counting -----------------------------------------------------


def test_constrain_retry_names_the_tool_and_makes_it_strict() -> None:
    client = external_client(FakeVllm({}), model=SERVED)
    rec = recording("tool_call_named")
    assert rec.request is not None
    weather, clock = rec.request["tools"]
    body = {**rec.request, "tool_choice": "auto"}
    named = client.constrain_retry(body, weather)
    assert named["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert named["tools"][0]["function"] == {**weather["function"], "strict": True}
    assert named["tools"][1] is clock  # other tools go out as the client sent them
    # The client's objects are untouched: a retry must not leak into the next attempt.
    assert body["tool_choice"] == "auto" and "strict" not in weather["function"]
    # Exactly the request recorded as tool_call_strict_named.
    assert named == recording("tool_call_strict_named").request


def test_constrain_retry_without_a_tool_requires_any_strict_call() -> None:
    client = external_client(FakeVllm({}), model=SERVED)
    tool = weather_tool()
    loose = {**tool, "function": {**tool["function"], "strict": False}}
    out = client.constrain_retry({"messages": [], "tools": [tool, loose]}, None)
    assert out["tool_choice"] == "required"
    assert out["tools"][0]["function"]["strict"] is True
    assert out["tools"][1] is loose  # an explicit strict: false is the client's decision


def test_constrain_retry_adds_a_named_tool_missing_from_tools() -> None:
    client = external_client(FakeVllm({}), model=SERVED)
    tool = weather_tool()
    out = client.constrain_retry({"messages": [], "tools": []}, tool)
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather"]


@pytest.mark.parametrize("streamed", [False, True])
async def test_strict_forced_call_has_schema_valid_arguments(streamed: bool) -> None:
    name = "tool_call_strict_required_stream" if streamed else "tool_call_strict_named"
    fake = FakeVllm(with_flags(name))
    client = external_client(fake, model=SERVED)
    if streamed:
        calls = assemble(await collect(client, request_of(name)))
        arguments = calls[0]["arguments"]
    else:
        arguments = (await client.complete(request_of(name))).tool_calls[0].arguments
    await client.aclose()
    assert json.loads(arguments) == {"city": "Paris"}


async def test_count_tokens_uses_vllm_tokenize_with_tools() -> None:
    fake = FakeVllm(with_flags("text"))
    client = external_client(fake, model=SERVED)
    rec = recording("tokenize_chat")
    assert rec.request is not None
    body = {"model": "smollm2-135m", "messages": rec.request["messages"], "tools": [weather_tool()]}
    assert await client.count_tokens(body) == 191
    await client.aclose()
    path, sent = fake.requests[-1]
    assert path == "/tokenize"
    assert sent == {"model": SERVED, "messages": body["messages"], "tools": body["tools"]}


async def test_count_tokens_is_none_when_vllm_cannot_tokenize() -> None:
    fake = FakeVllm({})  # /tokenize answers 404
    client = external_client(fake, model=SERVED)
    assert await client.count_tokens({"messages": []}) is None
    await client.aclose()
