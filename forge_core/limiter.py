"""Serialization of backend calls: a fixed number of slots and a bounded waiting line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from forge_core.errors import Overloaded


class Limiter:
    """At most ``slots`` requests at the backend; at most ``max_waiting`` more wait for one.

    ``slots == 0`` disables the limiter. A request that finds the line full fails at once
    with 503 and Retry-After rather than hanging.
    """

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.waiting = 0
        self.in_use = 0
        """Slots held right now (requests at the backend)."""
        self._semaphore = asyncio.Semaphore(slots) if slots > 0 else None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``; raise Overloaded if the line is full.

        The slot is released however the body ends, including cancellation when the client
        disconnects, so the next request in line starts at once.
        """
        semaphore = self._semaphore
        if semaphore is None:
            self.in_use += 1
            try:
                yield
            finally:
                self.in_use -= 1
            return
        if semaphore.locked():
            if self.waiting >= self.max_waiting:
                raise Overloaded(
                    f"the backend is busy ({self.slots} in flight, {self.waiting} waiting); "
                    "retry shortly"
                )
            self.waiting += 1
            try:
                await semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await semaphore.acquire()
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            semaphore.release()
