"""Anthropic Messages responses -> forge's wire-neutral shapes (AssistantTurn, BackendChunk).

Anthropic hands tool input over as a JSON object; forge carries arguments as JSON text, so the
object is serialized compactly. A broken envelope or a non-object ``input`` is a backend
protocol error (502), never text for the guardrails to rescue.
"""

from __future__ import annotations

from typing import Any

from forge_core.errors import BackendHTTPError, BackendProtocolError
from forge_core.turns import AssistantTurn, BackendChunk, ToolCall, ToolCallFragment, Usage
from forge_core.wire.jsonio import backend_dumps, backend_json

BACKEND = "anthropic"

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}

# HTTP statuses Anthropic documents for each error type, for errors that arrive in a stream.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def finish_reason_from(stop_reason: Any) -> str:
    """Anthropic ``stop_reason`` -> OpenAI ``finish_reason`` (unknown or missing -> "stop")."""
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def prompt_tokens_from(usage: dict[str, Any]) -> int:
    """The whole prompt size: Anthropic counts cache reads and writes apart from input_tokens."""
    return sum(
        _int(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def cache_read_from(usage: dict[str, Any]) -> int | None:
    """``cache_read_input_tokens`` (the prompt part read from Anthropic's cache); None if absent."""
    value = usage.get("cache_read_input_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _protocol(reason: str) -> BackendProtocolError:
    return BackendProtocolError(BACKEND, reason)


def _tool_call(block: dict[str, Any]) -> ToolCall:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _protocol("sent a tool_use block without a string id and name")
    if not isinstance(arguments, dict):
        kind = type(arguments).__name__
        raise _protocol(f"sent tool_use input of type {kind} for tool '{name}', not an object")
    return ToolCall(id=call_id, name=name, arguments=_arguments_json(arguments))


def _arguments_json(value: dict[str, Any]) -> str:
    return backend_dumps(BACKEND, value, "tool_use input")


def turn_from_message(data: Any) -> AssistantTurn:
    """Parse a non-streamed Messages response into an AssistantTurn.

    Text blocks are concatenated as they are (Anthropic splits one text at citations);
    thinking becomes ``reasoning``; block kinds forge does not use (server tool results,
    redacted thinking) are skipped.
    """
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise _protocol("answered without a message content list")
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            raise _protocol("sent a content block that is not an object")
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _protocol("sent a text block without text")
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            reasoning.append(block["thinking"])
        elif kind == "tool_use":
            calls.append(_tool_call(block))
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return AssistantTurn(
        content="".join(texts),
        tool_calls=calls,
        finish_reason=finish_reason_from(data.get("stop_reason")),
        usage=Usage(
            prompt_tokens_from(usage), _int(usage.get("output_tokens")), cache_read_from(usage)
        ),
        reasoning="".join(reasoning),
        stop_sequence=stop_sequence_from(data.get("stop_sequence")),
    )


def stop_sequence_from(value: Any) -> str | None:
    """The matched stop sequence. llama-server reports it next to ``stop_reason: end_turn``,
    Anthropic next to ``stop_sequence``: either way forge passes the string on."""
    return value if isinstance(value, str) and value else None


def error_detail(payload: Any) -> str | None:
    """``"type: message"`` from an Anthropic error body, or None if it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
        return None
    error = payload["error"]
    kind, message = error.get("type"), error.get("message")
    if not isinstance(message, str):
        return kind if isinstance(kind, str) else None
    return f"{kind}: {message}" if isinstance(kind, str) else message


class StreamDecoder:
    """Turns Anthropic stream events into BackendChunks, one event at a time.

    Tool calls get OpenAI fragment semantics: the tool_use block start gives the first
    fragment (index = order among the message's tool uses, id, name), each non-empty
    ``input_json_delta`` a further fragment. If a block closes without any argument text, the
    ``input`` of its start event is used (``{}`` at least), so a call is never argument-less.
    """

    def __init__(self) -> None:
        self.finished = False
        self._prompt_tokens = 0
        self._cache_read: int | None = None
        self._tool_index: dict[int, int] = {}
        self._start_input: dict[int, dict[str, Any]] = {}
        self._has_arguments: set[int] = set()

    def feed(self, name: str, data: str) -> list[BackendChunk]:
        """The chunks for one SSE event (``name`` is the ``event:`` field, ``data`` its JSON)."""
        event = backend_json(BACKEND, data, f"sent a {name[:40]!r} stream event")
        if not isinstance(event, dict):
            raise _protocol(f"sent a {name!r} stream event that is not an object")
        kind = event.get("type", name)
        handler = getattr(self, f"_on_{kind}", None)
        return handler(event) if handler is not None else []  # unknown events: forward compat

    def _block_index(self, event: dict[str, Any]) -> int:
        index = event.get("index")
        if not isinstance(index, int):
            raise _protocol(f"sent {event.get('type')} without an integer index")
        return index

    def _on_message_start(self, event: dict[str, Any]) -> list[BackendChunk]:
        message = event.get("message")
        if not isinstance(message, dict):
            raise _protocol("sent message_start without a message")
        usage = message.get("usage")
        self._prompt_tokens = prompt_tokens_from(usage) if isinstance(usage, dict) else 0
        self._cache_read = cache_read_from(usage) if isinstance(usage, dict) else None
        return []

    def _on_content_block_start(self, event: dict[str, Any]) -> list[BackendChunk]:
        index = self._block_index(event)
        block = event.get("content_block")
        if not isinstance(block, dict):
            raise _protocol("sent content_block_start without a content_block")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            return [BackendChunk(text=block["text"])]
        if kind == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"]:
            return [BackendChunk(reasoning=block["thinking"])]
        if kind != "tool_use":
            return []
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise _protocol("sent a tool_use block without a string id and name")
        tool_index = len(self._tool_index)
        self._tool_index[index] = tool_index
        start_input = block.get("input")
        if start_input is not None and not isinstance(start_input, dict):
            raise _protocol(f"sent tool_use input for tool '{name}' that is not an object")
        self._start_input[index] = start_input or {}
        return [BackendChunk(tool_calls=[ToolCallFragment(tool_index, id=call_id, name=name)])]

    def _on_content_block_delta(self, event: dict[str, Any]) -> list[BackendChunk]:
        index = self._block_index(event)
        delta = event.get("delta")
        if not isinstance(delta, dict):
            raise _protocol("sent content_block_delta without a delta")
        kind = delta.get("type")
        if kind in ("text_delta", "thinking_delta"):
            field = "text" if kind == "text_delta" else "thinking"
            piece = delta.get(field)
            if not isinstance(piece, str):
                raise _protocol(f"sent a {kind} whose {field} is not a string")
            if not piece:
                return []
            return [BackendChunk(text=piece) if field == "text" else BackendChunk(reasoning=piece)]
        if kind == "input_json_delta" and index in self._tool_index:
            partial = delta.get("partial_json")
            if not isinstance(partial, str):
                raise _protocol("sent input_json_delta without partial_json text")
            if not partial:
                return []
            self._has_arguments.add(index)
            fragment = ToolCallFragment(self._tool_index[index], arguments=partial)
            return [BackendChunk(tool_calls=[fragment])]
        return []  # signature, citations, server tool input: nothing forge forwards

    def _on_content_block_stop(self, event: dict[str, Any]) -> list[BackendChunk]:
        index = self._block_index(event)
        if index not in self._tool_index or index in self._has_arguments:
            return []
        self._has_arguments.add(index)
        arguments = _arguments_json(self._start_input.get(index) or {})
        fragment = ToolCallFragment(self._tool_index[index], arguments=arguments)
        return [BackendChunk(tool_calls=[fragment])]

    def _on_message_delta(self, event: dict[str, Any]) -> list[BackendChunk]:
        delta = event.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        usage = event.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        # message_delta usage is cumulative; input counts appear there only sometimes.
        prompt = prompt_tokens_from(usage) or self._prompt_tokens
        cached = cache_read_from(usage)
        return [
            BackendChunk(
                finish_reason=finish_reason_from(delta.get("stop_reason")),
                usage=Usage(
                    prompt,
                    _int(usage.get("output_tokens")),
                    cached if cached is not None else self._cache_read,
                ),
                stop_sequence=stop_sequence_from(delta.get("stop_sequence")),
            )
        ]

    def _on_message_stop(self, event: dict[str, Any]) -> list[BackendChunk]:
        self.finished = True
        return []

    def _on_error(self, event: dict[str, Any]) -> list[BackendChunk]:
        error = event.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        status = _ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
        raise BackendHTTPError(BACKEND, status, error_detail(event) or "stream error")
