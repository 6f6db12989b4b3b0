"""Prompt size in tokens, estimated without a tokenizer: the one estimate forge uses.

Where the backend cannot count exactly, the context budget (:mod:`forge_core.budget`: the
pre-check and the ``max_tokens`` clamp) and Anthropic's ``count_tokens`` and usage fallback
all measure a prompt here, so they never disagree about its size.

The measure is the UTF-8 bytes of the text a backend tokenizes (message contents, tool-call
names and arguments, tool definitions as compact JSON), plus a fixed overhead per message,
per tool and per image. Bytes rather than characters, so CJK text (about one token per
character, three bytes each) is not undercounted. Meant to be within tens of percent: good for
budgets and context bars, not for billing. Any body shape is measured without failing: a part
that is not text counts nothing (the backend will judge it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forge_core.wire.jsonio import dumps

BYTES_PER_TOKEN = 4.0
"""English text and code average about four bytes per token with BPE vocabularies."""
MESSAGE_OVERHEAD = 4
"""Role markers and separators a chat template adds around each message."""
TOOL_OVERHEAD = 12
"""Per tool definition: the wrapper a template renders around name, description and schema."""
IMAGE_TOKENS = 1600
"""An image as Anthropic bills a full-size one (width*height/750); forge does not decode
images, so every image counts as full size."""


@dataclass(frozen=True, slots=True)
class PromptSize:
    """What a prompt holds, measured once; :meth:`tokens` prices it at any density."""

    text_bytes: int
    messages: int
    tools: int
    images: int

    def tokens(self, bytes_per_token: float = BYTES_PER_TOKEN) -> int:
        return (
            math.ceil(self.text_bytes / bytes_per_token)
            + MESSAGE_OVERHEAD * self.messages
            + TOOL_OVERHEAD * self.tools
            + IMAGE_TOKENS * self.images
        )


def measure(body: Mapping[str, Any]) -> PromptSize:
    """The size of an OpenAI-shaped chat body's prompt."""
    size = messages = images = 0
    listed = body.get("messages")
    for message in listed if isinstance(listed, list) else ():
        if not isinstance(message, dict):
            continue
        messages += 1
        content = message.get("content")
        if isinstance(content, str):
            size += _bytes(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    size += _bytes(part)
                elif isinstance(part, dict):
                    if part.get("type") == "image_url":
                        images += 1
                    elif isinstance(text := part.get("text"), str):
                        size += _bytes(text)
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                size += _text_or_json(function.get("name")) + _text_or_json(
                    function.get("arguments")
                )
    tools = body.get("tools")
    tools = tools if isinstance(tools, list) else []
    for tool in tools:
        spec = tool.get("function", tool) if isinstance(tool, dict) else tool
        size += _text_or_json(spec)
    return PromptSize(size, messages, len(tools), images)


def estimate_tokens(body: Mapping[str, Any], bytes_per_token: float = BYTES_PER_TOKEN) -> int:
    """A rough prompt size in tokens (see the module's description)."""
    return measure(body).tokens(bytes_per_token)


def _bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _text_or_json(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return _bytes(value)
    return _bytes(dumps(value, compact=True))
