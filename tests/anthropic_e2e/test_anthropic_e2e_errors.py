"""Errors on ``/v1/messages`` in Anthropic's shape, with the right status.

Before a stream starts every failure is a real HTTP status with
``{"type": "error", "error": {"type", "message"}}``; once the 200 is out, a failure is an
``event: error`` and the stream ends there. Read by the real SDK and on the raw wire.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from anthropic_e2e_support import (
    MODEL,
    WEATHER,
    Forge,
    TokenizingBackend,
    ask,
    frames,
    run_forge,
    steps,
)

from forge_core.managed import free_port
from forge_core.testing import Reply, ScriptedBackend, reply_error, reply_text

ANTHROPIC_ERROR_KEYS = {"type", "error"}


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and set(body) == ANTHROPIC_ERROR_KEYS, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    return body["error"]


def sdk_error(forge: Forge, stream: bool = False, **body: Any) -> anthropic.APIStatusError:
    """The SDK's exception for ``body`` (streamed requests fail before any event)."""
    client = forge.sdk()
    with pytest.raises(anthropic.APIStatusError) as info:
        if stream:
            with client.messages.stream(**body) as events:
                list(events)
        else:
            client.messages.create(**body)
    return info.value


def raw_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


# --- the client's fault ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_body_is_400_naming_the_field(forge: Forge, stream: bool) -> None:
    exc = sdk_error(forge, stream, **ask(max_tokens=0))
    assert exc.status_code == 400
    error = error_of(exc)
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]
    assert forge.backend.requests == []


def test_missing_max_tokens_and_bad_json_on_the_raw_wire(forge: Forge) -> None:
    body = ask()
    del body["max_tokens"]
    error = raw_error(forge.post("/v1/messages", body), 400)
    assert error == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    error = raw_error(forge.post("/v1/messages", b'{"model": '), 400)
    assert "not valid JSON" in error["message"]
    error = raw_error(forge.post("/v1/messages", b"[1, 2]"), 400)
    assert "JSON object" in error["message"]
    error = raw_error(forge.post("/v1/messages?beta=true", {**ask(), "messages": []}), 400)
    assert error["message"].startswith("messages:")


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_listing_the_served_ones(forge: Forge, stream: bool) -> None:
    exc = sdk_error(forge, stream, **ask(model="claude-opus-4-8"))
    assert exc.status_code == 404
    error = error_of(exc)
    assert error["type"] == "not_found_error"
    assert "claude-opus-4-8" in error["message"] and MODEL in error["message"]


def test_body_over_the_limit_is_413() -> None:
    with run_forge(max_body_bytes=2000) as forge:
        exc = sdk_error(forge, **ask("x" * 5000))
        assert exc.status_code == 413
        assert error_of(exc)["type"] == "request_too_large"
        assert "2000-byte limit" in error_of(exc)["message"]


def test_forge_key_is_checked_from_x_api_key_and_never_forwarded() -> None:
    with run_forge(api_key="forge-secret") as forge:
        exc = sdk_error(forge, **ask())
        assert exc.status_code == 401
        assert error_of(exc)["type"] == "authentication_error"
        forge.backend.push(reply_text("welcome"), reply_text("welcome too"))
        # The SDK sends its api_key as x-api-key, as Claude Code does.
        message = forge.sdk(api_key="forge-secret").messages.create(**ask())
        assert message.content[0].text == "welcome"
        # Bearer (OpenAI style) works as well.
        response = forge.post(
            "/v1/messages", ask(), headers={"authorization": "Bearer forge-secret"}
        )
        assert response.status_code == 200
        for headers in forge.backend.headers:
            assert "forge-secret" not in str(headers)
        # count_tokens is guarded too.
        response = forge.post("/v1/messages/count_tokens", {"model": MODEL, "messages": []})
        assert raw_error(response, 401)["type"] == "authentication_error"


# --- the backend's fault, before the stream starts -------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_backend_down_is_502(stream: bool) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_forge(backend_url=dead) as forge:
        exc = sdk_error(forge, stream, **ask())
    assert exc.status_code == 502
    error = error_of(exc)
    assert error["type"] == "api_error"
    assert "unreachable" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_backend_timeout_is_504(stream: bool) -> None:
    with run_forge(timeout=0.3) as forge:
        forge.backend.push(reply_text("too late", delay=1.0))
        exc = sdk_error(forge, stream, **ask())
    assert exc.status_code == 504
    error = error_of(exc)
    assert error["type"] == "timeout_error"
    assert "did not answer within 0.3s" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_backend_500_is_502_naming_the_backend(forge: Forge, stream: bool) -> None:
    forge.backend.push(reply_error(500, {"error": {"message": "CUDA out of memory"}}))
    exc = sdk_error(forge, stream, **ask())
    assert exc.status_code == 502
    error = error_of(exc)
    assert error["type"] == "api_error"
    assert error["message"] == "Backend 'fake' answered HTTP 500: CUDA out of memory"


# What Claude Code parses to compact a conversation that outgrew the context.
CLAUDE_CODE_TOO_LONG = re.compile(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", re.I)


def test_backend_400_is_passed_on_as_a_client_error(forge: Forge) -> None:
    forge.backend.push(reply_error(400, {"error": {"message": "tool 'x' has no schema"}}))
    exc = sdk_error(forge, **ask())
    assert exc.status_code == 400
    error = error_of(exc)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "Backend 'fake' answered HTTP 400: tool 'x' has no schema"


def test_llama_server_context_overflow_is_worded_for_claude_code(forge: Forge) -> None:
    message = "request (20347 tokens) exceeds the available context size (8192 tokens)"
    forge.backend.push(reply_error(400, {"error": {"code": 400, "message": message}}))
    error = error_of(sdk_error(forge, **ask()))
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("prompt is too long: 20347 tokens > 8192 maximum.")
    assert message in error["message"]  # the backend's own words follow
    found = CLAUDE_CODE_TOO_LONG.search(error["message"])
    assert found is not None and found.groups() == ("20347", "8192")


@pytest.mark.parametrize("stream", [False, True])
def test_forge_own_context_check_is_worded_for_claude_code(stream: bool) -> None:
    # The llamafile client reads n_ctx=64 at /props and counts tokens exactly: a prompt of
    # 200 words is refused before any backend call, as a 400 Claude Code can act on.
    with run_forge(TokenizingBackend(n_ctx=64), llamafile=True) as forge:
        exc = sdk_error(forge, stream, **ask("word " * 200))
        assert exc.status_code == 400
        error = error_of(exc)
        assert error["type"] == "invalid_request_error"
        found = CLAUDE_CODE_TOO_LONG.search(error["message"])
        assert found is not None and found.groups() == ("202", "64")
        assert forge.backend.requests == []


def test_a_full_queue_is_503_overloaded_with_retry_after() -> None:
    with run_forge(max_concurrency=1, max_queue=0) as forge:
        forge.backend.push(reply_text("slow", delay=5.0))
        holder = threading.Thread(target=lambda: forge.post("/v1/messages", ask()))
        holder.start()
        try:
            while forge.backend.in_flight == 0 and holder.is_alive():
                threading.Event().wait(0.01)
            response = forge.post("/v1/messages", ask())
        finally:
            holder.join()
    error = raw_error(response, 503)
    assert error["type"] == "overloaded_error"
    assert response.headers["retry-after"]


# --- after the stream started: an error event -------------------------------------------------


def broken_stream(reply_chunks: list[Any]) -> Reply:
    return Reply(stream_chunks=reply_chunks)


def test_backend_failure_mid_stream_is_an_error_event(forge: Forge) -> None:
    forge.backend.push(
        broken_stream([{"role": "assistant", "content": None}, {"content": "Partial "},
                       "data: {this is not json\n\n"])
    )
    response, raw = forge.stream_raw(ask())
    assert response.status_code == 200
    assert steps(raw) == [
        ("message_start",),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Partial "),
        ("error", "api_error"),
    ]
    error = frames(raw)[-1][1]["error"]
    assert error["message"].startswith("Backend 'fake' streamed an event that is not JSON: ")


def test_sdk_raises_on_the_error_event_after_the_text_it_got(forge: Forge) -> None:
    forge.backend.push(
        broken_stream([{"role": "assistant", "content": None}, {"content": "Partial "},
                       "data: {this is not json\n\n"])
    )
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:  # noqa: SIM117 - the raise is inside
        with forge.sdk().messages.stream(**ask()) as stream:
            for text in stream.text_stream:
                seen.append(text)
    assert seen == ["Partial "]
    assert "not JSON" in str(info.value)


class StallingBackend(ScriptedBackend):
    """Streams the start of an answer, then goes silent for longer than forge's timeout."""

    async def _stream(self, reply: Reply, body: dict[str, Any]) -> AsyncIterator[bytes]:
        delta = {"role": "assistant", "content": "Hel"}
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(2)


def test_backend_timeout_mid_stream_is_a_timeout_error_event() -> None:
    with run_forge(StallingBackend(), timeout=0.5) as forge:
        response, raw = forge.stream_raw(ask())
    assert response.status_code == 200
    assert steps(raw) == [
        ("message_start",),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta", "Hel"),
        ("error", "timeout_error"),
    ]


def test_tool_use_requests_fail_before_the_stream_too(forge: Forge) -> None:
    forge.backend.push(reply_error(503, {"error": {"message": "loading model"}}))
    response, _ = forge.stream_raw(ask(tools=[WEATHER]))
    error = raw_error(response, 503)  # overload is passed on as such (SDKs retry it)
    assert error["type"] == "overloaded_error"
    assert error["message"] == "Backend 'fake' answered HTTP 503: loading model"
