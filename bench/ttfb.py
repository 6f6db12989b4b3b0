"""Time to the first streamed text byte, directly from a slow backend and through forge.

A fake OpenAI backend streams its answer like a model would: the first chunk after
``--first-delay`` (default 200 ms), then one every ``--interval`` (default 50 ms). Each request
offers tools with ``tool_choice: auto``. forge's hold-back must not delay ordinary prose; only
text that may be a printed tool call waits until it resolves. Variants:

* ``prose``: a plain answer. The first text byte should arrive as fast as directly.
* ``code-fence``: prose that opens with a fenced code block in Python: held only until the
  fence's first line shows it is not JSON.
* ``prose-then-call``: a sentence, then a ``<tool_call>`` printed as text. The sentence streams
  at once; only the call is held, and arrives as a real (rescued) tool call at the end.
* ``call-first``: the answer is a printed ``<tool_call>``: nothing is text, the call is held
  until the stream ends and then sent as a tool call.
* ``native-call``: a native streamed tool call: held until complete and validated.

Each variant runs ``--requests`` times directly and through forge (alternating); medians are
printed. Usage: ``python bench/ttfb.py [--requests 5] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchlib import (
    MODEL,
    RawClient,
    backend_argv,
    forge_argv,
    loadavg,
    machine,
    median,
    run_and_save,
    spawn,
    sse_events,
    stop,
    wait_ready,
)

from forge_core.managed import free_port

VARIANTS = ("prose", "code-fence", "prose-then-call", "call-first", "native-call")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
]


def request_body(variant: str) -> bytes:
    return json.dumps({
        "model": MODEL,
        "messages": [{"role": "user", "content": f"bench:{variant}"}],
        "tools": TOOLS,
        "tool_choice": "auto",
        "stream": True,
    }).encode()


@dataclass
class Timing:
    """Milliseconds from sending the request; None when the stream had no such part."""

    first_text: float | None
    first_call: float | None
    end: float
    text: str
    calls: list[str]


async def one(port: int, variant: str) -> Timing:
    client = RawClient("127.0.0.1", port)
    try:
        t0 = time.perf_counter()
        reply = await client.request("POST", "/v1/chat/completions", request_body(variant))
    finally:
        await client.close()
    if reply.status != 200:
        raise RuntimeError(f"{variant} on port {port}: HTTP {reply.status} {reply.body[:200]!r}")
    first_text = first_call = None
    text, calls = "", []
    for at, event in sse_events(reply.chunks):
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text += delta["content"]
                first_text = first_text if first_text is not None else (at - t0) * 1000
            for call in delta.get("tool_calls") or []:
                first_call = first_call if first_call is not None else (at - t0) * 1000
                name = (call.get("function") or {}).get("name")
                if name:
                    calls.append(name)
    end = (reply.chunks[-1][0] - t0) * 1000 if reply.chunks else float("nan")
    return Timing(first_text, first_call, end, text, calls)


@dataclass
class Row:
    variant: str
    direct_first_text_ms: float | None
    forge_first_text_ms: float | None
    direct_first_call_ms: float | None
    forge_first_call_ms: float | None
    direct_end_ms: float
    forge_end_ms: float
    forge_text: str
    forge_calls: list[str]


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backend_port, forge_port = free_port(), free_port()
    procs = [
        spawn(backend_argv(backend_port, args.chunks, args.first_delay, args.interval)),
        spawn(forge_argv(backend_port, forge_port, args.forge_args), quiet=not args.verbose),
    ]
    rows: list[Row] = []
    try:
        await wait_ready(backend_port, "/health", procs[0])
        await wait_ready(forge_port, "/health", procs[1])
        print(f"machine: {machine()}; load average before: {loadavg()}")
        print(
            f"backend: first chunk after {args.first_delay * 1000:.0f} ms, then one every "
            f"{args.interval * 1000:.0f} ms; {args.requests} requests per variant and target"
        )
        for target_port in (backend_port, forge_port):  # warm both paths' connections
            await one(target_port, "prose")
        for variant in args.variants:
            direct: list[Timing] = []
            forge: list[Timing] = []
            for _ in range(args.requests):
                direct.append(await one(backend_port, variant))
                forge.append(await one(forge_port, variant))
            rows.append(Row(
                variant,
                med([t.first_text for t in direct]), med([t.first_text for t in forge]),
                med([t.first_call for t in direct]), med([t.first_call for t in forge]),
                median([t.end for t in direct]), median([t.end for t in forge]),
                forge[-1].text, forge[-1].calls,
            ))
        print(f"load average after: {loadavg()}")
    finally:
        for proc in procs:
            stop(proc)
    report(rows)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "loadavg_after": loadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "rows": [asdict(r) for r in rows],
    }


def fmt(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


def diff(a: float | None, b: float | None) -> str:
    return f"{b - a:+8.1f}" if a is not None and b is not None else f"{'':>8}"


def report(rows: list[Row]) -> None:
    print(
        "\nmedian ms from sending the request; 'text' = first non-empty content delta, "
        "'call' = first tool-call delta, 'end' = last byte"
    )
    print(
        f"{'variant':<16} {'text dir':>8} {'forge':>8} {'diff':>8} | {'call dir':>8} "
        f"{'forge':>8} | {'end dir':>8} {'forge':>8} {'diff':>8} | forge answered"
    )
    for r in rows:
        answered = []
        if r.forge_text:
            answered.append(f"text {r.forge_text[:24]!r}")
        if r.forge_calls:
            answered.append("call " + ",".join(r.forge_calls))
        print(
            f"{r.variant:<16} {fmt(r.direct_first_text_ms)} {fmt(r.forge_first_text_ms)} "
            f"{diff(r.direct_first_text_ms, r.forge_first_text_ms)} | "
            f"{fmt(r.direct_first_call_ms)} {fmt(r.forge_first_call_ms)} | "
            f"{fmt(r.direct_end_ms)} {fmt(r.forge_end_ms)} "
            f"{diff(r.direct_end_ms, r.forge_end_ms)} | " + "; ".join(answered)
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5, help="per variant and target")
    parser.add_argument("--first-delay", type=float, default=0.2, help="seconds to first chunk")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--chunks", type=int, default=10, help="text chunks of the prose answer")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--verbose", action="store_true", help="show forge's own output")
    parser.add_argument("--forge-args", type=str.split, default=[],
                        help="extra options for forge serve, e.g. '--log-level warning'")
    args = parser.parse_args()
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}")
    return args


def main() -> None:
    args = parse_args()
    run_and_save(run, args)


if __name__ == "__main__":
    main()
