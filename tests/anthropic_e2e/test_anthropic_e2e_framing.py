"""Byte-level checks of the SSE forge writes on ``/v1/messages`` (over a real socket).

Each event is exactly ``event: NAME`` LF ``data: JSON`` LF LF, the data is one line whatever
the text holds, keep-alives are ``ping`` events (not comments), and stream headers stop
reverse proxies from buffering.
"""

from __future__ import annotations

import json
import re

from anthropic_e2e_support import WEATHER, Forge, ask, frames, run_forge

from forge_core.config import GuardrailSettings
from forge_core.testing import Reply, reply_text, reply_tool_call

FRAME = re.compile(rb"event: [a-z_]+\ndata: [^\n]+\n\n")


def test_stream_is_nothing_but_exact_frames(forge: Forge) -> None:
    forge.backend.push(reply_tool_call("get_weather", {"city": "Paris"}, content="One moment."))
    response, raw = forge.stream_raw(ask(tools=[WEATHER]))
    assert response.status_code == 200
    assert FRAME.sub(b"", raw) == b""  # the frames cover every byte
    assert raw.startswith(b"event: message_start\ndata: {")
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    names = [name for name, _ in frames(raw)]
    assert names.count("message_start") == 1 and names.count("message_stop") == 1


def test_stream_headers(forge: Forge) -> None:
    forge.backend.push(reply_text("hi"))
    response, _ = forge.stream_raw(ask())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-length" not in response.headers


def test_newlines_and_unicode_stay_inside_one_data_line(forge: Forge) -> None:
    text = 'line one\nline two\r\n\n"quoted" \u2028 snow \u2603 emoji \U0001f600 \\ end'
    forge.backend.push(Reply(stream_chunks=[{"role": "assistant", "content": None},
                                            {"content": text}]))
    _, raw = forge.stream_raw(ask())
    assert FRAME.sub(b"", raw) == b""
    deltas = [d for n, d in frames(raw) if n == "content_block_delta"]
    assert [d["delta"]["text"] for d in deltas] == [text]
    delta_line = next(line for line in raw.split(b"\n") if b"text_delta" in line)
    assert json.loads(delta_line[len(b"data: "):])["delta"]["text"] == text


def test_ping_frame_bytes() -> None:
    with run_forge(guardrails=GuardrailSettings(keepalive_interval=0.05)) as forge:
        forge.backend.push(reply_tool_call("get_weather", {"city": "Paris"}, delay=0.25))
        _, raw = forge.stream_raw(ask(tools=[WEATHER]))
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in raw
    assert b"\n: " not in raw and not raw.startswith(b":")  # no SSE comments on this wire
    assert FRAME.sub(b"", raw) == b""


def test_error_frame_bytes(forge: Forge) -> None:
    forge.backend.push(Reply(stream_chunks=[{"content": "x"}, "data: [not json\n\n"]))
    _, raw = forge.stream_raw(ask())
    last = raw.split(b"\n\n")[-2] + b"\n\n"
    assert last.startswith(b'event: error\ndata: {"type":"error","error":{"type":"api_error",')
    assert FRAME.sub(b"", raw) == b""
    assert b"message_stop" not in raw  # the stream ends at the error


def test_non_streamed_answer_is_one_json_document(forge: Forge) -> None:
    forge.backend.push(reply_text("hi"))
    response = forge.post("/v1/messages", ask())
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content)["type"] == "message"
    assert b"event:" not in response.content
