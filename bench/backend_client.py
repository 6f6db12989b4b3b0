"""CPU time of forge's backend client alone: ``OpenAIWireClient.complete`` / ``stream`` calls
against the fake backend, measured in this process (``time.process_time``), best of rounds.

No server in front: the figure is the cost of building the request, httpx/httpcore and the
network layer (forge_core/httpio.py), and reading the answer into turns or chunks. Usage:
``python bench/backend_client.py [--calls 300] [--rounds 5]``; run it with another tree's
sources first on ``PYTHONPATH`` for a before/after.
"""

from __future__ import annotations

import argparse
import json
import time

from benchlib import backend_argv, spawn, stop, wait_ready
from proxy_overhead import request_body

from forge_core import aio
from forge_core.backend import BackendRequest, BackendSettings
from forge_core.managed import free_port
from forge_core.openai_client import OpenAIWireClient

SCENARIOS = ("tools", "plain-stream", "large")


async def run(args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    proc = spawn(backend_argv(port, args.chunks))
    try:
        await wait_ready(port, "/health", proc)
        url = f"http://127.0.0.1:{port}"
        settings = BackendSettings(backend_url=url, model="fake-model", timeout=30.0)
        client = OpenAIWireClient(settings, name="bench", base_url=url)
        out: dict[str, float] = {}
        try:
            for scenario in SCENARIOS:
                body = json.loads(request_body(scenario))
                body.pop("stream", None)
                streamed = scenario.endswith("-stream")

                async def once(body: dict = body, streamed: bool = streamed) -> None:
                    if streamed:
                        async for _ in client.stream(BackendRequest(body=body)):
                            pass
                    else:
                        await client.complete(BackendRequest(body=body))

                for _ in range(50):  # warm-up: pool, caches
                    await once()
                best = float("inf")
                for _ in range(args.rounds):
                    started = time.process_time()
                    for _ in range(args.calls):
                        await once()
                    best = min(best, (time.process_time() - started) / args.calls * 1e6)
                out[scenario] = round(best)
                print(f"{scenario:<13} {best:7.0f} us of CPU per call", flush=True)
        finally:
            await client.aclose()
        return out
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best one counts)")
    parser.add_argument("--chunks", type=int, default=24, help="events per streamed answer")
    aio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
