"""``forge serve`` as a real process: managed llama-server launch with a budget, restart after
the server is killed, clean stop on SIGINT/SIGTERM, no orphan after SIGKILL, a signal during
the load, and the bounded drain of in-flight requests on shutdown."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from managed_proc import ForgeProcess, assert_gone, children, wait_until

from forge_core.managed import pid_alive
from forge_core.testing import ScriptedBackend, chat, reply_text, serve_on_loopback

MODEL = "smollm2-135m-instruct"


def ready(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/ready", timeout=10)
    return dict(response.json())


def ask(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120,
                      json=chat("Say hello.", model=MODEL, max_tokens=8, temperature=0))


@pytest.mark.llama
@pytest.mark.slow
def test_managed_launch_budget_restart_and_sigterm(demo: None) -> None:
    forge = ForgeProcess(["--plugin", "llamafile", "--model", "demo", "--num-ctx", "3000"])
    try:
        line = forge.wait_for("Proxy ready")
        # llama-server rounds -c up to a multiple of 256: the number in force is read back.
        assert "budget=3072 (manual)" in line
        info = ready(forge.url)
        assert info["budget_mode"] == "manual" and info["budget_requested"] == 3000
        assert info["context_budget"] == info["context_size"] == 3072
        first = info["managed_pid"]
        argv = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"-c") + 1] == b"3000"
        assert ask(forge.url).status_code == 200

        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: ready(forge.url).get("restarts") == 1
                          and ready(forge.url)["ready"]), forge.rest()
        info = ready(forge.url)
        second = info["managed_pid"]
        assert second != first and pid_alive(second)
        props = httpx.get(f"{info['backend_url']}/props", timeout=10).json()
        assert props["default_generation_settings"]["n_ctx"] == 3072  # same budget after restart
        assert ask(forge.url).status_code == 200

        forge.signal(signal.SIGTERM)
        code = forge.wait()
        assert code in (0, -signal.SIGTERM), forge.rest()
        assert_gone(second)
        assert "llama-server stopped" in forge.rest()
    finally:
        forge.close()


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_backend_survives_forge(demo: None, sig: signal.Signals) -> None:
    forge = ForgeProcess(["--plugin", "llamafile", "--model", "demo", "--budget-mode",
                          "forge-fast"])
    try:
        line = forge.wait_for("Proxy ready")
        assert "(forge-fast)" in line
        pid = ready(forge.url)["managed_pid"]
        forge.signal(sig)
        forge.wait()
        assert_gone(pid)
    finally:
        forge.close()


def test_signal_during_a_slow_load_stops_the_launched_server(tmp_path: Path) -> None:
    """A server that never becomes healthy (a script standing in for a huge model loading)."""
    fake = tmp_path / "slow-server"
    fake.write_text("#!/bin/sh\nexec sleep 300\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    forge = ForgeProcess(["--plugin", "llamafile", "--model", str(model), "--server-bin",
                          str(fake), "--load-timeout", "300"])
    try:
        forge.wait_for("starting llama-server")
        assert wait_until(lambda: [c for c in children(forge.proc.pid)
                                   if "sleep" in Path(f"/proc/{c}/cmdline").read_text()])
        server = next(c for c in children(forge.proc.pid)
                      if "sleep" in Path(f"/proc/{c}/cmdline").read_text())
        forge.signal(signal.SIGTERM)
        assert forge.wait() == 128 + signal.SIGTERM
        assert "interrupted while starting the backend" in forge.rest()
        assert_gone(server)
    finally:
        forge.close()


def _post_in_thread(url: str, out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            out["response"] = httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=120)
        except httpx.HTTPError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_drains_the_request_in_flight() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("finished while draining", delay=2.0))
    with serve_on_loopback(backend.app) as backend_url:
        forge = ForgeProcess(["--plugin", "llamafile", "--backend-url", backend_url,
                              "--drain-timeout", "60"])
        try:
            forge.wait_for("Proxy ready")
            out: dict[str, Any] = {}
            thread = _post_in_thread(forge.url, out)
            assert wait_until(lambda: backend.in_flight == 1)
            forge.signal(signal.SIGTERM)
            thread.join(timeout=60)
            assert out["response"].status_code == 200
            message = out["response"].json()["choices"][0]["message"]
            assert message["content"] == "finished while draining"
            assert forge.wait() in (0, -signal.SIGTERM)
            assert backend.cancelled == 0
        finally:
            forge.close()


def test_drain_is_bounded_and_cancels_the_backend_request() -> None:
    backend = ScriptedBackend()
    backend.push(reply_text("never delivered", delay=300))
    with serve_on_loopback(backend.app) as backend_url:
        forge = ForgeProcess(["--plugin", "llamafile", "--backend-url", backend_url,
                              "--drain-timeout", "1"])
        try:
            forge.wait_for("Proxy ready")
            out: dict[str, Any] = {}
            thread = _post_in_thread(forge.url, out)
            assert wait_until(lambda: backend.in_flight == 1)
            forge.signal(signal.SIGTERM)
            assert forge.wait(timeout=60) in (0, -signal.SIGTERM)
            thread.join(timeout=60)
            assert "response" not in out or out["response"].status_code != 200
            assert wait_until(lambda: backend.cancelled == 1, timeout=30)
        finally:
            forge.close()
