"""The Anthropic backend client: forge's BackendClient over ``POST /v1/messages``.

An Anthropic client's clean first attempt is forwarded verbatim (``cache_control``, server
tools, thinking settings and all), with only ``model`` and ``stream`` set by forge. Everything
else (OpenAI clients, retries rebuilt by the guardrails) is translated from the OpenAI body.

The API key is read from an environment variable named by ``--anthropic-api-key-env`` and sent
as ``x-api-key``; it is never put in a message, and error details are scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from forge_anthropic.decode import BACKEND, StreamDecoder, error_detail, turn_from_message
from forge_anthropic.encode import from_openai_request
from forge_anthropic.sse import iter_sse
from forge_core.backend import (
    BackendClient,
    BackendRequest,
    BackendSettings,
    BackendStatus,
    ModelIdentity,
    identity_as_is,
)
from forge_core.errors import (
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ForgeError,
)
from forge_core.redact import display_url, register, register_url
from forge_core.turns import AssistantTurn, BackendChunk
from forge_core.wire.jsonio import backend_json, dumps_bytes, loads

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://api.anthropic.com"
DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
STATUS_TIMEOUT = 5.0

# Fields /v1/messages/count_tokens accepts; it rejects generation settings such as max_tokens.
_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def normalize_base_url(url: str) -> str:
    """``https://host/v1/`` -> ``https://host``: forge appends the ``/v1/...`` paths itself."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def is_anthropic_api(url: str) -> bool:
    """True for Anthropic's own API (``api.anthropic.com`` or another ``*.anthropic.com``
    host); False for any other server that speaks the Messages API."""
    host = (httpx.URL(url).host or "").lower().rstrip(".")
    return host == "anthropic.com" or host.endswith(".anthropic.com")


class AnthropicClient(BackendClient):
    """One shared ``httpx.AsyncClient`` for every request of the process."""

    name = BACKEND

    def __init__(
        self,
        settings: BackendSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        options = settings.options
        self._settings = settings
        self._base_url = normalize_base_url(settings.backend_url or DEFAULT_URL)
        if is_anthropic_api(self._base_url):
            # Anthropic's own API reads Claude Code's billing header: forward it untouched.
            self.declined_transforms = frozenset({"strip-billing-header"})
        self._key_env = str(options.get("anthropic_api_key_env") or DEFAULT_KEY_ENV)
        self._api_key = (os.environ if environ is None else environ).get(self._key_env, "")
        self._default_max_tokens = int(options.get("anthropic_max_tokens") or DEFAULT_MAX_TOKENS)
        headers = {
            "anthropic-version": str(options.get("anthropic_version") or ANTHROPIC_VERSION),
            "content-type": "application/json",
        }
        if self._api_key:
            headers["x-api-key"] = self._api_key
        # The key and any URL userinfo are scrubbed from everything forge emits.
        register(self._api_key)
        register_url(self._base_url)
        self._shown_url = display_url(self._base_url)
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers,
            timeout=httpx.Timeout(settings.timeout),
            transport=transport,
        )

    # -- lifecycle and identity --

    @property
    def base_url(self) -> str:
        return self._shown_url

    async def start(self) -> None:
        """No network I/O: warn about what would make every request fail."""
        if not self._api_key:
            logger.warning(
                "environment variable %s is not set: requests go to %s without an API key",
                self._key_env,
                self._shown_url,
            )
        if not self._settings.model:
            logger.warning("no --model given: the Anthropic backend needs a model name")

    async def aclose(self) -> None:
        await self._http.aclose()

    def models(self) -> Sequence[ModelIdentity]:
        model = self._settings.model
        return [identity_as_is(model)] if model else []

    # -- requests --

    def build_body(self, request: BackendRequest, *, stream: bool) -> dict[str, Any]:
        """The Anthropic body to send: the client's original when verbatim, else translated."""
        model = request.body.get("model") or self._settings.model or ""
        if request.client_protocol == "anthropic" and request.verbatim and request.original:
            body = dict(request.original)
        else:
            body = from_openai_request(request.body, default_max_tokens=self._default_max_tokens)
        body["model"] = model
        body["stream"] = stream
        return body

    async def complete(self, request: BackendRequest) -> AssistantTurn:
        body = self.build_body(request, stream=False)
        try:
            response = await self._http.post("/v1/messages", content=dumps_bytes(body))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content, response.headers)
        return turn_from_message(backend_json(BACKEND, response.content))

    async def stream(self, request: BackendRequest) -> AsyncIterator[BackendChunk]:
        body = self.build_body(request, stream=True)
        decoder = StreamDecoder()
        headers = {"accept": "text/event-stream"}
        try:
            async with self._http.stream(
                "POST", "/v1/messages", content=dumps_bytes(body), headers=headers
            ) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise self._status_error(response.status_code, raw, response.headers)
                async for event in iter_sse(response.aiter_lines()):
                    for chunk in decoder.feed(event.event, event.data):
                        yield chunk
                    if decoder.finished:
                        break
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if not decoder.finished:
            raise BackendProtocolError(BACKEND, "ended the stream before message_stop")

    async def status(self) -> BackendStatus:
        """``GET /v1/models`` with a short timeout; a reason instead of an exception."""
        try:
            async with asyncio.timeout(STATUS_TIMEOUT):  # in all, not per read
                response = await self._http.get("/v1/models", timeout=STATUS_TIMEOUT)
        except TimeoutError:
            detail = f"did not answer /v1/models within {STATUS_TIMEOUT:g}s"
            return BackendStatus(ready=False, detail=f"Backend '{BACKEND}' {detail}")
        except httpx.HTTPError as exc:
            return BackendStatus(ready=False, detail=self._transport_error(exc).message)
        if response.status_code != 200:
            detail = self._status_error(response.status_code, response.content).message
            if response.status_code == 401 and not self._api_key:
                detail += f" (environment variable {self._key_env} is not set)"
            return BackendStatus(ready=False, detail=detail)
        try:
            listed = loads(response.content).get("data") or []
        except (ValueError, AttributeError):
            listed = []
        models = [m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
        return BackendStatus(ready=True, detail="ok", models=models)

    async def count_tokens(self, body: dict[str, Any]) -> int | None:
        """Anthropic's own ``/v1/messages/count_tokens`` for the translated body, else None."""
        translated = from_openai_request(body, default_max_tokens=self._default_max_tokens)
        translated["model"] = body.get("model") or self._settings.model or ""
        payload = {key: translated[key] for key in _COUNT_FIELDS if key in translated}
        try:
            async with asyncio.timeout(STATUS_TIMEOUT * 2):  # else forge estimates
                response = await self._http.post(
                    "/v1/messages/count_tokens", content=dumps_bytes(payload)
                )
            ok = response.status_code == 200
            count = loads(response.content).get("input_tokens") if ok else None
        except (httpx.HTTPError, ValueError, AttributeError, TimeoutError):
            return None
        return count if isinstance(count, int) else None

    # -- errors --

    def _transport_error(self, exc: httpx.HTTPError) -> ForgeError:
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout(
                BACKEND, f"did not answer within {self._settings.timeout:g}s ({self._shown_url})"
            )
        reason = str(exc) or type(exc).__name__  # scrubbed, like every message
        return BackendUnavailable(BACKEND, f"is unreachable at {self._shown_url}: {reason}")

    def _status_error(
        self, status: int, raw: bytes, headers: Mapping[str, str] | None = None
    ) -> BackendHTTPError:
        """The error for a status: 429 and 529/503 keep their Retry-After; the detail is
        scrubbed of secrets before it is shortened (see :class:`BackendHTTPError`)."""
        try:
            detail = error_detail(loads(raw))
        except ValueError:
            detail = None
        if detail is None:
            detail = raw.decode("utf-8", "replace") or "(empty body)"
        return BackendHTTPError(BACKEND, status, detail).with_retry(headers or {})
