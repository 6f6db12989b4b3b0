"""When ``--drain-timeout`` runs out on SIGTERM, what is still open ends properly: an OpenAI
stream with ``data: {"error": ...}`` then ``data: [DONE]``, an Anthropic stream with
``event: error``, a request still waiting for its answer with a 503, and the backend
requests are closed. ``forge serve`` runs as a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from plugin_states import TrickleBackend, sse_frames
from test_deadlines import first_token

from forge_core.managed import free_port
from forge_core.testing import serve_on_loopback

FORGE = str(Path(sys.executable).with_name("forge"))
pytestmark = pytest.mark.slow


class Serve:
    """``forge serve`` in a subprocess, its output collected."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [FORGE, "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any("Proxy ready" in line for line in self.output):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def request_in_thread(url: str, path: str, body: dict[str, Any], out: dict[str, Any]) -> Any:
    def run() -> None:
        try:
            with httpx.stream("POST", url + path, json=body, timeout=60) as r:
                out["status"] = r.status_code
                out["body"] = r.read()
        except httpx.HTTPError as exc:
            out["failure"] = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_drain_timeout_ends_open_requests_in_their_protocol() -> None:
    backend = TrickleBackend(b": still thinking\n\n", head=first_token("openai"), every=0.5,
                             total=120)
    with serve_on_loopback(backend.app) as backend_url:
        forge = Serve(["--plugin", "llamafile", "--backend-url", backend_url, "--model", "m",
                       "--drain-timeout", "1", "--stream-start-grace", "0.5"])
        try:
            forge.wait_ready()
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            messages = {**chat, "max_tokens": 20}
            outs: list[dict[str, Any]] = [{}, {}, {}]
            threads = [
                request_in_thread(forge.url, "/v1/chat/completions", {**chat, "stream": True},
                                  outs[0]),
                request_in_thread(forge.url, "/v1/messages", {**messages, "stream": True},
                                  outs[1]),
                request_in_thread(forge.url, "/v1/chat/completions", chat, outs[2]),
            ]
            deadline = time.monotonic() + 30
            while backend.requests < 3:
                assert time.monotonic() < deadline, "the requests never reached the backend"
                time.sleep(0.05)
            time.sleep(1.0)  # the streams are open (their 200 and first token went out)
            forge.proc.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(timeout=60)
            assert forge.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            forge.close()
        openai_stream, anthropic_stream, plain = outs
        assert openai_stream.get("status") == 200, outs
        frames = sse_frames(openai_stream["body"])
        assert "Hello" in frames[0] or any("Hello" in f for f in frames)
        assert frames[-1] == "data: [DONE]"
        error = json.loads(frames[-2].removeprefix("data: "))["error"]
        assert "shutting down" in error["message"]

        assert anthropic_stream.get("status") == 200, outs
        last = sse_frames(anthropic_stream["body"])[-1]
        assert last.startswith("event: error\n")
        assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == "overloaded_error"

        assert plain.get("status") == 503, outs
        assert "shutting down" in json.loads(plain["body"])["error"]["message"]
        deadline = time.monotonic() + 30
        while backend.closed < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backend.closed == 3  # the backend requests ended with them
