"""Reading a backend stream in a task of its own, with keep-alive timeouts.

Why a task of its own: when a client goes away, the server cancels the task serving it, and
under starlette (anyio) it keeps re-cancelling that task until it ends, forwarding the
cancellation into whatever the task awaits. Backend I/O done in that task has its own cleanup
(closing the HTTP response, which tells the backend to stop) cancelled as well, and the
connection stays open: a single-slot llama-server then keeps generating for nobody. A reader
task is cancelled exactly once, by :meth:`BackendReader.aclose`, and closes the backend
response properly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

from forge_core.aio import TimedWait
from forge_core.turns import BackendChunk

END: Final = "end"
"""The backend stream is over."""
TIMEOUT: Final = "timeout"
"""Nothing arrived within the timeout (time for a keep-alive)."""

QUEUE_SIZE = 64
"""Chunks read ahead at most: a slow client still slows the backend read down."""


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class BackendReader:
    """Pumps ``source`` into a bounded buffer from a separate task; always :meth:`aclose` it.

    A wait costs no task and, usually, no new timer: the consumer waits on one future, and a
    single timer (re-armed lazily, like :mod:`forge_core.deadline`'s) ends a wait that
    outlasts its timeout. ``asyncio.wait_for`` made a task and a timer per held chunk.
    """

    def __init__(self, source: AsyncIterator[BackendChunk]) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[BackendChunk | _Failure | str] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the consumer, waiting for an item
        self._room: asyncio.Future[None] | None = None  # the pump, waiting for space
        self._timed = TimedWait(self._loop)
        self._task = asyncio.ensure_future(self._pump(source))

    async def _pump(self, source: AsyncIterator[BackendChunk]) -> None:
        try:
            async for chunk in source:
                await self._put(chunk)
        except Exception as exc:  # handed to the consumer, raised there
            await self._put(_Failure(exc))
        else:
            await self._put(END)
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()  # type: ignore[attr-defined]

    async def _put(self, item: BackendChunk | _Failure | str) -> None:
        while len(self._items) >= QUEUE_SIZE:
            self._room = self._loop.create_future()
            await self._room
        self._items.append(item)
        _wake(self._waiter)

    async def next(self, timeout: float | None = None) -> BackendChunk | str:
        """The next chunk, :data:`END`, or :data:`TIMEOUT` after ``timeout`` seconds.

        A backend error is raised here, in the consumer.
        """
        if not self._items:
            waiter = self._waiter = self._loop.create_future()
            try:
                await self._timed.wait(waiter, timeout)
            finally:
                self._waiter = None
            if not self._items:
                return TIMEOUT
        item = self._items.popleft()
        _wake(self._room)
        if isinstance(item, _Failure):
            raise item.error
        return item

    async def aclose(self) -> None:
        """Stop reading and close the backend stream.

        The reader is cancelled once and waited for without forwarding any cancellation of
        the caller into it: if the caller is cancelled meanwhile, the reader still finishes
        closing on its own.
        """
        self._timed.cancel()
        self._task.cancel()
        await asyncio.wait({self._task})


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
