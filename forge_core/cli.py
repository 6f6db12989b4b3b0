"""The ``forge`` command: ``forge serve`` runs the proxy, ``forge plugins`` lists backends."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
from typing import Any

import click

from forge_core import __version__
from forge_core.backend import BackendSettings, BackendSpec
from forge_core.budget import BUDGET_MODES
from forge_core.config import DEFAULT_MAX_BODY, GuardrailSettings, ServeConfig
from forge_core.errors import ForgeError, PluginError
from forge_core.plugins import PluginHost, install_hint, installed_plugins

log = logging.getLogger("forge")


def _positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def _choose_plugin(requested: str | None) -> str:
    installed = installed_plugins()
    if requested:
        return requested
    if not installed:
        raise PluginError(
            "no backend plugin is installed. Install one, for example: "
            f"{install_hint('llamafile')}"
        )
    if len(installed) == 1:
        return next(iter(installed))
    names = ", ".join(sorted(installed))
    raise PluginError(f"several backend plugins are installed ({names}); choose one with --plugin")


class ServeCommand(click.Command):
    """``serve`` whose options grow with the chosen plugin's own, for parsing and --help."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        name = _peek_option(args, "--plugin")
        if "--help" in args and name is None:
            return super().parse_args(ctx, args)
        try:
            plugin = _choose_plugin(name)
            host = PluginHost()
            host.load([plugin])
            spec = host.backends().get(plugin)
            if spec is None:
                raise PluginError(f"plugin '{plugin}' loaded but registered no backend '{plugin}'")
        except ForgeError as exc:
            _fail(exc.message)
        ctx.meta["forge.host"] = host
        ctx.meta["forge.spec"] = spec
        known = {p.name for p in self.params}
        self.params = [*self.params, *(o for o in spec.cli_options if o.name not in known)]
        return super().parse_args(ctx, args)


def _peek_option(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _fail(message: str) -> None:
    click.echo(f"forge: error: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="forge")
def main() -> None:
    """forge: reliable tool calling in front of self-hosted LLM servers."""


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List installed backend plugins, their versions and declared capabilities."""
    installed = installed_plugins()
    host = PluginHost()
    host.load()
    try:
        specs = host.backends()
    except ForgeError as exc:
        _fail(exc.message)
    rows: list[dict[str, Any]] = []
    for name, info in sorted(installed.items()):
        spec = specs.get(name)
        rows.append(
            {
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "description": spec.description if spec else None,
                "capabilities": spec.capabilities.model_dump() if spec else None,
                "error": host.failures.get(name),
            }
        )
    parsers = [{"name": p.name, "order": p.order} for p in host.rescue_parsers()]
    transforms = [{"name": t.name, "order": t.order} for t in host.transforms()]
    if as_json:
        out = {"plugins": rows, "rescue_parsers": parsers, "request_transforms": transforms}
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo(
            "No backend plugin is installed. forge needs one to serve; for example:\n"
            f"  {install_hint('llamafile')}   (llama.cpp llama-server / llamafile)\n"
            f"  {install_hint('vllm')}\n  {install_hint('ollama')}"
        )
        return
    for row in rows:
        if row["error"]:
            click.echo(f"{row['name']:<10} {row['distribution']} {row['version']}  "
                       f"FAILED TO LOAD: {row['error']}")
            continue
        caps = row["capabilities"] or {}
        flags = ", ".join(k for k, v in caps.items() if v) or "none"
        click.echo(f"{row['name']:<10} {row['distribution']} {row['version']}  [{flags}]")
        if row["description"]:
            click.echo(f"{'':<10} {row['description']}")
    click.echo("rescue parsers (in order): " + ", ".join(p["name"] for p in parsers))
    if transforms:
        click.echo("request transforms (in order): " + ", ".join(t["name"] for t in transforms))


@main.command("serve", cls=ServeCommand)
@click.option("--plugin", help="Backend plugin to load (only this one is imported).")
@click.option("--backend-url", help="URL of a running backend (external mode).")
@click.option("--model", help="Model to serve: a name, a path, or 'demo' where the plugin has one.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=int)
@click.option(
    "--backend-timeout", default=300.0, show_default=True, type=float, callback=_positive,
    help="Seconds to wait for the backend's answer.",
)
@click.option(
    "--backend-capability", type=click.Choice(["native", "prompt"]), default="native",
    show_default=True, help="The backend's tool protocol, declared once and frozen.",
)
@click.option("--max-retries", default=3, show_default=True, type=click.IntRange(0, 20))
@click.option("--no-rescue", is_flag=True, help="Do not rescue tool calls printed as text.")
@click.option(
    "--no-constrained-retry", is_flag=True,
    help="Retry with corrective messages only, even when the backend can constrain its output.",
)
@click.option(
    "--inject-respond-tool", is_flag=True,
    help="Offer the model a respond(message) tool for prose answers (hidden from clients).",
)
@click.option(
    "--keepalive-interval", default=5.0, show_default=True, type=float, callback=_positive,
    help="Seconds between keep-alives while a tool call is held for validation.",
)
@click.option("--max-body-bytes", default=DEFAULT_MAX_BODY, show_default=True, type=int)
@click.option(
    "--serialize/--no-serialize", default=None,
    help="One backend request at a time (default: on when forge manages the backend).",
)
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(0))
@click.option(
    "--budget-mode", type=click.Choice(list(BUDGET_MODES)), default=None,
    help="Context budget: the backend's own (default), manual (--num-ctx N, the default when "
    "--num-ctx is given), or picked by forge from the model and free memory (forge-full: the "
    "largest that fits; forge-fast: a smaller, quicker one).",
)
@click.option(
    "--drain-timeout", default=10.0, show_default=True, type=float, callback=_positive,
    help="On SIGINT/SIGTERM, seconds in-flight requests may take to finish before they are "
    "cancelled and the backend is stopped.",
)
@click.option(
    "--stream-start-grace", default=20.0, show_default=True, type=float, callback=_positive,
    help="Seconds a stream waits for the backend before starting with keep-alives "
    "(earlier failures get a real HTTP status).",
)
@click.option(
    "--any-model", is_flag=True,
    help="Answer every model name with the served model (for Claude Code and similar).",
)
@click.option(
    "--api-key-env", default="FORGE_API_KEY", show_default=True,
    help="Environment variable holding forge's own API key (unset: no auth).",
)
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def serve_command(ctx: click.Context, **opts: Any) -> None:
    """Run the proxy in front of one backend."""
    logging.basicConfig(
        level=opts["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per backend call is noise
    host: PluginHost = ctx.meta["forge.host"]
    spec: BackendSpec = ctx.meta["forge.spec"]
    plugin_opts = {o.name: opts.pop(o.name) for o in spec.cli_options if o.name in opts}
    try:
        config = build_config(spec, opts, plugin_opts)
        app_state = build_state(host, spec, config)
    except ForgeError as exc:
        _fail(exc.message)
    except click.UsageError as exc:
        _fail(exc.format_message())
    run(app_state, drain_timeout=opts["drain_timeout"])


def resolve_budget_mode(spec: BackendSpec, requested: str | None, num_ctx: Any) -> str:
    """The budget mode in force; one clear sentence when the combination makes no sense."""
    has_num_ctx = any(o.name == "num_ctx" for o in spec.cli_options)
    mode = requested or ("manual" if num_ctx is not None else "backend")
    if mode not in spec.budget_modes:
        allowed = ", ".join(spec.budget_modes)
        raise PluginError(
            f"backend '{spec.name}' does not support --budget-mode {mode} (it supports: {allowed})"
        )
    if mode == "manual" and not has_num_ctx:
        raise PluginError(f"--budget-mode manual needs --num-ctx, which '{spec.name}' lacks")
    if mode == "manual" and num_ctx is None:
        raise PluginError("--budget-mode manual needs --num-ctx N")
    if mode != "manual" and num_ctx is not None:
        raise PluginError(
            f"--num-ctx sets the budget by hand: use it with --budget-mode manual (or without "
            f"--budget-mode), not with --budget-mode {mode}"
        )
    return mode


def build_config(
    spec: BackendSpec, opts: dict[str, Any], plugin_opts: dict[str, Any]
) -> ServeConfig:
    """Validate option combinations; raise PluginError with one clear sentence."""
    capability = opts["backend_capability"]
    if capability == "prompt" and not spec.capabilities.prompt_tools:
        other = f" Use the '{spec.prompt_alternative}' plugin for a backend without native tool" \
            " calling." if spec.prompt_alternative else ""
        raise PluginError(
            f"backend '{spec.name}' does not allow --backend-capability prompt: its tool "
            f"protocol is native only.{other}"
        )
    managed = not opts["backend_url"] and spec.capabilities.managed
    budget_mode = resolve_budget_mode(spec, opts.get("budget_mode"), plugin_opts.get("num_ctx"))
    serialize = opts["serialize"] if opts["serialize"] is not None else managed
    backend = BackendSettings(
        backend_url=opts["backend_url"] or (None if managed else spec.default_url),
        model=opts["model"],
        timeout=opts["backend_timeout"],
        capability=capability,
        options=plugin_opts,
        budget_mode=budget_mode,
    )
    if not backend.backend_url and not managed:
        raise PluginError(f"backend '{spec.name}' needs --backend-url (it has no managed mode)")
    api_key = os.environ.get(opts["api_key_env"]) or None
    return ServeConfig(
        backend=backend,
        plugin=spec.name,
        host=opts["host"],
        port=opts["port"],
        max_body_bytes=opts["max_body_bytes"],
        api_key=api_key,
        guardrails=GuardrailSettings(
            max_retries=opts["max_retries"],
            rescue=not opts["no_rescue"],
            constrained_retry=not opts.get("no_constrained_retry", False),
            inject_respond_tool=opts["inject_respond_tool"],
            keepalive_interval=opts["keepalive_interval"],
        ),
        max_concurrency=1 if serialize else 0,
        max_queue=opts["max_queue"],
        any_model=opts["any_model"],
        stream_start_grace=opts.get("stream_start_grace", 20.0),
    )


def build_state(host: PluginHost, spec: BackendSpec, config: ServeConfig) -> Any:
    from forge_core.app import AppState
    from forge_core.engine import Engine
    from forge_core.limiter import Limiter

    client = spec.client_factory(config.backend)
    engine = Engine(
        client, spec, config.guardrails, host.rescue_parsers(), host.transforms()
    )
    limiter = Limiter(config.max_concurrency, config.max_queue)
    return AppState(config=config, spec=spec, client=client, engine=engine, limiter=limiter)


def ready_line(state: Any) -> str:
    config: ServeConfig = state.config
    models = ", ".join(state.served_names()) or "(not discovered)"
    return (
        f"Proxy ready at http://{config.host}:{config.port} plugin={config.plugin} "
        f"backend={state.client.base_url} model={models} "
        f"capability={config.backend.capability} backend_timeout={config.backend.timeout:g}s"
        f" budget={state.budget.describe() if state.budget else 'unknown'}"
        + "".join(f" {k}={v}" for k, v in state.extra.items())
    )


def run(state: Any, drain_timeout: float = 10.0) -> None:
    """Start the backend, serve until SIGINT/SIGTERM, drain for ``drain_timeout``, stop."""
    import uvicorn

    from forge_core.app import make_app

    config: ServeConfig = state.config
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(state),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=drain_timeout,
            lifespan="on",
        )
    )

    async def start_backend() -> int | None:
        """Start the client (a managed launch may take minutes); a signal meanwhile cancels it
        and stops whatever was launched. Returns an exit status if forge must not serve."""
        loop = asyncio.get_running_loop()
        starting = asyncio.ensure_future(state.client.start())
        received: list[int] = []

        def interrupt(sig: signal.Signals) -> None:
            received.append(sig)
            starting.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt, sig)
        try:
            await starting
        except asyncio.CancelledError:
            click.echo("forge: interrupted while starting the backend; stopped it", err=True)
            await state.client.aclose()
            return 128 + int(received[0]) if received else 1
        except ForgeError as exc:
            click.echo(f"forge: error: {exc.message}", err=True)
            await state.client.aclose()
            return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return None

    async def main_task() -> int:
        failed = await start_backend()
        if failed is not None:
            return failed
        state.started = True
        # uvicorn owns SIGINT/SIGTERM from here: stop accepting, drain, then the app's
        # lifespan shutdown closes the client, which stops a managed backend's process group.
        serving = asyncio.ensure_future(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            click.echo(ready_line(state), err=False)
            sys.stdout.flush()
        await serving
        return 0 if server.started else 1

    try:
        status = asyncio.run(main_task())
    except KeyboardInterrupt:
        status = 0
    if status:
        sys.exit(status)
