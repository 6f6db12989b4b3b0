"""OllamaClient against the fake Ollama (httpx.MockTransport replaying the recorded fixtures).

Every streamed body is cut at odd byte boundaries by the fake (see fake_ollama.FakeOllama).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fake_ollama import Exchange, FakeOllama, Reply, assemble, fixture_bytes, go_json
from forge_ollama.client import OllamaClient, ollama_identity

from forge_core.backend import BackendRequest
from forge_core.errors import (
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ModelNotFound,
)
from forge_core.turns import AssistantTurn, BackendChunk

MakeClient = Callable[..., OllamaClient]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_temperature",
        "description": "Get the current temperature for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat(model: str = "qwen3:8b", **fields: Any) -> BackendRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    return BackendRequest(body=body)


async def collect(client: OllamaClient, request: BackendRequest) -> list[BackendChunk]:
    return [chunk async for chunk in client.stream(request)]


def without_ids(turn: AssistantTurn) -> AssistantTurn:
    for call in turn.tool_calls:
        assert call.id.startswith("call_")
        call.id = "-"
    return turn


# --- start-up and identity -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_start_lists_installed_models(make_client: MakeClient) -> None:
    client = make_client()
    assert client.models() == []
    await client.start()
    assert [m.wire_name for m in client.models()] == ["qwen3:8b", "llama3.2:latest", "gemma:2b"]
    assert client.models()[1].names == ("llama3.2:latest", "llama3.2")
    await client.aclose()


def test_identity_accepts_the_name_without_latest() -> None:
    assert ollama_identity("llama3:latest").names == ("llama3:latest", "llama3")
    assert ollama_identity("qwen3:8b").names == ("qwen3:8b",)


@pytest.mark.asyncio
async def test_start_resolves_the_managed_model_tag(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Exchange(json="chat_text.json"))
    client = make_client(model="llama3.2")
    await client.start()
    assert [m.names for m in client.models()] == [("llama3.2:latest", "llama3.2")]
    await client.complete(BackendRequest(body={"messages": [{"role": "user", "content": "hi"}]}))
    assert fake.chat_requests[0]["model"] == "llama3.2:latest"
    await client.aclose()


@pytest.mark.asyncio
async def test_start_logs_a_reason_when_ollama_is_down(
    make_client: MakeClient, fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    fake.refuse_connections = True
    client = make_client(model="qwen3:8b", unload_on_exit=False)
    with caplog.at_level(logging.WARNING, logger="forge.backends.ollama"):
        await client.start()  # must not raise
    assert "Connection refused" in caplog.text and "ollama serve" in caplog.text
    assert [m.wire_name for m in client.models()] == ["qwen3:8b"]
    await client.aclose()


@pytest.mark.asyncio
async def test_start_warns_about_a_model_that_is_not_installed(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(model="mistral", unload_on_exit=False)
    with caplog.at_level(logging.WARNING, logger="forge.backends.ollama"):
        await client.start()
    assert "ollama pull mistral" in caplog.text
    assert "qwen3:8b" in caplog.text
    await client.aclose()


# --- requests on the wire --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_request_carries_translation_and_num_ctx(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Exchange(stream="chat_stream_text.ndjson"))
    client = make_client(num_ctx=16384)
    body = {
        "model": "qwen3:8b",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_temperature", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "3°C"},
        ],
        "tools": [WEATHER_TOOL],
        "max_tokens": 64,
        "parallel_tool_calls": True,
        "stream_options": {"include_usage": True},
    }
    await collect(client, BackendRequest(body=body))
    (sent,) = fake.chat_requests
    assert sent["stream"] is True
    assert sent["options"] == {"num_predict": 64, "num_ctx": 16384}
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert sent["messages"][2]["tool_name"] == "get_temperature"
    assert sent["tools"] == [WEATHER_TOOL]
    assert "parallel_tool_calls" not in sent and "stream_options" not in sent
    await client.aclose()


# --- streaming and non-streaming agree -------------------------------------------------------


@pytest.mark.parametrize(
    ("stream_fixture", "json_fixture"),
    [
        ("chat_stream_text.ndjson", "chat_text.json"),
        ("chat_stream_tool_call.ndjson", "chat_tool_call.json"),
        ("chat_stream_parallel_index0.ndjson", "chat_parallel.json"),
        ("chat_stream_thinking.ndjson", "chat_thinking.json"),
    ],
)
@pytest.mark.asyncio
async def test_streaming_and_non_streaming_give_the_same_turn(
    make_client: MakeClient, fake: FakeOllama, stream_fixture: str, json_fixture: str
) -> None:
    fake.script(Exchange(stream=stream_fixture, json=json_fixture))
    fake.script(Exchange(stream=stream_fixture, json=json_fixture))
    client = make_client()
    streamed = assemble(await collect(client, chat(tools=[WEATHER_TOOL])))
    whole = await client.complete(chat(tools=[WEATHER_TOOL]))
    if json_fixture == "chat_tool_call.json":
        # The documented pair differs in eval_count (15 streamed, 18 not); all else agrees.
        assert (streamed.usage.completion_tokens, whole.usage.completion_tokens) == (15, 18)
        whole.usage = streamed.usage
    assert without_ids(streamed) == without_ids(whole)
    assert [r["stream"] for r in fake.chat_requests] == [True, False]
    await client.aclose()


@pytest.mark.asyncio
async def test_streamed_parallel_calls_are_canonical(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Exchange(stream="chat_stream_parallel_index0.ndjson"))
    client = make_client()
    chunks = await collect(client, chat(tools=[WEATHER_TOOL]))
    fragments = [f for c in chunks for f in c.tool_calls]
    assert [(f.index, f.name) for f in fragments] == [
        (0, "get_temperature"),
        (1, "get_temperature"),
    ]
    assert len({f.id for f in fragments}) == 2
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    await client.aclose()


@pytest.mark.asyncio
async def test_mid_stream_error_is_raised_after_the_text(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Reply.ndjson_fixture("chat_stream_error_midstream.ndjson"))
    client = make_client()
    texts: list[str] = []
    with pytest.raises(BackendError, match="an error was encountered"):
        async for chunk in client.stream(chat()):
            texts.append(chunk.text)
    assert "".join(texts) == "The sky is"
    await client.aclose()


@pytest.mark.asyncio
async def test_stream_without_done_line_is_a_protocol_error(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    truncated = b"".join(fixture_bytes("chat_stream_text.ndjson").splitlines(keepends=True)[:3])
    fake.script(Reply(200, truncated, "application/x-ndjson"))
    client = make_client()
    with pytest.raises(BackendProtocolError, match="before its final `done`"):
        await collect(client, chat())
    await client.aclose()


@pytest.mark.asyncio
async def test_closing_the_stream_early_closes_the_backend_response(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Exchange(stream="chat_stream_text.ndjson"))
    client = make_client()
    stream = client.stream(chat())
    first = await stream.__anext__()
    assert first.text == "The"
    assert fake.closed_streams == 0
    await stream.aclose()  # the client went away
    assert fake.closed_streams == 1
    await client.aclose()


@pytest.mark.asyncio
async def test_non_json_body_is_a_protocol_error(make_client: MakeClient, fake: FakeOllama) -> None:
    fake.script(Reply(200, b"<html>proxy error</html>", "text/html"))
    client = make_client()
    with pytest.raises(BackendProtocolError):
        await client.complete(chat())
    await client.aclose()


@pytest.mark.asyncio
async def test_non_object_arguments_from_ollama_raise(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Reply.json_fixture("broken_arguments_list.json"))
    client = make_client()
    with pytest.raises(BackendProtocolError, match="get_temperature"):
        await client.complete(chat(tools=[WEATHER_TOOL]))
    await client.aclose()


# --- errors ----------------------------------------------------------------------------------


def test_fake_error_bodies_match_the_recorded_ones() -> None:
    assert go_json({"error": 'model "llama2" not found, try pulling it first'}) == fixture_bytes(
        "error_model_not_found.json"
    )
    no_tools = "registry.ollama.ai/library/gemma:2b does not support tools"
    assert go_json({"error": no_tools}) == fixture_bytes("error_no_tools.json")


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.asyncio
async def test_unknown_model_is_model_not_found_listing_installed(
    make_client: MakeClient, fake: FakeOllama, streamed: bool
) -> None:
    client = make_client()
    with pytest.raises(ModelNotFound) as info:
        if streamed:
            await collect(client, chat(model="llama2"))
        else:
            await client.complete(chat(model="llama2"))
    error = info.value
    assert error.status == 404
    assert "llama2" in error.message
    assert error.served == ["qwen3:8b", "llama3.2:latest", "gemma:2b"]
    # The list is fetched fresh when the 404 arrives (models may have been pulled since).
    assert [r.path for r in fake.requests] == ["/api/chat", "/api/tags"]
    await client.aclose()


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.asyncio
async def test_model_without_tool_support_is_a_clear_client_error(
    make_client: MakeClient, streamed: bool
) -> None:
    client = make_client()
    request = chat(model="gemma:2b", tools=[WEATHER_TOOL])
    with pytest.raises(InvalidRequest) as info:
        if streamed:
            await collect(client, request)
        else:
            await client.complete(request)
    error = info.value
    assert error.status == 400 and error.param == "tools"
    assert "Model 'gemma:2b' does not support tools in Ollama" in error.message
    assert "tools-capable model" in error.message
    await client.aclose()


@pytest.mark.asyncio
async def test_other_error_statuses_keep_ollama_s_message(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Reply.error(500, "llama runner process has terminated: exit status 2"))
    client = make_client()
    with pytest.raises(BackendHTTPError) as info:
        await client.complete(chat())
    assert info.value.backend_status == 500 and info.value.status == 502
    assert "llama runner process has terminated" in info.value.message
    await client.aclose()


@pytest.mark.asyncio
async def test_a_plain_404_means_not_an_ollama_server(
    fake: FakeOllama, make_client: MakeClient
) -> None:
    fake.script(Reply(404, b"404 page not found", "text/plain"))
    client = make_client()
    with pytest.raises(BackendProtocolError, match="is http://127.0.0.1:11434 Ollama"):
        await client.complete(chat())
    await client.aclose()


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.asyncio
async def test_connection_refused_is_backend_unavailable(
    make_client: MakeClient, fake: FakeOllama, streamed: bool
) -> None:
    fake.refuse_connections = True
    client = make_client(url="http://user:secret@127.0.0.1:11434")
    with pytest.raises(BackendUnavailable) as info:
        if streamed:
            await collect(client, chat())
        else:
            await client.complete(chat())
    assert info.value.backend == "ollama"
    assert "ollama serve" in info.value.message
    assert "secret" not in info.value.message
    await client.aclose()


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.asyncio
async def test_timeout_is_backend_timeout(
    make_client: MakeClient, fake: FakeOllama, streamed: bool
) -> None:
    fake.fail_with = httpx.ReadTimeout
    client = make_client(timeout=42.0)
    with pytest.raises(BackendTimeout, match="42s") as info:
        if streamed:
            await collect(client, chat())
        else:
            await client.complete(chat())
    assert info.value.status == 504
    await client.aclose()


@pytest.mark.asyncio
async def test_a_request_without_model_and_no_default_is_refused(make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(InvalidRequest, match="no model"):
        await client.complete(BackendRequest(body={"messages": []}))
    await client.aclose()


# --- status ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_status_reports_models_capabilities_and_trained_context(
    make_client: MakeClient,
) -> None:
    client = make_client(model="qwen3:8b", unload_on_exit=False)
    status = await client.status()
    assert status.ready
    assert status.models == ["qwen3:8b", "llama3.2:latest", "gemma:2b"]
    assert status.context_size == 40960
    assert status.extra["context_source"] == "model_info"
    assert status.extra["capabilities"] == ["completion", "tools", "thinking"]
    assert status.extra["loaded"] == ["qwen3:8b"]
    assert "--num-ctx" in status.detail
    await client.aclose()


@pytest.mark.asyncio
async def test_status_prefers_num_ctx_then_the_loaded_context(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    client = make_client(model="qwen3:8b", num_ctx=12288, unload_on_exit=False)
    status = await client.status()
    assert (status.context_size, status.extra["context_source"]) == (12288, "num_ctx")
    await client.aclose()

    fake.ps_fixture = "ps_with_context.json"
    client = make_client(model="qwen3:8b", unload_on_exit=False)
    status = await client.status()
    assert (status.context_size, status.extra["context_source"]) == (8192, "ps")
    assert status.extra["model_context_length"] == 40960
    await client.aclose()


@pytest.mark.asyncio
async def test_status_flags_a_model_without_tools(make_client: MakeClient) -> None:
    client = make_client(model="gemma:2b", unload_on_exit=False)
    status = await client.status()
    assert status.ready
    assert "does not declare tool support" in status.detail
    assert status.context_size == 8192
    await client.aclose()


@pytest.mark.asyncio
async def test_status_not_ready_when_the_model_is_missing(make_client: MakeClient) -> None:
    client = make_client(model="mistral", unload_on_exit=False)
    status = await client.status()
    assert not status.ready
    assert "ollama pull mistral" in status.detail
    await client.aclose()


@pytest.mark.asyncio
async def test_status_when_ollama_is_down(make_client: MakeClient, fake: FakeOllama) -> None:
    fake.refuse_connections = True
    client = make_client()
    status = await client.status()
    assert not status.ready
    assert "not reachable" in status.detail
    await client.aclose()


# --- constrained retry -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_constrain_retry_forces_a_json_call_through_format(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    fake.script(Reply.json_fixture("chat_text.json"))
    client = make_client()
    body = chat(tools=[WEATHER_TOOL]).body
    constrained = client.constrain_retry(body, WEATHER_TOOL)
    assert "response_format" not in body  # the caller's body is untouched
    await client.complete(BackendRequest(body=constrained, verbatim=False, attempt=1))
    sent = fake.chat_requests[0]
    assert sent["format"] == {
        "type": "object",
        "properties": {
            "name": {"const": "get_temperature"},
            "arguments": WEATHER_TOOL["function"]["parameters"],
        },
        "required": ["name", "arguments"],
    }
    assert sent["tools"] == [WEATHER_TOOL]  # still described to the model
    await client.aclose()


def test_constrain_retry_without_a_target_allows_any_tool(make_client: MakeClient) -> None:
    other = {"type": "function", "function": {"name": "get_time"}}
    client = make_client()
    constrained = client.constrain_retry(chat(tools=[WEATHER_TOOL, other]).body, None)
    schema = constrained["response_format"]["json_schema"]["schema"]
    names = [s["properties"]["name"]["const"] for s in schema["anyOf"]]
    assert names == ["get_temperature", "get_time"]
    assert schema["anyOf"][1]["properties"]["arguments"] == {"type": "object", "properties": {}}


def test_constrain_retry_without_tools_changes_nothing(make_client: MakeClient) -> None:
    body = chat().body
    assert make_client().constrain_retry(body, None) is body


# --- unloading -------------------------------------------------------------------------------


def unloads(fake: FakeOllama) -> list[Any]:
    return [b for b in fake.chat_requests if b.get("messages") == [] and "keep_alive" in b]


@pytest.mark.asyncio
async def test_managed_model_is_unloaded_on_close(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    client = make_client(model="llama3.2", url="http://127.0.0.1:11434")  # CLI default URL
    await client.start()
    await client.aclose()
    assert unloads(fake) == [{"model": "llama3.2:latest", "messages": [], "keep_alive": 0}]


@pytest.mark.asyncio
async def test_external_server_model_is_left_loaded(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    client = make_client(model="qwen3:8b", url="http://gpu-box.lan:11434")
    await client.start()
    await client.aclose()
    assert unloads(fake) == []


@pytest.mark.parametrize(
    ("url", "option", "expected"),
    [
        ("http://gpu-box.lan:11434", True, 1),
        (None, False, 0),
    ],
)
@pytest.mark.asyncio
async def test_unload_option_overrides_the_default(
    make_client: MakeClient, fake: FakeOllama, url: str | None, option: bool, expected: int
) -> None:
    client = make_client(model="qwen3:8b", url=url, unload_on_exit=option)
    await client.aclose()
    assert len(unloads(fake)) == expected


@pytest.mark.asyncio
async def test_without_a_model_nothing_is_unloaded(
    make_client: MakeClient, fake: FakeOllama
) -> None:
    client = make_client(unload_on_exit=True)
    await client.start()
    await client.aclose()
    assert unloads(fake) == []


@pytest.mark.asyncio
async def test_failed_unload_is_logged_not_raised(
    make_client: MakeClient, fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(model="mistral", unload_on_exit=True)
    with caplog.at_level(logging.WARNING, logger="forge.backends.ollama"):
        await client.aclose()
    assert "could not unload model 'mistral'" in caplog.text
    assert fake.requests[-1].body == {"model": "mistral", "messages": [], "keep_alive": 0}
