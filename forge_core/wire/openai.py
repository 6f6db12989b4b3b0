"""The OpenAI chat-completions wire format: request model, responses, chunks and errors."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Required

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from forge_core.errors import ForgeError, InvalidRequest
from forge_core.turns import (
    AssistantTurn,
    Finished,
    KeepAlive,
    Note,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallReady,
    Usage,
    new_id,
)
from forge_core.wire import sse
from forge_core.wire.jsonio import clean_json_text, dumps, dumps_bytes


def _text_parts_have_text(
    content: str | list[dict[str, Any]] | None,
) -> str | list[dict[str, Any]] | None:
    # A text part without string text would reach the backend (and the budget check) as
    # garbage; OpenAI rejects it too.
    for index, part in enumerate(content if isinstance(content, list) else ()):
        if part.get("type") == "text" and not isinstance(part.get("text"), str):
            raise ValueError(f"part {index} is of type 'text' but its 'text' is not a string")
    return content


def _calls_name_a_function(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    # Every translator (Ollama, Anthropic, prompt tools) reads function.name.
    for index, call in enumerate(calls or ()):
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"call {index} needs a 'function' object with a string 'name'")
    return calls


class ChatMessage(TypedDict, total=False):
    """One message, checked but not copied into a model: the body itself is forwarded, so a
    typed dict (no instance per message) is all the check needs, at half the cost of a model
    on a long history. Unknown fields are kept (``name``, ``reasoning_content``, vendor
    fields)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    role: Required[Literal["system", "developer", "user", "assistant", "tool", "function"]]
    content: Annotated[str | list[dict[str, Any]] | None, AfterValidator(_text_parts_have_text)]
    tool_calls: Annotated[list[dict[str, Any]] | None, AfterValidator(_calls_name_a_function)]
    tool_call_id: str | None


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class ToolChoiceObject(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``; other kinds are passed through."""

    model_config = ConfigDict(extra="allow")

    type: str = "function"
    function: FunctionName | None = None


class ChatRequest(BaseModel):
    """The fields forge reads or a backend translation converts (so a wrong type is the
    client's 400 here, not a crash there). Everything else stays in the raw body."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: str | ToolChoiceObject | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body; raise InvalidRequest naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(*describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """A one-line message and the dotted field path of pydantic's first error."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err.get("loc", ()) if not _union_branch(p))
    kind = err.get("type", "")
    if kind == "missing":
        return f"Missing required field '{path}'.", path or None
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"Invalid field '{path}': {message}.", path or None


def _union_branch(part: int | str) -> bool:
    """pydantic's label for a branch of ``str | list[str]`` (``str``, ``list[str]``, a model's
    class name), which is no field of the request."""
    if not isinstance(part, str):
        return False
    return part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper()


def error_body(exc: ForgeError) -> dict[str, Any]:
    return {
        "error": {
            "message": exc.message,
            "type": exc.openai_type,
            "param": exc.param,
            "code": exc.code,
        }
    }


def completion_body(turn: AssistantTurn, model: str, completion_id: str) -> dict[str, Any]:
    message = turn.as_openai_message()
    for call in message.get("tool_calls") or ():
        function = call["function"]
        function["arguments"] = clean_json_text(function["arguments"])
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": turn.finish_reason,
                "logprobs": None,
            }
        ],
    }
    if turn.usage is not None:
        body["usage"] = turn.usage.as_openai()
    return body


class ChunkWriter:
    """Builds the JSON of each streamed chunk, compact as OpenAI writes it; one instance per
    response."""

    __slots__ = ("_prefix", "_suffix", "_text_head", "_reasoning_head")

    def __init__(self, model: str, completion_id: str) -> None:
        created = int(time.time())
        # Every chunk shares the same envelope; splice the choice in rather than rebuilding it.
        head = dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            },
            compact=True,
        )
        self._prefix = head[:-1] + ',"choices":['
        self._suffix = "]}"
        # A text delta is the most frequent event: its bytes are spliced around the one JSON
        # string (written by orjson) instead of encoding a whole choice each time.
        self._text_head = self._delta_head("content")
        self._reasoning_head = self._delta_head("reasoning_content")

    def _delta_head(self, key: str) -> bytes:
        return b"data: " + (self._prefix + '{"index":0,"delta":{"' + key + '":').encode()

    def text_line(self, text: str) -> bytes:
        """The whole SSE line of a text delta (the same bytes as ``data_line(text(...))``)."""
        return self._text_head + dumps_bytes(text, compact=True) + _DELTA_TAIL

    def reasoning_line(self, text: str) -> bytes:
        return self._reasoning_head + dumps_bytes(text, compact=True) + _DELTA_TAIL

    def _choice(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return self._prefix + dumps(choice, compact=True) + self._suffix

    def role(self) -> str:
        return self._choice({"role": "assistant", "content": ""})

    def text(self, text: str) -> str:
        return self._choice({"content": text})

    def reasoning(self, text: str) -> str:
        return self._choice({"reasoning_content": text})

    def tool_call(self, index: int, call: ToolCall) -> list[str]:
        """Two deltas: the header (index, id, type, name) then the whole arguments string."""
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        args = {"index": index, "function": {"arguments": clean_json_text(call.arguments)}}
        return [self._choice({"tool_calls": [head]}), self._choice({"tool_calls": [args]})]

    def finish(self, finish_reason: str) -> str:
        return self._choice({}, finish_reason)

    def usage(self, usage: Usage) -> str:
        return self._prefix + '],"usage":' + dumps(usage.as_openai(), compact=True) + "}"


_DELTA_TAIL = b'},"finish_reason":null}]}\n\n'


def new_completion_id() -> str:
    return new_id("chatcmpl-")


class OpenAIStreamEmitter:
    """Turns engine events into OpenAI SSE bytes: one role chunk, deltas, one finish chunk."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self._chunks = ChunkWriter(model, new_completion_id())
        self._include_usage = include_usage

    def start(self) -> bytes:
        return sse.data_line(self._chunks.role())

    def emit(self, event: StreamEvent) -> bytes:
        match event:
            case TextDelta(text=text):
                return self._chunks.text_line(text)
            case ReasoningDelta(text=text):
                return self._chunks.reasoning_line(text)
            case ToolCallReady(index=index, call=call):
                return b"".join(sse.data_line(c) for c in self._chunks.tool_call(index, call))
            case KeepAlive():
                return sse.KEEPALIVE
            case Note():
                return b""  # the guardrails' bookkeeping, not content
            case Finished(finish_reason=reason, usage=usage):
                out = sse.data_line(self._chunks.finish(reason))
                # A backend that reported no usage gets no usage chunk: zeros would read as exact.
                if self._include_usage and usage is not None:
                    out += sse.data_line(self._chunks.usage(usage))
                return out + sse.DONE
        raise TypeError(f"unknown event {event!r}")  # pragma: no cover

    def error(self, exc: ForgeError) -> bytes:
        """An error after the 200 was sent: an in-stream error object, then [DONE]."""
        return sse.data_line(dumps(error_body(exc))) + sse.DONE
