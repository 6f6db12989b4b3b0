"""Corrective retry messages: tell the model precisely what was wrong, and nothing more.

The messages are OpenAI-shaped and appended after the client's conversation. A failed answer
is echoed as the assistant turn; when its calls are sound enough to echo (ids present and
unique, arguments a JSON object) each call gets a ``tool`` result explaining its error, as a
real tool would. Otherwise the calls are echoed as text and one ``user`` message explains.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any

from forge_core.guardrails.validate import (
    Problem,
    ToolIndex,
    available_tools,
    decode_arguments,
    schema_summary,
)
from forge_core.turns import AssistantTurn, ToolCall

CALL_FORMAT = '{"name": "<tool name>", "arguments": {<arguments>}}'
MAX_SIGNATURE = 400


def corrective_messages(
    turn: AssistantTurn, problems: list[Problem], index: ToolIndex
) -> list[dict[str, Any]]:
    """The messages to append for a retry after ``turn`` failed with ``problems``.

    Returns ``[]`` when there is nothing to correct. Never mutates ``turn``.
    """
    if not problems:
        return []
    echo = _echoable(turn, problems)
    messages: list[dict[str, Any]] = []
    assistant = _assistant_message(turn, echo)
    if assistant is not None:
        messages.append(assistant)
    general = [p for p in problems if p.call_index is None]
    if echo:
        # Grouped once: an answer of thousands of calls must not cost calls x problems.
        by_call: dict[int, list[Problem]] = {}
        for problem in problems:
            if problem.call_index is not None:
                by_call.setdefault(problem.call_index, []).append(problem)
        others = bool(by_call)
        results = [
            _tool_result(turn.tool_calls[position], by_call.get(position, []), others, index)
            for position in range(len(turn.tool_calls))
        ]
        if general:
            results[-1]["content"] += "\n" + _general_text(general, index)
        messages += results
    else:
        messages.append({"role": "user", "content": _user_text(problems, index)})
    return messages


def _echoable(turn: AssistantTurn, problems: list[Problem]) -> bool:
    """Can the calls be echoed as structured tool_calls that every chat template accepts?"""
    if not turn.tool_calls or any(p.kind in ("missing_id", "duplicate_id") for p in problems):
        return False
    ids = [call.id for call in turn.tool_calls]
    if not all(ids) or len(set(ids)) != len(ids):
        return False
    return all(call.name and _object_arguments(call) is not None for call in turn.tool_calls)


def _object_arguments(call: ToolCall) -> str | None:
    """Compact JSON of the call's arguments when they are a JSON object, else None."""
    try:
        value = decode_arguments(call.arguments)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _assistant_message(turn: AssistantTurn, echo: bool) -> dict[str, Any] | None:
    if echo:
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _object_arguments(call)},
            }
            for call in turn.tool_calls
        ]
        return {"role": "assistant", "content": turn.content or None, "tool_calls": calls}
    printed = [
        f'{{"name": {json.dumps(call.name)}, "arguments": {call.arguments or "{}"}}}'
        for call in turn.tool_calls
    ]
    text = "\n".join(part for part in [turn.content.strip(), *printed] if part)
    return {"role": "assistant", "content": text} if text else None


def _tool_result(
    call: ToolCall, own: list[Problem], others: bool, index: ToolIndex
) -> dict[str, Any]:
    """The tool result for ``call``: its own problems, or why it was not run (``others``:
    some call of the answer had problems)."""
    if not own:
        content = "Not executed."
        if others:
            content += (
                " Another call in this answer was invalid; repeat this call together with the"
                " corrected ones."
            )
    else:
        lines = [f"Error: {p.message}." for p in own]
        if any(p.kind == "unknown_tool" for p in own):
            lines += _did_you_mean(call.name, index)
            lines.append("Call one of the available tools instead.")
        else:
            lines.append(f"Expected arguments: {signature(call.name, index)}")
            lines.append("Call the tool again with corrected arguments (one JSON object).")
        content = "\n".join(lines)
    return {"role": "tool", "tool_call_id": call.id, "content": content}


def _general_text(general: list[Problem], index: ToolIndex) -> str:
    lines = [f"Error: {p.message}." for p in general]
    lines += [
        f"Expected arguments: {signature(p.tool, index)}"
        for p in general
        if p.tool and p.tool in index
    ]
    return "\n".join(lines)


def _user_text(problems: list[Problem], index: ToolIndex) -> str:
    lines = ["Your last answer could not be used:"]
    lines += [f"- {p.message}" for p in problems]
    for problem in problems:
        if problem.kind == "unknown_tool" and problem.tool:
            lines += _did_you_mean(problem.tool, index)
    relevant = sorted({p.tool for p in problems if p.tool and p.tool in index})
    if not relevant and len(index) <= 5:
        relevant = sorted(index.names)
    listing = available_tools(index)
    if not any(listing in p.message for p in problems):
        lines.append(listing[0].upper() + listing[1:] + ".")
    lines += [f"- {signature(name, index)}" for name in relevant]
    lines.append(
        "Reply with a tool call. If you write it as text, use exactly one JSON object per "
        f"call: {CALL_FORMAT}"
    )
    return "\n".join(lines)


def _did_you_mean(name: str, index: ToolIndex) -> list[str]:
    close = difflib.get_close_matches(name, sorted(index.names), n=1, cutoff=0.6)
    return [f"Did you mean {close[0]!r}?"] if close else []


# --- tool signatures ---------------------------------------------------------------------------


def signature(name: str, index: ToolIndex) -> str:
    """``get_weather(city: string, unit?: 'c' | 'f')``: a one-line summary of the parameters."""
    schema = index.parameters(name)
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return f"{name}(...)" if schema not in (None, {}) else f"{name}()"
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    params = [
        f"{key}{'' if key in required else '?'}: {schema_summary(sub)}"
        for key, sub in properties.items()
    ]
    text = f"{name}({', '.join(params)})"
    return text if len(text) <= MAX_SIGNATURE else text[: MAX_SIGNATURE - 4] + "...)"


# --- message merging ---------------------------------------------------------------------------


def merge_same_role(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge consecutive plain-text user (or assistant) messages, joining with a blank line.

    Messages with tool calls and tool results are never merged; content may be a string, a
    list of parts, or null. Templates that demand strict alternation (Mistral) need this.
    The input is never mutated.
    """
    merged: list[dict[str, Any]] = []
    for message in messages:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and _plain(message)
            and _plain(previous)
            and previous.get("role") == message.get("role")
        ):
            merged[-1] = {
                **message,
                **previous,
                "content": _join(previous.get("content"), message.get("content")),
            }
        else:
            merged.append(message)
    return merged


def _plain(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") in ("user", "assistant")
        and not message.get("tool_calls")
        and not message.get("function_call")
    )


def _join(first: Any, second: Any) -> Any:
    if _empty(first):
        return second
    if _empty(second):
        return first
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    left, right = _parts(first), _parts(second)
    if left and right and _is_text(left[-1]) and _is_text(right[0]):
        joined = {**left[-1], "text": f"{left[-1]['text']}\n\n{right[0]['text']}"}
        return [*left[:-1], joined, *right[1:]]
    return [*left, *right]


def _empty(content: Any) -> bool:
    return content is None or content == "" or content == []


def _parts(content: Any) -> list[Any]:
    if isinstance(content, list):
        return list(content)
    return [{"type": "text", "text": content if isinstance(content, str) else str(content)}]


def _is_text(part: Any) -> bool:
    return (
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
    )
