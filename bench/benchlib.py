"""Shared pieces of forge's benchmarks: a fake OpenAI backend, a raw HTTP client, processes.

Both the fake backend and the client speak HTTP/1.1 directly over asyncio streams instead of
going through a framework: they are the fixed parts of every measurement, so they should cost
as little CPU as possible and add no noise of their own on a 2-core machine.

The backend picks its answer from the last message of the request: content ``bench:NAME``
selects the :class:`Plan` registered under NAME (see :data:`PLANS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MODEL = "fake-model"

# --- what the fake backend answers --------------------------------------------------------------


@dataclass
class Plan:
    """One scripted answer: the whole message (non-streamed) and its stream deltas."""

    message: dict[str, Any]
    deltas: list[dict[str, Any]]
    finish_reason: str = "stop"
    first_delay: float = 0.0
    """Seconds before the first streamed chunk (and before a non-streamed answer)."""
    interval: float = 0.0
    """Seconds between streamed chunks."""


def text_plan(words: Sequence[str], **kw: Any) -> Plan:
    """An answer in prose, streamed one piece of ``words`` per chunk."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": w} for w in words]
    return Plan({"role": "assistant", "content": "".join(words)}, deltas, **kw)


def tool_plan(name: str, arguments: dict[str, Any], pieces: int = 4, **kw: Any) -> Plan:
    """A native tool call; streamed as a header delta then the arguments in ``pieces``."""
    args = json.dumps(arguments)
    call_id = "call_bench0001"
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
        ],
    }
    step = max(1, -(-len(args) // pieces))
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None}]
    deltas.append({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]})
    for i in range(0, len(args), step):
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + step]}}]})
    return Plan(message, deltas, finish_reason="tool_calls", **kw)


def words_of(text: str) -> list[str]:
    """Split text into word-sized stream pieces that join back to ``text``."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


PROSE = (
    "The weather in Paris today is mild and mostly sunny, with a light breeze from the west "
    "and a high of nineteen degrees; an umbrella should not be needed this afternoon."
)

USAGE = {"prompt_tokens": 42, "completion_tokens": 24, "total_tokens": 66}


def plans(chunks: int = 24, first_delay: float = 0.0, interval: float = 0.0) -> dict[str, Plan]:
    """The benchmark plans: ``plain`` prose, ``tools`` a valid native call, plus TTFB variants."""
    timing = {"first_delay": first_delay, "interval": interval}
    words = words_of(PROSE)
    # Stretch or cut the prose to exactly ``chunks`` pieces, so the chunk count is a knob.
    prose = [words[i % len(words)] for i in range(chunks)]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    call_pieces = [call[i:i + 12] for i in range(0, len(call), 12)]
    intro = words_of("Let me look that up for you.")
    code = ["```", "python\n", "print(", "'hello')\n", "```\n", *words_of("That prints hello.")]
    return {
        "plain": text_plan(prose, **timing),
        "tools": tool_plan("get_weather", {"city": "Paris", "unit": "c"}, **timing),
        "prose": text_plan(prose, **timing),
        "prose-then-call": text_plan(intro + ["\n"] + call_pieces, **timing),
        "call-first": text_plan(call_pieces, **timing),
        "native-call": tool_plan("get_weather", {"city": "Paris", "unit": "c"}, pieces=8,
                                 **timing),
        "code-fence": text_plan(code, **timing),
    }


# --- fake backend: raw HTTP/1.1 over asyncio streams ---------------------------------------------


def _response(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


@dataclass
class FakeBackend:
    """An OpenAI-wire server that answers every chat request from a :class:`Plan`."""

    plans: dict[str, Plan]
    default: str = "plain"
    _cache: dict[str, tuple[bytes, list[bytes]]] = field(default_factory=dict)

    def _rendered(self, name: str) -> tuple[bytes, list[bytes]]:
        """The non-streamed response bytes and the stream's SSE events, built once per plan."""
        if name not in self._cache:
            plan = self.plans[name]
            head = {"id": "chatcmpl-bench", "created": 0, "model": MODEL}
            body = {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": plan.message, "finish_reason": plan.finish_reason}
            ], "usage": USAGE}
            events = []
            for delta in plan.deltas:
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                events.append({**head, "object": "chat.completion.chunk", "choices": [choice]})
            final = {"index": 0, "delta": {}, "finish_reason": plan.finish_reason}
            events.append({**head, "object": "chat.completion.chunk", "choices": [final]})
            sse = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
            self._cache[name] = (_response("200 OK", json.dumps(body).encode()), sse)
        return self._cache[name]

    def _choose(self, request: dict[str, Any]) -> str:
        messages = request.get("messages") or [{}]
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        if isinstance(content, str) and content.startswith("bench:"):
            name = content[6:].strip()
            if name in self.plans:
                return name
        return self.default

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                length = 0
                for line in header_lines:
                    if line[:15].lower() == "content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if method == "POST" and path.endswith("/chat/completions"):
                    await self._chat(json.loads(body), writer)
                elif path.endswith("/models"):
                    models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
                    writer.write(_response("200 OK", json.dumps(models).encode()))
                elif path == "/props":
                    props = {"default_generation_settings": {"n_ctx": 131072}}
                    writer.write(_response("200 OK", json.dumps(props).encode()))
                elif path == "/health":
                    writer.write(_response("200 OK", b'{"status":"ok"}'))
                else:
                    writer.write(_response("404 Not Found", b'{"error":"not found"}'))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    async def _chat(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        name = self._choose(request)
        plan = self.plans[name]
        whole, events = self._rendered(name)
        if plan.first_delay:
            await asyncio.sleep(plan.first_delay)
        if not request.get("stream"):
            writer.write(whole)
            return
        writer.write(STREAM_HEAD)
        for i, event in enumerate(events):
            if i and plan.interval:
                await asyncio.sleep(plan.interval)
            writer.write(_chunk(event))
            await writer.drain()  # each event is its own send, as a token-by-token server does
        tail = b""
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                     "model": MODEL, "choices": [], "usage": USAGE}
            tail = _chunk(b"data: " + json.dumps(usage).encode() + b"\n\n")
        writer.write(tail + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve_backend(port: int, backend: FakeBackend) -> None:
    """Serve ``backend`` on 127.0.0.1:``port`` until cancelled."""
    server = await asyncio.start_server(backend.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- raw HTTP/1.1 client ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    chunks: list[tuple[float, bytes]]
    """(arrival time, payload) of each transfer chunk of a chunked (streamed) response."""


class RawClient:
    """One keep-alive connection; requests go one after another on it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.reconnects = 0
        """Requests resent because the server had silently closed the kept-alive connection."""

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes = b"") -> Reply:
        message = (
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
        reused = self._reader is not None
        reader, writer = await self._connect()
        try:
            writer.write(message)
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            # The server closed a kept-alive connection without saying so (upstream forge
            # after a stream): resend once on a new one, as HTTP clients do.
            self.reconnects += 1
            await self.close()
            reader, writer = await self._connect()
            writer.write(message)
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        chunks: list[tuple[float, bytes]] = []
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append((time.perf_counter(), data[:-2]))
            payload = b"".join(c for _, c in chunks)
        elif length is None and status not in (204, 304):  # delimited by the close
            payload = await reader.read()
            chunks.append((time.perf_counter(), payload))
            close = True
        else:
            payload = await reader.readexactly(length or 0)
        if close:
            await self.close()
        return Reply(status, payload, chunks)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def sse_events(chunks: Sequence[tuple[float, bytes]]) -> list[tuple[float, dict[str, Any]]]:
    """Decoded ``data:`` events of a stream, each with the arrival time of its last byte."""
    out: list[tuple[float, dict[str, Any]]] = []
    buffer = b""
    for at, data in chunks:
        buffer += data
        *complete, buffer = buffer.split(b"\n\n")
        for event in complete:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    out.append((at, json.loads(line[5:])))
    return out


# --- statistics, processes, the machine ---------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spawn(argv: list[str], *, quiet: bool = True) -> subprocess.Popen[bytes]:
    """Start a server process; its output goes to /dev/null unless ``quiet`` is False."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)


async def wait_ready(
    port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    """Poll GET ``path`` until it answers 200; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {proc.args!r} exited with {proc.returncode}")
        client = RawClient("127.0.0.1", port)
        try:
            if (await client.request("GET", path)).status == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await client.close()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server on port {port} not ready after {timeout:g}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server we started, then kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine() -> str:
    """CPU model and count, Python version: the context every figure needs."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    py = ".".join(map(str, sys.version_info[:3]))
    return f"{model}, {os.cpu_count()} CPUs, Python {py}"


def forge_argv(
    backend_port: int, port: int, extra: Sequence[str] = (), plugin: str = "llamafile"
) -> list[str]:
    """The real CLI: ``forge serve --plugin llamafile`` (or ``plugin``) in external mode at the
    fake backend, with forge's defaults (``extra`` adds options, such as ``--log-level
    warning``). llamafile asks for a new backend connection per stream (llama-server cannot
    reuse one, see docs/benchmarks.md); ``vllm`` keeps the pooled one."""
    return [
        sys.executable, "-c", "from forge_core.cli import main; main()", "serve",
        "--plugin", plugin, "--backend-url", f"http://127.0.0.1:{backend_port}",
        "--model", MODEL, "--port", str(port), *extra,
    ]


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by all threads of a process, from the scheduler's ns counters."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between listing and reading
    return total / 1e9


def backend_argv(
    port: int, chunks: int, first_delay: float = 0.0, interval: float = 0.0
) -> list[str]:
    """The command that runs the fake backend in its own process."""
    return [
        sys.executable, os.path.abspath(__file__), "--port", str(port), "--chunks", str(chunks),
        "--first-delay", str(first_delay), "--interval", str(interval),
    ]


def run_and_save(run: Callable[[Any], Awaitable[dict[str, Any]]], args: Any) -> None:
    """Run a benchmark's ``run(args)``; write its figures to ``args.json`` when one is named."""
    out = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


def main() -> None:
    """Run the fake backend (the benchmarks start it in its own process with this)."""
    import argparse

    parser = argparse.ArgumentParser(description="forge's benchmark fake OpenAI backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--first-delay", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=0.0)
    args = parser.parse_args()
    backend = FakeBackend(plans(args.chunks, args.first_delay, args.interval))
    asyncio.run(serve_backend(args.port, backend))


if __name__ == "__main__":
    main()
