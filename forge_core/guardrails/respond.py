"""The opt-in respond tool: lets a model that only speaks in tool calls answer in prose.

forge adds ``respond(message)`` to the tools it sends; a call to it becomes a plain assistant
message, and the client never sees the tool. Mixed with real calls, respond calls are dropped.
"""

from __future__ import annotations

import json
from typing import Any

from forge_core.turns import AssistantTurn

RESPOND_TOOL_NAME = "respond"

RESPOND_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": RESPOND_TOOL_NAME,
        "description": "Answer the user directly in plain text when no other tool is needed.",
        "parameters": {
            "type": "object",
            "properties": {"message": {"type": "string", "description": "The answer."}},
            "required": ["message"],
        },
    },
}


def add_respond_tool(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` with the respond tool appended (unless the client has one)."""
    tools = list(body.get("tools") or [])
    if any((t.get("function") or {}).get("name") == RESPOND_TOOL_NAME for t in tools):
        return body
    return {**body, "tools": [*tools, RESPOND_TOOL]}


def unwrap_respond(turn: AssistantTurn) -> AssistantTurn:
    """Turn respond() calls back into prose; drop them when real calls are present."""
    responds = [c for c in turn.tool_calls if c.name == RESPOND_TOOL_NAME]
    if not responds:
        return turn
    others = [c for c in turn.tool_calls if c.name != RESPOND_TOOL_NAME]
    if others:
        turn.tool_calls = others
        return turn
    texts = []
    for call in responds:
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = {}
        message = args.get("message") if isinstance(args, dict) else None
        texts.append(message if isinstance(message, str) else call.arguments)
    turn.content = "\n\n".join(t for t in [turn.content, *texts] if t)
    turn.tool_calls = []
    turn.finish_reason = "stop"
    return turn
