"""The slot keeper shared by workers: one slot, a bounded line, and nothing leaks when a
waiting request is cancelled or a holder's connection drops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forge_core.errors import Overloaded
from forge_core.shared_slots import RemoteLimiter, SlotKeeper


async def until(predicate, limit: int = 500) -> None:  # type: ignore[no-untyped-def]
    for _ in range(limit):  # a hang guard, not a timing assertion
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never reached")


async def test_one_slot_a_bounded_line_and_release_on_cancel(tmp_path: Path) -> None:
    keeper = SlotKeeper(tmp_path / "s.sock", slots=1, max_waiting=1)
    await keeper.start()
    a, b = RemoteLimiter(keeper.path, 1, 1), RemoteLimiter(keeper.path, 1, 1)
    release = asyncio.Event()
    order: list[str] = []

    async def hold(limiter: RemoteLimiter, name: str) -> None:
        async with limiter.slot():
            order.append(name)
            await release.wait()

    try:
        first = asyncio.ensure_future(hold(a, "first"))
        await until(lambda: keeper.in_use == 1)
        waiting = asyncio.ensure_future(hold(b, "second"))
        await until(lambda: keeper.waiting == 1)
        with pytest.raises(Overloaded, match="1 in flight, 1 waiting across workers"):
            async with a.slot():
                pass
        waiting.cancel()  # the client went away while waiting
        await asyncio.gather(waiting, return_exceptions=True)
        await until(lambda: keeper.waiting == 0)
        third = asyncio.ensure_future(hold(b, "third"))
        await until(lambda: keeper.waiting == 1)
        release.set()
        await asyncio.gather(first, third)
        assert order == ["first", "third"]
        await until(lambda: keeper.in_use == 0)  # released when the holders disconnect
    finally:
        await keeper.aclose()


async def test_a_dropped_holder_frees_the_slot(tmp_path: Path) -> None:
    keeper = SlotKeeper(tmp_path / "s.sock", slots=1, max_waiting=4)
    await keeper.start()
    try:
        reader, writer = await asyncio.open_unix_connection(keeper.path)
        writer.write(b"A\n")
        assert await reader.readline() == b"G\n"
        writer.transport.abort()  # as if the worker process died
        await until(lambda: keeper.in_use == 0)
        async with RemoteLimiter(keeper.path, 1, 4).slot():
            assert keeper.in_use == 1
    finally:
        await keeper.aclose()


async def test_an_absent_keeper_is_a_503_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(Overloaded, match="shared backend slot is unavailable"):
        async with RemoteLimiter(tmp_path / "none.sock", 1, 1).slot():
            pass
