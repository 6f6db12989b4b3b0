"""The watchdog itself: it sees a loop blocked by CPU work or by blocking I/O, and not a loop
that only waits."""

from __future__ import annotations

import asyncio
import time

import pytest
from loop_watchdog import LoopWatchdog


async def test_waiting_is_not_a_stall() -> None:
    async with LoopWatchdog() as dog:
        await asyncio.sleep(0.3)
    assert dog.ticks >= 5


async def test_blocking_io_on_the_loop_is_a_stall() -> None:
    with pytest.raises(AssertionError, match="blocked"):
        async with LoopWatchdog():
            time.sleep(0.4)  # like urlopen without a timeout


async def test_cpu_work_on_the_loop_is_a_stall() -> None:
    with pytest.raises(AssertionError, match="blocked"):
        async with LoopWatchdog():
            end = time.thread_time() + 0.4
            while time.thread_time() < end:
                pass
