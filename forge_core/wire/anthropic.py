"""The Anthropic Messages wire format: request models, translation to and from the OpenAI shape,
the response body, the streaming emitter and errors.

This module is pure translation (no I/O). The app parses ``POST /v1/messages`` with
:func:`parse_messages_request`, hands :func:`to_openai_request` to the pipeline (which speaks
OpenAI internally), and turns the result back with :func:`to_anthropic_message` or an
:class:`AnthropicStreamEmitter`. This module is the client side only; the opposite direction
(an OpenAI body encoded for a backend that speaks Anthropic) lives in the forge-anthropic
plugin's ``forge_anthropic.encode``.

Translation choices (documented because they lose information on purpose):

* Several text blocks of one turn, and a list-form ``system``, are joined with a blank line.
* A ``system`` message inside ``messages`` (Claude Code's mid-conversation system beta) joins
  the system prompt when only system text precedes it, else stays in place as an OpenAI
  ``system`` message (as an OpenAI client would send it).
* ``thinking`` and ``redacted_thinking`` blocks in the history are dropped: they are the model's
  private scratch space, carry signatures only Anthropic can verify, and must never leak into
  the text a local model sees.
* A ``tool_result`` with ``is_error: true`` becomes a tool message whose text starts with
  ``"Error: "`` (unless the client already started it with "error"), because the OpenAI wire has
  no error flag for tool results.
* Images inside a ``tool_result`` move to the user message that follows the tool messages (the
  OpenAI ``tool`` role carries text only), announced by a short text part naming the call.
* Server tools (``web_search_20250305``, ``bash_20250124``... any tool with a ``type`` other
  than ``custom``) are dropped with a logged note: their schemas live at Anthropic and no local
  backend can run them.
* ``cache_control`` marks and unknown top-level fields do not survive translation; they survive
  only verbatim forwarding of the original body to an Anthropic backend.
"""

from __future__ import annotations

import enum
import logging
import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from forge_core import tokens
from forge_core.errors import BackendProtocolError, ForgeError, InvalidRequest
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
from forge_core.wire import jsonio

logger = logging.getLogger(__name__)

BLOCK_SEPARATOR = "\n\n"
ERROR_PREFIX = "Error: "

# --- request models ----------------------------------------------------------------------------


class _Open(BaseModel):
    """Base of every wire model: unknown fields are kept, never rejected."""

    model_config = ConfigDict(extra="allow")


class TextBlock(_Open):
    type: Literal["text"] = "text"
    text: str
    cache_control: dict[str, Any] | None = None


class Base64ImageSource(_Open):
    type: Literal["base64"] = "base64"
    media_type: str
    data: str


class UrlImageSource(_Open):
    type: Literal["url"] = "url"
    url: str


class OtherImageSource(_Open):
    """A source kind forge cannot translate (``file`` ids live at Anthropic)."""

    type: str


def _source_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"source:{kind if kind in ('base64', 'url') else 'other'}"


ImageSource = Annotated[
    Annotated[Base64ImageSource, Tag("source:base64")]
    | Annotated[UrlImageSource, Tag("source:url")]
    | Annotated[OtherImageSource, Tag("source:other")],
    Discriminator(_source_tag),
]


class ImageBlock(_Open):
    type: Literal["image"] = "image"
    source: ImageSource
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(_Open):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ThinkingBlock(_Open):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str = ""


class OtherBlock(_Open):
    """A block kind forge does not model (``document``, ``search_result``...): kept, not failed."""

    type: str


class ToolResultBlock(_Open):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str | list[ContentBlock] | None = None
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


_KNOWN_BLOCKS = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"block:{kind if kind in _KNOWN_BLOCKS else 'other'}"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("block:text")]
    | Annotated[ImageBlock, Tag("block:image")]
    | Annotated[ToolUseBlock, Tag("block:tool_use")]
    | Annotated[ToolResultBlock, Tag("block:tool_result")]
    | Annotated[ThinkingBlock, Tag("block:thinking")]
    | Annotated[RedactedThinkingBlock, Tag("block:redacted_thinking")]
    | Annotated[OtherBlock, Tag("block:other")],
    Discriminator(_block_tag),
]
ToolResultBlock.model_rebuild()


class Message(_Open):
    role: Literal["user", "assistant", "system"]
    """``system`` mid-conversation is what Claude Code sends (beta mid-conversation-system)."""
    content: str | list[ContentBlock]


class Tool(_Open):
    """A client tool (``input_schema``) or a server tool (a ``type`` such as web_search_...)."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    cache_control: dict[str, Any] | None = None
    defer_loading: bool = False
    """Tool search: hidden from the model until a ``tool_reference`` block loads it."""

    @property
    def is_server_tool(self) -> bool:
        return self.type not in (None, "custom")

    @model_validator(mode="after")
    def _schema_for_client_tools(self) -> Tool:
        if not self.is_server_tool and self.input_schema is None:
            raise ValueError(f"tool '{self.name}' needs an input_schema")
        return self


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs a name")
        return self


class ThinkingConfig(_Open):
    type: str
    budget_tokens: int | None = None
    display: str | None = None
    """``omitted``: the client wants no thinking text back (Claude Code 2.1.3xx sends it)."""


class Metadata(_Open):
    user_id: str | None = None


class CountTokensRequest(_Open):
    """The body of ``POST /v1/messages/count_tokens`` (no ``max_tokens``) and the base of
    :class:`MessagesRequest`."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @property
    def thinking_enabled(self) -> bool:
        """True when the client asked for thinking blocks with their text in the answer."""
        thinking = self.thinking
        if thinking is None or thinking.type == "disabled":
            return False
        return thinking.display != "omitted"


class MessagesRequest(CountTokensRequest):
    """The body of ``POST /v1/messages``."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    stream: bool = False


_UNION_LABELS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``messages.0.content.1.text``: pydantic's union-branch labels and our tags removed."""
    return ".".join(
        str(part)
        for part in loc
        if not (isinstance(part, str) and (part in _UNION_LABELS or "[" in part or ":" in part))
    )


def _invalid(exc: ValidationError) -> InvalidRequest:
    # The deepest error is the precise one: with ``content: str | list[...]`` a bad block
    # also fails the ``str`` branch, whose error says nothing useful.
    err = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    path = _field_path(tuple(err.get("loc", ())))
    if err.get("type") == "missing":
        return InvalidRequest(f"{path}: Field required", path or None)
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequest(f"{path or 'body'}: {message}", path or None)


_Request = TypeVar("_Request", bound=CountTokensRequest)


def parse_messages_request(body: Any) -> MessagesRequest:
    """Validate a decoded ``/v1/messages`` body; raise InvalidRequest naming the first bad field."""
    return _validated(MessagesRequest, body)


def parse_count_tokens_request(body: Any) -> CountTokensRequest:
    """Validate a decoded ``/v1/messages/count_tokens`` body (``max_tokens`` is not needed)."""
    return _validated(CountTokensRequest, body)


def _validated(model: type[_Request], body: Any) -> _Request:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


# --- Anthropic request -> OpenAI body ------------------------------------------------------------


def compact_json(value: Any) -> str:
    """JSON without spaces, non-ASCII kept: the form tool arguments travel in. Never fails
    (lone surrogates are written as U+FFFD, NaN as null: see :mod:`forge_core.wire.jsonio`)."""
    return jsonio.dumps(value, compact=True)


def _image_part(block: ImageBlock) -> dict[str, Any] | None:
    source = block.source
    if isinstance(source, Base64ImageSource):
        url = f"data:{source.media_type};base64,{source.data}"
    elif isinstance(source, UrlImageSource):
        url = source.url
    else:
        logger.info("dropping an image with source type %r: forge cannot fetch it", source.type)
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _other_text(block: OtherBlock) -> str | None:
    text = getattr(block, "text", None)
    if isinstance(text, str):
        return text
    logger.info("dropping a %r content block: no text to translate", block.type)
    return None


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text when there is no image (what every template accepts), else the parts list."""
    if all(part["type"] == "text" for part in parts):
        return BLOCK_SEPARATOR.join(part["text"] for part in parts)
    return parts


def _tool_result_text(block: ToolResultBlock) -> tuple[str, list[dict[str, Any]]]:
    """The tool message text and any image parts that must travel in a user message."""
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    elif block.content:
        for inner in block.content:
            if isinstance(inner, TextBlock):
                texts.append(inner.text)
            elif isinstance(inner, ImageBlock):
                part = _image_part(inner)
                if part:
                    images.append(part)
            elif (name := _reference_name(inner)) is not None:
                texts.append(f"Tool loaded: {name}")
            elif isinstance(inner, OtherBlock) and (text := _other_text(inner)) is not None:
                texts.append(text)
    text = BLOCK_SEPARATOR.join(texts)
    if not text and images:
        text = "(The tool returned an image; it follows in the next message.)"
    if block.is_error and not text.lstrip().lower().startswith("error"):
        text = f"{ERROR_PREFIX}{text}" if text else ERROR_PREFIX.rstrip(": ")
    return text, images


def _user_messages(content: str | list[Any]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, ToolResultBlock):
            text, images = _tool_result_text(block)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
            )
            if images:
                note = f"Image returned by tool call {block.tool_use_id}:"
                tool_images += [{"type": "text", "text": note}, *images]
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            if part := _image_part(block):
                parts.append(part)
        elif isinstance(block, OtherBlock):
            if (text := _other_text(block)) is not None:
                parts.append({"type": "text", "text": text})
        elif isinstance(block, ToolUseBlock):
            logger.info("dropping a tool_use block found in a user message")
        # thinking blocks: dropped on purpose (see module docstring)
    # Tool results answer the previous assistant turn, so they come before the user's text.
    messages = tool_messages
    parts = tool_images + parts
    if parts:
        messages.append({"role": "user", "content": _collapse(parts)})
    return messages


def _assistant_message(content: str | list[Any]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": compact_json(block.input)},
                }
            )
        elif isinstance(block, OtherBlock) and (text := _other_text(block)) is not None:
            texts.append(text)
        # thinking / redacted_thinking: dropped on purpose (see module docstring)
    text = BLOCK_SEPARATOR.join(t for t in texts if t)
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _plain_text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for block in content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, OtherBlock) and (text := _other_text(block)) is not None:
            texts.append(text)
    return BLOCK_SEPARATOR.join(t for t in texts if t)


def _add_system_message(messages: list[dict[str, Any]], text: str) -> None:
    """A ``system`` message from the list: joins the system prompt while nothing else came
    before it (templates read only the first message as the system prompt), else stays in place
    as an OpenAI system message (what an OpenAI client would send; forwarded as-is)."""
    if not text:
        return
    if all(m["role"] == "system" for m in messages):
        if messages:
            messages[0]["content"] += BLOCK_SEPARATOR + text
        else:
            messages.append({"role": "system", "content": text})
        return
    messages.append({"role": "system", "content": text})


def system_text(system: str | list[TextBlock] | None) -> str:
    """The system prompt as one string ("" when absent)."""
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return BLOCK_SEPARATOR.join(block.text for block in system)


def openai_tools_from(req: CountTokensRequest) -> list[dict[str, Any]]:
    """The request's client tools as OpenAI function tools (``parameters`` = ``input_schema``).

    This is also what the guardrails validate calls against. Server tools are dropped with a
    logged note. A deferred tool (``defer_loading``) is sent only once the conversation loaded
    it (a ``tool_reference`` to it, or an earlier call of it), as the Messages API does.
    """
    tools: list[dict[str, Any]] = []
    loaded = _loaded_tools(req) if any(t.defer_loading for t in req.tools or ()) else set()
    for tool in req.tools or ():
        if tool.defer_loading and tool.name not in loaded:
            continue
        if tool.is_server_tool:
            logger.info(
                "dropping server tool %r (type %s): no forge backend can run it",
                tool.name,
                tool.type,
            )
            continue
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        tools.append({"type": "function", "function": function})
    return tools


def _loaded_tools(req: CountTokensRequest) -> set[str]:
    """Names the conversation has loaded: ``tool_reference`` blocks and earlier calls."""
    names: set[str] = set()
    for message in req.messages:
        for block in message.content if isinstance(message.content, list) else ():
            if isinstance(block, ToolUseBlock):
                names.add(block.name)
            elif isinstance(block, ToolResultBlock) and isinstance(block.content, list):
                names.update(_reference_name(inner) or "" for inner in block.content)
    names.discard("")
    return names


def _reference_name(block: Any) -> str | None:
    if isinstance(block, OtherBlock) and block.type == "tool_reference":
        name = getattr(block, "tool_name", None)
        return name if isinstance(name, str) else None
    return None


def openai_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    """auto -> "auto", any -> "required", none -> "none", tool -> the named function."""
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def to_openai_request(req: CountTokensRequest) -> dict[str, Any]:
    """Translate a parsed Anthropic request into an OpenAI chat-completions body.

    Works for count_tokens bodies too (no ``max_tokens``). See the module docstring for what
    is dropped and why.
    """
    messages: list[dict[str, Any]] = []
    if system := system_text(req.system):
        messages.append({"role": "system", "content": system})
    for message in req.messages:
        if message.role == "user":
            messages.extend(_user_messages(message.content))
        elif message.role == "assistant":
            messages.append(_assistant_message(message.content))
        else:
            _add_system_message(messages, _plain_text(message.content))

    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if isinstance(req, MessagesRequest):
        body["max_tokens"] = req.max_tokens
        if req.stop_sequences:
            body["stop"] = list(req.stop_sequences)
        for name in ("temperature", "top_p", "top_k"):
            value = getattr(req, name)
            if value is not None:
                body[name] = value
        if req.metadata is not None and req.metadata.user_id:
            body["user"] = req.metadata.user_id
        body["stream"] = req.stream
        if req.stream:
            body["stream_options"] = {"include_usage": True}
    tools = openai_tools_from(req)
    if tools:
        # tool_choice without tools is an error on vLLM and others, so both or neither.
        body["tools"] = tools
        if req.tool_choice is not None:
            body["tool_choice"] = openai_tool_choice(req.tool_choice)
            if req.tool_choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
    return body


# --- response ------------------------------------------------------------------------------------

_STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def anthropic_stop_reason(
    finish_reason: str | None, *, has_tool_calls: bool = False, matched_stop: str | None = None
) -> str:
    """Map an OpenAI finish_reason to Anthropic's ``stop_reason``.

    An answer carrying tool calls is always "tool_use" (some backends say "stop" next to calls,
    and the client must run them anyway); otherwise a matched stop sequence gives
    "stop_sequence".
    """
    if has_tool_calls:
        return "tool_use"
    if matched_stop is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def matched_stop_sequence(
    req: CountTokensRequest, reported: str | None, finish_reason: str | None
) -> str | None:
    """The request's stop sequence the backend reported stopping on, else None.

    Only a string the client asked for counts (servers report other things in similar
    fields), and only when the answer stopped normally rather than at max_tokens.
    """
    sequences = getattr(req, "stop_sequences", None) or ()
    if reported is None or finish_reason not in (None, "stop") or reported not in sequences:
        return None
    return reported


def anthropic_tool_id(call_id: str) -> str:
    """Keep an id already in Anthropic's ``toolu_`` form; give any other id a fresh one."""
    return call_id if call_id.startswith("toolu_") else new_id("toolu_")


def tool_input_json(call: ToolCall) -> tuple[str, dict[str, Any]]:
    """The call's arguments as (JSON text, object). Empty arguments mean ``{}``.

    Arguments reach an emitter after the guardrails validated them; if they still are not a
    JSON object (guardrails switched off, a buggy plugin) this raises BackendProtocolError,
    because Anthropic clients cannot represent such a call.
    """
    text = call.arguments.strip()
    if not text:
        return "{}", {}
    try:
        parsed = jsonio.loads(text)  # strict: NaN or nesting past the limit is no object
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise BackendProtocolError(
            "model", f"produced arguments for tool '{call.name}' that are not a JSON object"
        )
    return jsonio.clean_json_text(text), parsed


def _usage_body(
    usage: Usage | None, input_tokens: int = 0, output_estimate: int = 0
) -> dict[str, int | None]:
    """Anthropic usage from the backend's counts, or from estimates when it reported none.

    Anthropic counts cache reads apart: ``input_tokens`` is the prompt minus what the backend
    took from its prefix cache (``cache_read_input_tokens``). A cache figure the backend did
    not report is null, never a made-up 0; local backends do not report cache writes, so
    ``cache_creation_input_tokens`` is null.
    """
    cached = usage.cached_tokens if usage is not None else None
    prompt = usage.prompt_tokens if usage and usage.prompt_tokens else input_tokens
    return {
        "input_tokens": prompt - cached if cached is not None else prompt,
        "output_tokens": usage.completion_tokens if usage else output_estimate,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": cached,
    }


def to_anthropic_message(
    turn: AssistantTurn,
    model: str,
    message_id: str | None = None,
    *,
    thinking: bool = False,
    matched_stop: str | None = None,
    input_tokens: int = 0,
) -> dict[str, Any]:
    """The non-streamed ``/v1/messages`` response body for one assistant turn.

    ``thinking``: include the turn's reasoning as a thinking block (only when the request
    enabled thinking; otherwise reasoning is dropped). ``matched_stop``: the request's stop
    sequence the backend stopped on, if the backend reported one. ``input_tokens``: the
    estimate to report when the backend gave no usage.
    """
    content: list[dict[str, Any]] = []
    if thinking and turn.reasoning:
        content.append({"type": "thinking", "thinking": turn.reasoning, "signature": ""})
    if turn.content:
        content.append({"type": "text", "text": turn.content})
    for call in turn.tool_calls:
        _, parsed = tool_input_json(call)
        tool_id = anthropic_tool_id(call.id)
        content.append({"type": "tool_use", "id": tool_id, "name": call.name, "input": parsed})
    stop_reason = anthropic_stop_reason(
        turn.finish_reason, has_tool_calls=bool(turn.tool_calls), matched_stop=matched_stop
    )
    return {
        "id": message_id or new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": matched_stop if stop_reason == "stop_sequence" else None,
        "usage": _usage_body(turn.usage, input_tokens, _turn_output_estimate(turn)),
    }


def _turn_output_estimate(turn: AssistantTurn) -> int:
    chars = len(turn.content) + sum(len(c.name) + len(c.arguments) for c in turn.tool_calls)
    return _estimate_output_tokens(chars)


# --- errors --------------------------------------------------------------------------------------


# llama-server's 400 for a prompt over the slot's context.
_LLAMA_TOO_LONG = re.compile(
    r"\((\d+) tokens\) exceeds the available context size \((\d+) tokens\)"
)


def _too_long(exc: ForgeError) -> tuple[int, int] | None:
    """(prompt tokens, limit) when ``exc`` says the prompt does not fit the context."""
    tokens, budget = getattr(exc, "prompt_tokens", None), getattr(exc, "budget", None)
    if isinstance(tokens, int) and isinstance(budget, int):
        return tokens, budget
    if exc.status == 400 and (found := _LLAMA_TOO_LONG.search(exc.message)):
        return int(found[1]), int(found[2])
    return None


def anthropic_error_body(exc: ForgeError) -> dict[str, Any]:
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``.

    A prompt over the context is worded as Anthropic words it ("prompt is too long: N tokens >
    M maximum"): Claude Code parses exactly that to compact the conversation and retry.
    """
    message = exc.message
    if (sizes := _too_long(exc)) is not None:
        message = f"prompt is too long: {sizes[0]} tokens > {sizes[1]} maximum. {message}"
    return {"type": "error", "error": {"type": exc.anthropic_type, "message": message}}


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """One Anthropic SSE event, framed exactly ``event: NAME\\ndata: JSON\\n\\n``.

    ``json.dumps`` escapes every control character, so the data never spans lines.
    """
    return f"event: {name}\ndata: {compact_json(payload)}\n\n".encode()


PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def error_event(exc: ForgeError) -> bytes:
    """An in-stream ``event: error`` (the only way to report a failure after the 200)."""
    return sse_event("error", anthropic_error_body(exc))


# --- streaming -----------------------------------------------------------------------------------


class StreamOrderError(RuntimeError):
    """The emitter was driven in an order that cannot produce a valid stream (a forge bug)."""


class _Phase(enum.Enum):
    NEW = "new"
    STREAMING = "streaming"
    DONE = "done"


def _estimate_output_tokens(chars: int) -> int:
    return math.ceil(chars / tokens.BYTES_PER_TOKEN)


class AnthropicStreamEmitter:
    """Turns forge stream events into Anthropic SSE bytes, in an order that is always valid.

    One ``message_start``; per block ``content_block_start`` / deltas / ``content_block_stop``
    with consecutive indexes; then ``message_delta`` and ``message_stop``. Only one block is
    open at a time: a text or thinking block stays open while deltas of its kind arrive and is
    closed when anything else starts; a tool call is a whole block (start, ONE input_json_delta
    carrying the complete arguments, stop). ``ping`` may come anywhere before the end. Feeding
    an event before :meth:`start` starts the message first; anything after the end (or after an
    error) raises :class:`StreamOrderError` instead of writing an invalid stream.
    """

    def __init__(
        self,
        model: str,
        *,
        message_id: str | None = None,
        input_tokens: int = 0,
        thinking: bool = False,
    ) -> None:
        self.model = model
        self.message_id = message_id or new_id("msg_")
        self.input_tokens = input_tokens
        self.thinking = thinking
        self._phase = _Phase.NEW
        self._next_index = 0
        self._open: Literal["text", "thinking"] | None = None
        self._saw_tool = False
        self._output_chars = 0

    @property
    def started(self) -> bool:
        return self._phase is not _Phase.NEW

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    def start(self) -> bytes:
        """The single ``message_start`` (message with empty content and the input estimate)."""
        if self._phase is not _Phase.NEW:
            raise StreamOrderError("message_start was already sent")
        self._phase = _Phase.STREAMING
        usage = _usage_body(None, self.input_tokens)
        usage["output_tokens"] = 1
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def feed(self, event: StreamEvent, *, matched_stop: str | None = None) -> bytes:
        """Bytes for one event (possibly empty). ``matched_stop`` only matters for Finished."""
        if self._phase is _Phase.DONE:
            raise StreamOrderError(f"{type(event).__name__} after the stream ended")
        out = b"" if self.started else self.start()
        if isinstance(event, TextDelta):
            out += self._delta("text", event.text)
        elif isinstance(event, ReasoningDelta):
            if self.thinking:
                out += self._delta("thinking", event.text)
        elif isinstance(event, ToolCallReady):
            out += self._tool(event.call)
        elif isinstance(event, KeepAlive):
            out += PING
        elif isinstance(event, Finished):
            out += self._finish(event, matched_stop)
        elif isinstance(event, Note):
            pass  # the guardrails' bookkeeping, not content
        else:  # pragma: no cover - StreamEvent is a closed union
            raise StreamOrderError(f"unknown stream event {event!r}")
        return out

    def error(self, exc: ForgeError) -> bytes:
        """An in-stream error event; the stream is over afterwards."""
        if self._phase is _Phase.DONE:
            raise StreamOrderError("error after the stream ended")
        self._phase = _Phase.DONE
        return error_event(exc)

    # -- internals --

    def _close_open_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        index = self._next_index - 1
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, block: dict[str, Any]) -> tuple[int, bytes]:
        out = self._close_open_block()
        index = self._next_index
        self._next_index += 1
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return index, out + sse_event("content_block_start", start)

    def _delta(self, kind: Literal["text", "thinking"], text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if self._open != kind:
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            _, out = self._open_block(block)
            self._open = kind
        self._output_chars += len(text)
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        payload = {"type": "content_block_delta", "index": self._next_index - 1, "delta": delta}
        return out + sse_event("content_block_delta", payload)

    def _tool(self, call: ToolCall) -> bytes:
        arguments, _ = tool_input_json(call)  # may raise: do it before any state changes
        tool_id = anthropic_tool_id(call.id)
        block = {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}
        index, out = self._open_block(block)
        self._saw_tool = True
        self._output_chars += len(arguments) + len(call.name)
        delta = {"type": "input_json_delta", "partial_json": arguments}
        out += sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
        return out + sse_event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _finish(self, event: Finished, matched_stop: str | None) -> bytes:
        out = self._close_open_block()
        self._phase = _Phase.DONE
        stop_reason = anthropic_stop_reason(
            event.finish_reason, has_tool_calls=self._saw_tool, matched_stop=matched_stop
        )
        usage: dict[str, int | None] = {}
        if event.usage is not None and event.usage.prompt_tokens:
            full = _usage_body(event.usage)
            usage["input_tokens"] = full["input_tokens"]
            if event.usage.cached_tokens is not None:
                usage["cache_read_input_tokens"] = event.usage.cached_tokens
        usage["output_tokens"] = (
            event.usage.completion_tokens
            if event.usage is not None
            else _estimate_output_tokens(self._output_chars)
        )
        delta = {
            "stop_reason": stop_reason,
            "stop_sequence": matched_stop if stop_reason == "stop_sequence" else None,
        }
        out += sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + sse_event("message_stop", {"type": "message_stop"})


# --- token estimate ------------------------------------------------------------------------------


def estimate_tokens(req: CountTokensRequest) -> int:
    """A heuristic prompt-size estimate for ``count_tokens`` when the backend cannot tokenize:
    forge's one estimate (:mod:`forge_core.tokens`) of the request as the backend gets it."""
    return tokens.estimate_tokens(to_openai_request(req))
