"""The two client protocols forge serves, behind one small interface the app drives.

Each protocol parses its request into an OpenAI-shaped :class:`ChatCall`, renders a finished
:class:`AssistantTurn`, provides a stream emitter, and shapes errors. Everything between is
shared: one engine, two wire formats at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from starlette.responses import JSONResponse

from forge_core.engine import ChatCall
from forge_core.errors import ForgeError
from forge_core.turns import AssistantTurn, Finished, StreamEvent
from forge_core.wire import anthropic as an
from forge_core.wire import openai as oa
from forge_core.wire.jsonio import SafeJSONResponse


@dataclass(slots=True)
class Parsed:
    call: ChatCall
    model: str
    stream: bool
    include_usage: bool = False
    request: Any = None
    """The protocol's own parsed request model, for rendering the answer."""


class StreamEmitter(TypingProtocol):
    def start(self) -> bytes: ...
    def emit(self, event: StreamEvent) -> bytes: ...
    def error(self, exc: ForgeError) -> bytes: ...


class Protocol(TypingProtocol):
    name: str

    def parse(self, body: Any) -> Parsed: ...
    def completion(self, turn: AssistantTurn, parsed: Parsed) -> dict[str, Any]: ...
    def stream_emitter(self, parsed: Parsed) -> StreamEmitter: ...
    def error_response(self, exc: ForgeError) -> JSONResponse: ...


class OpenAIProtocol:
    name = "openai"

    def parse(self, body: Any) -> Parsed:
        request = oa.parse_chat_request(body)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        # The body itself (not the model) is forwarded: messages/tools stay the client's objects.
        return Parsed(
            call=ChatCall(body=body, client_protocol="openai"),
            model=request.model,
            stream=request.stream,
            include_usage=include_usage,
            request=request,
        )

    def completion(self, turn: AssistantTurn, parsed: Parsed) -> dict[str, Any]:
        return oa.completion_body(turn, parsed.model, oa.new_completion_id())

    def stream_emitter(self, parsed: Parsed) -> StreamEmitter:
        return oa.OpenAIStreamEmitter(parsed.model, parsed.include_usage)

    def error_response(self, exc: ForgeError) -> JSONResponse:
        return SafeJSONResponse(oa.error_body(exc), status_code=exc.status, headers=exc.headers)


class AnthropicProtocol:
    name = "anthropic"

    def parse(self, body: Any, *, count_only: bool = False) -> Parsed:
        if count_only:
            request = an.parse_count_tokens_request(body)
        else:
            request = an.parse_messages_request(body)
        return Parsed(
            call=ChatCall(
                body=an.to_openai_request(request), client_protocol="anthropic", original=body
            ),
            model=request.model,
            stream=bool(getattr(request, "stream", False)),
            request=request,
        )

    def completion(self, turn: AssistantTurn, parsed: Parsed) -> dict[str, Any]:
        return an.to_anthropic_message(
            turn,
            parsed.model,
            thinking=parsed.request.thinking_enabled,
            matched_stop=an.matched_stop_sequence(
                parsed.request, turn.stop_sequence, turn.finish_reason
            ),
            input_tokens=an.estimate_tokens(parsed.request),  # used when the backend gave none
        )

    def stream_emitter(self, parsed: Parsed) -> StreamEmitter:
        emitter = an.AnthropicStreamEmitter(
            parsed.model,
            input_tokens=an.estimate_tokens(parsed.request),
            thinking=parsed.request.thinking_enabled,
        )
        return _AnthropicEmitter(emitter, parsed.request)

    def estimate_tokens(self, parsed: Parsed) -> int:
        return an.estimate_tokens(parsed.request)

    def error_response(self, exc: ForgeError) -> JSONResponse:
        return SafeJSONResponse(
            an.anthropic_error_body(exc), status_code=exc.status, headers=exc.headers
        )


class _AnthropicEmitter:
    """Adapts the Anthropic emitter's ``feed`` to the app's ``emit``."""

    def __init__(self, inner: an.AnthropicStreamEmitter, request: an.MessagesRequest) -> None:
        self._inner = inner
        self._request = request

    def start(self) -> bytes:
        return self._inner.start()

    def emit(self, event: StreamEvent) -> bytes:
        if isinstance(event, Finished):
            matched = an.matched_stop_sequence(
                self._request, event.stop_sequence, event.finish_reason
            )
            return self._inner.feed(event, matched_stop=matched)
        return self._inner.feed(event)

    def error(self, exc: ForgeError) -> bytes:
        return self._inner.error(exc)


OPENAI = OpenAIProtocol()
ANTHROPIC = AnthropicProtocol()
