"""Running a backend server as a child process: launch, health wait, restart, clean stop.

The child gets its own process group (so stopping it stops everything it spawned) and, on
Linux, a parent-death signal, so it dies with forge even when forge is killed with SIGKILL.
Its output goes to a log file whose tail is quoted when a launch fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from forge_core.errors import BackendTimeout, BackendUnavailable

log = logging.getLogger("forge.managed")

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One supervised server process. ``start`` returns once ``health_url`` answers 200."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        health_url: str,
        *,
        load_timeout: float = 180.0,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        restart: bool = True,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.health_url = health_url
        self.load_timeout = load_timeout
        self.env = env
        self.restart = restart
        self.on_restart = on_restart
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"forge-{name}-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        await self._launch()
        if self.restart:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _launch(self) -> None:
        log.info("starting %s: %s (log: %s)", self.name, " ".join(self.argv), self.log_path)
        with open(self.log_path, "ab") as out:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - setsid + pdeathsig only
                )
            except OSError as exc:
                raise BackendUnavailable(self.name, f"could not be launched: {exc}") from None
        await self._wait_healthy()

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.load_timeout
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = self.process.returncode if self.process else "?"
                    raise BackendUnavailable(
                        self.name, f"exited during start-up (code {code}): {self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.health_url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        await self.stop()
        raise BackendTimeout(
            self.name, f"was not healthy within {self.load_timeout:g}s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    async def _watch(self) -> None:
        """Relaunch the process with the same arguments if it dies while we serve."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            proc = self.process
            if self._stopping or proc is None or proc.poll() is None:
                continue
            log.error("%s died (code %s); restarting: %s", self.name, proc.returncode,
                      self.log_tail(3))
            try:
                await self._launch()
                self.restarts += 1
                if self.on_restart:
                    self.on_restart()
            except Exception as exc:  # keep watching; the next request gets a 502
                log.error("restart of %s failed: %s", self.name, exc)
                await asyncio.sleep(2.0)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group, then SIGKILL after ``grace`` seconds."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.info("%s stopped", self.name)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), sig)
