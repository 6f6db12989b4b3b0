"""Strategies and helpers of the prefix-stability tests: agent sessions in both protocols, and
forge in front of a scripted backend that keeps the exact bytes it receives."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import strategies as st

from forge_core.testing import Reply, ScriptedBackend, forge_client

MODEL = "fake-model"

# Text as agents send it: any printable character, newlines and blank lines included (no lone
# surrogates: they are not valid UTF-8, a separate concern of the JSON layer).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
NAMES = st.sampled_from(["Bash", "Read", "Edit", "Grep", "Glob", "Write", "WebFetch"])
VALUES = st.one_of(st.integers(-5, 5), st.booleans(), TEXT, st.none())


@st.composite
def schemas(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.dictionaries(st.sampled_from(["path", "command", "n", "x", "old"]),
                                 st.sampled_from([{"type": "string"}, {"type": "integer"}]),
                                 max_size=3))
    return {"type": "object", "properties": props, "required": sorted(props)[:1]}


@st.composite
def tool_names(draw: st.DrawFn) -> list[str]:
    return draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))


def billing_header(draw: st.DrawFn) -> str:
    """Claude Code's first system line: version suffix and cch hash differ per request."""
    suffix = draw(st.integers(0, 999))
    cch = draw(st.text("0123456789abcdef", min_size=5, max_size=5))
    return f"x-anthropic-billing-header: cc_version=2.1.{suffix}; cc_entrypoint=cli; cch={cch};"


# --- Anthropic sessions -------------------------------------------------------------------------


@st.composite
def anthropic_sessions(draw: st.DrawFn) -> dict[str, Any]:
    """A Claude Code-like session: tools, a list-form system prompt (maybe with the billing
    header), and alternating turns whose assistant side may call tools answered by the next
    user turn. ``messages`` ends with a user turn; requests are its prefixes ending at users."""
    names = draw(tool_names())
    tools = [
        {"name": n, "description": draw(TEXT), "input_schema": draw(schemas())} for n in names
    ]
    system = [{"type": "text", "text": draw(TEXT)}]
    if draw(st.booleans()):
        system.append({"type": "text", "text": draw(TEXT), "cache_control": {"type": "ephemeral"}})
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    for turn in range(draw(st.integers(1, 4))):
        user: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": i, "content": draw(TEXT),
             "is_error": draw(st.booleans())}
            for i in pending
        ]
        if not pending or draw(st.booleans()):
            user.append({"type": "text", "text": draw(TEXT)})
        messages.append({"role": "user", "content": user if pending or draw(st.booleans())
                         else user[0]["text"]})
        blocks: list[dict[str, Any]] = []
        if draw(st.booleans()):
            blocks.append({"type": "text", "text": draw(TEXT)})
        pending = [f"toolu_{turn}_{k}" for k in range(draw(st.integers(0, 2)))]
        for tool_id in pending:
            blocks.append({"type": "tool_use", "id": tool_id, "name": draw(st.sampled_from(names)),
                           "input": draw(st.dictionaries(st.sampled_from(["a", "b"]), VALUES))})
        content = blocks or [{"type": "text", "text": "ok"}]
        messages.append({"role": "assistant", "content": content})
    messages.append({"role": "user", "content": [
        *({"type": "tool_result", "tool_use_id": i, "content": draw(TEXT)} for i in pending),
        {"type": "text", "text": draw(TEXT)},
    ]})
    header = draw(st.booleans())
    headers = [billing_header(draw) for _ in messages[::2]] if header else []
    return {"tools": tools, "system": system, "messages": messages, "headers": headers,
            "streams": [draw(st.booleans()) for _ in messages[::2]]}


def anthropic_requests(session: dict[str, Any]) -> list[dict[str, Any]]:
    """One request per user turn, as the client sends them turn after turn."""
    bodies = []
    for turn, end in enumerate(range(1, len(session["messages"]) + 1, 2)):
        system = list(session["system"])
        if session["headers"]:
            system.insert(0, {"type": "text", "text": session["headers"][turn]})
        bodies.append({
            "model": MODEL, "max_tokens": 32000, "system": system, "tools": session["tools"],
            "messages": session["messages"][:end], "stream": session["streams"][turn],
        })
    return bodies


# --- OpenAI sessions ----------------------------------------------------------------------------


@st.composite
def openai_sessions(draw: st.DrawFn) -> dict[str, Any]:
    """An opencode-like session: system prompt, tools, turns with tool calls and results; a user
    turn is sometimes two user messages in a row (never merged by forge)."""
    names = draw(tool_names())
    tools = [
        {"type": "function",
         "function": {"name": n, "description": draw(TEXT), "parameters": draw(schemas())}}
        for n in names
    ]
    messages: list[dict[str, Any]] = [{"role": "system", "content": draw(TEXT)}]
    ends: list[int] = []
    for turn in range(draw(st.integers(1, 4))):
        for _ in range(draw(st.integers(1, 2))):
            parts = draw(st.booleans())
            text = draw(TEXT)
            messages.append({"role": "user",
                             "content": [{"type": "text", "text": text}] if parts else text})
        ends.append(len(messages))
        calls = [
            {"id": f"call_{turn}_{k}", "type": "function",
             "function": {"name": draw(st.sampled_from(names)),
                          "arguments": json.dumps(draw(st.dictionaries(st.just("a"), VALUES)))}}
            for k in range(draw(st.integers(0, 2)))
        ]
        text = draw(st.one_of(st.none(), TEXT))
        assistant: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            assistant["tool_calls"] = calls
        elif assistant["content"] is None:
            assistant["content"] = "ok"
        messages.append(assistant)
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "content": draw(TEXT)} for c in calls
        ]
    messages.append({"role": "user", "content": draw(TEXT)})
    ends.append(len(messages))
    return {"tools": tools, "messages": messages, "ends": ends,
            "streams": [draw(st.booleans()) for _ in ends]}


def openai_requests(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"model": MODEL, "max_tokens": 32000, "tools": session["tools"],
         "messages": session["messages"][:end], "stream": stream}
        for end, stream in zip(session["ends"], session["streams"], strict=True)
    ]


# --- forge in front of a recording backend --------------------------------------------------------


def through_forge(
    path: str, bodies: list[dict[str, Any]], replies: list[Reply], **kw: Any
) -> tuple[list[bytes], list[int]]:
    """POST ``bodies`` to forge in order; the raw bodies the backend got and forge's statuses."""

    async def run() -> tuple[list[bytes], list[int]]:
        backend = ScriptedBackend([MODEL])
        backend.push(*replies)
        statuses = []
        async with forge_client(backend, **kw) as http:
            for body in bodies:
                response = await http.post(path, json=body)
                await response.aread()
                statuses.append(response.status_code)
        return backend.raw_requests, statuses

    return asyncio.run(run())


def canonical(value: Any) -> str:
    """Exact serialization (key order kept): two values compare equal only if sent alike."""
    return json.dumps(value, ensure_ascii=False)
