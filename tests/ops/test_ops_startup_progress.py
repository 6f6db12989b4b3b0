"""A managed backend that takes a while to load: forge says what it waits for, and for how long,
instead of staying silent."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from forge_core.managed import ManagedProcess, _loading_what, free_port

# A server whose /health answers 503 "Loading model" (as llama-server does) until a file
# appears, then 200; it prints a loading line to its log meanwhile.
SLOW_SERVER = textwrap.dedent("""
    import http.server, json, os, sys
    port, flag = int(sys.argv[1]), sys.argv[2]
    print("load_tensors: loading model tensors", flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = os.path.exists(flag)
            body = json.dumps({"status": "ok"} if ready else
                              {"error": {"code": 503, "message": "Loading model"}}).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


async def test_slow_start_logs_progress_with_what_and_how_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, flag = free_port(), tmp_path / "loaded"
    argv = [sys.executable, "-c", SLOW_SERVER, str(port), str(flag), "-m", "tiny-model.gguf"]
    proc = ManagedProcess("fake-server", argv, f"http://127.0.0.1:{port}/health",
                          load_timeout=60, restart=False, log_path=tmp_path / "log",
                          progress_interval=0.2)
    caplog.set_level(logging.INFO, logger="forge.managed")

    async def mark_loaded_after_progress() -> None:
        # The backend becomes healthy only after forge has reported progress twice.
        while sum("still starting" in r.message for r in caplog.records) < 2:
            await asyncio.sleep(0.05)
        flag.write_text("1")

    marker = asyncio.ensure_future(mark_loaded_after_progress())
    try:
        await proc.start()
    finally:
        marker.cancel()
        await proc.stop()
    lines = [r.getMessage() for r in caplog.records if "still starting" in r.getMessage()]
    assert len(lines) >= 2
    first = lines[0]
    assert "still starting fake-server (loading tiny-model.gguf)" in first
    assert "of at most 60s" in first
    assert "Loading model" in "".join(lines) or "not listening yet" in first
    assert "load_tensors" in "".join(lines)  # the backend's own last log line
    assert any("is ready after" in r.getMessage() for r in caplog.records)


def test_loading_what_prefers_the_model_argument() -> None:
    assert _loading_what(["llama-server", "-m", "/m/q.gguf", "--port", "1"]) == "/m/q.gguf"
    assert _loading_what(["python", "-m", "vllm.entrypoints", "--model", "org/m"]) == "org/m"
    assert _loading_what(["vllm", "serve", "org/m"]) == "org/m"
    assert _loading_what(["/usr/bin/server"]) == "server"
