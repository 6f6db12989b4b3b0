"""The two stream-path savings found by bench/: pieces ready together leave in one write
(without any piece waiting for another), and a streamed backend response is read to its end
so its pooled connection can be reused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from forge_core.backend import BackendRequest, BackendSettings
from forge_core.openai_client import OpenAIWireClient
from forge_core.testing import serve_on_loopback
from forge_core.wire.sse import Coalescer


async def guard(awaitable: object, timeout: float = 10.0) -> object:
    """Await with a hang guard (a deadlock fails the test instead of hanging it)."""
    async with asyncio.timeout(timeout):
        return await awaitable  # type: ignore[misc]


async def test_pieces_ready_together_are_taken_in_one_batch() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"a", b"b", b"c"):
            yield piece

    coalescer = Coalescer(pieces())
    assert await guard(coalescer.take()) == (b"abc", True)


async def test_a_lone_piece_does_not_wait_for_the_next() -> None:
    release = asyncio.Event()

    async def pieces() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()  # the next piece comes only after the first was taken
        yield b"second"

    coalescer = Coalescer(pieces())
    assert await guard(coalescer.take()) == (b"first", False)
    release.set()
    assert await guard(coalescer.take()) == (b"second", True)  # the end came with it


async def test_a_failure_comes_after_the_pieces_before_it() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"sent"
        raise ValueError("backend broke")

    coalescer = Coalescer(pieces())
    assert await guard(coalescer.take()) == (b"sent", False)
    with pytest.raises(ValueError, match="backend broke"):
        await guard(coalescer.take())


async def test_the_buffer_is_bounded_and_close_finishes_the_source() -> None:
    produced: list[int] = []
    closed = asyncio.Event()

    async def pieces() -> AsyncIterator[bytes]:
        try:
            for i in range(100):
                produced.append(i)
                yield b"x" * 10
        finally:
            closed.set()

    coalescer = Coalescer(pieces(), limit=30)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(produced) == 3  # parked once 30 bytes are waiting for the sender
    data, done = await guard(coalescer.take())
    assert (data, done) == (b"x" * 30, False)
    await guard(coalescer.aclose())
    assert closed.is_set()
    assert len(produced) < 100


async def test_a_streamed_completion_leaves_its_connection_reusable() -> None:
    ports: list[int] = []
    sse = (
        b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}'
        b'\n\ndata: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )

    async def chat(request: Request) -> Response:
        assert request.client is not None
        ports.append(request.client.port)

        async def body() -> AsyncIterator[bytes]:
            for line in sse.split(b"\n\n")[:-1]:
                yield line + b"\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with serve_on_loopback(app) as url:
        settings = BackendSettings(backend_url=url, model="m", timeout=30.0)
        client = OpenAIWireClient(settings, name="test", base_url=url)
        try:
            request = BackendRequest(body={"model": "m", "messages": []})
            for _ in range(2):
                texts = [chunk.text async for chunk in client.stream(request)]
                assert texts == ["hi", ""]
        finally:
            await client.aclose()
    assert len(ports) == 2
    assert ports[0] == ports[1]  # one connection, kept alive across both streams
