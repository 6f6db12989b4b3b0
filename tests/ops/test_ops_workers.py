"""``forge serve --workers 2`` for real: one port, /metrics summed over both workers, one
backend slot shared by both, and /ready 503 while draining.

Which worker takes a connection is the kernel's choice; the tests make it deterministic by
stopping one worker (SIGSTOP) while the other must take the request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge_core.managed import pid_alive
from forge_core.testing import ScriptedBackend, chat, reply_text, serve_on_loopback
from tests.ops.conftest import parse_metrics, value

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "managed"))
from managed_proc import ForgeProcess, children, wait_until  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def backend() -> Iterator[tuple[ScriptedBackend, str]]:
    fake = ScriptedBackend()
    with serve_on_loopback(fake.app) as url:
        yield fake, url


def start(url: str, *extra: str) -> tuple[ForgeProcess, list[int]]:
    forge = ForgeProcess(["--plugin", "llamafile", "--backend-url", url, "--workers", "2",
                          *extra])
    line = forge.wait_for("Proxy ready", timeout=120)
    assert "workers=2" in line
    workers = children(forge.proc.pid)
    assert len(workers) == 2, forge.rest()
    return forge, workers


def fresh(url: str) -> httpx.Client:
    """A client whose every request opens a new connection (so any worker may take it)."""
    return httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


def post(url: str, body: dict) -> httpx.Response:
    with fresh(url) as http:
        return http.post("/v1/chat/completions", json=body)


def scrape(url: str) -> dict:
    with fresh(url) as http:
        r = http.get("/metrics")
        assert r.status_code == 200
        return parse_metrics(r.text)


def test_metrics_are_summed_over_both_workers(backend: tuple[ScriptedBackend, str]) -> None:
    fake, backend_url = backend
    fake.push(*(reply_text(f"a{i}") for i in range(5)))
    forge, (first, second) = start(backend_url)
    try:
        os.kill(second, signal.SIGSTOP)  # only the first can accept
        try:
            assert all(post(forge.url, chat()).status_code == 200 for _ in range(3))
            # A request is counted as its response ends, which may be just after the client
            # has read it: wait for the count before freezing this worker.
            assert wait_until(
                lambda: value(scrape(forge.url), "forge_requests_total",
                              endpoint="/v1/chat/completions", status="200") == 3, 30
            )
        finally:
            os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)  # now only the second
        try:
            assert all(post(forge.url, chat()).status_code == 200 for _ in range(2))
            from_second = scrape(forge.url)
        finally:
            os.kill(first, signal.SIGCONT)
        from_first = scrape(forge.url)
        for m in (from_second, from_first):
            assert value(m, "forge_requests_total", endpoint="/v1/chat/completions",
                         status="200") == 5
            assert value(m, "forge_backend_tokens_total", type="input") == 50
            assert value(m, "forge_workers") == 2
        assert len(fake.requests) == 5
    finally:
        forge.close()


def test_one_slot_and_one_queue_across_workers(backend: tuple[ScriptedBackend, str]) -> None:
    fake, backend_url = backend
    fake.push(reply_text("slow", delay=2.0), reply_text("next"))
    forge, (first, second) = start(backend_url, "--serialize", "--max-queue", "1")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        os.kill(second, signal.SIGSTOP)
        holding = loop.run_in_executor(None, post, forge.url, chat("one"))
        assert await loop.run_in_executor(None, wait_until, lambda: fake.in_flight == 1, 60)
        os.kill(second, signal.SIGCONT)
        os.kill(first, signal.SIGSTOP)  # the slot holder is frozen; the second must wait
        try:
            waiting = loop.run_in_executor(None, post, forge.url, chat("two"))
            # The second worker's request waits for the first worker's slot ...
            assert await loop.run_in_executor(None, wait_until, lambda: value(
                scrape(forge.url), "forge_queue_depth") == 1, 60)
            # ... and the shared line (one place) is full for a third request.
            full = await loop.run_in_executor(None, post, forge.url, chat("three"))
            assert full.status_code == 503 and "Retry-After" in full.headers
            assert "across workers" in full.json()["error"]["message"]
        finally:
            os.kill(first, signal.SIGCONT)
        assert (await holding).status_code == 200
        assert (await waiting).status_code == 200

    try:
        asyncio.run(scenario())
        assert fake.max_in_flight == 1 and len(fake.requests) == 2
    finally:
        forge.close()


def test_ready_answers_503_while_draining_then_all_exit(
    backend: tuple[ScriptedBackend, str]
) -> None:
    _, backend_url = backend
    forge, workers = start(backend_url, "--drain-delay", "3")
    try:
        with fresh(forge.url) as http:
            assert http.get("/ready").status_code == 200
            forge.signal(signal.SIGTERM)
            assert wait_until(lambda: http.get("/ready").status_code == 503, 30)
            r = http.get("/ready")
            assert r.json()["detail"].startswith("draining")
            # Still serving meanwhile.
            assert http.get("/health").status_code == 200
        assert forge.wait(60) == 0
        assert wait_until(lambda: not any(pid_alive(p) for p in workers), 30)
    finally:
        forge.close()


def servers_under(pid: int) -> list[int]:
    """llama-server processes started by ``pid`` (directly)."""
    found = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmdline.endswith(b"llama-server"):
            found.append(child)
    return found


@pytest.mark.llama
def test_a_managed_backend_is_started_once_for_all_workers(demo: None) -> None:
    forge = ForgeProcess(["--plugin", "llamafile", "--model", "demo", "--workers", "2"])
    try:
        forge.wait_for("Proxy ready", timeout=300)
        [server] = servers_under(forge.proc.pid)
        workers = [p for p in children(forge.proc.pid) if p != server and b"forge_core.workers"
                   in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2
        for _ in range(2):
            r = post(forge.url, chat("Say hi.", model="smollm2-135m-instruct", max_tokens=8))
            assert r.status_code == 200, r.text
        with fresh(forge.url) as http:
            ready = http.get("/ready").json()
        assert ready["ready"] is True and ready["models"][0] == "smollm2-135m-instruct"
        forge.signal(signal.SIGTERM)
        assert forge.wait(90) == 0
        assert wait_until(lambda: not pid_alive(server), 30)
    finally:
        forge.close()
