"""The Ollama backend client: native ``/api/chat`` over one shared ``httpx.AsyncClient``.

forge attaches to a running Ollama; it never starts the daemon. In managed mode (forge was
asked to run one model, ``--model NAME`` without ``--backend-url``) it unloads that model when
it stops, with Ollama's documented ``keep_alive: 0`` request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from forge_core import httpio
from forge_core.backend import (
    BackendClient,
    BackendRequest,
    BackendSettings,
    BackendStatus,
    ModelIdentity,
)
from forge_core.errors import (
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    ModelNotFound,
)
from forge_core.redact import display_url, register_url
from forge_core.turns import AssistantTurn, BackendChunk
from forge_core.wire.jsonio import backend_json, dumps_bytes, loads
from forge_ollama.ndjson import NDJSONDecoder
from forge_ollama.translate import (
    BACKEND,
    OllamaStreamNormalizer,
    dropped_fields,
    from_ollama_response,
    to_ollama_request,
)

log = logging.getLogger("forge.backends.ollama")

DEFAULT_URL = "http://127.0.0.1:11434"
PROBE_TIMEOUT = 5.0
_JSON = {"content-type": "application/json"}  # bodies go out through forge's safe serializer
"""Seconds allowed for discovery calls (tags, ps, show, unload): they must never stall start-up."""

_LATEST = ":latest"


def ollama_identity(served_name: str) -> ModelIdentity:
    """Ollama's name is the wire name; ``name:latest`` is also accepted as plain ``name``."""
    key = served_name[: -len(_LATEST)] if served_name.endswith(_LATEST) else served_name
    return ModelIdentity(wire_name=served_name, key=key or served_name)


def _is_default_daemon(url: str | None) -> bool:
    """True for the local daemon's default address, which the CLI fills in when no
    --backend-url is given: forge then counts as managing the model it was told to use."""
    if url is None:
        return True
    parsed = httpx.URL(url)
    return parsed.host in ("127.0.0.1", "localhost", "::1") and parsed.port == 11434


def _display_url(url: str) -> str:
    """The URL without user info or query, safe for logs and error messages."""
    return display_url(url)


def _error_detail(response: httpx.Response) -> str:
    """Ollama's ``{"error": "..."}`` message, else a bounded excerpt; never empty."""
    try:
        data = loads(response.content)
    except ValueError:
        data = None
    if isinstance(data, Mapping) and isinstance(data.get("error"), str) and data["error"]:
        return str(data["error"])
    text = response.text.strip()  # scrubbed, then shortened, by BackendHTTPError
    return text if text else f"HTTP {response.status_code} with an empty body"


def _is_json_error(response: httpx.Response) -> bool:
    try:
        data = loads(response.content)
    except ValueError:
        return False
    return isinstance(data, Mapping) and "error" in data


class OllamaClient(BackendClient):
    """Speaks Ollama's native API; see the package README for what is translated.

    ``settings.options`` may hold ``num_ctx`` (sent as ``options.num_ctx`` on every request),
    ``unload_on_exit`` (None: on in managed mode) and ``managed`` (overrides the managed-mode
    guess: a ``--model`` on the local daemon's default address). ``transport`` exists for tests
    (``httpx.MockTransport``).
    """

    name = BACKEND

    def __init__(
        self, settings: BackendSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._base_url = (settings.backend_url or DEFAULT_URL).rstrip("/")
        options = settings.options
        num_ctx = options.get("num_ctx")
        self._num_ctx: int | None = num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else None
        managed = options.get("managed")
        if managed is None:
            managed = settings.model is not None and _is_default_daemon(settings.backend_url)
        unload = options.get("unload_on_exit")
        self._unload_on_exit = bool(managed) if unload is None else bool(unload)
        self._model: str | None = settings.model  # the managed model, resolved in start()
        self._installed: list[str] = []
        self._identities: list[ModelIdentity] = (
            [ollama_identity(settings.model)] if settings.model else []
        )
        self._reported_drops: set[str] = set()
        register_url(self._base_url)  # a password in the URL is scrubbed from all output
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            # httpx's default limits, on forge's network backend (forge_core/httpio.py)
            transport=transport
            or httpio.transport(httpx.Limits(max_connections=100, max_keepalive_connections=20)),
        )

    # --- BackendClient ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return _display_url(self._base_url)

    def models(self) -> Sequence[ModelIdentity]:
        return list(self._identities)

    async def start(self) -> None:
        """List installed models (short timeout); log a reason instead of failing when down."""
        try:
            installed = await self._fetch_tags()
        except BackendError as exc:
            log.warning("Ollama: cannot list models at %s: %s", self.base_url, exc.reason)
            return
        self._installed = installed
        if self._settings.model is None:
            self._identities = [ollama_identity(name) for name in installed]
            return
        resolved = self._match_installed(self._settings.model)
        if resolved is None:
            log.warning(
                "Ollama: model '%s' is not installed (installed: %s); run `ollama pull %s`",
                self._settings.model,
                ", ".join(installed) or "none",
                self._settings.model,
            )
            return
        self._model = resolved
        self._identities = [ollama_identity(resolved)]

    async def aclose(self) -> None:
        """Unload the managed model if asked to (never starts anything), then close HTTP."""
        try:
            if self._unload_on_exit and self._model:
                await self._unload(self._model)
        finally:
            await self._http.aclose()

    async def complete(self, request: BackendRequest) -> AssistantTurn:
        payload = self._payload(request, stream=False)
        with self._transport_errors():
            response = await self._http.post(
                "/api/chat", content=dumps_bytes(payload), headers=_JSON
            )
        if response.status_code != 200:
            await self._raise_for_status(response, payload["model"])
        data = backend_json(BACKEND, response.content, "sent a chat response")
        return from_ollama_response(data)

    async def stream(self, request: BackendRequest) -> AsyncIterator[BackendChunk]:
        payload = self._payload(request, stream=True)
        decoder = NDJSONDecoder(BACKEND)
        normalizer = OllamaStreamNormalizer()
        # Leaving this block (including the consumer closing the generator) closes the
        # response, which is how Ollama learns to stop generating for a gone client.
        with self._transport_errors():
            async with self._http.stream(
                "POST", "/api/chat", content=dumps_bytes(payload), headers=_JSON
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    await self._raise_for_status(response, payload["model"])
                async for data in response.aiter_bytes():
                    for obj in decoder.feed(data):
                        chunk = normalizer.feed(obj)
                        if chunk is not None:
                            yield chunk
                for obj in decoder.close():
                    chunk = normalizer.feed(obj)
                    if chunk is not None:
                        yield chunk
        if not normalizer.done:
            raise BackendProtocolError(BACKEND, "closed the stream before its final `done` line")

    async def status(self) -> BackendStatus:
        """Installed models, loaded models and, when known, the context size."""
        try:
            installed = await self._fetch_tags()
        except BackendError as exc:
            return BackendStatus(ready=False, detail=exc.message)
        self._installed = installed
        model = self._status_model(installed)
        ready = True
        detail = f"Ollama at {self.base_url}: {len(installed)} model(s) installed"
        if self._settings.model and self._match_installed(self._settings.model) is None:
            ready = False
            detail = (
                f"model '{self._settings.model}' is not installed in Ollama at {self.base_url}; "
                f"run `ollama pull {self._settings.model}`"
            )
        loaded = await self._loaded_models()
        extra: dict[str, Any] = {"loaded": sorted(loaded)}
        context_size: int | None = None
        if self._num_ctx is not None:
            context_size, extra["context_source"] = self._num_ctx, "num_ctx"
        elif model is not None and _positive_int(loaded.get(model, {}).get("context_length")):
            context_size, extra["context_source"] = loaded[model]["context_length"], "ps"
        if model is not None:
            show = await self._show(model)
            capabilities = show.get("capabilities")
            if isinstance(capabilities, list):
                extra["capabilities"] = capabilities
                if "tools" not in capabilities:
                    detail += f"; model '{model}' does not declare tool support"
            trained = _trained_context(show)
            if trained is not None:
                extra["model_context_length"] = trained
                if context_size is None:
                    # Only the model's maximum: Ollama allocates its default num_ctx unless told.
                    context_size, extra["context_source"] = trained, "model_info"
                    detail += "; context is the model's maximum, set --num-ctx to be sure"
        return BackendStatus(
            ready=ready, detail=detail, models=installed, context_size=context_size, extra=extra
        )

    def constrain_retry(self, body: dict[str, Any], tool: dict[str, Any] | None) -> dict[str, Any]:
        """Force the retry's output to be a JSON tool call, using Ollama's ``format``.

        Ollama cannot force a native tool call, so the retry's ``format`` (sent as a
        ``response_format`` json_schema, which :func:`to_ollama_request` maps to ``format``) is
        ``{"type": "object", "properties": {"name": {"const": NAME}, "arguments": PARAMETERS},
        "required": ["name", "arguments"]}`` — an ``anyOf`` of those when ``tool`` is None. The
        model then writes exactly ``{"name": ..., "arguments": {...}}``: Ollama's own tool parser
        may turn it into a native call, and if it does not, forge's rescue parsers recognise that
        bare JSON object in the content as the call. Tools stay in the request so the model
        still sees their descriptions.
        """
        candidates = [tool] if tool is not None else list(body.get("tools") or [])
        schemas = [s for s in (_call_schema(t) for t in candidates) if s is not None]
        if not schemas:
            return body
        schema = schemas[0] if len(schemas) == 1 else {"type": "object", "anyOf": schemas}
        constrained = dict(body)
        constrained["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": schema},
        }
        return constrained

    # --- helpers ----------------------------------------------------------------------------

    def _payload(self, request: BackendRequest, *, stream: bool) -> dict[str, Any]:
        body = request.body
        for field, reason in dropped_fields(body).items():
            if field not in self._reported_drops:
                self._reported_drops.add(field)
                log.debug("Ollama: not sending request field %r: %s", field, reason)
        return to_ollama_request(
            body, wire_model=self._wire_model(body), num_ctx=self._num_ctx, stream=stream
        )

    def _wire_model(self, body: Mapping[str, Any]) -> str:
        requested = body.get("model")  # the wire name when the app knew the model
        if isinstance(requested, str) and requested:
            return self._match_installed(requested) or requested
        if self._model:
            return self._model
        raise InvalidRequest("The request names no model and forge has no default", "model")

    def _match_installed(self, name: str) -> str | None:
        """The installed name for ``name``, which may omit the ``:latest`` tag."""
        for candidate in (name, name + _LATEST):
            if candidate in self._installed:
                return candidate
        return None

    def _status_model(self, installed: list[str]) -> str | None:
        if self._settings.model:
            return self._match_installed(self._settings.model) or self._settings.model
        return installed[0] if len(installed) == 1 else None

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """Map httpx failures to forge's backend errors (never leak raw httpx exceptions)."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                BACKEND, f"did not answer within {self._settings.timeout:g}s (--backend-timeout)"
            ) from exc
        except httpx.ConnectError as exc:
            raise BackendUnavailable(
                BACKEND, f"is not reachable at {self.base_url} ({exc}); is `ollama serve` running?"
            ) from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                BACKEND, f"connection to {self.base_url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _raise_for_status(self, response: httpx.Response, model: str) -> None:
        status = response.status_code
        detail = _error_detail(response)
        if status == 404 and not _is_json_error(response):
            # gin's plain "404 page not found": the URL is not an Ollama API.
            raise BackendProtocolError(
                BACKEND, f"answered 404 for /api/chat ({detail}); is {self.base_url} Ollama?"
            )
        if status == 404 and "not found" in detail:
            raise ModelNotFound(model, await self._refresh_installed())
        if status == 400 and "does not support tools" in detail:
            raise InvalidRequest(
                f"Model '{model}' does not support tools in Ollama (Ollama said: {detail}). "
                "Use a tools-capable model (such as qwen3 or llama3.1), or the llamafile "
                "backend with --backend-capability prompt for this model.",
                param="tools",
            )
        raise BackendHTTPError(BACKEND, status, detail).with_retry(response.headers)

    async def _get_json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            # In all, not per read: a trickling answer must not stall start-up or /ready.
            async with asyncio.timeout(PROBE_TIMEOUT):
                with self._transport_errors():
                    response = await self._http.request(
                        method, path, timeout=PROBE_TIMEOUT, **kwargs
                    )
        except TimeoutError:
            raise BackendTimeout(
                BACKEND, f"did not answer {path} within {PROBE_TIMEOUT:g}s"
            ) from None
        if response.status_code != 200:
            raise BackendHTTPError(
                BACKEND, response.status_code, _error_detail(response)
            ).with_retry(response.headers)
        return backend_json(BACKEND, response.content, f"answered {path} with a body")

    async def _fetch_tags(self) -> list[str]:
        data = await self._get_json("GET", "/api/tags")
        models = data.get("models") if isinstance(data, Mapping) else None
        if not isinstance(models, list):
            raise BackendProtocolError(BACKEND, "answered /api/tags without a `models` list")
        names: list[str] = []
        for entry in models:
            name = (entry.get("name") or entry.get("model")) if isinstance(entry, Mapping) else None
            if isinstance(name, str) and name:
                names.append(name)
        return names

    async def _refresh_installed(self) -> list[str]:
        """Fresh names for an error message (the user may have pulled since start-up)."""
        with contextlib.suppress(BackendError):
            self._installed = await self._fetch_tags()
        return list(self._installed)

    async def _loaded_models(self) -> dict[str, Mapping[str, Any]]:
        try:
            data = await self._get_json("GET", "/api/ps")
        except BackendError as exc:
            log.debug("Ollama: /api/ps unavailable: %s", exc.reason)
            return {}
        models = data.get("models") if isinstance(data, Mapping) else None
        loaded: dict[str, Mapping[str, Any]] = {}
        for entry in models if isinstance(models, list) else []:
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                loaded[entry["name"]] = entry
        return loaded

    async def _show(self, model: str) -> Mapping[str, Any]:
        try:
            data = await self._get_json("POST", "/api/show", json={"model": model})
        except BackendError as exc:
            log.debug("Ollama: /api/show for %s failed: %s", model, exc.reason)
            return {}
        return data if isinstance(data, Mapping) else {}

    async def _unload(self, model: str) -> None:
        try:
            await self._get_json(
                "POST", "/api/chat", json={"model": model, "messages": [], "keep_alive": 0}
            )
        except BackendError as exc:
            log.warning("Ollama: could not unload model '%s': %s", model, exc.reason)
        else:
            log.info("Ollama: unloaded model '%s'", model)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _trained_context(show: Mapping[str, Any]) -> int | None:
    """``<architecture>.context_length`` from /api/show's model_info (else any such key)."""
    info = show.get("model_info")
    if not isinstance(info, Mapping):
        return None
    architecture = info.get("general.architecture")
    preferred = info.get(f"{architecture}.context_length")
    if _positive_int(preferred):
        return int(preferred)
    for key, value in info.items():
        if isinstance(key, str) and key.endswith(".context_length") and _positive_int(value):
            return int(value)
    return None


def _call_schema(tool: Any) -> dict[str, Any] | None:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
        return None
    parameters = function.get("parameters")
    if not isinstance(parameters, Mapping):
        parameters = {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": dict(parameters)},
        "required": ["name", "arguments"],
    }
