"""The ``forge`` command: ``forge serve`` runs the proxy, ``forge plugins`` lists backends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from typing import Any

import click

from forge_core import __version__, aio, config_file
from forge_core.backend import BackendClient, BackendSettings, BackendSpec
from forge_core.boundary import as_forge_error
from forge_core.budget import BUDGET_MODES
from forge_core.config import DEFAULT_MAX_BODY, GuardrailSettings, ServeConfig
from forge_core.deadline import DEFAULT_IDLE
from forge_core.errors import ForgeError, PluginError
from forge_core.plugins import PluginHost, hook_table, install_hint, installed_plugins
from forge_core.redact import display_url, scrub
from forge_core.transforms import RequestTransform, active_transforms

log = logging.getLogger("forge")


def _positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def _positive_or_none(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    return None if value is None else _positive(ctx, param, value)


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
        config_path = _peek_option(args, "--config") or os.environ.get("FORGE_CONFIG")
        try:
            from_file = config_file.read(config_path) if config_path else {}
        except config_file.ConfigFileError as exc:
            _fail(str(exc))
        name = _peek_option(args, "--plugin") or os.environ.get("FORGE_PLUGIN") or (
            str(from_file["plugin"]) if from_file.get("plugin") else None
        )
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
        if from_file:  # below flags and FORGE_* variables: click's default_map
            try:
                checked = config_file.check(config_path or "", from_file, self.params, ctx)
            except config_file.ConfigFileError as exc:
                _fail(str(exc))
            ctx.default_map = {**(ctx.default_map or {}), **checked}
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


DISABLE_PLUGIN = click.option(
    "--disable-plugin", "disable_plugin", multiple=True, metavar="NAME",
    help="Do not load this forge.plugins plugin (rescue parsers, transforms); repeatable.",
)


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@DISABLE_PLUGIN
def plugins_command(as_json: bool, disable_plugin: tuple[str, ...] = ()) -> None:
    """List installed plugins: backends with their capabilities, every plugin's hooks and
    what it registered, in the order forge runs them."""
    installed = installed_plugins()
    host = PluginHost()
    host.load()
    try:
        host.load_extensions(disable_plugin)
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
    transforms = [
        {"name": t.name, "order": t.order, "description": t.description}
        for t in host.transforms()
    ]
    table = hook_table(host)
    if as_json:
        out = {"plugins": rows, "rescue_parsers": parsers, "request_transforms": transforms,
               "hooks": table}
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
    _echo_hooks(table)
    if transforms:
        click.echo("request transforms (in order; off with --no-transform NAME):")
        for t in transforms:
            click.echo(f"  {t['name']} ({t['order']})" + (f": {t['description']}"
                                                          if t["description"] else ""))


def _echo_hooks(table: list[dict[str, Any]]) -> None:
    """Each plugin's hooks and registrations (with their order), failures and disabled ones."""
    click.echo("hooks by plugin:")
    for row in table:
        head = f"  {row['name']:<18} {row['kind']:<9} {row['distribution']}"
        if row["status"] != "loaded":
            click.echo(f"{head}  {row['status'].upper()}" + (f": {row['error']}"
                                                             if row["error"] else ""))
            continue
        click.echo(head)
        for hook in row["hooks"]:
            names = [f"{r['name']} ({r['order']})" if r["order"] is not None else r["name"]
                     for r in row["registered"] if r["hook"] == hook]
            click.echo(f"    {hook}: {', '.join(names) or '-'}")


@main.command(
    "serve", cls=ServeCommand,
    context_settings={"auto_envvar_prefix": config_file.ENV_PREFIX},
)
@click.option(
    "--config", type=click.Path(dir_okay=False),
    help="TOML file with serve options (keys: long option names with _); flags and FORGE_* "
    "environment variables override it.",
)
@click.option("--plugin", help="Backend plugin to load (only this one is imported).")
@click.option("--backend-url", help="URL of a running backend (external mode).")
@click.option("--model", help="Model to serve: a name, a path, or 'demo' where the plugin has one.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8081, show_default=True, type=int)
@click.option(
    "--backend-timeout", default=300.0, show_default=True, type=float, callback=_positive,
    help="Seconds to wait for the backend's first token (for a non-streamed request, its "
    "whole answer); prompt processing counts. Keep-alive bytes are not tokens.",
)
@click.option(
    "--backend-idle-timeout", type=float, default=None, callback=_positive_or_none,
    help="Seconds of silence allowed once tokens flow, before the answer ends with a timeout "
    "[default: 60, or --backend-timeout if smaller].",
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
    "--retry-context", type=click.Choice(["clean", "feedback"]), default="clean",
    show_default=True,
    help="A constrained retry re-asks the conversation as it was (clean) or adds the failed "
    "answer and a correction (feedback).",
)
@click.option(
    "--no-placeholder-check", is_flag=True,
    help="Accept arguments that only repeat a parameter or tool name, or a <...> template.",
)
@click.option(
    "--auto-intent", type=click.Choice(["on", "off", "decide"]), default="on",
    show_default=True,
    help="Under tool_choice auto, retry prose that tries to use a tool (`get_weather(...)`, "
    "a backticked tool name, code calling it) as a failed call; decide: also give a refusal "
    "or a description of the task one retry constrained to a call or a prose answer.",
)
@click.option(
    "--tool-relevance", type=click.Choice(["on", "off"]), default="on", show_default=True,
    help="Rank the tools by how clearly the user's last message asks for each (words of their "
    "names, descriptions, parameters): under auto (with --auto-intent on) prose answering such "
    "a request is retried as a failed call; a constrained retry targets the tool asked for.",
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
    help="On SIGINT/SIGTERM, seconds in-flight requests may take to finish; then open streams "
    "end with an error event, waiting requests get 503, and the backend is stopped.",
)
@click.option(
    "--stream-start-grace", default=20.0, show_default=True, type=float, callback=_positive,
    help="Seconds a stream waits for the backend before starting with keep-alives "
    "(earlier failures get a real HTTP status).",
)
@click.option(
    "--no-transform", "no_transform", multiple=True, metavar="NAME",
    help="Turn off a request transform by name (repeatable; `forge plugins` lists them), "
    "e.g. --no-transform strip-billing-header.",
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
@click.option(
    "--metrics/--no-metrics", default=True, show_default=True,
    help="Serve Prometheus /metrics (under the API key unless --metrics-public).",
)
@click.option("--metrics-public", is_flag=True, help="Serve /metrics without the API key.")
@click.option(
    "--inspect", default=0, show_default=True, type=click.IntRange(0, 10000), metavar="N",
    help="Keep the last N chat requests (redacted) for /forge/ and /forge/requests; 0: off.",
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1, 64),
    help="Worker processes on the one port (a managed backend is still started once).",
)
@click.option(
    "--drain-delay", default=0.0, show_default=True, type=click.FloatRange(0, 3600),
    help="On SIGTERM, seconds /ready answers 503 while requests are still served, before the "
    "listener closes (give a load balancer time to stop sending).",
)
@DISABLE_PLUGIN
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
    opts.pop("config", None)
    disabled = tuple(opts.get("disable_plugin") or ())
    try:
        host.load_extensions(opts.pop("disable_plugin", ()))  # every forge.plugins plugin
        config = build_config(spec, opts, plugin_opts)
        app_state = build_state(host, spec, config)
    except ForgeError as exc:
        _fail(exc.message)
    except click.UsageError as exc:
        _fail(exc.format_message())
    except Exception as exc:  # the client factory is plugin code
        _fail(as_forge_error(exc, None, spec.name, blame_plugin=True).message)
    if config.workers > 1:
        from forge_core.workers import run_workers

        run_workers(app_state, {**opts, "disable_plugin": disabled}, plugin_opts,
                    drain_timeout=opts["drain_timeout"])
        return
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
        idle_timeout=opts.get("backend_idle_timeout")
        or min(DEFAULT_IDLE, opts["backend_timeout"]),
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
            retry_context=opts.get("retry_context", "clean"),
            placeholder_check=not opts.get("no_placeholder_check", False),
            inject_respond_tool=opts["inject_respond_tool"],
            auto_intent=opts.get("auto_intent", "on") != "off",
            auto_decide=opts.get("auto_intent", "on") == "decide",
            auto_relevance=opts.get("tool_relevance", "on") == "on",
            keepalive_interval=opts["keepalive_interval"],
        ),
        max_concurrency=1 if serialize else 0,
        max_queue=opts["max_queue"],
        any_model=opts["any_model"],
        disabled_transforms=tuple(opts.get("no_transform") or ()),
        stream_start_grace=opts.get("stream_start_grace", 20.0),
        metrics=opts.get("metrics", True),
        metrics_public=opts.get("metrics_public", False),
        inspect=opts.get("inspect", 0),
        drain_delay=opts.get("drain_delay", 0.0),
        workers=opts.get("workers", 1),
    )


def _transforms(host: PluginHost, config: ServeConfig) -> list[RequestTransform]:
    """The registered transforms minus ``--no-transform`` ones; an unknown name is an error."""
    registered = host.transforms()
    names = {t.name for t in registered}
    unknown = [n for n in config.disabled_transforms if n not in names]
    if unknown:
        raise PluginError(
            f"--no-transform {unknown[0]}: no such request transform (registered: "
            f"{', '.join(sorted(names)) or 'none'})"
        )
    return active_transforms(registered, disabled=config.disabled_transforms)


def build_state(
    host: PluginHost, spec: BackendSpec, config: ServeConfig, client: BackendClient | None = None
) -> Any:
    """The app state for ``config``; ``client`` replaces the plugin's own (tests pass one
    over an httpx transport)."""
    from forge_core.app import wire_state

    client = client or spec.client_factory(config.backend)
    return wire_state(config, spec, client, host.rescue_parsers(), _transforms(host, config))


def ready_line(state: Any) -> str:
    config: ServeConfig = state.config
    models = ", ".join(state.served_names()) or "(not discovered)"
    return scrub(
        f"Proxy ready at http://{config.host}:{config.port} plugin={config.plugin} "
        f"backend={display_url(state.client.base_url)} model={models} "
        f"capability={config.backend.capability} backend_timeout={config.backend.timeout:g}s"
        f" idle_timeout={config.backend.idle_timeout or config.backend.timeout:g}s"
        f" budget={state.budget.describe() if state.budget else 'unknown'}"
        + "".join(f" {k}={v}" for k, v in state.extra.items())
    )


def run(state: Any, drain_timeout: float = 10.0) -> None:
    """Start the backend, serve until SIGINT/SIGTERM, drain for ``drain_timeout``, stop."""
    import uvicorn

    from forge_core.app import make_app
    from forge_core.draining import DrainingServer

    config: ServeConfig = state.config
    server = DrainingServer(
        uvicorn.Config(
            make_app(state),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=drain_timeout,
            lifespan="on",
            http=aio.http_impl(),
        ),
        state,
        drain_delay=config.drain_delay,
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
        except Exception as exc:  # a ForgeError, or a plugin bug (the boundary names it)
            error = as_forge_error(exc, state.client, state.spec.name)
            click.echo(f"forge: error: {error.message}", err=True)
            with contextlib.suppress(Exception):
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
        status = aio.run(main_task())  # uvloop where installed (forge_core/aio.py)
    except KeyboardInterrupt:
        status = 0
    if status:
        sys.exit(status)
