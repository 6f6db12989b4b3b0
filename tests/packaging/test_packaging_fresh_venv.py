"""Each plugin installed alone with the core in a fresh virtual environment: `forge plugins`
lists only it, and `forge serve --plugin NAME` answers a chat request through a fake server.

The fake below answers the minimal documented shapes of each wire (OpenAI chat completions,
Ollama /api/chat and /api/tags, Anthropic /v1/messages); the plugins' own tests replay
recorded fixtures byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from forge_core.managed import free_port
from forge_core.testing import serve_on_loopback

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ["llamafile", "vllm", "ollama", "openai", "anthropic"]

COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi from fake"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}


def fake_app() -> Starlette:
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request: Request) -> JSONResponse:
        return JSONResponse(COMPLETION)

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def tags(request: Request) -> JSONResponse:
        return JSONResponse({"models": [{"name": "m:latest", "model": "m:latest"}]})

    async def ollama_chat(request: Request) -> JSONResponse:
        return JSONResponse({
            "model": "m:latest", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "hi from fake"}, "done": True,
            "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 3,
        })

    async def messages(request: Request) -> JSONResponse:
        return JSONResponse({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hi from fake"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 3},
        })

    return Starlette(routes=[
        Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/health", ok), Route("/props", ok), Route("/api/tags", tags),
        Route("/api/chat", ollama_chat, methods=["POST"]), Route("/api/ps", tags),
        Route("/v1/messages", messages, methods=["POST"]),
    ])


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with serve_on_loopback(fake_app()) as url:
        yield url


def make_venv(path: Path, plugin: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(ROOT), str(ROOT / "plugins" / f"forge-{plugin}")],
        check=True, timeout=600,
    )
    return path / "bin" / "forge"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_alone_in_fresh_venv(plugin: str, tmp_path: Path, fake_url: str) -> None:
    forge = make_venv(tmp_path / "venv", plugin)
    listed = subprocess.run([str(forge), "plugins"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()
             if line and not line.startswith((" ", "rescue", "request", "hooks"))]
    assert names == [plugin]

    other = "vllm" if plugin != "vllm" else "ollama"
    missing = subprocess.run([str(forge), "serve", "--plugin", other],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and f"pip install forge-proxy-{other}" in missing.stderr

    port = free_port()
    env = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}
    proc = subprocess.Popen(
        [str(forge), "serve", "--plugin", plugin, "--backend-url", fake_url, "--model", "m",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        ready = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "Proxy ready" in line:
                ready = line
                break
        assert f"plugin={plugin}" in ready, ready
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "hi from fake"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
