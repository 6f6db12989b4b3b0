"""How forge's conformance kit fakes Ollama: the scripted OpenAI-shaped replies rendered as
Ollama's native ``/api/chat`` (one JSON body, or NDJSON lines with whole tool calls and
argument objects), plus the ``/api/tags``, ``/api/ps`` and ``/api/show`` the client reads."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from forge_core.conformance import Harness
from forge_core.testing import Reply, ScriptedBackend

CREATED_AT = "2026-01-01T00:00:00Z"


class ScriptedOllama(ScriptedBackend):
    chat_path = "/api/chat"
    stream_media_type = "application/x-ndjson"

    def routes(self) -> list[Route]:
        return [
            Route(self.chat_path, self._chat, methods=["POST"]),
            Route("/api/tags", self._tags, methods=["GET"]),
            Route("/api/ps", self._ps, methods=["GET"]),
            Route("/api/show", self._show, methods=["POST"]),
        ]

    async def _tags(self, request: Request) -> Response:
        return JSONResponse({"models": [{"name": m, "model": m} for m in self.models]})

    async def _ps(self, request: Request) -> Response:
        return JSONResponse({"models": []})

    async def _show(self, request: Request) -> Response:
        return JSONResponse({"capabilities": ["completion", "tools"], "model_info": {}})

    def is_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream", True) is not False  # Ollama streams unless told not to

    def completion_body(self, reply: Reply, body: dict[str, Any]) -> Any:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": reply.message.get("content") or ""}
        if calls := _calls(reply):
            message["tool_calls"] = calls
        return {"model": body.get("model"), "created_at": CREATED_AT, "message": message,
                "done": True, "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5}

    def stream_pieces(self, reply: Reply, body: dict[str, Any]) -> list[bytes]:
        if reply.stream_chunks is not None:  # raw lines, for broken-stream checks
            return [c.encode() if isinstance(c, str) else _line(c) for c in reply.stream_chunks]
        head = {"model": body.get("model"), "created_at": CREATED_AT}
        pieces = []
        words = (reply.message.get("content") or "").split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            if piece:
                pieces.append(_line({**head, "message": {"role": "assistant", "content": piece},
                                     "done": False}))
        if calls := _calls(reply):
            pieces.append(_line({**head, "message": {"role": "assistant", "content": "",
                                                     "tool_calls": calls}, "done": False}))
        pieces.append(_line({**head, "message": {"role": "assistant", "content": ""},
                             "done": True, "done_reason": "stop", "prompt_eval_count": 10,
                             "eval_count": 5}))
        return pieces

    def error_response(self, reply: Reply) -> Response:
        error = reply.error_body.get("error") if isinstance(reply.error_body, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(reply.error_body)
        return JSONResponse({"error": message}, status_code=reply.status)


def _calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {"function": {"name": c["function"]["name"],
                      "arguments": json.loads(c["function"]["arguments"] or "{}")}}
        for c in reply.message.get("tool_calls") or []
    ]


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class OllamaHarness(Harness):
    def fake(self, models: list[str]) -> ScriptedBackend:
        return ScriptedOllama([f"{m}:latest" for m in models])


def harness() -> Harness:
    return OllamaHarness(broken_streams=(b"{this is not json\n",))
