"""The constrained retry for llama-server: a request whose output must be one tool call.

Three ways, chosen with ``--constrain-with`` (measured in docs/guardrails.md):

``grammar`` (default)
    The compact GBNF of :mod:`forge_llamafile.grammar`. llama-server refuses a custom grammar
    next to ``tools``, so the tools leave the request and a short description of them (names,
    descriptions, parameters) goes into the system message instead: without it the model
    chooses names and values blind.
``grammar-avoid``
    The same grammar, where a string argument cannot be a placeholder (exactly a tool name or
    its parameter's own name, unless the conversation has it). Measured: a small model then
    wrote near-placeholders (``query_search``) that pass every check, where the plain grammar
    ended in an honest failure; so it is not the default.
``schema``
    ``response_format`` with the JSON schema ``{"name": const, "arguments": <parameters>}``
    (``anyOf`` for several tools) and no tools: the constraint before issue 10.
``schema-tools``
    The same schema with the tools kept (llama-server accepts ``response_format`` next to
    ``tools``, and its template renders them).

With the prompt capability the tools always stay: ``prepare_body`` renders them into the
prompt and drops them, so a grammar is allowed. The answer is JSON in the content either way;
forge's rescue parsers turn it into the call.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from forge_core.guardrails.placeholders import conversation_text, mentioned_in
from forge_llamafile.grammar import call_grammar

ConstrainWith = Literal["grammar", "grammar-avoid", "schema", "schema-tools"]
CONSTRAIN_WITH: tuple[str, ...] = ("grammar", "grammar-avoid", "schema", "schema-tools")
MAX_DESCRIPTION = 300


def constrained_body(
    body: dict[str, Any],
    tool: dict[str, Any] | None,
    how: str = "grammar",
    tools_in_prompt: bool = False,
) -> dict[str, Any]:
    """``body`` constrained to one call of ``tool`` (None: any of the body's tools).

    Returns ``body`` itself when there is nothing to constrain to.
    """
    tools = [tool] if tool else list(body.get("tools") or [])
    tools = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not tools:
        return body
    out = {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
    if tools_in_prompt or how == "schema-tools":
        out["tools"] = body.get("tools")
        if tools_in_prompt:
            out["tool_choice"] = (
                {"type": "function", "function": {"name": tool["function"]["name"]}}
                if tool else "required"
            )
    grammar = None
    if how in ("grammar", "grammar-avoid"):
        names = [
            t["function"]["name"] for t in body.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
        ]
        avoid = (
            mentioned_in(conversation_text(body.get("messages")))
            if how == "grammar-avoid" else None
        )
        grammar = call_grammar(tools, names, avoid)
    if grammar is not None:
        out["grammar"] = grammar
        if not tools_in_prompt:
            out["messages"] = with_tool_notes(body.get("messages") or [], tools)
        return out
    variants = [call_schema(t) for t in tools]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "tool_call", "schema": schema, "strict": True},
    }
    return out


def call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    params = function.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


# --- the tools, described for a request that cannot carry them ---------------------------------


def tool_notes(tools: list[dict[str, Any]]) -> str:
    """A short block naming each tool, what it does and its parameters."""
    lines = ["# Tools", "", "Answer with one call of one of these tools, as JSON "
             '{"name": <tool name>, "arguments": {<argument values from the conversation>}}.']
    for tool in tools:
        function = tool["function"]
        lines.append("")
        description = _short(function.get("description"))
        lines.append(f"{function['name']}: {description}" if description else function["name"])
        lines += _parameter_lines(function.get("parameters"))
    return "\n".join(lines)


def _short(text: Any) -> str:
    if not isinstance(text, str):
        return ""
    text = " ".join(text.split())
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 3] + "..."


def _parameter_lines(parameters: Any) -> list[str]:
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(props, dict) or not props:
        return ["  (no arguments)"]
    required = set(parameters.get("required") or [])
    lines = []
    for name, schema in props.items():
        schema = schema if isinstance(schema, dict) else {}
        kind = schema.get("type") if isinstance(schema.get("type"), str) else "value"
        line = f"  - {name} ({kind}, {'required' if name in required else 'optional'})"
        if isinstance(schema.get("enum"), list):
            line += " one of " + ", ".join(json.dumps(v) for v in schema["enum"][:12])
        description = _short(schema.get("description"))
        if description:
            line += f": {description}"
        lines.append(line)
    return lines


def with_tool_notes(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``messages`` with :func:`tool_notes` appended to the first system message (or a new
    one in front). The input is not mutated."""
    notes = tool_notes(tools)
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        first = messages[0]
        content = first.get("content")
        if isinstance(content, str):
            joined = f"{content.rstrip()}\n\n{notes}" if content.strip() else notes
            return [{**first, "content": joined}, *messages[1:]]
        if isinstance(content, list):
            return [{**first, "content": [*content, {"type": "text", "text": notes}]},
                    *messages[1:]]
    return [{"role": "system", "content": notes}, *messages]
