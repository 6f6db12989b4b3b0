"""Wire-neutral shapes that flow between backend clients, the guardrails and the emitters.

Backend clients translate whatever their server speaks into these; the guardrail engine works
only on these; the OpenAI and Anthropic emitters turn them into client wire formats. Keeping
one vocabulary is what lets one guardrail engine serve two client protocols.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


def new_id(prefix: str, nbytes: int = 12) -> str:
    """A fresh random id such as ``call_3f9a...``; unique enough for ids clients correlate."""
    return f"{prefix}{secrets.token_hex(nbytes)}"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    """The whole prompt, cached part included (OpenAI's meaning)."""
    completion_tokens: int = 0
    cached_tokens: int | None = None
    """Prompt tokens the backend took from its prefix cache instead of processing them; None
    when the backend does not say (never reported as 0 then)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        cached = (
            None
            if self.cached_tokens is None and other.cached_tokens is None
            else (self.cached_tokens or 0) + (other.cached_tokens or 0)
        )
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            cached,
        )

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens is not None:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return out


@dataclass(slots=True)
class ToolCall:
    """One complete tool call. ``arguments`` is the raw JSON text the model produced.

    It may be malformed when it comes from a backend: deciding that is the guardrails' job.
    """

    id: str
    name: str
    arguments: str

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class AssistantTurn:
    """A whole assistant answer from one backend call (or assembled from a stream)."""

    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason | str = "stop"
    usage: Usage | None = None
    reasoning: str = ""
    stop_sequence: str | None = None
    """The client's stop string that ended the answer, when the backend says which (vLLM's
    ``stop_reason``, an Anthropic-wire ``stop_sequence``); None if unknown or not a stop."""

    def as_openai_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [call.as_openai() for call in self.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        return message


# --- streaming -------------------------------------------------------------------------------


@dataclass(slots=True)
class ToolCallFragment:
    """A piece of a streamed tool call as a backend sent it (OpenAI delta semantics)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class BackendChunk:
    """One normalized streaming event from a backend client."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallFragment] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    stop_sequence: str | None = None
    """As :attr:`AssistantTurn.stop_sequence`, on the chunk that ends the stream."""


# Events the pipeline hands to a client-protocol emitter, in order.


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallReady:
    """A complete, validated tool call: emitters send it in one go, canonically."""

    index: int
    call: ToolCall


@dataclass(slots=True)
class KeepAlive:
    """Nothing to send yet (a call is being held for validation): keep the connection warm."""


@dataclass(slots=True)
class Finished:
    finish_reason: str
    usage: Usage | None
    stop_sequence: str | None = None


@dataclass(slots=True)
class Note:
    """What the guardrails did (``rescued:hermes``, ``retry:schema``, ...), for the
    ``x-forge-guardrail`` header, logs and metrics; never shown to the client as content.

    ``attempt`` is the backend call the note belongs to (0 = the first), None for the request
    as a whole. Emitters ignore notes.
    """

    text: str
    attempt: int | None = None


StreamEvent = TextDelta | ReasoningDelta | ToolCallReady | KeepAlive | Finished | Note
