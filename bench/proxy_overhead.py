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
    RawClient,
    backend_argv,
    cpu_seconds,
    forge_argv,
    loadavg,
    machine,
    memory_kb,
    percentile,
    run_and_save,
    spawn,
    sse_events,
    stop,
    wait_ready,
)
from peers import argv as peer_argv
from peers import install as install_peer
from peers import peers as peer_list

from forge_core.managed import free_port

TARGETS = ("direct", "passthrough", "forge")
PEER_TARGETS = ("upstream", "litellm")
"""Run when their venvs exist (see bench/peers.py), or when named with --targets."""
SCENARIOS = ("plain", "plain-stream", "tools", "tools-stream")
EXTRA_SCENARIOS = ("large",)
"""Not run by default: name them with --scenarios."""

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


def history(size: int) -> list[dict[str, Any]]:
    """About ``size`` bytes of an agent's earlier turns: file reads and their results."""
    turns: list[dict[str, Any]] = []
    line = "    return sorted(items, key=lambda item: (item.priority, item.name))\n"
    i = 0
    while sum(len(json.dumps(t)) for t in turns) < size:
        call_id = f"call_{i:04d}"
        turns.append({"role": "user", "content": f"Now look at module {i} and explain it."})
        turns.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/m{i}.py"})},
        }]})
        turns.append({"role": "tool", "tool_call_id": call_id, "content": line * 60})
        i += 1
    return turns


def request_body(scenario: str) -> bytes:
    """The client's request for a scenario: a short chat, with three tools for ``tools*``;
    ``large`` is a prose request carrying about 100 kB of agent history."""
    tools = scenario.startswith("tools")
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            *(history(100_000) if scenario == "large" else []),
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
    proxy_cpu_us: float
    """CPU time of the proxy process (forge or passthrough) per request, in microseconds."""
    backend_cpu_us: float


@dataclass
class Window:
    """What one measured window saw: completions, errors, latencies, CPU used per process."""

    done: int
    errors: int
    latencies: list[float]
    cpu: dict[int, float]


async def load(
    port: int, scenario: str, concurrency: int, duration: float, warmup: float,
    pids: list[int],
) -> Window:
    """Closed-loop load: ``concurrency`` connections each sending back-to-back requests.

    Requests completing inside the measured window count for throughput; those that also
    started inside it give the latencies. The CPU time of ``pids`` is read at the window's ends.
    """
    body = request_body(scenario)
    streamed = scenario.endswith("-stream")
    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[float] = []
    done = errors = 0

    async def worker() -> None:
        nonlocal done, errors
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
                elif t1 >= start:
                    done += 1
                    if t0 >= start:
                        latencies.append(t1 - t0)
        finally:
            await client.close()

    async def sampler() -> dict[int, float]:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = {pid: cpu_seconds(pid) for pid in pids}
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        return {pid: cpu_seconds(pid) - before[pid] for pid in pids}

    cpu, *_ = await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return Window(done, errors, latencies, cpu)


async def verify(port: int, scenario: str) -> None:
    client = RawClient("127.0.0.1", port)
    try:
        reply = await client.request("POST", "/v1/chat/completions", request_body(scenario))
    finally:
        await client.close()
    problem = check_reply(scenario, reply.status, reply.body, reply.chunks)
    if problem:
        raise RuntimeError(f"{scenario} on port {port}: {problem}")


async def measure(
    args: argparse.Namespace, ports: dict[str, int], pids: dict[str, int]
) -> list[Result]:
    results: list[Result] = []
    backend = pids["direct"]
    for scenario in args.scenarios:
        for target in args.targets:
            await verify(ports[target], scenario)
        for concurrency in args.concurrency:
            # Targets are interleaved, and each repeat goes round all of them, so a change in
            # the machine's load hits every target rather than skewing one.
            runs: dict[str, list[Window]] = {t: [] for t in args.targets}
            for _ in range(args.repeat):
                for target in args.targets:
                    runs[target].append(
                        await load(ports[target], scenario, concurrency, args.duration,
                                   args.warmup, sorted({pids[target], backend}))
                    )
            for target in args.targets:
                windows = runs[target]
                done = sum(w.done for w in windows)
                lat = [x for w in windows for x in w.latencies]

                result = Result(
                    scenario, target, concurrency, done, sum(w.errors for w in windows),
                    statistics.median(w.done / args.duration for w in windows),
                    percentile(lat, 50) * 1000, percentile(lat, 99) * 1000,
                    cpu_per_request(windows, pids[target]) if target != "direct" else 0.0,
                    cpu_per_request(windows, backend),
                )
                results.append(result)
                print(
                    f"  {scenario:<13} c={concurrency:<3} {target:<12} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"proxy CPU {result.proxy_cpu_us:6.0f} us/req"
                    + (f"  ERRORS {result.errors}" if result.errors else ""),
                    flush=True,
                )
    return results


def cpu_per_request(windows: list[Window], pid: int) -> float:
    """Microseconds of ``pid``'s CPU per completed request over ``windows``."""
    done = sum(w.done for w in windows)
    return sum(w.cpu[pid] for w in windows) / max(done, 1) * 1e6


def find(results: list[Result], scenario: str, target: str, c: int) -> Result | None:
    for r in results:
        if (r.scenario, r.target, r.concurrency) == (scenario, target, c):
            return r
    return None


def report(
    args: argparse.Namespace, results: list[Result], memory: dict[str, Any]
) -> dict[str, Any]:
    """Print the table and ratios; return them for --json."""
    print()
    print(
        f"{'scenario':<13} {'c':>3} {'target':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'proxy CPU us/req':>17}"
    )
    for r in results:
        cpu = f"{r.proxy_cpu_us:17.0f}" if r.target != "direct" else f"{'-':>17}"
        print(
            f"{r.scenario:<13} {r.concurrency:>3} {r.target:<12} {r.rps:8.0f} "
            f"{r.p50_ms:8.2f} {r.p99_ms:8.2f} {cpu}"
            + (f"  errors={r.errors}" if r.errors else "")
        )
    lo, hi = min(args.concurrency), max(args.concurrency)
    ratios: list[dict[str, Any]] = []
    print(
        f"\nAdded p50 latency at c={lo} over direct, ms (target: forge - passthrough <= 1 ms); "
        f"forge throughput at c={hi} as a share of the passthrough's (target >= 80%); "
        f"proxy CPU per request, forge / passthrough, at c={hi}:"
    )
    print(
        f"{'scenario':<13} {'passthrough':>11} {'forge':>7} {'forge-pass':>11} {'rps share':>10} "
        f"{'CPU ratio':>10}"
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
            row["forge_cpu_ratio"] = fh.proxy_cpu_us / ph.proxy_cpu_us
        ratios.append(row)

        def cell(key: str, fmt: str, width: int, row: dict[str, Any] = row) -> str:
            return format(row[key], fmt).rjust(width) if key in row else "-".rjust(width)

        verdicts = []
        if "forge_over_passthrough_p50_ms" in row:
            ok = row["forge_over_passthrough_p50_ms"] <= 1.0
            verdicts.append("latency " + ("ok" if ok else "MISSED"))
        if "forge_rps_share" in row:
            verdicts.append("throughput " + ("ok" if row["forge_rps_share"] >= 0.8 else "MISSED"))
        print(
            f"{scenario:<13} {cell('passthrough_added_p50_ms', '.2f', 11)} "
            f"{cell('forge_added_p50_ms', '.2f', 7)} "
            f"{cell('forge_over_passthrough_p50_ms', '+.2f', 11)} "
            f"{cell('forge_rps_share', '.0%', 10)} {cell('forge_cpu_ratio', '.2f', 10)}   "
            + ", ".join(verdicts)
        )
    relative = relative_table(args, results)
    rss = memory.get("forge", {})
    if rss:
        now, peak = rss["VmRSS"] / 1024, rss["VmHWM"] / 1024
        other = memory.get("passthrough", {}).get("VmRSS")
        print(
            f"\nforge resident memory after the run: {now:.1f} MB (peak {peak:.1f} MB) "
            f"{'ok' if peak < 100 else 'MISSED'} (target < 100 MB)"
            + (f"; passthrough {other / 1024:.1f} MB" if other else "")
        )
    return {"ratios": ratios, "relative": relative, "memory_kb": memory}


def relative_table(args: argparse.Namespace, results: list[Result]) -> list[dict[str, Any]]:
    """Each target's requests/s relative to the passthrough's in the same run (the issue's
    table), and forge's targets: >= 1.0x the passthrough, >= 1.2x upstream, >= 5x LiteLLM."""
    shown = [t for t in args.targets if t not in ("direct", "passthrough")]
    print("\nrequests/s relative to the passthrough; forge over each peer:")
    print(f"{'scenario':<13} {'c':>3} " + " ".join(f"{t:>9}" for t in shown)
          + "   forge/upstream  forge/litellm")
    rows: list[dict[str, Any]] = []
    for scenario in args.scenarios:
        for c in args.concurrency:
            base = find(results, scenario, "passthrough", c)
            if base is None or not base.rps:
                continue
            row: dict[str, Any] = {"scenario": scenario, "concurrency": c}
            for t in shown:
                r = find(results, scenario, t, c)
                row[t] = r.rps / base.rps if r else None
            forge = find(results, scenario, "forge", c)
            for peer in ("upstream", "litellm"):
                other = find(results, scenario, peer, c)
                if forge and other and other.rps:
                    row[f"forge_over_{peer}"] = forge.rps / other.rps
            rows.append(row)

            def fmt(v: float | None, goal: float = 0.0) -> str:
                if v is None:
                    return "-"
                return f"{v:.2f}" + ("" if not goal or v >= goal else " MISSED")

            print(
                f"{scenario:<13} {c:>3} "
                + " ".join(f"{fmt(row[t], 1.0 if t == 'forge' else 0.0):>9}" for t in shown)
                + f"   {fmt(row.get('forge_over_upstream'), 1.2):>14}"
                + f"  {fmt(row.get('forge_over_litellm'), 5.0):>13}"
            )
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    known = peer_list(args.peers_dir)
    for name in args.targets:
        if name in known and args.install_peers and not known[name].installed():
            install_peer(known[name])
    skipped = [n for n in args.targets if n in known and not known[n].installed()]
    for name in skipped:
        print(f"note: peer {name!r} not installed ({known[name].venv}); skipped "
              "(--install-peers installs it)")
    args.targets = [t for t in args.targets if t not in skipped]
    ports = {name: free_port() for name in ("direct", *args.targets)}
    me = [sys.executable, __file__]
    # Only the named targets run (the backend always): any subset of them can be measured.
    procs = {"direct": spawn(backend_argv(ports["direct"], args.chunks))}
    if "passthrough" in ports:
        procs["passthrough"] = spawn(me + [
            "--role", "passthrough", "--port", str(ports["passthrough"]),
            "--backend-port", str(ports["direct"]),
        ])
    if "forge" in ports:
        procs["forge"] = spawn(
            forge_argv(ports["direct"], ports["forge"], args.forge_args, args.forge_plugin),
            quiet=not args.verbose,
        )
    for name in args.targets:
        if name in known:
            procs[name] = spawn(peer_argv(known[name], ports["direct"], ports[name]),
                                quiet=not args.verbose)
    try:
        for name, proc in procs.items():
            # LiteLLM takes a while to import
            health = known[name].health if name in known else "/health"
            await wait_ready(ports[name], health, proc, timeout=180 if name in known else 30)
        idle = memory_kb(procs["forge"].pid) if "forge" in procs else {}
        print(f"machine: {machine()}; load average before: {loadavg()}")
        print(
            f"each run: {args.warmup:g}s warm-up + {args.duration:g}s measured, "
            f"x{args.repeat}; {args.chunks} text chunks per streamed answer"
        )
        started = time.time()
        pids = {name: proc.pid for name, proc in procs.items()}
        results = await measure(args, ports, pids)
        memory = {name: memory_kb(procs[name].pid) for name in procs if name != "direct"}
        if idle:
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
    """Child-process entry: run the passthrough."""
    import uvicorn
    from passthrough import make_passthrough

    from forge_core import aio

    # Same uvicorn settings as forge's CLI (FORGE_LOOP / FORGE_HTTP too), so only the
    # application differs.
    uvicorn.run(
        make_passthrough(f"http://127.0.0.1:{args.backend_port}"), host="127.0.0.1",
        port=args.port, log_level="warning", access_log=False, lifespan="on",
        http=aio.http_impl(), loop="auto" if aio.loop_factory() else "asyncio",
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
                        help="comma-separated, from "
                        f"{','.join(SCENARIOS + EXTRA_SCENARIOS)} (default: all but large)")
    parser.add_argument("--targets", type=lambda s: s.split(","),
                        default=list(TARGETS + PEER_TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS + PEER_TARGETS)} "
                        "(peers without a venv are skipped)")
    parser.add_argument("--peers-dir", default="/work",
                        help="where the peers' venvs are (venv-upstream, venv-litellm)")
    parser.add_argument("--install-peers", action="store_true",
                        help="create the named peers' venvs and install them first")
    parser.add_argument("--chunks", type=int, default=24, help="text chunks per streamed answer")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--verbose", action="store_true", help="show forge's own output")
    parser.add_argument("--forge-args", type=str.split, default=[],
                        help="extra options for forge serve, e.g. '--log-level warning'")
    parser.add_argument("--forge-plugin", default="llamafile",
                        help="forge's backend plugin (llamafile: a new backend connection per "
                        "stream, as llama-server needs; vllm: pooled)")
    parser.add_argument("--role", choices=["passthrough"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.scenarios:
        if name not in SCENARIOS + EXTRA_SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in args.targets:
        if name not in TARGETS + PEER_TARGETS:
            parser.error(f"unknown target {name!r}")
    return args


def main() -> None:
    args = parse_args()
    if args.role:
        serve_role(args)
        return
    run_and_save(run, args)


if __name__ == "__main__":
    main()
