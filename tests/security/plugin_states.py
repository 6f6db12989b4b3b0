"""Shared pieces for the secrets / status / deadline / drain tests: forge in front of any
backend client, loopback fakes that echo or trickle, and log capture.

Each plugin is built through its own registered ``client_factory`` (what ``forge serve`` does),
so the tests cover every plugin's wire and error mapping, not only the shared client.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from forge_core.app import AppState
from forge_core.backend import BackendClient, BackendSettings, BackendSpec
from forge_core.cli import build_config, build_state, serve_command
from forge_core.config import ServeConfig
from forge_core.plugins import PluginHost

PLUGINS = ("openai", "llamafile", "vllm", "ollama", "anthropic")


def plugin_spec(name: str) -> tuple[PluginHost, BackendSpec]:
    host = PluginHost()
    host.load([name])
    return host, host.backends()[name]


def cli_args(**options: Any) -> list[str]:
    """``forge serve`` arguments from options given by parameter name (tuples repeat)."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        for one in value if isinstance(value, tuple) else (value,):
            args += [flag, str(one)]
    return args


def cli_config(plugin: str, **options: Any) -> tuple[PluginHost, BackendSpec, ServeConfig]:
    """What ``forge serve --plugin PLUGIN ...`` resolves, through its own click parsing."""
    plugin_names = {o.name for _, spec in map(plugin_spec, PLUGINS) for o in spec.cli_options}
    command = copy.copy(serve_command)
    command.params = [p for p in serve_command.params if p.name not in plugin_names]
    ctx = command.make_context("serve", ["--plugin", plugin, *cli_args(**options)])
    host, spec = ctx.meta["forge.host"], ctx.meta["forge.spec"]
    opts = dict(ctx.params)
    plugin_opts = {o.name: opts.pop(o.name) for o in spec.cli_options if o.name in opts}
    return host, spec, build_config(spec, opts, plugin_opts)


def cli_state(plugin: str, **options: Any) -> AppState:
    """The AppState ``forge serve --plugin PLUGIN`` builds, options given by parameter name."""
    host, spec, config = cli_config(plugin, **options)
    return build_state(host, spec, config)


# --- loopback fakes ------------------------------------------------------------------------------


class EchoBackend:
    """Answers every request with ``status`` and a body that echoes all request headers, the
    way a debugging gateway does (as JSON error message and as raw header lines)."""

    def __init__(self, status: int = 500) -> None:
        self.status = status
        self.seen: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self._any, methods=["GET", "POST"])])

    async def _any(self, request: Request) -> Response:
        await request.body()
        headers = dict(request.headers)
        self.seen.append(headers)
        lines = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        message = f"upstream rejected the request; it carried:\n{lines}"
        body = {"error": {"message": message, "headers": headers}, "echo": lines}
        return Response(json.dumps(body), status_code=self.status, media_type="application/json")


PROBE_ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}]}


class TrickleBackend:
    """A backend that answers 200 and then sends ``pieces`` one every ``every`` seconds,
    forever or for ``total`` seconds; ``head`` goes out first. Any path, any wire."""

    def __init__(
        self,
        piece: bytes,
        *,
        head: bytes = b"",
        every: float = 0.3,
        total: float = 60.0,
        media_type: str = "text/event-stream",
    ) -> None:
        self.piece, self.head, self.every, self.total = piece, head, every, total
        self.media_type = media_type
        self.requests = 0
        self.closed = 0
        self.app = Starlette(routes=[Route("/{path:path}", self._any, methods=["GET", "POST"])])

    async def _any(self, request: Request) -> Response:
        if request.method == "GET":  # discovery/readiness: a plain models list
            return Response(
                json.dumps({"object": "list", "data": [{"id": "m"}], "models": [{"name": "m"}]}),
                media_type="application/json",
            )
        raw = await request.body()
        with contextlib.suppress(ValueError):
            if json.loads(raw).get("max_tokens") == 1:  # vLLM's tool probe at start-up
                return Response(json.dumps(PROBE_ANSWER), media_type="application/json")
        self.requests += 1
        return StreamingResponse(self._body(), media_type=self.media_type)

    async def _body(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.total
        try:
            if self.head:
                yield self.head
            while loop.time() < end:
                await asyncio.sleep(self.every)
                yield self.piece
        finally:
            self.closed += 1


# --- logs ----------------------------------------------------------------------------------------


class LineCollector(logging.Handler):
    """Every log line as a handler would write it, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def all_logs() -> Iterator[LineCollector]:
    """Collect every record of every logger at DEBUG for the duration."""
    root = logging.getLogger()
    collector = LineCollector()
    old = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    quiet = [logging.getLogger(n) for n in ("asyncio",)]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        root.setLevel(old)
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def sse_frames(raw: bytes) -> list[str]:
    """The non-empty SSE frames of a stream, comments included."""
    return [f for f in raw.decode("utf-8", "replace").split("\n\n") if f.strip()]


async def guard(awaitable: Any, timeout: float = 20.0) -> Any:
    """A hang guard, not a speed check: a deadlock fails the test instead of hanging it."""
    async with asyncio.timeout(timeout):
        return await awaitable


Check = Callable[[str], None]


# --- any plugin's client over an httpx transport ----------------------------------------------


def plugin_client(plugin: str, settings: BackendSettings, transport: Any) -> BackendClient:
    """The plugin's own client class in external mode, talking to ``transport``."""
    if plugin == "anthropic":
        from forge_anthropic.client import AnthropicClient

        return AnthropicClient(settings, transport=transport, environ={})
    classes = {
        "openai": ("forge_openai.plugin", "GenericOpenAIClient"),
        "llamafile": ("forge_llamafile.client", "LlamafileClient"),
        "vllm": ("forge_vllm.client", "VllmClient"),
        "ollama": ("forge_ollama.client", "OllamaClient"),
    }
    module, name = classes[plugin]
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(settings, transport=transport)  # type: ignore[no-any-return]


def transport_state(plugin: str, transport: Any, **options: Any) -> AppState:
    """forge (the CLI's own wiring) in front of ``plugin``'s client over ``transport``.

    ``options`` are ``forge serve`` options by parameter name, except ``api_key``, which
    sets forge's own key directly.
    """
    api_key = options.pop("api_key", None)
    options.setdefault("backend_url", "http://backend.test")
    options.setdefault("model", "m")
    host, spec, config = cli_config(plugin, **options)
    config = dataclasses.replace(config, api_key=api_key)
    client = plugin_client(plugin, config.backend, transport)
    return build_state(host, spec, config, client=client)


def error_payload(plugin: str, message: str) -> dict[str, Any]:
    """An error body in the plugin's wire shape."""
    if plugin == "ollama":
        return {"error": message}
    if plugin == "anthropic":
        return {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    return {"error": {"message": message, "type": "server_error"}}


def chat_path(plugin: str) -> str:
    return {"ollama": "/api/chat", "anthropic": "/v1/messages"}.get(plugin, "/v1/chat/completions")


def models_answer(request: Any) -> Any:
    """What discovery GETs get from a mock backend: a list naming the model ``m``."""
    import httpx

    return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}],
                                     "models": [{"name": "m", "model": "m"}]})
