"""A vLLM-like streaming load: many concurrent streams, each a paced answer, through forge.

A GPU server streams hundreds of answers at once at tens of tokens per second each. This runs
the fake backend with a per-chunk interval (``--interval``, default 0.04 s: 25 chunks/s per
stream) and, for each level of concurrent streams (``--levels``, default 16,64,128,256), keeps
that many streams open back to back for ``--duration`` seconds, directly and through forge
(and the passthrough with ``--targets``). It reports, per target and level:

* time to the first text (TTFT: the first chunk with non-empty content), p50/p90/p99, minus
  the backend's own first delay;
* the proxy's CPU time per relayed chunk, and its CPU use in cores;
* relayed chunks/s and resident memory at the end of the level (VmRSS, MB).

and the streams one core sustains: the concurrency at which forge's CPU would reach one core
(streams / cores used at the highest level whose TTFT p99 stays within ``--ttft-slack`` ms
of the direct p99 at the same level).

Usage: ``python bench/stream_load.py [--levels 16,64,256] [--duration 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from benchlib import (
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
    stop,
    wait_ready,
)
from proxy_overhead import request_body

from forge_core.managed import free_port


def first_text(chunks: list[tuple[float, bytes]]) -> float | None:
    """Arrival time of the first chunk carrying non-empty text (a role delta's empty
    ``content`` is no text: forge's has none, the backend's has ``""``)."""
    for t, chunk in chunks:
        if b'"content"' not in chunk:
            continue
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    return t
    return None


async def level(port: int, streams: int, duration: float, pids: list[int]) -> dict[str, Any]:
    body = request_body("plain-stream")
    start = time.perf_counter() + 1.0  # let every stream open first
    end = start + duration
    ttft: list[float] = []
    chunks = done = errors = 0

    async def worker(i: int) -> None:
        nonlocal chunks, done, errors
        await asyncio.sleep(i * 0.5 / streams)  # spread the starts over half a second
        client = RawClient("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                reply = await client.request("POST", "/v1/chat/completions", body)
                if reply.status != 200 or not reply.chunks:
                    errors += 1
                    continue
                if t0 >= start:
                    done += 1
                    first = first_text(reply.chunks)
                    if first is not None:
                        ttft.append(first - t0)
                if reply.chunks[-1][0] > start:
                    chunks += sum(1 for t, _ in reply.chunks if start <= t <= end)
        finally:
            await client.close()

    async def sampler() -> dict[int, float]:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = {pid: cpu_seconds(pid) for pid in pids}
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        return {pid: cpu_seconds(pid) - before[pid] for pid in pids}

    cpu, *_ = await asyncio.gather(sampler(), *(worker(i) for i in range(streams)))
    return {"streams": streams, "ttft": ttft, "chunks": chunks, "done": done,
            "errors": errors, "cpu": cpu}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ports = {name: free_port() for name in ("direct", *args.targets)}
    me = [sys.executable, "bench/proxy_overhead.py"]
    procs = {"direct": spawn(backend_argv(ports["direct"], args.chunks, args.first_delay,
                                          args.interval))}
    if "forge" in args.targets:
        procs["forge"] = spawn(forge_argv(ports["direct"], ports["forge"], args.forge_args,
                                          args.forge_plugin))
    if "passthrough" in args.targets:
        procs["passthrough"] = spawn(me + ["--role", "passthrough", "--port",
                                           str(ports["passthrough"]), "--backend-port",
                                           str(ports["direct"])])
    rows: list[dict[str, Any]] = []
    try:
        for name, proc in procs.items():
            await wait_ready(ports[name], "/health", proc)
        print(f"machine: {machine()}; load average before: {loadavg()}")
        print(f"{args.chunks} chunks per answer, one per {args.interval * 1000:g} ms, first "
              f"after {args.first_delay * 1000:g} ms; {args.duration:g} s per level")
        for streams in args.levels:
            for target in ("direct", *args.targets):
                pid = procs[target].pid
                out = await level(ports[target], streams, args.duration, [pid])
                lat = [x - args.first_delay for x in out["ttft"]]
                used = out["cpu"][pid]
                row = {
                    "target": target, "streams": streams, "errors": out["errors"],
                    "ttft_p50_ms": percentile(lat, 50) * 1000 if lat else float("nan"),
                    "ttft_p90_ms": percentile(lat, 90) * 1000 if lat else float("nan"),
                    "ttft_p99_ms": percentile(lat, 99) * 1000 if lat else float("nan"),
                    "chunks_per_s": out["chunks"] / args.duration,
                    "cpu_cores": used / args.duration,
                    "cpu_us_per_chunk": used / max(out["chunks"], 1) * 1e6,
                    "rss_mb": memory_kb(pid)["VmRSS"] / 1024,
                }
                rows.append(row)
                print(
                    f"  {target:<12} {streams:>4} streams: TTFT p50 {row['ttft_p50_ms']:7.1f} "
                    f"p90 {row['ttft_p90_ms']:7.1f} p99 {row['ttft_p99_ms']:7.1f} ms  "
                    f"{row['chunks_per_s']:7.0f} chunks/s  CPU {row['cpu_cores']:.2f} cores "
                    f"{row['cpu_us_per_chunk']:6.1f} us/chunk  RSS {row['rss_mb']:.1f} MB"
                    + (f"  ERRORS {row['errors']}" if row["errors"] else ""),
                    flush=True,
                )
        print(f"load average after: {loadavg()}")
    finally:
        for proc in procs.values():
            stop(proc)
    return {"machine": machine(), "settings": {k: v for k, v in vars(args).items()},
            "rows": rows, "sustained": sustained(args, rows)}


def sustained(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Streams per core for each proxy, from the highest level whose TTFT held."""
    out: dict[str, Any] = {}
    direct = {r["streams"]: r for r in rows if r["target"] == "direct"}
    for target in args.targets:
        held = [
            r for r in rows if r["target"] == target and r["streams"] in direct
            and r["ttft_p99_ms"] <= direct[r["streams"]]["ttft_p99_ms"] + args.ttft_slack
        ]
        if not held:
            print(f"{target}: TTFT degraded at every level (slack {args.ttft_slack:g} ms)")
            continue
        best = max(held, key=lambda r: r["streams"])
        per_core = best["streams"] / best["cpu_cores"] if best["cpu_cores"] else float("inf")
        out[target] = {"held_at": best["streams"], "streams_per_core": per_core}
        print(f"{target}: TTFT p99 within {args.ttft_slack:g} ms of direct up to "
              f"{best['streams']} streams, using {best['cpu_cores']:.2f} cores: about "
              f"{per_core:.0f} streams per core")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                        default=[16, 64, 128, 256])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--interval", type=float, default=0.04)
    parser.add_argument("--first-delay", type=float, default=0.05)
    parser.add_argument("--ttft-slack", type=float, default=50.0,
                        help="ms of TTFT p99 over direct that still counts as held")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=["forge"],
                        help="forge and/or passthrough")
    parser.add_argument("--forge-args", type=str.split, default=[])
    parser.add_argument("--forge-plugin", default="vllm",
                        help="forge's backend plugin (default vllm: the load is vLLM-like)")
    parser.add_argument("--json")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    run_and_save(run, args)


if __name__ == "__main__":
    main()
