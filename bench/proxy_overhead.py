"""forge's own cost: requests/s and latency of forge vs a bare passthrough vs the backend.

One run starts, each in its own process on loopback: a fake OpenAI backend (fixed answers,
no delay), a bare starlette + httpx passthrough proxy, and forge itself through its real CLI
(``forge serve --plugin llamafile --backend-url ...``). This process is the load generator:
a raw HTTP/1.1 client on keep-alive connections, at each concurrency level, against each target,
for each scenario (prose or a valid native tool call, non-streamed and streamed). It prints a
table and the ratios the targets are stated in:

* forge's added p50 latency at concurrency 1 over the passthrough's (target <= 1 ms);
* forge's throughput at concurrency 16 as a share of the passthrough's (target >= 80%);
* forge's resident memory after the run (target < 100 MB).

Usage: ``python bench/proxy_overhead.py [--duration 2] [--json out.json]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchlib import (
    MODEL,
    FakeBackend,
    RawClient,
    forge_argv,
    free_port,
    loadavg,
    machine,
    memory_kb,
    percentile,
    plans,
    serve_backend,
    spawn,
    sse_events,
    stop,
    wait_ready,
)

TARGETS = ("direct", "passthrough", "forge")
SCENARIOS = ("plain", "plain-stream", "tools", "tools-stream")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "required": ["query"],
        },
    },
}
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a text file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


def request_body(scenario: str) -> bytes:
    """The client's request for a scenario: a short chat, with three tools for ``tools*``."""
    tools = scenario.startswith("tools")
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "bench:tools" if tools else "bench:plain"},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
    }
    if tools:
        body["tools"] = [WEATHER, SEARCH, READ_FILE]
        body["tool_choice"] = "auto"
    if scenario.endswith("-stream"):
        body["stream"] = True
    return json.dumps(body).encode()


def check_reply(scenario: str, status: int, body: bytes, chunks: list[tuple[float, bytes]]) -> str:
    """Why a reply is not the expected answer ('' when it is), so no target is timed broken."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if scenario.endswith("-stream"):
        events = [e for _, e in sse_events(chunks)]
        deltas = [c["delta"] for e in events for c in e.get("choices", [])]
        text = "".join(d.get("content") or "" for d in deltas)
        calls = [t for d in deltas for t in d.get("tool_calls") or []]
        names = [t["function"]["name"] for t in calls if t.get("function", {}).get("name")]
        args = "".join(t.get("function", {}).get("arguments") or "" for t in calls)
    else:
        message = json.loads(body)["choices"][0]["message"]
        text = message.get("content") or ""
        names = [t["function"]["name"] for t in message.get("tool_calls") or []]
        args = "".join(t["function"]["arguments"] for t in message.get("tool_calls") or [])
    if scenario.startswith("tools"):
        if names != ["get_weather"] or json.loads(args) != {"city": "Paris", "unit": "c"}:
            return f"expected one get_weather call, got {names} {args!r}"
    elif not text.startswith("The weather in Paris"):
        return f"unexpected text {text[:60]!r}"
    return ""


@dataclass
class Result:
    scenario: str
    target: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


async def load(
    port: int, scenario: str, concurrency: int, duration: float, warmup: float
) -> tuple[int, int, list[float]]:
    """Closed-loop load: ``concurrency`` connections each sending back-to-back requests.

    Returns (completed in the measured window, errors, latencies in seconds of those).
    """
    body = request_body(scenario)
    streamed = scenario.endswith("-stream")
    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        client = RawClient("127.0.0.1", port)
        try:
            while True:
                t0 = time.perf_counter()
                reply = await client.request("POST", "/v1/chat/completions", body)
                t1 = time.perf_counter()
                if t1 > end:
                    return
                if reply.status != 200 or (streamed and not reply.chunks):
                    errors += 1
                elif t0 >= start:
                    latencies.append(t1 - t0)
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), errors, latencies


async def verify(port: int, scenario: str) -> None:
    client = RawClient("127.0.0.1", port)
    try:
        reply = await client.request("POST", "/v1/chat/completions", request_body(scenario))
    finally:
        await client.close()
    problem = check_reply(scenario, reply.status, reply.body, reply.chunks)
    if problem:
        raise RuntimeError(f"{scenario} on port {port}: {problem}")


async def measure(args: argparse.Namespace, ports: dict[str, int]) -> list[Result]:
    results: list[Result] = []
    for scenario in args.scenarios:
        for target in args.targets:
            await verify(ports[target], scenario)
        for concurrency in args.concurrency:
            # Targets are interleaved, and each repeat goes round all of them, so a change in
            # the machine's load hits every target rather than skewing one.
            runs: dict[str, list[tuple[int, int, list[float]]]] = {t: [] for t in args.targets}
            for _ in range(args.repeat):
                for target in args.targets:
                    runs[target].append(
                        await load(ports[target], scenario, concurrency, args.duration,
                                   args.warmup)
                    )
            for target in args.targets:
                done = sum(r[0] for r in runs[target])
                errors = sum(r[1] for r in runs[target])
                rps = statistics.median(r[0] / args.duration for r in runs[target])
                lat = [x for r in runs[target] for x in r[2]]
                result = Result(
                    scenario, target, concurrency, done, errors, rps,
                    percentile(lat, 50) * 1000, percentile(lat, 99) * 1000,
                )
                results.append(result)
                print(
                    f"  {scenario:<13} c={concurrency:<3} {target:<12} {rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                    + (f"  ERRORS {errors}" if errors else ""),
                    flush=True,
                )
    return results


def find(results: list[Result], scenario: str, target: str, c: int) -> Result | None:
    for r in results:
        if (r.scenario, r.target, r.concurrency) == (scenario, target, c):
            return r
    return None


def report(args: argparse.Namespace, results: list[Result], memory: dict[str, Any]) -> dict[str, Any]:
    """Print the table and ratios; return them for --json."""
    print()
    print(f"{'scenario':<13} {'c':>3} {'target':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(
            f"{r.scenario:<13} {r.concurrency:>3} {r.target:<12} {r.rps:8.0f} "
            f"{r.p50_ms:8.2f} {r.p99_ms:8.2f}" + (f"  errors={r.errors}" if r.errors else "")
        )
    lo, hi = min(args.concurrency), max(args.concurrency)
    ratios: list[dict[str, Any]] = []
    print()
    print(
        f"{'scenario':<13} {'pass+ p50':>10} {'forge+ p50':>11} {'forge-pass':>11} "
        f"{'forge/pass rps':>15}   (added latency at c={lo} vs direct; throughput at c={hi})"
    )
    for scenario in args.scenarios:
        d, p, f = (find(results, scenario, t, lo) for t in ("direct", "passthrough", "forge"))
        ph, fh = (find(results, scenario, t, hi) for t in ("passthrough", "forge"))
        row: dict[str, Any] = {"scenario": scenario}
        if d and p:
            row["passthrough_added_p50_ms"] = p.p50_ms - d.p50_ms
        if d and f:
            row["forge_added_p50_ms"] = f.p50_ms - d.p50_ms
        if p and f:
            row["forge_over_passthrough_p50_ms"] = f.p50_ms - p.p50_ms
        if ph and fh:
            row["forge_rps_share"] = fh.rps / ph.rps
        ratios.append(row)

        def cell(key: str, fmt: str, width: int, row: dict[str, Any] = row) -> str:
            return format(row[key], fmt).rjust(width) if key in row else "-".rjust(width)

        latency_ok = row.get("forge_over_passthrough_p50_ms", 0) <= 1.0
        share_ok = row.get("forge_rps_share", 1) >= 0.8
        print(
            f"{scenario:<13} {cell('passthrough_added_p50_ms', '.2f', 10)} "
            f"{cell('forge_added_p50_ms', '.2f', 11)} "
            f"{cell('forge_over_passthrough_p50_ms', '+.2f', 11)} "
            f"{cell('forge_rps_share', '.0%', 15)}   "
            f"latency {'ok' if latency_ok else 'MISSED'}, throughput {'ok' if share_ok else 'MISSED'}"
        )
    rss = memory.get("forge", {})
    if rss:
        mb = rss["VmRSS"] / 1024
        print(
            f"\nforge resident memory after the run: {mb:.1f} MB (peak {rss['VmHWM'] / 1024:.1f} MB)"
            f" {'ok' if rss['VmHWM'] / 1024 < 100 else 'MISSED'} (target < 100 MB); passthrough "
            f"{memory.get('passthrough', {}).get('VmRSS', 0) / 1024:.1f} MB"
        )
    return {"ratios": ratios, "memory_kb": memory}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ports = {"direct": free_port(), "passthrough": free_port(), "forge": free_port()}
    me = [sys.executable, __file__]
    procs = {
        "direct": spawn(me + ["--role", "backend", "--port", str(ports["direct"]),
                              "--chunks", str(args.chunks)]),
        "passthrough": spawn(me + ["--role", "passthrough", "--port", str(ports["passthrough"]),
                                   "--backend-port", str(ports["direct"])]),
        "forge": spawn(forge_argv(ports["direct"], ports["forge"]), quiet=not args.verbose),
    }
    try:
        await wait_ready(ports["direct"], "/health", procs["direct"])
        await wait_ready(ports["passthrough"], "/health", procs["passthrough"])
        await wait_ready(ports["forge"], "/health", procs["forge"])
        idle = memory_kb(procs["forge"].pid)
        print(f"machine: {machine()}; load average before: {loadavg()}")
        print(
            f"each run: {args.warmup:g}s warm-up + {args.duration:g}s measured, "
            f"x{args.repeat}; {args.chunks} text chunks per streamed answer"
        )
        started = time.time()
        results = await measure(args, ports)
        memory = {name: memory_kb(procs[name].pid) for name in ("forge", "passthrough")}
        memory["forge_idle"] = idle
        print(f"load average after: {loadavg()} ({time.time() - started:.0f}s of load)")
    finally:
        for proc in procs.values():
            stop(proc)
    summary = report(args, results, memory)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "loadavg_after": loadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("role", "json")},
        "results": [asdict(r) for r in results],
        **summary,
    }


def serve_role(args: argparse.Namespace) -> None:
    """Child-process entry: run the fake backend or the passthrough."""
    if args.role == "backend":
        asyncio.run(serve_backend(args.port, FakeBackend(plans(chunks=args.chunks))))
        return
    import uvicorn
    from passthrough import make_passthrough

    # Same uvicorn settings as forge's CLI, so only the application differs.
    uvicorn.run(
        make_passthrough(f"http://127.0.0.1:{args.backend_port}"), host="127.0.0.1",
        port=args.port, log_level="warning", access_log=False, lifespan="on",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0,
                        help="measured seconds per (scenario, concurrency, target) run")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds first")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all targets")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16], help="comma-separated levels (default 1,16)")
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--chunks", type=int, default=24, help="text chunks per streamed answer")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--verbose", action="store_true", help="show forge's own output")
    parser.add_argument("--role", choices=["backend", "passthrough"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in args.targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}")
    return args


def main() -> None:
    args = parse_args()
    if args.role:
        serve_role(args)
        return
    out = asyncio.run(run(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
