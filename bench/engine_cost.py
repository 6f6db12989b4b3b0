"""The guardrail engine's own CPU per request, in-process, without HTTP or sockets.

forge's engine in front of an httpx ``MockTransport`` that answers at once with a fixed body:
a prose answer and a valid ``get_weather`` call, non-streamed (``complete``) and streamed
(24 text chunks, or the call in a header and four argument fragments). Figures are CPU
microseconds per request (``time.process_time``), the minimum and median of ``--rounds``
rounds, so a busy machine inflates the median more than the minimum. Run it on two checkouts
to compare them, e.g. ``PYTHONPATH=/path/to/other/checkout python bench/engine_cost.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from forge_core.protocols import OPENAI
from forge_core.testing import WEATHER_TOOL, build_state, chat


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake-model",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _completion(message: dict[str, Any], finish: str) -> bytes:
    return json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }).encode()


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
BODIES = {
    ("prose", False): _completion({"role": "assistant", "content": "Hello, how can I help?"},
                                  "stop"),
    ("call", False): _completion({"role": "assistant", "content": None, "tool_calls": [CALL]},
                                 "tool_calls"),
    ("prose", True): b"".join(
        [_event({"role": "assistant"})]
        + [_event({"content": f"word{i} "}) for i in range(24)]
        + [_event({}, "stop"), b"data: [DONE]\n\n"]
    ),
    ("call", True): b"".join(
        [_event({"role": "assistant"}),
         _event({"tool_calls": [{**CALL, "index": 0,
                                 "function": {"name": "get_weather", "arguments": ""}}]})]
        + [_event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
           for piece in ('{"ci', 'ty": ', '"Par', 'is"}')]
        + [_event({}, "tool_calls"), b"data: [DONE]\n\n"]
    ),
}


async def _per_request(kind: str, streamed: bool, requests: int) -> float:
    body = BODIES[(kind, streamed)]
    media = "text/event-stream" if streamed else "application/json"
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": media})
    )
    state = build_state(transport)
    extra: dict[str, Any] = {"tools": [WEATHER_TOOL]} if kind == "call" else {}
    request = chat("Weather in Paris?", stream=streamed, **extra)

    async def one() -> None:
        call = OPENAI.parse(request).call
        if streamed:
            async for _ in state.engine.stream(call):
                pass
        else:
            await state.engine.complete(call)

    for _ in range(50):  # warm caches (compiled schemas, imports)
        await one()
    start = time.process_time()
    for _ in range(requests):
        await one()
    return (time.process_time() - start) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=300, help="per round")
    args = parser.parse_args()
    print(f"{'path':<10} {'answer':<6} {'min us':>8} {'median us':>10}")
    for streamed in (False, True):
        for kind in ("prose", "call"):
            rounds = sorted([await _per_request(kind, streamed, args.requests)
                             for _ in range(args.rounds)])
            path = "stream" if streamed else "complete"
            print(f"{path:<10} {kind:<6} {rounds[0]:>8.0f} {rounds[len(rounds) // 2]:>10.0f}")


if __name__ == "__main__":
    asyncio.run(main())
