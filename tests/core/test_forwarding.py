"""Native-first forwarding and OpenAI streaming, checked at the byte level."""

from __future__ import annotations

import json

from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    chat,
    forge_client,
    reply_text,
    reply_tool_call,
)

ODD_MESSAGES = [
    {"role": "system", "content": "Be brief. ünïcödé ✓", "x-vendor": {"keep": [1, 2.5, None]}},
    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "abc123xyz", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "abc123xyz", "content": "{\"temp\": -3}"},
]


async def test_first_attempt_forwards_messages_and_tools_verbatim() -> None:
    backend = ScriptedBackend().push(reply_text("It is cold."))
    tools = [WEATHER_TOOL | {"x-extension": {"anything": True}}]
    body = chat(tools=tools, temperature=0.2, top_k=40, min_p=0.05, seed=7,
                chat_template_kwargs={"enable_thinking": False}, vendor_field={"a": 1})
    body["messages"] = ODD_MESSAGES
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    sent = backend.requests[0]
    assert sent["messages"] == ODD_MESSAGES
    assert sent["tools"] == tools
    # Same JSON values, key order included.
    assert json.dumps(sent["messages"]) == json.dumps(ODD_MESSAGES)
    for field in ("temperature", "top_k", "min_p", "seed", "chat_template_kwargs", "vendor_field"):
        assert sent[field] == body[field]


async def test_stream_options_not_passed_blindly_and_usage_chunk_returned() -> None:
    backend = ScriptedBackend().push(reply_text("one two three"))
    body = chat(stream=True, stream_options={"include_usage": True, "x": 1})
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=body)
    assert backend.requests[0]["stream_options"] == {"include_usage": True}
    events = r.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-2]]
    usage = payloads[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 15


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    backend = ScriptedBackend().push(reply_text("one two"))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat(stream=True))
    assert backend.requests[0]["stream"] is True
    assert "usage" not in r.text


async def test_sse_framing_and_headers() -> None:
    backend = ScriptedBackend().push(reply_text("alpha beta gamma"))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat(stream=True))
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["cache-control"] == "no-cache"
    raw = r.content
    assert raw.endswith(b"data: [DONE]\n\n")
    for block in raw.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block
    chunks = [json.loads(b[6:]) for b in raw.split(b"\n\n")[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "alpha beta gamma"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    finishes = [f for f in finishes if f]
    assert finishes == ["stop"]


async def test_streamed_tool_call_is_canonical() -> None:
    backend = ScriptedBackend().push(reply_tool_call("get_weather", {"city": "Paris"}))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat(stream=True, tools=[WEATHER_TOOL]))
    chunks = [json.loads(b[6:]) for b in r.content.split(b"\n\n")[:-2]]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["index"] == 0 and deltas[0]["type"] == "function"
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"]["name"] == "get_weather"
    assert all("index" in d for d in deltas)
    args = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_non_stream_reports_usage() -> None:
    backend = ScriptedBackend().push(reply_text("ok"))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat())
    assert r.json()["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


async def test_broken_stream_event_becomes_in_stream_error() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("x", stream_chunks=[{"content": "fine "}, "data: {not json\n\n"]))
    async with forge_client(backend) as http:
        r = await http.post("/v1/chat/completions", json=chat(stream=True))
    assert r.status_code == 200
    assert "fine " in r.text
    assert '"type": "backend_error"' in r.text
    assert r.text.endswith("data: [DONE]\n\n")
