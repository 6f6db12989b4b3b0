"""Does this vLLM accept tool calls? A one-token probe and the reading of its answer.

vLLM checks the tool flags before generating anything: without ``--enable-auto-tool-choice``
and ``--tool-call-parser`` it answers 400 to any request with ``tools`` (even without
``tool_choice``, which then defaults to "auto") and names the flags in the message, e.g.
``"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set``.
vLLM refuses to start with ``--enable-auto-tool-choice`` alone, and with ``--tool-call-parser``
alone it still rejects every ``tool_choice``: both flags are always needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from forge_core.openai_client import error_detail

TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser")
_FLAG = re.compile(r"--[a-z][a-z0-9-]*[a-z0-9]")

_PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


@dataclass(frozen=True, slots=True)
class ToolSupport:
    """What the probe learned. ``ok`` is None when the probe could not decide."""

    ok: bool | None
    detail: str
    missing_flags: tuple[str, ...] = field(default=())


def probe_body(model: str) -> dict[str, Any]:
    """The cheapest request that vLLM rejects when tool calling is not enabled."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
        "tools": [_PROBE_TOOL],
        "tool_choice": "auto",
        "max_tokens": 1,
    }


def interpret_probe(status: int, body: str) -> ToolSupport:
    """Read vLLM's answer to :func:`probe_body`."""
    if status == 200:
        return ToolSupport(ok=True, detail="native tool calling enabled")
    message = error_detail(body)
    named = [flag for flag in _FLAG.findall(message) if flag in TOOL_FLAGS]
    if status == 400 and named:
        # vLLM names both flags for "auto"; both are needed in any case (see module doc).
        missing = tuple(flag for flag in TOOL_FLAGS if flag in named) or TOOL_FLAGS
        return ToolSupport(
            ok=False,
            detail=(
                f"vLLM rejects tool calls: it was started without {' '.join(missing)}; "
                "restart it with --enable-auto-tool-choice --tool-call-parser <parser> "
                "(e.g. hermes) and a chat template that renders tools "
                f"(vLLM said: {message})"
            ),
            missing_flags=missing,
        )
    return ToolSupport(
        ok=None, detail=f"tool-calling probe answered HTTP {status}: {message}"
    )
