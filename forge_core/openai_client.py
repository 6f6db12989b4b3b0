"""A backend client for servers that speak OpenAI chat completions over HTTP.

llama-server, llamafile, vLLM, LM Studio and hosted APIs all speak this wire; their plugins
subclass :class:`OpenAIWireClient` and set URLs, identity and capabilities rather than copy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx

from forge_core.backend import (
    BackendClient,
    BackendRequest,
    BackendSettings,
    BackendStatus,
    ModelIdentity,
    identity_as_is,
)
from forge_core.errors import (
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
)
from forge_core.turns import AssistantTurn, BackendChunk, ToolCall, ToolCallFragment, Usage, new_id

log = logging.getLogger("forge.backend")

# Fields forge owns on the client side and must not forward blindly.
CLIENT_ONLY_FIELDS = ("stream_options",)
DISCOVERY_TIMEOUT = 5.0


class OpenAIWireClient(BackendClient):
    """OpenAI-wire client over one pooled ``httpx.AsyncClient`` shared by all requests."""

    chat_path = "/v1/chat/completions"
    models_path = "/v1/models"
    health_path = "/v1/models"

    def __init__(
        self,
        settings: BackendSettings,
        *,
        name: str,
        base_url: str,
        derive_identity: Callable[[str], ModelIdentity] = identity_as_is,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._base_url = base_url.rstrip("/")
        self._derive_identity = derive_identity
        self._identities: list[ModelIdentity] = (
            [derive_identity(settings.model)] if settings.model else []
        )
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers or {},
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
            limits=httpx.Limits(
                max_connections=256, max_keepalive_connections=64, keepalive_expiry=2.0
            ),  # under the 5 s idle timeout of llama-server and uvicorn: no stale pick
            transport=transport,
        )

    # --- lifecycle and identity ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._base_url

    def models(self) -> Sequence[ModelIdentity]:
        return self._identities

    async def start(self) -> None:
        """Adopt the served model name when none was configured (external mode)."""
        if self._identities:
            return
        try:
            served = await self.served_models()
        except BackendError as exc:
            log.warning("could not discover models at %s: %s", self._base_url, exc.reason)
            return
        self._identities = [self._derive_identity(name) for name in served]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def served_models(self) -> list[str]:
        data = await self._get_json(self.models_path, timeout=DISCOVERY_TIMEOUT)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise BackendProtocolError(self.name, f"answered {self.models_path} without 'data'")
        return [m["id"] for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def status(self) -> BackendStatus:
        try:
            served = await self.served_models()
        except BackendError as exc:
            return BackendStatus(ready=False, detail=exc.message)
        return BackendStatus(ready=True, detail="ok", models=served)

    # --- requests ------------------------------------------------------------------------

    def prepare_body(self, request: BackendRequest, *, stream: bool) -> dict[str, Any]:
        """The body to send: the request's, with wire model name and forge's stream settings.

        Only top-level keys are touched, so ``messages`` and ``tools`` stay the client's own
        objects on a verbatim attempt.
        """
        body = {k: v for k, v in request.body.items() if k not in CLIENT_ONLY_FIELDS}
        if self._identities:
            body["model"] = self.wire_name(body.get("model"))
        body["stream"] = stream
        if stream:
            # forge reports usage to the client itself; always ask for it.
            body["stream_options"] = {"include_usage": True}
        return body

    def wire_name(self, requested: str | None) -> str:
        for identity in self._identities:
            if requested in identity.names:
                return identity.wire_name
        return self._identities[0].wire_name if self._identities else (requested or "")

    async def complete(self, request: BackendRequest) -> AssistantTurn:
        body = self.prepare_body(request, stream=False)
        try:
            response = await self._http.post(self.chat_path, content=_dumps(body), headers=_JSON)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code >= 400:
            raise self.http_error(response.status_code, response.text)
        try:
            data = response.json()
        except ValueError:
            raise BackendProtocolError(self.name, "answered with a body that is not JSON") from None
        return parse_completion(self.name, data)

    async def stream(self, request: BackendRequest) -> AsyncIterator[BackendChunk]:
        body = self.prepare_body(request, stream=True)
        try:
            async with self._http.stream(
                "POST", self.chat_path, content=_dumps(body), headers=_JSON
            ) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")
                    raise self.http_error(response.status_code, text)
                lines = response.aiter_lines()
                async for line in lines:
                    if not line.startswith("data:"):
                        continue  # comments, event names, blank separators
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        await _drain(lines)
                        return
                    chunk = parse_chunk(self.name, payload)
                    if chunk is not None:
                        yield chunk
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None

    # --- errors --------------------------------------------------------------------------

    def transport_error(self, exc: httpx.HTTPError) -> BackendError:
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout(
                self.name, f"did not answer within {self.settings.timeout:g}s ({self._base_url})"
            )
        kind = type(exc).__name__
        return BackendUnavailable(self.name, f"is unreachable at {self._base_url} ({kind})")

    def http_error(self, status: int, text: str) -> BackendHTTPError:
        return BackendHTTPError(self.name, status, error_detail(text))

    async def _get_json(self, path: str, timeout: float) -> Any:
        try:
            response = await self._http.get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code >= 400:
            raise self.http_error(response.status_code, response.text)
        try:
            return response.json()
        except ValueError:
            raise BackendProtocolError(self.name, f"answered {path} with non-JSON") from None


_JSON = {"Content-Type": "application/json"}

DRAIN_TIMEOUT = 1.0
"""Seconds to wait for the end of a stream's body after ``[DONE]``."""


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]`` (normally only the chunked terminator).

    httpcore returns a connection to the pool only when its response was read to the end;
    leaving at ``[DONE]`` would close it and cost a new TCP connection per streamed request.
    Bounded, for a server that keeps the stream open after ``[DONE]``: then the connection is
    simply closed, as before.
    """
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            async for _ in lines:
                pass


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def error_detail(text: str, limit: int = 500) -> str:
    """The message inside a backend's error body (OpenAI or bare), shortened."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:limit] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("error")
            if isinstance(msg, str):
                return msg[:limit]
        elif isinstance(err, str):
            return err[:limit]
    return text.strip()[:limit]


# --- parsing: the uniform error principle ----------------------------------------------------
# Malformed argument JSON is the model's mistake: kept as text for the guardrails.
# A broken envelope or arguments of an unexpected type are the backend's: BackendProtocolError.


def arguments_text(backend: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    raise BackendProtocolError(
        backend, f"sent tool-call arguments of type {type(value).__name__}, expected a string"
    )


def content_text(backend: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    raise BackendProtocolError(backend, f"sent content of type {type(value).__name__}")


def parse_usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def parse_completion(backend: str, data: Any) -> AssistantTurn:
    """A non-streamed chat completion body to an AssistantTurn."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendProtocolError(backend, "answered without any choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise BackendProtocolError(backend, "answered a choice without a message")
    calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise BackendProtocolError(backend, "sent tool_calls that are not a list")
    for raw in raw_calls:
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BackendProtocolError(backend, "sent a tool call without a function name")
        call_id = raw.get("id")
        calls.append(
            ToolCall(
                id=call_id if isinstance(call_id, str) and call_id else new_id("call_"),
                name=function["name"],
                arguments=arguments_text(backend, function.get("arguments")),
            )
        )
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    finish = choices[0].get("finish_reason") or ("tool_calls" if calls else "stop")
    return AssistantTurn(
        content=content_text(backend, message.get("content")),
        tool_calls=calls,
        finish_reason=finish,
        usage=parse_usage(data.get("usage")),
        reasoning=reasoning if isinstance(reasoning, str) else "",
        stop_sequence=matched_stop(choices[0]),
    )


def matched_stop(choice: dict[str, Any]) -> str | None:
    """The stop string a choice ended on, where the server reports it (vLLM's ``stop_reason``
    is the matched string, or a token id, or null); llama-server does not report it."""
    value = choice.get("stop_reason")
    return value if isinstance(value, str) and value else None


def parse_chunk(backend: str, payload: str) -> BackendChunk | None:
    """One ``data:`` payload of a streamed completion to a BackendChunk (None if empty)."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise BackendProtocolError(backend, "streamed an event that is not JSON") from None
    if not isinstance(data, dict):
        raise BackendProtocolError(backend, "streamed an event that is not a JSON object")
    if "error" in data and "choices" not in data:
        raise BackendHTTPError(backend, 500, error_detail(payload))
    chunk = BackendChunk(usage=parse_usage(data.get("usage")))
    choices = data.get("choices") or []
    if not isinstance(choices, list):
        raise BackendProtocolError(backend, "streamed choices that are not a list")
    if choices:
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            raise BackendProtocolError(backend, "streamed a choice without a delta")
        chunk.text = content_text(backend, delta.get("content"))
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str):
            chunk.reasoning = reasoning
        for position, raw in enumerate(delta.get("tool_calls") or []):
            if not isinstance(raw, dict):
                raise BackendProtocolError(backend, "streamed a tool call that is not an object")
            function = raw.get("function") or {}
            if not isinstance(function, dict):
                raise BackendProtocolError(backend, "streamed a tool call without a function")
            index = raw.get("index")
            chunk.tool_calls.append(
                ToolCallFragment(
                    index=index if isinstance(index, int) else position,
                    id=raw.get("id") if isinstance(raw.get("id"), str) else None,
                    name=function.get("name") if isinstance(function.get("name"), str) else None,
                    arguments=arguments_text(backend, function.get("arguments")),
                )
            )
        chunk.finish_reason = choice.get("finish_reason")
        if chunk.finish_reason:
            chunk.stop_sequence = matched_stop(choice)
    empty = not (chunk.text or chunk.reasoning or chunk.tool_calls)
    return None if empty and not (chunk.finish_reason or chunk.usage) else chunk
