"""Server-sent-events framing shared by both client protocols."""

from __future__ import annotations

import json
from typing import Any

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data_line(payload: str) -> bytes:
    """One OpenAI-style event: ``data: <json>`` and a blank line."""
    return b"data: " + payload.encode() + b"\n\n"


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One named event (Anthropic style): ``event:`` line, ``data:`` line, blank line."""
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
