"""An event-loop watchdog for tests: fails when anything blocks the loop for too long.

A ticker task wakes every ``tick`` seconds and records how late it woke. A late wake-up
counts as a stall by the CPU time the loop's own thread used meanwhile (work that did not
yield), or whole when a plain thread kept ticking on time meanwhile (the process was
running, only the loop was not: blocking I/O on the loop). On a loaded machine the whole
process may simply not be scheduled for a while, which says nothing about forge; so the
check is about the code under test (a regex backtracking, a quadratic scan, a blocking
``urlopen``), not about the machine.

Use it around requests that run in the same event loop (``forge_client``: in-process)::

    async with LoopWatchdog() as dog:
        await http.post(...)
    # leaving the block raises AssertionError if one stall exceeded ``limit`` (100 ms)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import time
from types import TracebackType


class LoopWatchdog:
    def __init__(self, limit: float = 0.1, tick: float = 0.01) -> None:
        self.limit = limit
        self.tick = tick
        self.worst = 0.0
        """The longest stall seen (seconds late, counted as described above)."""
        self.worst_wall = 0.0
        """The longest late wake-up, whatever its cause (for reports)."""
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None
        self._thread_ticks: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick_thread, daemon=True)

    def _tick_thread(self) -> None:
        while not self._stop.wait(self.tick):
            self._thread_ticks.append(time.monotonic())

    def _process_ran(self, start: float, end: float) -> bool:
        """Whether the plain thread ticked through most of ``[start, end]``."""
        ticks = self._thread_ticks
        inside = bisect.bisect_right(ticks, end) - bisect.bisect_left(ticks, start)
        return inside >= 0.5 * (end - start) / self.tick

    async def _run(self) -> None:
        while True:
            wall, cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            late = now - wall - self.tick
            busy = time.thread_time() - cpu
            self.ticks += 1
            self.worst_wall = max(self.worst_wall, late)
            blocked = late > self.limit and self._process_ran(wall + self.tick, now)
            # Late and busy: the loop's thread ran something that did not yield.
            self.worst = max(self.worst, late if blocked else min(late, busy))

    async def __aenter__(self) -> LoopWatchdog:
        self._thread.start()
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)  # let the ticker take its first reading
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await asyncio.sleep(self.tick * 2)  # a stall right at the end still gets measured
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._stop.set()
        self._thread.join(timeout=5)
        if kind is None:
            assert self.worst <= self.limit, (
                f"the event loop was blocked for {self.worst * 1000:.0f} ms "
                f"(limit {self.limit * 1000:.0f} ms; longest late tick "
                f"{self.worst_wall * 1000:.0f} ms over {self.ticks} ticks)"
            )
