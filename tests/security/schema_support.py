"""Helpers for the schema-safety tests: loopback servers that record or stall, and one
request through forge in either client protocol."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loop_watchdog import LoopWatchdog

from forge_core.testing import ScriptedBackend, forge_client

REMOTE_SCHEMA = {"type": "integer"}


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback that serves a JSON schema and records every path asked."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            body = json.dumps(REMOTE_SCHEMA).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def stalling_server(hold: float = 2.5) -> Iterator[tuple[str, list[int]]]:
    """Accepts connections and says nothing for ``hold`` seconds (a hanging URL)."""
    accepted: list[int] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            stop.wait(hold)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def openai_body(name: str, schema: Any, **extra: Any) -> dict[str, Any]:
    tool = {"type": "function", "function": {"name": name, "parameters": schema}}
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [tool],
        **extra,
    }


def anthropic_body(name: str, schema: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": name, "input_schema": schema}],
        **extra,
    }


async def ask(
    backend: ScriptedBackend, protocol: str, body: dict[str, Any], *, watch: bool = False
) -> tuple[int, str, list[dict[str, Any]]]:
    """POST one request; returns (status, response text, the calls the client got).

    Calls are ``{"name", "arguments"}`` with arguments decoded, from either protocol. With
    ``watch`` the request (not building the app) runs under a :class:`LoopWatchdog`."""
    url = "/v1/chat/completions" if protocol == "openai" else "/v1/messages"
    async with forge_client(backend) as http:
        if watch:
            async with LoopWatchdog():
                response = await http.post(url, json=body)
        else:
            response = await http.post(url, json=body)
    text = response.text
    calls: list[dict[str, Any]] = []
    if response.status_code == 200:
        data = response.json()
        if protocol == "openai":
            for call in data["choices"][0]["message"].get("tool_calls") or []:
                function = call["function"]
                arguments = json.loads(function["arguments"])
                calls.append({"name": function["name"], "arguments": arguments})
        else:
            for block in data["content"]:
                if block["type"] == "tool_use":
                    calls.append({"name": block["name"], "arguments": block["input"]})
    return response.status_code, text, calls
