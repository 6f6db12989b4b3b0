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
from collections.abc import AsyncIterator
from typing import Final

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
    """Pumps ``source`` into a bounded queue from a separate task; always :meth:`aclose` it."""

    def __init__(self, source: AsyncIterator[BackendChunk]) -> None:
        self._queue: asyncio.Queue[BackendChunk | _Failure | str] = asyncio.Queue(QUEUE_SIZE)
        self._task = asyncio.ensure_future(self._pump(source))

    async def _pump(self, source: AsyncIterator[BackendChunk]) -> None:
        try:
            async for chunk in source:
                await self._queue.put(chunk)
        except Exception as exc:  # handed to the consumer, raised there
            await self._queue.put(_Failure(exc))
        else:
            await self._queue.put(END)
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()  # type: ignore[attr-defined]

    async def next(self, timeout: float | None = None) -> BackendChunk | str:
        """The next chunk, :data:`END`, or :data:`TIMEOUT` after ``timeout`` seconds.

        A backend error is raised here, in the consumer.
        """
        if not self._queue.empty():
            item = self._queue.get_nowait()
        elif timeout is None:
            item = await self._queue.get()
        else:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(timeout, 0.0))
            except TimeoutError:
                return TIMEOUT
        if isinstance(item, _Failure):
            raise item.error
        return item

    async def aclose(self) -> None:
        """Stop reading and close the backend stream.

        The reader is cancelled once and waited for without forwarding any cancellation of
        the caller into it: if the caller is cancelled meanwhile, the reader still finishes
        closing on its own.
        """
        self._task.cancel()
        await asyncio.wait({self._task})
