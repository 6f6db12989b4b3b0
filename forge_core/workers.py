"""``forge serve --workers N``: N worker processes on one port, one supervisor.

The supervisor (the ``forge serve`` process itself):

* starts a managed backend once, then hands every worker its URL (workers run in external
  mode against it; the supervisor keeps the process and restarts it if it dies);
* binds the port and passes the listening socket to each worker (the kernel spreads
  connections over them);
* keeps the serialization slot when forge serializes (``--serialize``, the default with a
  managed backend): one :class:`~forge_core.shared_slots.SlotKeeper` for all workers, so a
  single-slot backend still sees one request at a time;
* points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory so ``/metrics`` on any worker
  reports the sum over all of them;
* on SIGTERM/SIGINT passes SIGTERM to every worker (each drains: ``/ready`` 503 for
  ``--drain-delay``, then ``--drain-timeout`` for requests in flight), then stops the backend;
  a worker that dies meanwhile is started again.

Each worker is ``python -m forge_core.workers``, its settings pickled on standard input.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import click

from forge_core import aio
from forge_core.config import ServeConfig
from forge_core.errors import ForgeError

log = logging.getLogger("forge.workers")

READY = b"forge-worker-ready\n"
RESTART_PAUSE = 1.0


@dataclass(slots=True)
class WorkerPlan:
    """What every worker needs to build the same app."""

    plugin: str
    opts: dict[str, Any]
    plugin_opts: dict[str, Any]
    fd: int
    slot_path: str | None
    slots: int
    max_queue: int
    log_level: str


def worker_opts(
    config: ServeConfig, opts: dict[str, Any], plugin_opts: dict[str, Any], state: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options a worker runs with: external mode against the supervisor's backend."""
    opts = {**opts, "workers": 1, "serialize": False}  # the slot is the supervisor's
    plugin_opts = dict(plugin_opts)
    if not opts.get("backend_url"):  # managed: the supervisor launched it
        opts["backend_url"] = state.client.base_url
        served = [m.wire_name for m in state.client.models()]
        opts["model"] = served[0] if served else None
        # The context was chosen at launch; workers read the one in force.
        opts["budget_mode"] = None
        if "num_ctx" in plugin_opts:
            plugin_opts["num_ctx"] = None
    return opts, plugin_opts


def check_combination(config: ServeConfig) -> None:
    if config.workers > 1 and config.inspect > 0:
        log.warning("--inspect with --workers %d: each worker keeps its own last %d requests "
                    "(/forge/ shows the worker that answered)", config.workers, config.inspect)


# --- the supervisor ---------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()  # a terminal's Ctrl-C reaches the supervisor only, which passes SIGTERM on
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class Supervisor:
    def __init__(
        self, state: Any, opts: dict[str, Any], plugin_opts: dict[str, Any],
        drain_timeout: float,
    ) -> None:
        self.state = state
        self.config: ServeConfig = state.config
        self.opts = opts
        self.plugin_opts = plugin_opts
        self.drain_timeout = drain_timeout
        self.drain_delay = self.config.drain_delay
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.metrics_dir: str | None = None
        self.own_metrics_dir = False

    def _metrics_dir(self) -> None:
        from forge_core.metrics import MULTIPROC_ENV

        path = os.environ.get(MULTIPROC_ENV)
        if path:  # the operator's: emptied, as prometheus-client asks, but kept
            os.makedirs(path, exist_ok=True)
            for name in os.listdir(path):
                if name.endswith(".db"):
                    os.unlink(os.path.join(path, name))
        else:
            path = tempfile.mkdtemp(prefix="forge-metrics-")
            self.own_metrics_dir = True
            os.environ[MULTIPROC_ENV] = path
        self.metrics_dir = path

    def _bind(self) -> socket.socket:
        config = self.config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise ForgeError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") \
                from None
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _spawn(self, plan: WorkerPlan) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forge_core.workers"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=[plan.fd],
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - setsid + pdeathsig only
        )
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(plan))
        proc.stdin.close()
        return proc

    async def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        assert proc.stdout is not None
        out = proc.stdout
        loop = asyncio.get_running_loop()
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, out.readline), 300)
        except TimeoutError:
            return False
        return line == READY

    async def run(self) -> int:
        from forge_core.cli import ready_line

        config = self.config
        self._metrics_dir()
        keeper = None
        sock = None
        try:
            try:
                await self.state.client.start()  # a managed backend launches once, here
            except ForgeError as exc:
                click.echo(f"forge: error: {exc.message}", err=True)
                return 1
            from forge_core.budget import discover_budget

            self.state.budget = await discover_budget(self.state.client,
                                                      config.backend.budget_mode)
            sock = self._bind()
            slot_path = None
            if config.max_concurrency > 0:
                from forge_core.shared_slots import SlotKeeper

                slot_path = os.path.join(self.metrics_dir or tempfile.gettempdir(), "slots.sock")
                keeper = SlotKeeper(slot_path, config.max_concurrency, config.max_queue)
                await keeper.start()
            opts, plugin_opts = worker_opts(config, self.opts, self.plugin_opts, self.state)
            plan = WorkerPlan(
                plugin=config.plugin, opts=opts, plugin_opts=plugin_opts, fd=sock.fileno(),
                slot_path=slot_path, slots=config.max_concurrency, max_queue=config.max_queue,
                log_level=logging.getLevelName(logging.getLogger().level).lower(),
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            self.procs = [self._spawn(plan) for _ in range(config.workers)]
            ready = await asyncio.gather(*(self._wait_ready(p) for p in self.procs))
            if not all(ready):
                click.echo("forge: error: a worker failed to start (see its output above)",
                           err=True)
                return 1
            click.echo(ready_line(self.state) + f" workers={config.workers}")
            sys.stdout.flush()
            await self._supervise(plan, stop)
            return 0
        finally:
            await self._stop_workers()
            if keeper is not None:
                await keeper.aclose()
            if sock is not None:
                sock.close()
            await self.state.client.aclose()  # stops a managed backend's process group
            if self.own_metrics_dir and self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _supervise(self, plan: WorkerPlan, stop: asyncio.Event) -> None:
        from forge_core.metrics import mark_worker_dead

        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if stop.is_set():
                return
            for i, proc in enumerate(self.procs):
                if proc.poll() is None:
                    continue
                log.error("worker %d (pid %d) exited with %s; starting another", i, proc.pid,
                          proc.returncode)
                mark_worker_dead(proc.pid)
                await asyncio.sleep(RESTART_PAUSE)
                self.procs[i] = self._spawn(plan)
                if not await self._wait_ready(self.procs[i]):
                    log.error("the new worker %d failed to start", i)

    async def _stop_workers(self) -> None:
        from forge_core.metrics import mark_worker_dead

        alive = [p for p in self.procs if p.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_delay + self.drain_timeout + 5.0
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in alive:
            if proc.poll() is None:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        for proc in self.procs:
            mark_worker_dead(proc.pid)


def run_workers(
    state: Any, opts: dict[str, Any], plugin_opts: dict[str, Any], drain_timeout: float
) -> None:
    check_combination(state.config)
    supervisor = Supervisor(state, opts, plugin_opts, drain_timeout)
    try:
        status = asyncio.run(supervisor.run())
    except KeyboardInterrupt:
        status = 0
    except ForgeError as exc:
        click.echo(f"forge: error: {exc.message}", err=True)
        status = 1
    if status:
        sys.exit(status)


# --- one worker -------------------------------------------------------------------------------


def worker_main() -> None:
    """Entry of ``python -m forge_core.workers``: build the app, serve on the inherited socket."""
    plan: WorkerPlan = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(
        level=plan.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[w{os.getpid()}]: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from forge_core.cli import build_config, build_state
    from forge_core.plugins import PluginHost

    host = PluginHost()
    host.load([plan.plugin])
    spec = host.backends()[plan.plugin]
    load_extensions = getattr(host, "load_extensions", None)
    if load_extensions is not None:  # rescue parsers and transforms of forge.plugins plugins
        load_extensions(plan.opts.get("disable_plugin") or ())
    state = build_state(host, spec, build_config(spec, plan.opts, plan.plugin_opts))
    if plan.slot_path:
        from forge_core.shared_slots import RemoteLimiter

        state.limiter = RemoteLimiter(plan.slot_path, plan.slots, plan.max_queue)
    sock = socket.socket(fileno=plan.fd)
    aio.run(_serve_worker(state, sock, plan))  # uvloop where installed


async def _serve_worker(state: Any, sock: socket.socket, plan: WorkerPlan) -> None:
    import uvicorn

    from forge_core.app import make_app
    from forge_core.draining import DrainingServer

    server = DrainingServer(
        uvicorn.Config(
            make_app(state), log_level="warning", access_log=False, lifespan="on",
            http=aio.http_impl(),
            timeout_graceful_shutdown=plan.opts.get("drain_timeout", 10.0),
        ),
        state,
        drain_delay=state.config.drain_delay,
    )
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if server.started:
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()
    await serving


if __name__ == "__main__":
    worker_main()
