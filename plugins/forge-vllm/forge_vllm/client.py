"""The vLLM client: the shared OpenAI-wire client plus vLLM's identity, launch and probes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import httpx

from forge_core.backend import BackendRequest, BackendSettings, BackendStatus
from forge_core.errors import BackendError, BackendProtocolError, PluginError
from forge_core.managed import ManagedProcess, free_port
from forge_core.openai_client import OpenAIWireClient
from forge_core.wire import jsonio
from forge_vllm import launch
from forge_vllm.identity import derive_identity
from forge_vllm.readiness import ToolSupport, interpret_probe, probe_body

log = logging.getLogger("forge.vllm")

PROBE_TIMEOUT = 15.0
DEFAULT_LOAD_TIMEOUT = 300.0
# llama.cpp's name for the field; vLLM silently ignores unknown fields, so translate it.
_RENAMED_FIELDS = {"repeat_penalty": "repetition_penalty"}


class VllmClient(OpenAIWireClient):
    """vLLM over OpenAI wire. External mode with ``backend_url``; managed mode without."""

    health_path = "/v1/models"

    def __init__(
        self, settings: BackendSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if settings.capability == "prompt":
            raise PluginError(
                "backend 'vllm' is native only; use the 'llamafile' plugin for prompt tools"
            )
        opts = settings.options
        self.process: ManagedProcess | None = None
        self.context_size: int | None = None
        self._tool_support: ToolSupport | None = None
        if settings.backend_url:
            base_url, model = settings.backend_url, settings.model
        else:
            base_url, model = self._managed(settings, opts)
        super().__init__(
            dataclasses.replace(settings, backend_url=base_url, model=model),
            name="vllm",
            base_url=base_url,
            derive_identity=derive_identity,
            transport=transport,
        )

    def _managed(self, settings: BackendSettings, opts: dict[str, Any]) -> tuple[str, str]:
        """Prepare (not start) the vLLM process; returns its URL and served model name."""
        model = settings.model
        if not model:
            raise PluginError(
                "managed vLLM needs --model PATH_OR_REPO; or pass --backend-url for a running "
                "vLLM server"
            )
        if model.startswith("~"):
            model = str(Path(model).expanduser())  # vLLM would take "~" literally
        if model.startswith(("/", ".")) and not Path(model).exists():
            raise PluginError(f"--model {model}: no such model directory")
        port = opts.get("vllm_port") or free_port()
        base_url = f"http://127.0.0.1:{port}"
        served = opts.get("served_model_name") or model
        parser = opts.get("tool_call_parser", "hermes")
        argv = launch.server_argv(
            launch.find_vllm(opts.get("vllm_python")),
            model,
            port,
            served_name=opts.get("served_model_name"),
            max_model_len=opts.get("max_model_len"),
            tool_parser=None if parser in (None, "", "none") else parser,
            chat_template=launch.resolve_template(opts.get("chat_template")),
            extra_flags=opts.get("extra_flags") or "",
        )
        self.process = ManagedProcess(
            "vllm",
            argv,
            f"{base_url}{self.health_path}",
            load_timeout=float(opts.get("load_timeout") or DEFAULT_LOAD_TIMEOUT),
            on_restart=self._forget_probe,
        )
        return base_url, served

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Launch (managed mode), adopt the served model names, probe tool calling."""
        if self.process is not None:
            await self.process.start()
        await self._discover()
        support = await self.tool_support()
        if support.ok is False:
            log.warning("%s", support.detail)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            if self.process is not None:
                await self.process.stop()

    async def _discover(self) -> None:
        """Adopt vLLM's served names (and context size) from ``/v1/models``.

        A configured ``--model`` matching a served name, or its derived key, is replaced by the
        served identity, so a client may say ``Qwen3-8B-AWQ`` for ``/models/Qwen3-8B-AWQ``.
        """
        try:
            cards = await self._model_cards()
        except BackendError as exc:
            log.warning("could not discover models at %s: %s", self.base_url, exc.reason)
            return
        served = [derive_identity(card["id"]) for card in cards]
        configured = list(self._identities)
        if not configured:
            self._identities = served
        else:
            wanted = configured[0]
            match = next(
                (s for s in served if wanted.wire_name in s.names or wanted.key == s.key), None
            )
            if match is None:
                log.warning(
                    "--model %s is not served by vLLM at %s (it serves: %s); vLLM will answer "
                    "404 to it",
                    wanted.wire_name,
                    self.base_url,
                    ", ".join(s.wire_name for s in served) or "nothing",
                )
            else:
                self._identities = [match]
        names = {i.wire_name for i in self._identities}
        for card in cards:
            if card["id"] in names and isinstance(card.get("max_model_len"), int):
                self.context_size = card["max_model_len"]
                break

    async def _model_cards(self) -> list[dict[str, Any]]:
        data = await self._get_json(self.models_path, timeout=5.0)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise BackendProtocolError(self.name, f"answered {self.models_path} without 'data'")
        return [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    # --- readiness -----------------------------------------------------------------------

    def _forget_probe(self) -> None:
        self._tool_support = None

    async def tool_support(self) -> ToolSupport:
        """Probe once whether vLLM accepts tools; a positive answer is kept until a restart."""
        if self._tool_support is not None and self._tool_support.ok:
            return self._tool_support
        identities = self.models()
        if not identities:
            return ToolSupport(ok=None, detail="no served model known yet to probe tool calling")
        body = json.dumps(probe_body(identities[0].wire_name)).encode()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):  # in all: a trickle must not stall start
                response = await self._http.post(
                    self.chat_path,
                    content=body,
                    headers={"Content-Type": "application/json"},
                    timeout=PROBE_TIMEOUT,
                )
        except TimeoutError:
            detail = f"tool-calling probe got no answer within {PROBE_TIMEOUT:g}s"
            return ToolSupport(ok=None, detail=detail)
        except httpx.HTTPError as exc:
            return ToolSupport(ok=None, detail=self.transport_error(exc).message)
        self._tool_support = interpret_probe(response.status_code, response.text)
        return self._tool_support

    async def status(self) -> BackendStatus:
        """Ready when vLLM serves and accepts tool calls; names missing tool flags if not."""
        try:
            cards = await self._model_cards()
        except BackendError as exc:
            return BackendStatus(ready=False, detail=exc.message)
        support = await self.tool_support()
        extra: dict[str, Any] = {"tool_calling": support.ok}
        if support.missing_flags:
            extra["missing_flags"] = list(support.missing_flags)
        if self.process is not None:
            extra.update(managed_pid=self.process.pid, restarts=self.process.restarts)
        return BackendStatus(
            ready=support.ok is not False,
            detail="ok" if support.ok else support.detail,
            models=[card["id"] for card in cards],
            context_size=self.context_size,
            extra=extra,
        )

    # --- requests ------------------------------------------------------------------------

    def prepare_body(self, request: BackendRequest, *, stream: bool) -> dict[str, Any]:
        body = super().prepare_body(request, stream=stream)
        for old, new in _RENAMED_FIELDS.items():
            if old in body:
                value = body.pop(old)
                body.setdefault(new, value)
        return body

    def constrain_retry(self, body: dict[str, Any], tool: dict[str, Any] | None) -> dict[str, Any]:
        """Force a valid call: ``tool_choice`` names the tool ("required" when None), strict.

        A forced ``tool_choice`` makes vLLM constrain the output to a call of that tool, but
        vLLM 0.32 pins the arguments to the tool's JSON schema only for tools marked
        ``"strict": true`` (its ``--tool-strict-level`` defaults to "auto"); recorded, the
        135M model otherwise wrote an object where the schema wants a string. So the targeted
        tool goes out strict, on a copy; the client's own objects are not modified.
        """
        out = dict(body)
        tools = list(out.get("tools") or [])
        if tool is None:
            out["tool_choice"] = "required"
            out["tools"] = [_strict(t) for t in tools]
            return out
        name = _tool_name(tool)
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
        if not any(_tool_name(t) == name for t in tools):
            tools.append(tool)  # vLLM rejects a named choice absent from tools
        out["tools"] = [_strict(t) if _tool_name(t) == name else t for t in tools]
        return out

    async def count_tokens(self, body: dict[str, Any]) -> int | None:
        """Exact prompt tokens from vLLM's ``/tokenize``, rendered with its chat template."""
        request: dict[str, Any] = {
            "model": body.get("model"),  # the wire name: the app mapped it
            "messages": body.get("messages") or [],
        }
        for key in ("tools", "chat_template_kwargs"):
            if body.get(key):
                request[key] = body[key]
        try:
            async with asyncio.timeout(10.0):  # else forge estimates
                response = await self._http.post(
                    "/tokenize", content=jsonio.dumps_bytes(request),
                    headers={"content-type": "application/json"}, timeout=10.0,
                )
            data = jsonio.loads(response.content) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, TimeoutError):  # JSONRejected is a ValueError
            return None
        count = data.get("count") if isinstance(data, dict) else None
        return count if isinstance(count, int) else None


def _tool_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _strict(tool: Any) -> Any:
    """A copy of an OpenAI function tool with ``strict: true``, unless it says false."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or function.get("strict") is False:
        return tool
    return {**tool, "function": {**function, "strict": True}}
