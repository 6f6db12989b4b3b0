"""The prompt capability: tools rendered into the system prompt for a model without a
function-calling template, and the tool history downgraded to text it can follow.

:func:`to_prompt_body` turns an OpenAI request with ``tools`` into one without: the tools, their
JSON Schemas and the exact output format go into the system message; earlier assistant tool
calls become the same ``<tool_call>`` text the model is asked to write, and tool results become
``<tool_response>`` blocks in a user turn. The model's answer is parsed back into native calls by
the engine's rescue parsers (the ``hermes`` format reads ``<tool_call>`` blocks, the ``json``
format reads a constrained retry's bare object), so the client sees ordinary ``tool_calls``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from forge_core.wire.jsonio import dumps, loads

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response", "</tool_response>"
# Request fields that only make sense next to native ``tools``.
NATIVE_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


def _function(tool: Any) -> dict[str, Any] | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return function
    return None


def _type_of(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_type_of(schema['items'])}"
    if isinstance(kind, str):
        return kind
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return " or ".join(_type_of(s) for s in schema[key])
    return "any"


def _parameter_lines(parameters: Any) -> list[str]:
    """One line per top-level parameter: type, required, allowed values, description."""
    if not isinstance(parameters, dict) or not isinstance(parameters.get("properties"), dict):
        return ["  (no parameters: use an empty object {})"]
    required = set(parameters.get("required") or [])
    lines: list[str] = []
    for name, schema in parameters["properties"].items():
        line = f"  - {name} ({_type_of(schema)}, {'required' if name in required else 'optional'})"
        if isinstance(schema, dict):
            if isinstance(schema.get("enum"), list):
                line += " one of: " + ", ".join(json.dumps(v) for v in schema["enum"])
            if isinstance(schema.get("description"), str) and schema["description"].strip():
                line += f": {schema['description'].strip()}"
        lines.append(line)
    return lines or ["  (no parameters: use an empty object {})"]


def _skeleton(parameters: Any) -> str:
    """The arguments' shape with ``<type>`` placeholders: not valid JSON, so a model that copies
    it verbatim produces no call rather than a call with made-up values."""
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(props, dict) or not props:
        return "{}"
    required = [k for k in parameters.get("required") or [] if k in props] or list(props)[:1]
    inner = ", ".join(f"{json.dumps(k)}: <{_type_of(props[k])}>" for k in required[:6])
    return "{" + inner + "}"


def _choice_rule(tool_choice: Any, names: Sequence[str]) -> str:
    if isinstance(tool_choice, dict):
        named = _function(tool_choice)
        if named:
            return f"You must call the tool {named['name']} now."
    if tool_choice == "required":
        return "You must call one or more of these tools now."
    if len(names) == 1:
        return f"When the {names[0]} tool can help, call it; otherwise answer in plain text."
    return "When one of these tools can help, call it; otherwise answer in plain text."


def render_tools(tools: Sequence[Any], tool_choice: Any = None) -> str:
    """The system-prompt block describing ``tools`` and the exact call format."""
    functions = [f for f in (_function(t) for t in tools) if f]
    names = [f["name"] for f in functions]
    parts = ["# Tools", "", "You can call these tools:"]
    for function in functions:
        parts.append("")
        parts.append(f"## {function['name']}")
        description = function.get("description")
        if isinstance(description, str) and description.strip():
            parts.append(description.strip())
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        parts.append("Parameters:")
        parts += _parameter_lines(parameters)
        parts.append("JSON Schema of the arguments: " + json.dumps(parameters, ensure_ascii=False))
    first = functions[0] if functions else {"name": "TOOL_NAME"}
    example = json.dumps(first["name"]) + ', "arguments": ' + _skeleton(first.get("parameters"))
    parts += [
        "",
        "# How to call a tool",
        "",
        _choice_rule(tool_choice, names),
        "To call a tool, write exactly this, with the tool's name and its arguments as one JSON "
        "object that follows the schema above:",
        CALL_OPEN,
        '{"name": ' + example + "}",
        CALL_CLOSE,
        f"Write one {CALL_OPEN} block per call, and nothing after the last block. "
        f"Each result comes back in a {RESULT_OPEN}> block.",
    ]
    return "\n".join(parts)


# --- history ------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return "".join(text for text in texts if isinstance(text, str))  # others carry no text
    return dumps(content)


def call_text(name: str, arguments: Any) -> str:
    """A call as the model is asked to write it; arguments decoded when they are JSON."""
    if isinstance(arguments, str):
        # Broken JSON stays the model's own text: it is what it wrote.
        with contextlib.suppress(ValueError):  # strict and bounded: NaN, deep nesting stay text
            arguments = loads(arguments) if arguments.strip() else {}
    payload = dumps({"name": name, "arguments": arguments})
    return f"{CALL_OPEN}\n{payload}\n{CALL_CLOSE}"


def _downgrade_assistant(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    blocks = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = str(function.get("name") or "")
        if isinstance(call.get("id"), str):
            names[call["id"]] = name
        blocks.append(call_text(name, function.get("arguments")))
    text = _text(message.get("content")).strip()
    out = {k: v for k, v in message.items() if k not in ("tool_calls", "content")}
    out["content"] = "\n".join([text, *blocks] if text else blocks)
    return out


def _result_text(message: dict[str, Any], names: dict[str, str]) -> str:
    call_id = message.get("tool_call_id")
    name = message.get("name") or (names.get(call_id) if isinstance(call_id, str) else None)
    attrs = f' name="{name}"' if name else ""
    return f"{RESULT_OPEN}{attrs}>\n{_text(message.get('content'))}\n{RESULT_CLOSE}"


def downgrade_history(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """``messages`` without native tool structure: calls as text, results as user turns.

    Consecutive user turns (several results, or results then a question) are merged so that
    templates demanding user/assistant alternation accept the history. Input is not mutated.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    results: set[int] = set()  # positions in ``out`` that hold downgraded tool results
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            out.append(_downgrade_assistant(message, names))
            continue
        is_result = role == "tool"
        turn = {"role": "user", "content": _result_text(message, names)} if is_result else message
        last = len(out) - 1
        if (
            out
            and turn.get("role") == "user"
            and out[last].get("role") == "user"
            and (is_result or last in results)
        ):
            joined = _text(out[last].get("content")) + "\n" + _text(turn.get("content"))
            out[last] = {**out[last], "content": joined}
            results.add(last)
            continue
        if is_result:
            results.add(len(out))
        out.append(turn)
    return out


def _with_system(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """Append ``block`` to the first system message, or add one in front."""
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        text = _text(first.get("content")).rstrip()
        joined = f"{text}\n\n{block}" if text else block
        return [{**first, "role": "system", "content": joined}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def to_prompt_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request with tools in the system prompt and no native tool fields.

    ``tool_choice: "none"`` renders no tools (the model may not call any); the history is
    downgraded either way, since the backend is assumed to have no tool template.
    """
    tools = body.get("tools")
    messages = downgrade_history(body.get("messages") or [])
    if isinstance(tools, list) and tools and body.get("tool_choice") != "none":
        messages = _with_system(messages, render_tools(tools, body.get("tool_choice")))
    out = {k: v for k, v in body.items() if k not in NATIVE_TOOL_FIELDS}
    out["messages"] = messages
    return out
