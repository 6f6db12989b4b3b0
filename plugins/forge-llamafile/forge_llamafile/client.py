"""The llama-server / llamafile client: OpenAI wire, plus launch, budgets, /props, constraints
and the prompt capability (tools rendered into the prompt for models without a tool template).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

from forge_core import budget
from forge_core.backend import BackendRequest, BackendSettings, BackendStatus, ModelIdentity
from forge_core.errors import BackendError, BackendHTTPError, PluginError
from forge_core.guardrails.unparsed import UnparsedOutput
from forge_core.managed import ManagedProcess, free_port
from forge_core.openai_client import OpenAIWireClient
from forge_core.prompt_tools import to_prompt_body
from forge_core.wire import jsonio
from forge_llamafile import launch
from forge_llamafile.constrain import constrained_body
from forge_llamafile.unparsed import unparsed_text

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
    # llama-server serves nothing more on a connection after a streamed response although it
    # advertised keep-alive (``Keep-Alive: timeout=5, max=100``): its chunked content provider
    # returns ``false`` after ``sink.done()``, which cpp-httplib takes for a cancelled write,
    # so the keep-alive loop ends. No server option changes that (checked with the bundled
    # build and llama.cpp master); reusing the connection fails the next request with "Server
    # disconnected without sending a response". A new loopback connection costs far less than
    # that 502. Non-streamed requests keep their pooled connection.
    close_after_stream = True

    def __init__(
        self, settings: BackendSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        # The prompt capability: tools go into the system prompt, calls come back as text.
        self.tools_in_prompt = settings.capability == "prompt"
        self.process: ManagedProcess | None = None
        self.budget_mode = settings.budget_mode
        self.requested_ctx: int | None = None
        self.budget_note = ""
        opts = settings.options
        if settings.backend_url:
            if settings.budget_mode != "backend":
                raise PluginError(
                    f"--budget-mode {settings.budget_mode} needs managed mode: forge cannot "
                    "resize a running llama-server (drop --backend-url, or use --budget-mode "
                    "backend and start the server with -c N yourself)"
                )
            base_url = settings.backend_url
            model_name = settings.model
        else:
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            model_path, template, model_name = self._resolve_model(settings, opts)
            self.requested_ctx = self._plan_context(settings.budget_mode, model_path, opts)
            argv = launch.server_argv(
                launch.find_server_binary(opts.get("server_bin")),
                model_path,
                port,
                template=template,
                num_ctx=self.requested_ctx,
                extra_flags=opts.get("extra_flags") or "",
            )
            argv += ["--alias", model_name]
            # Restarts reuse this argv: same model, same -c, same flags.
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
            budget_mode=settings.budget_mode,
        )
        super().__init__(
            named,
            name="llamafile",
            base_url=base_url,
            derive_identity=derive_identity,
            transport=transport,
        )
        self.context_size: int | None = None
        self.n_ctx_train: int | None = None

    def _plan_context(self, mode: str, model: Path, opts: dict[str, Any]) -> int | None:
        """The ``-c`` to launch with: none (server default), ``--num-ctx``, or forge's pick."""
        if mode == "manual":
            num_ctx = opts.get("num_ctx")
            if not isinstance(num_ctx, int):
                raise PluginError("--budget-mode manual needs --num-ctx N")
            self.budget_note = f"requested -c {num_ctx}"
            return num_ctx
        if mode in ("forge-full", "forge-fast"):
            choice = budget.plan_context(mode, model)  # type: ignore[arg-type]
            self.budget_note = choice.explanation
            log.info("context budget: %s", choice.explanation)
            return choice.tokens
        return None

    @staticmethod
    def _resolve_model(
        settings: BackendSettings, opts: dict[str, Any]
    ) -> tuple[Path, Path | None, str]:
        template_opt = opts.get("chat_template_file")
        template = Path(template_opt) if template_opt else None
        if not settings.model:
            raise PluginError(
                "managed mode needs --model PATH.gguf (or an alias: "
                f"{', '.join(launch.MODEL_ALIASES)}); or pass --backend-url for a running server"
            )
        alias = launch.MODEL_ALIASES.get(settings.model)
        if alias is not None:
            bundled = launch.bundled_template(alias.template)
            return alias.path(), template or bundled, alias.served_name
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
        """The context in force: ``/props`` ``n_ctx`` (after any rounding by the server)."""
        try:
            props = await self._get_json("/props", timeout=5.0)
        except BackendError:
            return None
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = (settings or {}).get("n_ctx") or (props or {}).get("n_ctx")
        self.n_ctx_train = await self._read_n_ctx_train()
        return n_ctx if isinstance(n_ctx, int) else None

    async def _read_n_ctx_train(self) -> int | None:
        """The model's native context, from ``/v1/models`` ``meta`` (recent llama-server)."""
        try:
            data = await self._get_json(self.models_path, timeout=5.0)
        except BackendError:
            return None
        items = data.get("data") if isinstance(data, dict) else None
        for item in items if isinstance(items, list) else []:
            meta = item.get("meta") if isinstance(item, dict) else None
            if isinstance(meta, dict) and isinstance(meta.get("n_ctx_train"), int):
                return int(meta["n_ctx_train"])
        return None

    async def status(self) -> BackendStatus:
        try:
            response = await self._http.get(self.health_path, timeout=5.0)
        except httpx.HTTPError as exc:
            return BackendStatus(ready=False, detail=self.transport_error(exc).message)
        if response.status_code != 200:
            return BackendStatus(
                ready=False, detail=f"llama-server health answered HTTP {response.status_code}"
            )
        extra: dict[str, Any] = {"budget_mode": self.budget_mode}
        if self.requested_ctx is not None:
            extra["budget_requested"] = self.requested_ctx
        if self.budget_note:
            extra["budget_rule"] = self.budget_note
        if self.n_ctx_train is not None:
            extra["n_ctx_train"] = self.n_ctx_train
        if self.process is not None:
            extra.update(managed_pid=self.process.pid, restarts=self.process.restarts)
        return BackendStatus(
            ready=True,
            detail="ok",
            models=[m.wire_name for m in self.models()],
            context_size=self.context_size or await self._read_context_size(),
            extra=extra,
        )

    # --- requests ------------------------------------------------------------------------------

    def prepare_body(self, request: BackendRequest, *, stream: bool) -> dict[str, Any]:
        """The OpenAI body, rendered for the prompt capability when it is on."""
        body = super().prepare_body(request, stream=stream)
        return to_prompt_body(body) if self.tools_in_prompt else body

    def http_error(self, status: int, text: str) -> BackendHTTPError:
        """A failed parse of the model's output is handed to the guardrails with its text."""
        error = super().http_error(status, text)
        raw = unparsed_text(text) if status == 500 else None
        if raw is None:
            return error
        return UnparsedOutput(error.backend, status, error.detail, raw)

    # --- guardrail support -------------------------------------------------------------------

    def constrain_retry(self, body: dict[str, Any], tool: dict[str, Any] | None) -> dict[str, Any]:
        """Constrain the retry to one call, as ``--constrain-with`` says (default: a compact
        grammar, the tools described in the system message): see :mod:`.constrain`."""
        how = self.settings.options.get("constrain_with") or "grammar"
        return constrained_body(body, tool, how, self.tools_in_prompt)

    async def count_tokens(self, body: dict[str, Any]) -> int | None:
        """Exact: render with the server's own template, then tokenize."""
        if self.tools_in_prompt:
            body = to_prompt_body(body)
        try:
            rendered = await self._http.post(
                "/apply-template",
                content=jsonio.dumps_bytes(
                    {"messages": body.get("messages", []), "tools": body.get("tools")}
                ),
                headers=_JSON_HEADERS,
                timeout=10.0,
            )
            answer = jsonio.loads(rendered.content) if rendered.status_code == 200 else None
            prompt = answer.get("prompt") if isinstance(answer, dict) else None
            if not isinstance(prompt, str):
                return None
            tokens = await self._http.post(
                "/tokenize", content=jsonio.dumps_bytes({"content": prompt}),
                headers=_JSON_HEADERS, timeout=10.0,
            )
            data = jsonio.loads(tokens.content) if tokens.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):  # jsonio.JSONRejected is a ValueError
            return None
        found = data.get("tokens") if isinstance(data, dict) else None
        return len(found) if isinstance(found, list) else None


_JSON_HEADERS = {"content-type": "application/json"}
