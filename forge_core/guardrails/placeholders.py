"""Placeholder arguments: values a model copied from the tool's definition instead of the
conversation (``{"path": "path"}``, ``{"symbol": "get_stock_price"}``, ``{"city": "<city>"}``).

They validate against any schema that accepts a string, so they pass a JSON Schema check and
reach the client as a confident, wrong call. A value counts as a placeholder only when the
conversation does not contain it: a user who asks to translate the word "text" gets
``{"text": "text"}``. Pure functions, no logging of values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from typing import Any

# Whole-value templates: <city>, {city}, {{city}}, ${CITY}, [city name], YOUR_API_KEY.
_TEMPLATE = re.compile(
    r"<[^<>]{1,40}>|\{\{?\s*[\w .-]{1,40}\s*\}?\}|\$\{?[A-Za-z_]\w{0,39}\}?|\[[\w .-]{1,40}\]"
    r"|(?:YOUR|MY)_[A-Z_]{2,40}"
)
_TYPE_WORDS = frozenset(
    {"string", "str", "integer", "int", "number", "float", "boolean", "bool", "object",
     "array", "null", "none", "value", "placeholder", "example", "todo", "xxx", "...", "?"}
)
MAX_VALUES = 200
"""Values looked at per call: a placeholder sits near the top of small arguments."""


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text).strip().casefold()


def placeholder_messages(
    tool: str,
    arguments: dict[str, Any],
    parameters: Any,
    tool_names: Collection[str],
    conversation: str,
) -> list[str]:
    """One sentence per placeholder value in ``arguments`` (a decoded JSON object).

    ``parameters`` is the tool's JSON Schema (descriptions are compared too); values that
    occur in ``conversation`` (the request's message text) are never placeholders.
    """
    names = {_norm(name) for name in tool_names}
    spoken = _norm(conversation)
    found = []
    for path, key, value, schema in _strings(arguments, parameters):
        reason = _reason(key, value, schema, names)
        if reason is None:
            continue
        if _mentioned(value, spoken):
            continue
        found.append(
            f"tool {tool!r}: argument {path!r} is a placeholder ({reason}), not a value from "
            "the conversation; use the value the user gave"
        )
    return found


def _reason(key: str, value: str, schema: Any, tool_names: set[str]) -> str | None:
    text = value.strip()
    if not text:
        return None
    if _TEMPLATE.fullmatch(text):
        return f"{text!r} is a template"
    norm = _norm(text)
    if key and norm == _norm(key):
        return f"{text!r} is the parameter's own name"
    if norm in tool_names:
        return f"{text!r} is a tool name"
    if norm in _TYPE_WORDS:
        return f"{text!r} is a type, not a value"
    description = schema.get("description") if isinstance(schema, dict) else None
    if isinstance(description, str) and norm == _norm(description):
        return "it repeats the parameter's description"
    return None


def mentioned_in(conversation: str) -> Callable[[str], bool]:
    """Whether a value occurs in ``conversation`` as :func:`placeholder_messages` sees it
    (case, ``_`` and ``-`` ignored, whole words): such a value is never a placeholder."""
    spoken = _norm(conversation)
    return lambda value: _mentioned(value, spoken)


def _mentioned(value: str, spoken: str) -> bool:
    norm = _norm(value)
    return bool(norm) and re.search(r"(?<!\w)" + re.escape(norm) + r"(?!\w)", spoken) is not None


def _strings(value: Any, schema: Any) -> Iterator[tuple[str, str, str, Any]]:
    """``(path, key, string, its schema)`` for the string values, depth first, bounded."""
    stack: list[tuple[str, str, Any, Any]] = [("", "", value, schema)]
    seen = 0
    while stack and seen < MAX_VALUES:
        path, key, item, sub = stack.pop()
        seen += 1
        if isinstance(item, str):
            yield path, key, item, sub
        elif isinstance(item, dict):
            props = sub.get("properties") if isinstance(sub, dict) else None
            props = props if isinstance(props, dict) else {}
            for name, child in reversed(list(item.items())):
                stack.append((f"{path}.{name}" if path else str(name), str(name), child,
                              props.get(name)))
        elif isinstance(item, list):
            items = sub.get("items") if isinstance(sub, dict) else None
            for position, child in reversed(list(enumerate(item))):
                stack.append((f"{path}[{position}]", key, child, items))


def conversation_text(messages: Any) -> str:
    """The text the user side wrote (system, user and tool messages: strings and text parts),
    for :func:`placeholder_messages`. The assistant's own turns do not count: a placeholder it
    wrote before is no value the user gave."""
    parts: list[str] = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") == "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [
                p["text"] for p in content
                if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
    return "\n".join(parts)
