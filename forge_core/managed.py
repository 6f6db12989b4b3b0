"""Running a backend server as a child process: launch, health wait, restart, clean stop.

No process forge starts may outlive it, however forge ends:

* the child gets its own session, so its process group holds it and everything it spawns,
  and stopping it signals the whole group (SIGTERM, then SIGKILL after a grace period);
* on Linux the child also gets a parent-death signal (SIGKILL when forge's thread dies);
* a tiny watchdog process holds the read end of a pipe whose write end only forge holds: when
  forge dies, even by SIGKILL, the kernel closes the pipe, the watchdog reads end-of-file and
  kills the whole group, grandchildren included, which a parent-death signal does not reach.

The child's output goes to a log file whose tail is quoted when a launch fails.
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
from forge_core.wire import jsonio

log = logging.getLogger("forge.managed")

_PR_SET_PDEATHSIG = 1
PROGRESS_INTERVAL = 10.0
"""Seconds between "still starting" lines while a managed backend loads."""
WATCHDOG_GRACE = 5.0
"""Seconds the watchdog waits between SIGTERM and SIGKILL of an abandoned group."""

# Runs in its own interpreter (``python -I -S -c``): blocks until forge's end of the pipe is
# closed, then terminates the group if anything in it is still alive.
_WATCHDOG = """
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
while sys.stdin.buffer.read(4096):
    pass
def alive():
    # A live (non-zombie) member of the group; zombies may never be reaped in a container.
    if os.path.exists("/proc/self/stat"):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
if alive():
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
"""


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


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group ``pgid``, from /proc; [] where /proc is absent."""
    members: list[int] = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # After the command: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """True while any live process is in group ``pgid`` (zombies waiting for a reaper that may
    never come, as under a container's minimal init, do not count)."""
    if Path("/proc/self/stat").exists():
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        watchdog: bool = True,
        what: str | None = None,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.name = name
        self.what = what or _loading_what(argv)
        """What the start-up waits for, in progress lines (default: the ``-m``/``--model``
        argument)."""
        self.progress_interval = progress_interval
        self.argv = list(argv)
        self.health_url = health_url
        self.load_timeout = load_timeout
        self.env = env
        self.restart = restart
        self.on_restart = on_restart
        self.use_watchdog = watchdog
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"forge-{name}-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        """Launch and wait for health; then (if ``restart``) relaunch whenever it dies."""
        self._stopping = False
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
        self._start_watchdog(self.process.pid)
        await self._wait_healthy()

    def _start_watchdog(self, pgid: int) -> None:
        self._close_watchdog()
        if not self.use_watchdog or os.name != "posix":
            return
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid), str(WATCHDOG_GRACE)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to forge's terminal group must not reach it
            )
        except OSError as exc:  # the parent-death signal still covers the direct child
            log.warning("no watchdog for %s: %s", self.name, exc)

    def _close_watchdog(self) -> None:
        """Release the watchdog: it exits, finding the group it guards already gone."""
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is None:
            return
        with contextlib.suppress(OSError):
            if watchdog.stdin is not None:
                watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=WATCHDOG_GRACE + 2)

    async def _wait_healthy(self) -> None:
        started = time.monotonic()
        deadline = started + self.load_timeout
        next_note = started + self.progress_interval
        health = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if time.monotonic() >= next_note:  # minutes of loading must not look like a hang
                    next_note += self.progress_interval
                    self._progress(time.monotonic() - started, health)
                if self.process is None or self.process.poll() is not None:
                    code = self.process.returncode if self.process else "?"
                    await self._terminate_group()
                    raise BackendUnavailable(
                        self.name, f"exited during start-up (code {code}): {self.log_tail()}"
                    )
                try:
                    answer = await http.get(self.health_url)
                except httpx.HTTPError as exc:
                    health = "not listening yet" if isinstance(exc, httpx.ConnectError) \
                        else f"no answer ({type(exc).__name__})"
                else:
                    if answer.status_code == 200:
                        if time.monotonic() - started >= self.progress_interval:
                            log.info("%s is ready after %.0fs", self.name,
                                     time.monotonic() - started)
                        return
                    health = f"health answers HTTP {answer.status_code}{_detail(answer)}"
                await asyncio.sleep(0.2)
        await self.stop()
        raise BackendTimeout(
            self.name, f"was not healthy within {self.load_timeout:g}s: {self.log_tail()}"
        )

    def _progress(self, elapsed: float, health: str) -> None:
        last = self.log_tail(1)
        log.info(
            "still starting %s (loading %s): %.0fs of at most %gs; %s; last log line: %s",
            self.name, self.what, elapsed, self.load_timeout, health,
            last if len(last) <= 200 else last[:200] + "...",
        )

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    async def _watch(self) -> None:
        """Relaunch the process with the same arguments (model, context, flags) if it dies."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            proc = self.process
            if self._stopping or proc is None or proc.poll() is None:
                continue
            log.error("%s died (code %s); restarting: %s", self.name, proc.returncode,
                      self.log_tail(3))
            await self._terminate_group()  # anything it left behind
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
            self._watcher = None
        await self._terminate_group(grace)
        self._close_watchdog()

    async def _terminate_group(self, grace: float = 10.0) -> None:
        proc = self.process
        if proc is None:
            return
        pgid = proc.pid  # setsid made the child its group's leader
        if proc.poll() is None or group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while (proc.poll() is None or group_alive(pgid)) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None or group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            log.info("%s stopped", self.name)


def _loading_what(argv: Sequence[str]) -> str:
    """The model argument of a server command line, else the program's name."""
    for flags in (("--model", "serve"), ("-m",)):  # python's own -m names a module
        for i, arg in enumerate(argv[:-1]):
            if arg in flags:
                return argv[i + 1]
    return Path(argv[0]).name if argv else "?"


def _detail(answer: httpx.Response) -> str:
    """llama-server answers 503 ``{"error": {"message": "Loading model"}}`` while loading."""
    try:
        data = jsonio.loads(answer.content)
    except ValueError:  # jsonio.JSONRejected is a ValueError
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f" ({message})" if isinstance(message, str) and len(message) < 80 else ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
