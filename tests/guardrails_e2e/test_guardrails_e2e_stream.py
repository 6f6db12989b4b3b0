"""Streamed guardrails through the app: retried invisibly, one finish_reason, canonical calls,
rescue from chunked text, and errors in the middle of a stream."""

from __future__ import annotations

import json
from typing import Any

from guardrails_e2e_support import TOOLS, Assembled, assemble, last_messages

from forge_core.config import GuardrailSettings
from forge_core.testing import (
    Reply,
    ScriptedBackend,
    chat,
    forge_client,
    reply_error,
    reply_text,
    reply_tool_call,
    reply_tool_calls,
)

URL = "/v1/chat/completions"
PARIS = {"city": "Paris"}


async def stream(backend: ScriptedBackend, body: dict[str, Any], **kw: Any) -> Assembled:
    async with forge_client(backend, **kw) as http:
        r = await http.post(URL, json={**body, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    out = assemble(r.text)
    assert out.done == 1 and out.roles == 1
    return out


def chars(text: str) -> list[dict[str, Any] | str]:
    """A stream that sends ``text`` one character per chunk."""
    return [{"role": "assistant", "content": ""}, *({"content": c} for c in text)]


def assert_canonical(out: Assembled) -> None:
    for first in out.first_deltas:
        assert first["id"] and first["type"] == "function" and first["function"]["name"]
    ids = [c["id"] for c in out.tool_calls]
    assert len(set(ids)) == len(ids)
    for call in out.tool_calls:
        assert isinstance(json.loads(call["arguments"]), dict)


async def test_required_prose_is_retried_invisibly() -> None:
    backend = ScriptedBackend().push(
        reply_text("I am not sure."), reply_tool_call("get_weather", PARIS)
    )
    out = await stream(backend, chat(tools=TOOLS, tool_choice="required"))
    assert len(backend.requests) == 2 and backend.requests[1]["stream"] is True
    assert out.content == ""  # the failed prose never reached the client
    assert out.finish_reasons == ["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in out.tool_calls] == [
        ("get_weather", PARIS)
    ]
    assert_canonical(out)
    assert out.usage == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    assert "a tool call is required" in last_messages(backend.requests[1], 1)[0]["content"]


async def test_text_sent_before_a_bad_call_is_kept_and_the_retry_continues() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", {"city": 1}, content="Checking."),
        reply_tool_call("get_weather", PARIS, content="Checking again."),
    )
    out = await stream(backend, chat(tools=TOOLS))
    assert out.content == "Checking.\n\nChecking again."
    assert out.finish_reasons == ["tool_calls"] and len(out.tool_calls) == 1
    assistant = last_messages(backend.requests[1], 2)[0]
    assert assistant["content"] == "Checking." and assistant["tool_calls"]


async def test_printed_call_in_one_char_chunks_is_rescued_and_prose_streams() -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n' \
        "</tool_call>\nDone."
    backend = ScriptedBackend().push(Reply(stream_chunks=chars(text)))
    out = await stream(backend, chat(tools=TOOLS))
    assert out.content == "Let me look.\nDone."
    assert [c["name"] for c in out.tool_calls] == ["search"]
    assert out.finish_reasons == ["tool_calls"]
    assert_canonical(out)
    assert len(backend.requests) == 1


async def test_several_native_calls_stream_canonically_in_order() -> None:
    backend = ScriptedBackend().push(
        reply_tool_calls([("get_weather", PARIS), ("search", {"query": "Paris"}),
                          ("get_weather", {"city": "Rome"})])
    )
    out = await stream(backend, chat(tools=TOOLS))
    assert [json.loads(c["arguments"]) for c in out.tool_calls] == [
        PARIS, {"query": "Paris"}, {"city": "Rome"}
    ]
    assert [d["index"] for d in out.first_deltas] == [0, 1, 2]
    assert_canonical(out)


async def test_parallel_calls_sent_with_index_zero_each_are_kept_apart() -> None:
    chunks: list[dict[str, Any] | str] = [{"role": "assistant", "content": None}]
    for call_id, city in (("call_x", "A"), ("call_y", "B")):
        chunks.append({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]})
        chunks.append({"tool_calls": [{"index": 0, "function": {
            "arguments": json.dumps({"city": city})}}]})
    backend = ScriptedBackend().push(Reply(stream_chunks=chunks, finish_reason="tool_calls"))
    out = await stream(backend, chat(tools=TOOLS))
    assert [(c["id"], json.loads(c["arguments"])) for c in out.tool_calls] == [
        ("call_x", {"city": "A"}), ("call_y", {"city": "B"})
    ]


async def test_duplicate_ids_in_a_stream_are_made_unique() -> None:
    backend = ScriptedBackend().push(
        reply_tool_calls([("get_weather", PARIS), ("search", {"query": "q"})], ids=["d", "d"])
    )
    out = await stream(backend, chat(tools=TOOLS))
    ids = [c["id"] for c in out.tool_calls]
    assert ids[0] == "d" and len(set(ids)) == 2


async def test_exhausted_stream_ends_with_text_and_stop() -> None:
    backend = ScriptedBackend().push(reply_text("a"), reply_text("b"))
    out = await stream(
        backend, chat(tools=TOOLS, tool_choice="required"),
        guardrails=GuardrailSettings(max_retries=1),
    )
    assert out.content == "b" and out.tool_calls == []
    assert out.finish_reasons == ["stop"]


async def test_exhausted_stream_without_text_gets_the_forge_explanation() -> None:
    backend = ScriptedBackend().push(reply_tool_call("nope", {}))
    out = await stream(backend, chat(tools=TOOLS), guardrails=GuardrailSettings(max_retries=0))
    assert out.content.startswith("[forge] The model did not produce a valid tool call")
    assert out.tool_calls == [] and out.finish_reasons == ["stop"]


async def test_prose_under_auto_streams_with_its_finish_reason() -> None:
    backend = ScriptedBackend().push(reply_text("cut short", finish_reason="length"))
    out = await stream(backend, chat(tools=TOOLS))
    assert out.content == "cut short" and out.finish_reasons == ["length"]


async def test_mid_stream_backend_error_becomes_an_in_stream_error() -> None:
    chunks: list[dict[str, Any] | str] = [
        {"role": "assistant", "content": ""}, {"content": "Hello"},
        'data: {"error": {"message": "slot crashed"}}\n\n',
    ]
    backend = ScriptedBackend().push(Reply(stream_chunks=chunks))
    async with forge_client(backend) as http:
        r = await http.post(URL, json=chat(tools=TOOLS, stream=True))
    out = assemble(r.text)
    assert out.content == "Hello"
    assert out.errors and "slot crashed" in out.errors[0]["message"]
    assert out.finish_reasons == [] and out.done == 1


async def test_streamed_call_with_arguments_of_a_wrong_type_is_a_backend_error() -> None:
    chunks: list[dict[str, Any] | str] = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{"index": 0, "id": "c", "type": "function",
                         "function": {"name": "get_weather", "arguments": 5}}]},
    ]
    backend = ScriptedBackend().push(Reply(stream_chunks=chunks, finish_reason="tool_calls"))
    async with forge_client(backend) as http:
        r = await http.post(URL, json=chat(tools=TOOLS, stream=True))
    # Nothing had been sent yet, so it is a real 502 rather than an in-stream error.
    assert r.status_code == 502
    assert "arguments of type int" in r.json()["error"]["message"]


async def test_streamed_call_without_a_name_is_a_backend_error() -> None:
    chunks: list[dict[str, Any] | str] = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{"index": 0, "id": "c", "type": "function",
                         "function": {"arguments": "{}"}}]},
    ]
    backend = ScriptedBackend().push(Reply(stream_chunks=chunks, finish_reason="tool_calls"))
    async with forge_client(backend) as http:
        r = await http.post(URL, json=chat(tools=TOOLS, stream=True))
    assert r.status_code == 502 and "without a function name" in r.json()["error"]["message"]


async def test_streamed_malformed_arguments_are_retried() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", '{"city": "Par'), reply_tool_call("get_weather", PARIS)
    )
    out = await stream(backend, chat(tools=TOOLS))
    assert len(backend.requests) == 2 and json.loads(out.tool_calls[0]["arguments"]) == PARIS


async def test_rejected_streamed_retry_returns_the_previous_text() -> None:
    backend = ScriptedBackend().push(
        reply_text("Sunny."), reply_error(500, {"error": {"message": "boom"}})
    )
    out = await stream(backend, chat(tools=TOOLS, tool_choice="required"))
    assert out.content == "Sunny." and out.finish_reasons == ["stop"] and not out.errors


async def test_tool_choice_none_streams_printed_json_as_prose() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    backend = ScriptedBackend().push(Reply(stream_chunks=chars(text)))
    out = await stream(backend, chat(tools=TOOLS, tool_choice="none"))
    assert out.content == text and out.tool_calls == [] and out.finish_reasons == ["stop"]


async def test_reasoning_streams_and_failed_attempts_are_separated() -> None:
    first = Reply(stream_chunks=[{"reasoning_content": "think 1"}, {"content": "prose"}])
    second = Reply(stream_chunks=[
        {"reasoning_content": "think 2"},
        {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                         "function": {"name": "search", "arguments": '{"query": "q"}'}}]},
    ], finish_reason="tool_calls")
    backend = ScriptedBackend().push(first, second)
    out = await stream(backend, chat(tools=TOOLS, tool_choice="required"))
    assert out.reasoning == "think 1\n\nthink 2"
    assert out.content == "" and [c["name"] for c in out.tool_calls] == ["search"]


async def test_streamed_rescued_call_with_a_schema_error_is_echoed_once() -> None:
    text = 'Sure.\n<tool_call>{"name": "get_weather", "arguments": {"town": "Oslo"}}</tool_call>'
    backend = ScriptedBackend().push(
        Reply(stream_chunks=chars(text)), reply_tool_call("get_weather", PARIS)
    )
    out = await stream(backend, chat(tools=TOOLS))
    assistant, result = last_messages(backend.requests[1], 2)
    assert assistant["content"] == "Sure.\n"
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result["role"] == "tool" and "missing required argument 'city'" in result["content"]
    assert out.content == "Sure.\n" and len(out.tool_calls) == 1
