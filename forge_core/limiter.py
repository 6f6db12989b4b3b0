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
        self._semaphore = asyncio.Semaphore(slots) if slots > 0 else None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        semaphore = self._semaphore
        if semaphore is None:
            yield
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
        try:
            yield
        finally:
            semaphore.release()
