"""The streaming hot path's behaviour: no task or new timer per chunk, the fast stack chosen,
the fast JSON path giving the strict reader's and writer's results. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from forge_core import aio
from forge_core.guardrails.reader import END, QUEUE_SIZE, TIMEOUT, BackendReader
from forge_core.turns import BackendChunk
from forge_core.wire import jsonio


async def _chunks(n: int, gap: float = 0.0) -> AsyncIterator[BackendChunk]:
    for i in range(n):
        if gap:
            await asyncio.sleep(gap)
        yield BackendChunk(text=f"t{i}")


def _count_tasks(loop: asyncio.AbstractEventLoop) -> list[int]:
    created = [0]

    def factory(loop: asyncio.AbstractEventLoop, coro, **kw):  # type: ignore[no-untyped-def]
        created[0] += 1
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(factory)
    return created


async def test_held_chunks_cost_no_task_each() -> None:
    loop = asyncio.get_running_loop()
    created = _count_tasks(loop)
    try:
        reader = BackendReader(_chunks(200, gap=0.0005))
        texts = []
        while (item := await reader.next(timeout=30.0)) != END:
            texts.append(item.text)  # type: ignore[union-attr]
        await reader.aclose()
    finally:
        loop.set_task_factory(None)
    assert texts == [f"t{i}" for i in range(200)]
    assert created[0] == 1  # the pump; asyncio.wait_for made one more per waited chunk


async def test_a_long_timeout_arms_one_timer_for_many_waits() -> None:
    loop = asyncio.get_running_loop()
    armed = [0]
    original = loop.call_at

    def counting_call_at(when, callback, *args, **kw):  # type: ignore[no-untyped-def]
        if getattr(callback, "__self__", None).__class__ is aio.TimedWait:  # the reader's timer
            armed[0] += 1
        return original(when, callback, *args, **kw)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        reader = BackendReader(_chunks(100, gap=0.0005))
        while await reader.next(timeout=30.0) != END:
            pass
        await reader.aclose()
    finally:
        loop.call_at = original  # type: ignore[method-assign]
    assert armed[0] == 1


async def test_a_wait_still_times_out_and_the_chunk_still_comes() -> None:
    reader = BackendReader(_chunks(1, gap=0.3))
    try:
        assert await reader.next(timeout=0.01) == TIMEOUT
        assert await reader.next(timeout=0.01) == TIMEOUT  # a shorter wait re-arms sooner
        item = await reader.next(timeout=5.0)
        assert item != TIMEOUT and item.text == "t0"  # type: ignore[union-attr]
        assert await reader.next(timeout=5.0) == END
    finally:
        await reader.aclose()


async def test_the_read_ahead_is_bounded() -> None:
    pulled = 0

    async def source() -> AsyncIterator[BackendChunk]:
        nonlocal pulled
        for i in range(QUEUE_SIZE * 3):
            pulled += 1
            yield BackendChunk(text=str(i))

    reader = BackendReader(source())
    try:
        await asyncio.sleep(0.05)
        assert pulled <= QUEUE_SIZE + 1  # the pump waits for room
        got = [await reader.next() for _ in range(QUEUE_SIZE * 3)]
        assert [c.text for c in got] == [str(i) for i in range(QUEUE_SIZE * 3)]  # type: ignore[union-attr]
        assert await reader.next() == END
    finally:
        await reader.aclose()


async def test_a_backend_failure_is_raised_in_the_consumer() -> None:
    async def failing() -> AsyncIterator[BackendChunk]:
        yield BackendChunk(text="a")
        raise RuntimeError("backend broke")

    reader = BackendReader(failing())
    try:
        assert (await reader.next(timeout=1.0)).text == "a"  # type: ignore[union-attr]
        with pytest.raises(RuntimeError, match="backend broke"):
            await reader.next(timeout=1.0)
    finally:
        await reader.aclose()


def test_forge_serves_on_uvloop_and_httptools_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("uvloop")
    pytest.importorskip("httptools")

    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert aio.run(loop_type()).startswith("uvloop")
    assert aio.http_impl() == "auto"  # uvicorn's auto picks httptools when installed
    monkeypatch.setenv("FORGE_LOOP", "asyncio")
    monkeypatch.setenv("FORGE_HTTP", "h11")
    assert aio.run(loop_type()).startswith("asyncio")
    assert aio.http_impl() == "h11"
    monkeypatch.setenv("FORGE_HTTP", "bogus")
    assert aio.http_impl() == "auto"


@pytest.mark.parametrize(
    "text",
    [
        b'{"seed": 123456789012345678901234567890, "n": -9223372036854775809}',
        b'{"a": 18446744073709551615, "b": [1.5e300, -0.0, 1e-7]}',
        b'{"s": "caf\xc3\xa9 \\ud83d\\ude00", "k": {"a": 1, "a": 2}}',
    ],
)
def test_the_fast_reader_gives_the_strict_readers_values(text: bytes) -> None:
    value = jsonio.loads(text)
    assert value == json.loads(text)
    assert repr(value) == repr(json.loads(text))  # big integers stay exact integers


def test_long_texts_skip_the_scans_but_keep_both_checks() -> None:
    # Past _SCAN_LIMIT the reader walks without scanning the text first: a huge integer deep
    # in a long history still stays exact, and depth is still bounded.
    filler = [{"role": "user", "content": "x" * 100} for _ in range(60)]
    text = json.dumps({"messages": filler, "extra": [{"seed": 2**70, "t": 1e300}]}).encode()
    assert len(text) > jsonio._SCAN_LIMIT
    assert repr(jsonio.loads(text)["extra"]) == repr([{"seed": 2**70, "t": 1e300}])
    deep = json.dumps({"messages": filler}).encode()[:-1] + b', "d": ' + b"[" * 128 + b"]" * 128
    with pytest.raises(jsonio.JSONRejected, match="nested deeper"):
        jsonio.loads(deep + b"}")
    assert jsonio.loads(deep[: -2 * 128] + b"[" * 127 + b"]" * 127 + b"}")["d"]


@pytest.mark.parametrize("depth", [129, 500, 1000])
def test_the_fast_reader_keeps_the_depth_limit(depth: int) -> None:
    with pytest.raises(jsonio.JSONRejected, match="nested deeper"):
        jsonio.loads(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(
    ("text", "reason"),
    [(b"NaN", "NaN"), (b"[1e400]", "out of range"), (b"\xff", "invalid UTF-8")],
)
def test_refusals_keep_their_reasons(text: bytes, reason: str) -> None:
    with pytest.raises(jsonio.JSONRejected, match=reason):
        jsonio.loads(text)


def test_lone_surrogates_still_become_replacement_characters() -> None:
    assert jsonio.loads(b'{"\\ud800k": "a\\udc00"}') == {"\ufffdk": "a\ufffd"}


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, None, True], "é": "ü\u2028", "big": 2**70},
        {1: "int key", None: "none key"},
        {"bad": "\ud800", "nan": float("nan"), "t": (1, 2)},
    ],
)
def test_the_fast_writer_means_what_the_strict_one_does(value: object) -> None:
    fast = jsonio.dumps_bytes(value, compact=True)
    slow = json.dumps(jsonio._finite(value), ensure_ascii=False, separators=(",", ":"))
    assert json.loads(fast) == json.loads(jsonio.clean_text(slow))
    fast.decode("utf-8")  # always valid UTF-8
