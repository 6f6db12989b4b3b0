"""ManagedProcess with small real processes: health wait, failure reasons, restart, stopping the
whole process group, and no orphan when the supervising process is killed with SIGKILL.

The child is ``python -m http.server`` (healthy once it listens), wrapped in ``sh`` where a
grandchild is needed. The real llama-server versions of these checks are in the llamafile
plugin's tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from forge_core.errors import BackendTimeout, BackendUnavailable
from forge_core.managed import ManagedProcess, free_port, group_alive, pid_alive


def wait_until(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; False if it never became true (a hang guard, not a
    speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def with_grandchild(port: int, pidfile: Path) -> list[str]:
    """sh starts a ``sleep`` grandchild, records its pid, then execs the HTTP server."""
    server = " ".join(http_server(port))
    return ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; exec {server}"]


def read_pid(path: Path) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "")
    return int(path.read_text())


async def test_start_waits_for_health_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    port = free_port()
    pidfile = tmp_path / "grandchild.pid"
    proc = ManagedProcess("fake", with_grandchild(port, pidfile), f"http://127.0.0.1:{port}/",
                          load_timeout=30, restart=False, log_path=tmp_path / "log")
    await proc.start()
    child, grandchild = proc.pid, read_pid(pidfile)
    assert child is not None and pid_alive(child) and pid_alive(grandchild)
    assert proc.watchdog is not None and proc.watchdog.poll() is None
    await proc.stop()
    assert not pid_alive(child)
    assert wait_until(lambda: not pid_alive(grandchild))
    assert not group_alive(child)
    assert proc.watchdog is None  # released, and it exited on its own


async def test_health_timeout_names_the_limit_and_kills_the_process(tmp_path: Path) -> None:
    port = free_port()  # nothing will ever listen here
    argv = [sys.executable, "-c", "import time; print('loading forever', flush=True); "
            "time.sleep(300)"]
    proc = ManagedProcess("slow", argv, f"http://127.0.0.1:{port}/", load_timeout=1.5,
                          restart=False, log_path=tmp_path / "log")
    with pytest.raises(BackendTimeout) as info:
        await proc.start()
    assert "not healthy within 1.5s" in info.value.message
    assert "loading forever" in info.value.message  # the log tail explains why
    assert proc.pid is not None and not pid_alive(proc.pid)


async def test_exit_during_start_quotes_the_log_and_exit_code(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('error: model file is corrupt'); sys.exit(3)"]
    proc = ManagedProcess("broken", argv, f"http://127.0.0.1:{free_port()}/", load_timeout=30,
                          restart=False, log_path=tmp_path / "log")
    with pytest.raises(BackendUnavailable) as info:
        await proc.start()
    assert "code 3" in info.value.message
    assert "model file is corrupt" in info.value.message


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    proc = ManagedProcess("ghost", [str(tmp_path / "no-such-server")], "http://127.0.0.1:1/",
                          restart=False, log_path=tmp_path / "log")
    with pytest.raises(BackendUnavailable, match="could not be launched"):
        await proc.start()


async def test_restart_after_kill_uses_the_same_command(tmp_path: Path) -> None:
    port = free_port()
    restarted: list[int] = []
    argv = http_server(port)
    proc = ManagedProcess("fake", argv, f"http://127.0.0.1:{port}/", load_timeout=30,
                          log_path=tmp_path / "log", on_restart=lambda: restarted.append(1))
    await proc.start()
    first = proc.pid
    assert first is not None
    try:
        os.kill(first, signal.SIGKILL)
        for _ in range(400):
            if proc.restarts:
                break
            await asyncio.sleep(0.05)
        assert proc.restarts == 1 and restarted == [1]
        assert proc.pid != first and proc.pid is not None and pid_alive(proc.pid)
        assert proc.argv == argv  # same port, same flags: the same budget
        assert proc.process is not None and proc.process.args == argv
    finally:
        await proc.stop()
    assert proc.pid is not None and not pid_alive(proc.pid)


SUPERVISOR = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from forge_core.managed import ManagedProcess

    async def main():
        argv = ["sh", "-c", sys.argv[3]]
        proc = ManagedProcess("fake", argv, sys.argv[1], load_timeout=30,
                              log_path=Path(sys.argv[2]))
        await proc.start()
        print(proc.pid, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("server_is_grandchild", [False, True])
def test_no_orphan_when_the_supervisor_is_killed(
    tmp_path: Path, server_is_grandchild: bool
) -> None:
    """SIGKILL the supervising process: every process of the group must die too.

    The parent-death signal reaches only the direct child; the ``sleep`` (and, with
    ``server_is_grandchild``, the server itself) are left to the watchdog.
    """
    port = free_port()
    pidfile = tmp_path / "grandchild.pid"
    script = with_grandchild(port, pidfile)[2]  # the sh -c body
    if server_is_grandchild:
        script = f"({script}) & wait"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, f"http://127.0.0.1:{port}/", str(tmp_path / "log"),
         script],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        grandchild = read_pid(pidfile)
        assert pid_alive(child) and pid_alive(grandchild)
        supervisor.kill()
        supervisor.wait(timeout=10)
        assert wait_until(lambda: not pid_alive(grandchild)), "grandchild survived"
        assert wait_until(lambda: not pid_alive(child)), "child survived"
        assert wait_until(lambda: not group_alive(child))
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
