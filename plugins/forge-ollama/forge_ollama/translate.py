"""Pure translation between OpenAI chat bodies and Ollama's native ``/api/chat``.

No I/O happens here, so every rule is testable on plain dicts. The wire facts this module relies
on (Ollama's docs/api.md and docs/capabilities/*.mdx, plus the quirks collected in the fixture
README under ``tests/fixtures/ollama``):

* Ollama tool-call arguments are JSON *objects*, never strings, in both directions.
* Tool results name their tool with ``tool_name``; Ollama has no use for call ids.
* Sampling parameters live in ``options``; ``max_tokens`` is ``num_predict``; ``stop`` must be
  an array of strings; the context size is per request (``options.num_ctx``).
* Streamed tool calls come whole, one or more per NDJSON line, without ids, with an ``index``
  that is missing (old versions) or restarts at 0 on every line (so two parallel calls in two
  lines both say 0). We therefore number calls ourselves, in order of arrival.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forge_core.errors import BackendError, BackendProtocolError, InvalidRequest
from forge_core.turns import (
    AssistantTurn,
    BackendChunk,
    ToolCall,
    ToolCallFragment,
    Usage,
    new_id,
)
from forge_core.wire.jsonio import backend_dumps, dumps, loads

BACKEND = "ollama"

RAW_ARGUMENTS_KEY = "_raw"
"""Key that carries history arguments which were not a JSON object (see ``_history_arguments``)."""

# OpenAI (or llama.cpp/vLLM) sampling field -> Ollama option. Later entries win when a body
# carries two spellings, so the preferred spelling is listed last.
_OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repeat_penalty",
    "repeat_penalty": "repeat_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}

TRANSLATED_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",  # only "none" has an effect: see DROPPED_FIELDS
        "stream",
        "stop",
        "response_format",
        "think",
        "reasoning_effort",
        "chat_template_kwargs",
        "keep_alive",
        "options",  # Ollama-native extension: merged under the translated options
        "format",  # Ollama-native extension: used when response_format is absent
        *_OPTION_FIELDS,
    }
)
"""Request fields this module reads. Everything else is dropped (never an error)."""

DROPPED_FIELDS: Mapping[str, str] = {
    "n": "Ollama returns exactly one choice per request",
    "logprobs": "forge does not relay log probabilities from Ollama",
    "top_logprobs": "forge does not relay log probabilities from Ollama",
    "logit_bias": "Ollama has no token-bias option",
    "user": "an OpenAI account field with no meaning for a local server",
    "metadata": "an OpenAI account field with no meaning for a local server",
    "store": "an OpenAI account field with no meaning for a local server",
    "service_tier": "an OpenAI account field with no meaning for a local server",
    "parallel_tool_calls": "Ollama cannot limit the number of calls; forge's guardrails see all",
    "stream_options": "forge's own field: usage is always read from Ollama's final line",
    "modalities": "audio output is not supported by Ollama",
    "audio": "audio output is not supported by Ollama",
    "prediction": "predicted outputs are not supported by Ollama",
    "web_search_options": "Ollama has no server-side web search in /api/chat",
    "functions": "legacy OpenAI function calling: send `tools` instead",
    "function_call": "legacy OpenAI function calling: send `tools` instead",
    "tool_choice": (
        "Ollama has no tool_choice: 'none' is honoured by leaving the tools out, other values "
        "are enforced by forge's guardrails (a constrained retry uses `format`)"
    ),
}
"""Known OpenAI fields that cannot be expressed on /api/chat, with the reason shown in logs."""


def dropped_fields(body: Mapping[str, Any]) -> dict[str, str]:
    """The fields of ``body`` that :func:`to_ollama_request` does not send, with reasons."""
    dropped: dict[str, str] = {}
    for key in body:
        if key == "tool_choice" and body[key] in (None, "auto", "none"):
            continue
        if key in DROPPED_FIELDS:
            dropped[key] = DROPPED_FIELDS[key]
        elif key not in TRANSLATED_FIELDS:
            dropped[key] = "not understood by Ollama's /api/chat"
    return dropped


# --- requests --------------------------------------------------------------------------------


def to_ollama_request(
    body: Mapping[str, Any], *, wire_model: str, num_ctx: int | None, stream: bool
) -> dict[str, Any]:
    """Translate an OpenAI chat-completions body into an Ollama ``/api/chat`` body.

    ``wire_model`` is the Ollama model name to send; ``num_ctx`` (forge's manual budget) is put
    in ``options.num_ctx`` when given. Unknown fields are dropped (see :func:`dropped_fields`).
    Raises :class:`InvalidRequest` only for content Ollama cannot receive at all (a remote image
    URL, an unsupported content part, a malformed message).
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be a list of message objects", param="messages")
    out: dict[str, Any] = {
        "model": wire_model,
        "messages": _translate_messages(messages),
        "stream": stream,
    }
    tools = body.get("tools")
    # tool_choice "none" forbids calls; Ollama can only express that by not seeing the tools.
    if isinstance(tools, list) and tools and body.get("tool_choice") != "none":
        out["tools"] = tools
    fmt = _format(body)
    if fmt is not None:
        out["format"] = fmt
    options = _options(body, num_ctx)
    if options:
        out["options"] = options
    think = _think(body)
    if think is not None:
        out["think"] = think
    if body.get("keep_alive") is not None:
        out["keep_alive"] = body["keep_alive"]
    return out


def _translate_messages(messages: list[Any]) -> list[dict[str, Any]]:
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(f"{where} has no role", param=f"{where}.role")
        # Ollama knows system/user/assistant/tool only.
        role = {"developer": "system", "function": "tool"}.get(role, role)
        text, images = _flatten_content(message.get("content"), f"{where}.content")
        item: dict[str, Any] = {"role": role, "content": text}
        if images:
            item["images"] = images
        if role == "assistant":
            thinking = _first_str(message, "reasoning_content", "reasoning", "thinking")
            if thinking:
                item["thinking"] = thinking
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                item["tool_calls"] = [
                    _history_tool_call(call, n, call_names, f"{where}.tool_calls[{n}]")
                    for n, call in enumerate(calls)
                ]
        elif role == "tool":
            call_id = message.get("tool_call_id")
            name = call_names.get(call_id) if isinstance(call_id, str) else None
            if name is None:
                name = _first_str(message, "name", "tool_name")
            if name:
                item["tool_name"] = name
            if isinstance(call_id, str) and call_id:
                # Recent Ollama versions read it; older ones ignore unknown fields.
                item["tool_call_id"] = call_id
        out.append(item)
    return out


def _first_str(message: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _flatten_content(content: Any, where: str) -> tuple[str, list[str]]:
    """Text parts joined with newlines; inline images as base64 strings for ``images``."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string, a list of parts or null", param=where)
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        part_where = f"{where}[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise InvalidRequest(f"{part_where} must be an object", param=part_where)
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind == "image_url":
            images.append(_inline_image(part.get("image_url"), part_where))
        else:
            raise InvalidRequest(
                f"{part_where}: a content part of type {kind!r} cannot be sent to Ollama "
                "(it accepts text and inline images)",
                param=part_where,
            )
    return "\n".join(texts), images


def _inline_image(image_url: Any, where: str) -> str:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url.partition(",")
        if sep and header.endswith(";base64") and data:
            return data
    raise InvalidRequest(
        f"{where}: Ollama only takes inline images; send image_url as a base64 data: URL "
        "(forge does not download remote images)",
        param=where,
    )


def _history_tool_call(
    call: Any, position: int, call_names: dict[str, str], where: str
) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where} needs function.name", param=where)
    call_id = call.get("id")
    translated: dict[str, Any] = {
        "function": {
            "index": position,
            "name": name,
            "arguments": _history_arguments(function.get("arguments")),
        }
    }
    if isinstance(call_id, str) and call_id:
        call_names[call_id] = name
        translated = {"id": call_id, **translated}
    return translated


def _history_arguments(raw: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Ollama requires.

    Ollama rejects a request whose history holds non-object arguments, and dropping them would
    hide from the model what it did. So text that is not a JSON object is kept verbatim under
    ``{"_raw": text}``; empty or missing arguments become ``{}``.
    """
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            parsed = loads(raw)  # strict: NaN or deep nesting could not be sent on
        except ValueError:
            return {RAW_ARGUMENTS_KEY: raw}
        return parsed if isinstance(parsed, dict) else {RAW_ARGUMENTS_KEY: raw}
    return {RAW_ARGUMENTS_KEY: dumps(raw, compact=True)}


def _options(body: Mapping[str, Any], num_ctx: int | None) -> dict[str, Any]:
    extra = body.get("options")
    options: dict[str, Any] = dict(extra) if isinstance(extra, Mapping) else {}
    for field, option in _OPTION_FIELDS.items():
        value = body.get(field)
        if value is not None:
            options[option] = value
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]  # Ollama rejects a bare string: "must be of type array"
    elif isinstance(stop, list):
        stops = [s for s in stop if isinstance(s, str)]
        if stops:
            options["stop"] = stops
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    return options


def _format(body: Mapping[str, Any]) -> str | dict[str, Any] | None:
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind == "json_object":
            return "json"
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            return dict(schema) if isinstance(schema, Mapping) else "json"
        return None  # "text": Ollama's default
    native = body.get("format")
    if native == "json":
        return "json"
    if isinstance(native, Mapping):
        return dict(native)
    return None


def _think(body: Mapping[str, Any]) -> bool | str | None:
    think = body.get("think")
    if isinstance(think, bool | str):
        return think
    # Ollama's own OpenAI layer maps reasoning_effort the same way (gpt-oss takes levels).
    effort = body.get("reasoning_effort")
    if effort in ("low", "medium", "high"):
        return str(effort)
    if effort == "minimal":
        return "low"
    if effort == "none":
        return False
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, Mapping) and isinstance(kwargs.get("enable_thinking"), bool):
        return bool(kwargs["enable_thinking"])
    return None


# --- responses -------------------------------------------------------------------------------


def raise_if_error(obj: Mapping[str, Any]) -> None:
    """Raise when Ollama reports an error inside a 200 body (mid-stream ``{"error": ...}``)."""
    if "error" in obj:
        error = obj["error"]
        detail = error if isinstance(error, str) and error else dumps(error)[:500]
        raise BackendError(BACKEND, f"reported an error: {detail}")


def map_done_reason(done_reason: Any) -> str:
    """Ollama's ``done_reason`` as an OpenAI finish reason (``load``/``unload`` are ``stop``)."""
    return "length" if done_reason == "length" else "stop"


def usage_from(obj: Mapping[str, Any]) -> Usage | None:
    """Usage from ``prompt_eval_count``/``eval_count``; None when Ollama reported neither.

    Ollama omits a zero count (``omitempty``), e.g. ``prompt_eval_count`` for a fully cached
    prompt, so one missing count is read as 0.
    """
    prompt = obj.get("prompt_eval_count")
    completion = obj.get("eval_count")
    if prompt is None and completion is None:
        return None
    return Usage(_count(prompt), _count(completion))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def canonical_arguments(value: Any, name: str) -> str:
    """Ollama's argument object as compact JSON text (the form OpenAI clients expect).

    A JSON ``null`` (how Go encodes a call whose argument map was never filled) means no
    arguments. A string is accepted only when it parses to a JSON object; anything else that is
    not an object is a protocol error, because Ollama promises objects.
    """
    if value is None:
        return "{}"
    if isinstance(value, Mapping):
        return _compact(value)
    if isinstance(value, str):
        try:
            parsed = loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return _compact(parsed)
        raise BackendProtocolError(
            BACKEND, f"sent arguments for tool call '{name}' as a string that is not a JSON object"
        )
    raise BackendProtocolError(
        BACKEND,
        f"sent arguments for tool call '{name}' of type {_json_type(value)}, not a JSON object",
    )


def _compact(value: Mapping[str, Any]) -> str:
    return backend_dumps(BACKEND, value, "tool-call arguments")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _expect_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BackendProtocolError(BACKEND, f"sent a {what} that is not a JSON object")
    return data


def _message_parts(message: Mapping[str, Any]) -> tuple[str, str, list[tuple[str, str]]]:
    """(content, thinking, [(name, arguments_json), ...]) of one Ollama message."""
    content = message.get("content")
    thinking = message.get("thinking")
    if content is not None and not isinstance(content, str):
        raise BackendProtocolError(BACKEND, "sent a message whose `content` is not a string")
    if thinking is not None and not isinstance(thinking, str):
        raise BackendProtocolError(BACKEND, "sent a message whose `thinking` is not a string")
    raw_calls = message.get("tool_calls")
    if raw_calls is None:
        raw_calls = []
    if not isinstance(raw_calls, list):
        raise BackendProtocolError(BACKEND, "sent `tool_calls` that is not a list")
    calls: list[tuple[str, str]] = []
    for call in raw_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
            raise BackendProtocolError(BACKEND, "sent a tool call without `function.name`")
        calls.append((name, canonical_arguments(function.get("arguments"), name)))
    return content or "", thinking or "", calls


def from_ollama_response(data: Any) -> AssistantTurn:
    """Turn a non-streamed ``/api/chat`` response into an :class:`AssistantTurn`.

    Every tool call gets a fresh ``call_`` id (Ollama sends none, or ids of its own making) and
    compact JSON arguments. Raises :class:`BackendProtocolError` for a broken envelope or
    non-object arguments, :class:`BackendError` for an ``{"error": ...}`` body.
    """
    obj = _expect_object(data, "response")
    raise_if_error(obj)
    message = obj.get("message")
    if not isinstance(message, Mapping):
        raise BackendProtocolError(BACKEND, "sent a chat response without a `message` object")
    content, thinking, calls = _message_parts(message)
    tool_calls = [ToolCall(id=new_id("call_"), name=name, arguments=args) for name, args in calls]
    return AssistantTurn(
        content=content,
        tool_calls=tool_calls,
        finish_reason="tool_calls" if tool_calls else map_done_reason(obj.get("done_reason")),
        usage=usage_from(obj),
        reasoning=thinking,
    )


class OllamaStreamNormalizer:
    """Turns the objects of one ``/api/chat`` NDJSON stream into :class:`BackendChunk` s.

    Tool calls come out in canonical form: each call in one fragment carrying a fresh id, its
    name and its whole arguments, with an index counted by forge in order of arrival. Ollama's
    own ``index`` is ignored because it is missing on old versions and restarts at 0 on every
    line on others. The final chunk (Ollama's ``done: true`` line) carries the finish reason and
    usage. Feed one parsed JSON value at a time; check :attr:`done` when the stream ends.
    """

    def __init__(self) -> None:
        self._next_index = 0
        self.done = False

    @property
    def saw_tool_calls(self) -> bool:
        return self._next_index > 0

    def feed(self, obj: Any) -> BackendChunk | None:
        """Normalize one stream object; None when it carries nothing (or arrives after done)."""
        if self.done:
            return None
        line = _expect_object(obj, "stream line")
        raise_if_error(line)
        message = line.get("message")
        text = reasoning = ""
        fragments: list[ToolCallFragment] = []
        if message is not None:
            if not isinstance(message, Mapping):
                raise BackendProtocolError(
                    BACKEND, "sent a stream line whose `message` is not an object"
                )
            text, reasoning, calls = _message_parts(message)
            for name, arguments in calls:
                fragments.append(
                    ToolCallFragment(
                        index=self._next_index, id=new_id("call_"), name=name, arguments=arguments
                    )
                )
                self._next_index += 1
        finish_reason: str | None = None
        usage: Usage | None = None
        if line.get("done") is True:
            self.done = True
            finish_reason = (
                "tool_calls" if self.saw_tool_calls else map_done_reason(line.get("done_reason"))
            )
            usage = usage_from(line)
        if not (text or reasoning or fragments or finish_reason):
            return None
        return BackendChunk(
            text=text,
            reasoning=reasoning,
            tool_calls=fragments,
            finish_reason=finish_reason,
            usage=usage,
        )
