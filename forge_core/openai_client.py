"""A backend client for servers that speak OpenAI chat completions over HTTP.

llama-server, llamafile, vLLM, LM Studio and hosted APIs all speak this wire; their plugins
subclass :class:`OpenAIWireClient` and set URLs, identity and capabilities rather than copy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx

from forge_core import httpio
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
from forge_core.redact import display_url, excerpt, register_headers, register_url
from forge_core.turns import AssistantTurn, BackendChunk, ToolCall, ToolCallFragment, Usage, new_id
from forge_core.wire import sse
from forge_core.wire.jsonio import backend_dumps, backend_json, dumps_bytes, loads

log = logging.getLogger("forge.backend")

# Fields forge owns on the client side and must not forward blindly.
CLIENT_ONLY_FIELDS = ("stream_options",)
DISCOVERY_TIMEOUT = 5.0


class OpenAIWireClient(BackendClient):
    """OpenAI-wire client over one pooled ``httpx.AsyncClient`` shared by all requests."""

    chat_path = "/v1/chat/completions"
    models_path = "/v1/models"
    health_path = "/v1/models"
    close_after_stream = False
    """Send streamed completions with ``Connection: close``, for a server that cannot serve
    another request on a connection after a stream (llama-server)."""

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
        # Credentials (a key header, --backend-header values, URL userinfo) are scrubbed from
        # everything forge emits; the URL is only ever shown without them.
        register_headers(headers or {})
        register_url(self._base_url)
        self._shown_url = display_url(self._base_url)
        self._derive_identity = derive_identity
        self._identities: list[ModelIdentity] = (
            [derive_identity(settings.model)] if settings.model else []
        )
        limits = httpx.Limits(
            max_connections=256, max_keepalive_connections=64, keepalive_expiry=2.0
        )  # under the 5 s idle timeout of llama-server and uvicorn: no stale pick
        transport = transport or httpio.transport(limits)
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers or {},
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
            limits=limits,
            transport=transport,
        )
        # Chat requests go straight to the transport (see _post), unless the client's own
        # send has work to do: choosing a proxy from the environment.
        self._direct = None if _env_proxies() else transport
        self._chat_base: httpx.URL | None = None
        self._chat_url = self._http.base_url

    # --- lifecycle and identity ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._shown_url

    def models(self) -> Sequence[ModelIdentity]:
        return self._identities

    async def start(self) -> None:
        """Adopt the served model name when none was configured (external mode)."""
        if self._identities:
            return
        try:
            served = await self.served_models()
        except BackendError as exc:
            log.warning("could not discover models at %s: %s", self._shown_url, exc.reason)
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
        """The body to send: the request's, with forge's stream settings.

        The model is already the wire name (the app maps the client's name once, see
        :meth:`~forge_core.app.AppState.resolve_model`). Only top-level keys are touched, so
        ``messages`` and ``tools`` stay the client's own objects on a verbatim attempt.
        """
        body = {k: v for k, v in request.body.items() if k not in CLIENT_ONLY_FIELDS}
        body["stream"] = stream
        if stream:
            # forge reports usage to the client itself; always ask for it.
            body["stream_options"] = {"include_usage": True}
        return body

    async def _post(self, body: bytes, stream: bool = False) -> httpx.Response:
        """POST ``body`` to the chat path; the answer's body is still to be read (and the
        response closed) by the caller.

        Straight to the transport: httpx's client adds, per request, URL and header merging,
        cookie handling, auth and redirect machinery that a backend call never uses (~6% of
        a tool-call request's CPU). Event hooks still run (a plugin may set headers in one).
        """
        http = self._http
        base = http.base_url
        if base is not self._chat_base:  # the URL the client would build, computed once
            self._chat_base, self._chat_url = base, http.build_request("POST", self.chat_path).url
        headers = _JSON_CLOSE if stream and self.close_after_stream else _JSON
        if self._direct is None or self._chat_url.userinfo or self._chat_url.query:
            # Basic auth from the URL's userinfo and query merging are the client's work.
            request = http.build_request("POST", self.chat_path, content=body, headers=headers)
            return await http.send(request, stream=True)
        request = httpx.Request(
            "POST", self._chat_url, headers=http.headers, content=body,
            extensions={"timeout": http.timeout.as_dict()},
        )
        request.headers.update(headers)
        hooks = self._http.event_hooks
        for hook in hooks["request"]:
            await hook(request)
        response = await self._direct.handle_async_request(request)
        response.request = request
        try:
            for hook in hooks["response"]:
                await hook(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    async def complete(self, request: BackendRequest) -> AssistantTurn:
        body = self.prepare_body(request, stream=False)
        try:
            response = await self._post(_dumps(body))
            try:
                content = b"".join([piece async for piece in _body(response)])
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code >= 400:
            text = content.decode(errors="replace")
            raise self.http_error(response.status_code, text).with_retry(response.headers)
        return parse_completion(self.name, backend_json(self.name, content))

    async def stream(self, request: BackendRequest) -> AsyncIterator[BackendChunk]:
        body = self.prepare_body(request, stream=True)
        try:
            response = await self._post(_dumps(body), stream=True)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        try:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise self.http_error(response.status_code, text).with_retry(response.headers)
            events = 0
            finished = False
            other: list[bytes] = []  # what came instead of events, for the error message
            lines = sse.Lines()
            source = _body(response).__aiter__()
            ended = False
            while not ended:
                try:
                    batch = lines.feed(await source.__anext__())
                except StopAsyncIteration:
                    batch, ended = lines.flush(), True  # a last event without its line break
                for line in batch:
                    if not line.startswith(b"data:"):
                        if not events and len(other) < 8:
                            other.append(line)
                        continue  # comments, event names, blank separators
                    events += 1
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        if not ended:
                            await _drain(source)
                        return
                    chunk = self._chunk(payload)
                    if chunk is not None:
                        finished = finished or chunk.finish_reason is not None
                        yield chunk
            if not events:
                text = b"\n".join(other).decode(errors="replace")
                raise self.no_events_error(response, text)
            if not finished:
                # Neither [DONE] nor a finish_reason: the server or a proxy cut the answer
                # (a crash, a restart, an idle timeout), which is not a complete answer.
                raise BackendProtocolError(
                    self.name,
                    f"ended the stream before the answer was finished ({events} events, "
                    "no finish_reason, no [DONE])",
                )
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        except sse.LineTooLong as exc:
            raise BackendProtocolError(self.name, str(exc)) from None
        finally:
            await response.aclose()

    def _chunk(self, payload: bytes) -> BackendChunk | None:
        try:
            return parse_chunk(self.name, payload)
        except BackendHTTPError:
            # An in-stream error event: mapped like an error status, from its whole payload
            # (a plugin may read more than the shortened detail).
            raise self.http_error(500, payload.decode(errors="replace")) from None

    # --- errors --------------------------------------------------------------------------

    def transport_error(self, exc: httpx.HTTPError) -> BackendError:
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout(
                self.name, f"did not answer within {self.settings.timeout:g}s ({self._shown_url})"
            )
        kind = type(exc).__name__
        return BackendUnavailable(self.name, f"is unreachable at {self._shown_url} ({kind})")

    def no_events_error(self, response: httpx.Response, text: str) -> BackendProtocolError:
        """A streamed request answered without a single ``data:`` event (an HTML page, a JSON
        body, 204, garbage): as broken as a non-JSON answer to a plain request."""
        kind = response.headers.get("content-type") or "no content type"
        shown = excerpt(text, 200) or "(empty body)"
        return BackendProtocolError(
            self.name,
            f"answered a streamed request without any event (HTTP {response.status_code}, "
            f"{kind}): {shown}",
        )

    def http_error(self, status: int, text: str) -> BackendHTTPError:
        return BackendHTTPError(self.name, status, error_detail(text))

    async def _get_json(self, path: str, timeout: float) -> Any:
        """GET ``path`` within ``timeout`` seconds in all (not per read: a trickling answer
        must not stall discovery or /ready)."""
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.get(path, timeout=timeout)
        except TimeoutError:
            raise BackendTimeout(
                self.name, f"did not answer {path} within {timeout:g}s ({self._shown_url})"
            ) from None
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code >= 400:
            raise self.http_error(response.status_code, response.text).with_retry(response.headers)
        return backend_json(self.name, response.content, f"answered {path} with a body")


_JSON = {"Content-Type": "application/json"}
_JSON_CLOSE = {**_JSON, "Connection": "close"}

DRAIN_TIMEOUT = 1.0
"""Seconds to wait for the end of a stream's body after ``[DONE]``."""


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive: straight from the transport's stream, without
    httpx's per-read bookkeeping, unless a content encoding must be undone first."""
    encoding = response.headers.get("content-encoding")
    if encoding and encoding.strip().lower() != "identity":
        return response.aiter_bytes()
    return aiter(response.stream)  # type: ignore[arg-type]


def _env_proxies() -> bool:
    """Whether the environment names a proxy httpx would use (HTTP_PROXY and friends)."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


async def _drain(lines: AsyncIterator[bytes]) -> None:
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
    # Never fails (see forge_core/wire/jsonio.py); compact, so orjson writes it (100 kB of
    # history: ~30 us instead of ~900 us).
    return dumps_bytes(body, compact=True)


def error_detail(text: str, limit: int = 500) -> str:
    """The message inside a backend's error body (OpenAI or bare), scrubbed of secrets and
    then shortened (a gateway may echo forge's request headers in it)."""
    try:
        data = loads(text)  # strict and bounded: a hostile error body cannot crash forge
    except ValueError:
        return excerpt(text, limit) or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("error")
            if isinstance(msg, str):
                return excerpt(msg, limit)
        elif isinstance(err, str):
            return excerpt(err, limit)
    return excerpt(text, limit)


# --- parsing: the uniform error principle ----------------------------------------------------
# Malformed argument JSON is the model's mistake: kept as text for the guardrails.
# A broken envelope or arguments of an unexpected type are the backend's: BackendProtocolError.


def arguments_text(backend: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return backend_dumps(backend, value, "tool-call arguments")
    raise BackendProtocolError(
        backend, f"sent tool-call arguments of type {type(value).__name__}, expected a string"
    )


def content_text(backend: str, value: Any) -> str:
    """Message or delta content: a string, or a list of parts whose text parts are joined
    (parts of other kinds carry no text forge forwards)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for part in value:
            text = part.get("text") if isinstance(part, dict) else part
            if text is None:
                continue
            if not isinstance(text, str):
                kind = type(text).__name__
                raise BackendProtocolError(backend, f"sent a content part with text of type {kind}")
            texts.append(text)
        return "".join(texts)
    raise BackendProtocolError(backend, f"sent content of type {type(value).__name__}")


def parse_usage(data: Any, timings: Any = None) -> Usage | None:
    """Token counts when both are non-negative integers; anything else means none reported."""
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if not (_count(prompt) and _count(completion)):
        return None
    cached = cached_tokens(data, timings)
    return Usage(prompt, completion, None if cached is None else min(cached, prompt))


def cached_tokens(usage: dict[str, Any], timings: Any = None) -> int | None:
    """Prompt tokens served from the backend's prefix cache: OpenAI's
    ``prompt_tokens_details.cached_tokens`` (llama-server, vLLM with
    ``--enable-prompt-tokens-details``), else llama-server's ``timings.cache_n``; None when
    the backend reports neither."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if _count(cached):
        return int(cached)
    cache_n = timings.get("cache_n") if isinstance(timings, dict) else None
    return int(cache_n) if _count(cache_n) else None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finish(value: Any) -> str | None:
    """A finish reason is a string; another type is tolerated as none (it only labels)."""
    return value if isinstance(value, str) and value else None


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
    finish = _finish(choices[0].get("finish_reason")) or ("tool_calls" if calls else "stop")
    return AssistantTurn(
        content=content_text(backend, message.get("content")),
        tool_calls=calls,
        finish_reason=finish,
        usage=parse_usage(data.get("usage"), data.get("timings")),
        reasoning=reasoning if isinstance(reasoning, str) else "",
        stop_sequence=matched_stop(choices[0]),
    )


def matched_stop(choice: dict[str, Any]) -> str | None:
    """The stop string a choice ended on, where the server reports it (vLLM's ``stop_reason``
    is the matched string, or a token id, or null); llama-server does not report it."""
    value = choice.get("stop_reason")
    return value if isinstance(value, str) and value else None


def parse_chunk(backend: str, payload: bytes | str) -> BackendChunk | None:
    """One ``data:`` payload of a streamed completion to a BackendChunk (None if empty)."""
    data = backend_json(backend, payload, "streamed an event")
    if not isinstance(data, dict):
        raise BackendProtocolError(backend, "streamed an event that is not a JSON object")
    if "error" in data and "choices" not in data:
        text = payload if isinstance(payload, str) else payload.decode(errors="replace")
        raise BackendHTTPError(backend, 500, error_detail(text))
    chunk = BackendChunk(usage=parse_usage(data.get("usage"), data.get("timings")))
    choices = data.get("choices") or []
    if not isinstance(choices, list):
        raise BackendProtocolError(backend, "streamed choices that are not a list")
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise BackendProtocolError(backend, "streamed a choice that is not an object")
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            raise BackendProtocolError(backend, "streamed a choice without a delta")
        chunk.text = content_text(backend, delta.get("content"))
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str):
            chunk.reasoning = reasoning
        raw_calls = delta.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise BackendProtocolError(backend, "streamed tool_calls that are not a list")
        for position, raw in enumerate(raw_calls):
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
        chunk.finish_reason = _finish(choice.get("finish_reason"))
        if chunk.finish_reason:
            chunk.stop_sequence = matched_stop(choice)
    empty = not (chunk.text or chunk.reasoning or chunk.tool_calls)
    return None if empty and not (chunk.finish_reason or chunk.usage) else chunk
