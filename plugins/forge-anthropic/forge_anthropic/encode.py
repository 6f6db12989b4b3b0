"""OpenAI chat-completions body -> Anthropic Messages request: the backend-side encoder.

The client side of the Anthropic wire (parsing ``/v1/messages``, emitting responses) lives in
``forge_core.wire.anthropic``; this direction only matters to a backend that speaks Anthropic.
"""

from __future__ import annotations

from typing import Any

from forge_core.turns import new_id
from forge_core.wire.anthropic import BLOCK_SEPARATOR
from forge_core.wire.jsonio import loads


def _parts_to_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str):
                blocks.append({"type": "image", "source": _image_source(url)})
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _tool_input(arguments: Any) -> dict[str, Any]:
    """Arguments text as an Anthropic ``input`` object.

    Text that is not a JSON object (a broken call being retried) is kept under
    ``_unparsed_arguments`` so the model still sees what it wrote.
    """
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = loads(arguments)  # strict and bounded (forge_core.wire.jsonio)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_unparsed_arguments": arguments}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return BLOCK_SEPARATOR.join(b["text"] for b in _parts_to_blocks(content) if b["type"] == "text")


def from_openai_request(body: dict[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into an Anthropic Messages body.

    System and developer messages become ``system``; tool messages become ``tool_result``
    blocks at the start of the following user turn; consecutive same-role messages merge (the
    Messages API wants one user turn after each tool-using assistant turn). ``max_tokens`` is
    required by Anthropic, so ``default_max_tokens`` fills in when the body has none.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for message in body.get("messages") or ():
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if text := _text_of(content):
                system.append(text)
        elif role == "user":
            add("user", _parts_to_blocks(content))
        elif role == "assistant":
            blocks = _parts_to_blocks(content)
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or new_id("toolu_"),
                        "name": function.get("name", ""),
                        "input": _tool_input(function.get("arguments")),
                    }
                )
            add("assistant", blocks)
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text_of(content),
            }
            add("user", [result])

    out: dict[str, Any] = {"model": body.get("model", "")}
    if system:
        out["system"] = BLOCK_SEPARATOR.join(system)
    out["messages"] = turns
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    out["max_tokens"] = int(max_tokens) if max_tokens else default_max_tokens
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    tools = _anthropic_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _anthropic_tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            choice["disable_parallel_tool_use"] = True
        if choice:
            out["tool_choice"] = choice
    if body.get("stream"):
        out["stream"] = True
    return out


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        entry: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        out.append(entry)
    return out


def _anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        mapped = {"auto": "auto", "required": "any", "none": "none"}.get(choice)
        return {"type": mapped} if mapped else None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"type": "tool", "name": name}
    return None
