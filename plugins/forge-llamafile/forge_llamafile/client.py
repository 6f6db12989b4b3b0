"""The llama-server / llamafile client: OpenAI wire, plus launch, /props and constraints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

from forge_core.backend import BackendSettings, BackendStatus, ModelIdentity
from forge_core.errors import BackendError, PluginError
from forge_core.managed import ManagedProcess, free_port
from forge_core.openai_client import OpenAIWireClient
from forge_llamafile import launch

log = logging.getLogger("forge.llamafile")

DEMO_ALIAS = "smollm2-135m-instruct"


def derive_identity(served_name: str) -> ModelIdentity:
    """llama-server serves one model, named by ``--alias`` or its path: key = file stem."""
    stem = Path(served_name).name
    if stem.endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return ModelIdentity(wire_name=served_name, key=stem or served_name)


class LlamafileClient(OpenAIWireClient):
    health_path = "/health"

    def __init__(
        self, settings: BackendSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if settings.capability == "prompt":
            raise PluginError(
                "--backend-capability prompt is declared by the llamafile plugin but not "
                "available in this version; use native (the default)"
            )
        self.process: ManagedProcess | None = None
        opts = settings.options
        if settings.backend_url:
            base_url = settings.backend_url
            model_name = settings.model
        else:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            model_path, template, model_name = self._resolve_model(settings, opts)
            argv = launch.server_argv(
                launch.find_server_binary(opts.get("server_bin")),
                model_path,
                port,
                template=template,
                num_ctx=opts.get("num_ctx"),
                extra_flags=opts.get("extra_flags") or "",
            )
            argv += ["--alias", model_name]
            self.process = ManagedProcess(
                "llama-server",
                argv,
                f"{base_url}/health",
                load_timeout=float(opts.get("load_timeout") or 180.0),
            )
        named = BackendSettings(
            backend_url=base_url,
            model=model_name,
            timeout=settings.timeout,
            capability=settings.capability,
            options=opts,
        )
        super().__init__(
            named,
            name="llamafile",
            base_url=base_url,
            derive_identity=derive_identity,
            transport=transport,
        )
        self.context_size: int | None = None

    @staticmethod
    def _resolve_model(
        settings: BackendSettings, opts: dict[str, Any]
    ) -> tuple[Path, Path | None, str]:
        template_opt = opts.get("chat_template_file")
        template = Path(template_opt) if template_opt else None
        if not settings.model:
            raise PluginError(
                "managed mode needs --model PATH.gguf (or --model demo); "
                "or pass --backend-url for a running server"
            )
        if settings.model == "demo":
            return launch.demo_model_path(), template or launch.bundled_template(), DEMO_ALIAS
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise PluginError(f"--model {settings.model}: no such GGUF file")
        return path, template, derive_identity(str(path)).key

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.process is not None:
            await self.process.start()
        await super().start()
        self.context_size = await self._read_context_size()

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            if self.process is not None:
                await self.process.stop()

    async def _read_context_size(self) -> int | None:
        try:
            props = await self._get_json("/props", timeout=5.0)
        except BackendError:
            return None
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = (settings or {}).get("n_ctx") or (props or {}).get("n_ctx")
        return n_ctx if isinstance(n_ctx, int) else None

    async def status(self) -> BackendStatus:
        try:
            response = await self._http.get(self.health_path, timeout=5.0)
        except httpx.HTTPError as exc:
            return BackendStatus(ready=False, detail=self.transport_error(exc).message)
        if response.status_code != 200:
            return BackendStatus(
                ready=False, detail=f"llama-server health answered HTTP {response.status_code}"
            )
        extra: dict[str, Any] = {}
        if self.process is not None:
            extra = {"managed_pid": self.process.pid, "restarts": self.process.restarts}
        return BackendStatus(
            ready=True,
            detail="ok",
            models=[m.wire_name for m in self.models()],
            context_size=self.context_size or await self._read_context_size(),
            extra=extra,
        )

    # --- guardrail support -------------------------------------------------------------------

    def constrain_retry(self, body: dict[str, Any], tool: dict[str, Any] | None) -> dict[str, Any]:
        """Constrain the retry with a JSON schema: ``{"name": ..., "arguments": {...}}``.

        llama-server refuses a custom grammar together with ``tools``, so the constrained retry
        sends no tools: the schema itself carries each tool's name and parameters, and the
        answer (a JSON object in the content) is turned into a call by the rescue parsers.
        """
        tools = [tool] if tool else list(body.get("tools") or [])
        variants = [_call_schema(t) for t in tools if isinstance(t, dict) and t.get("function")]
        if not variants:
            return body
        schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        out = {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": schema, "strict": True},
        }
        return out

    async def count_tokens(self, body: dict[str, Any]) -> int | None:
        """Exact: render with the server's own template, then tokenize."""
        try:
            rendered = await self._http.post(
                "/apply-template",
                json={"messages": body.get("messages", []), "tools": body.get("tools")},
                timeout=10.0,
            )
            prompt = rendered.json().get("prompt") if rendered.status_code == 200 else None
            if not isinstance(prompt, str):
                return None
            tokens = await self._http.post("/tokenize", json={"content": prompt}, timeout=10.0)
            data = tokens.json() if tokens.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return None
        found = data.get("tokens") if isinstance(data, dict) else None
        return len(found) if isinstance(found, list) else None


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    params = function.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
