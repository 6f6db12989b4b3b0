"""How forge's conformance kit fakes the Messages API: the scripted OpenAI-shaped replies
rendered as ``/v1/messages`` bodies and SSE streams (text deltas, ``tool_use`` blocks whose
input arrives as ``input_json_delta`` pieces), with Anthropic's error shape."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from forge_core.conformance import SERVED_MODEL, Harness
from forge_core.testing import Reply, ScriptedBackend

KEY_ENV = "FORGE_CONFORMANCE_ANTHROPIC_KEY"
KEY = "sk-ant-conformance-0123456789"


class ScriptedAnthropic(ScriptedBackend):
    chat_path = "/v1/messages"

    def routes(self) -> list[Route]:
        return [
            Route(self.chat_path, self._chat, methods=["POST"]),
            Route("/v1/models", self._anthropic_models, methods=["GET"]),
        ]

    async def _anthropic_models(self, request: Request) -> Response:
        return JSONResponse({"data": [{"id": m, "type": "model"} for m in self.models]})

    def completion_body(self, reply: Reply, body: dict[str, Any]) -> Any:
        content: list[dict[str, Any]] = []
        if text := reply.message.get("content"):
            content.append({"type": "text", "text": text})
        content += [{"type": "tool_use", "id": c["id"].replace("call_", "toolu_"),
                     "name": c["function"]["name"], "input": json.loads(c["function"]["arguments"])}
                    for c in reply.message.get("tool_calls") or []]
        return {"id": "msg_conformance", "type": "message", "role": "assistant",
                "model": body.get("model"), "content": content,
                "stop_reason": _stop_reason(reply), "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5}}

    def stream_pieces(self, reply: Reply, body: dict[str, Any]) -> list[bytes]:
        if reply.stream_chunks is not None:  # raw events, for broken-stream checks
            return [c.encode() for c in reply.stream_chunks if isinstance(c, str)]
        message = {**self.completion_body(reply, body), "content": [], "stop_reason": None,
                   "usage": {"input_tokens": 10, "output_tokens": 0}}
        pieces = [_event("message_start", {"type": "message_start", "message": message})]
        index = 0
        if text := reply.message.get("content"):
            pieces.append(_block_start(index, {"type": "text", "text": ""}))
            words = text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == len(words) - 1 else word + " "
                if piece:
                    pieces.append(_delta(index, {"type": "text_delta", "text": piece}))
            pieces.append(_block_stop(index))
            index += 1
        for call in reply.message.get("tool_calls") or []:
            block = {"type": "tool_use", "id": call["id"].replace("call_", "toolu_"),
                     "name": call["function"]["name"], "input": {}}
            pieces.append(_block_start(index, block))
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                pieces.append(_delta(index, {"type": "input_json_delta", "partial_json": part}))
            pieces.append(_block_stop(index))
            index += 1
        pieces.append(_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": _stop_reason(reply),
                                               "stop_sequence": None},
            "usage": {"output_tokens": 5}}))
        pieces.append(_event("message_stop", {"type": "message_stop"}))
        return pieces

    def error_response(self, reply: Reply) -> Response:
        error = reply.error_body.get("error") if isinstance(reply.error_body, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(reply.error_body)
        return JSONResponse({"type": "error", "error": {"type": "api_error", "message": message}},
                            status_code=reply.status)


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.message.get("tool_calls") else "end_turn"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _event("content_block_start",
                  {"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event("content_block_delta",
                  {"type": "content_block_delta", "index": index, "delta": delta})


def _block_stop(index: int) -> bytes:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


class AnthropicHarness(Harness):
    def fake(self, models: list[str]) -> ScriptedBackend:
        return ScriptedAnthropic(models)


def harness() -> Harness:
    return AnthropicHarness(
        options={"anthropic_api_key_env": KEY_ENV},
        env={KEY_ENV: KEY},
        model=SERVED_MODEL,  # the Messages API has no model discovery forge relies on
        secret=KEY,
        broken_streams=(b"event: message_start\ndata: {this is not json\n\n",),
    )
