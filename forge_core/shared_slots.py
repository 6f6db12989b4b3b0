"""One serialization slot shared by several worker processes.

The supervising process runs a :class:`SlotKeeper` on a Unix socket; each worker's
:class:`RemoteLimiter` asks it for a slot per request and holds the connection while it uses
the slot. Closing the connection releases the slot, so a worker that crashes or a request that
is cancelled (client gone) can never leak one. The keeper also bounds the waiting line across
all workers: when it is full the worker answers 503 with Retry-After, as the in-process
:class:`~forge_core.limiter.Limiter` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from forge_core.errors import Overloaded

log = logging.getLogger("forge.slots")

_ASK, _GRANTED, _FULL = b"A\n", b"G\n", b"F"


class _SlotCounts:
    """The socket, the bounds and the live counts, named as the in-process limiter names them."""

    def __init__(self, path: str | Path, slots: int, max_waiting: int) -> None:
        self.path = str(path)
        self.slots = slots
        self.max_waiting = max_waiting
        self.waiting = 0
        self.in_use = 0


class SlotKeeper(_SlotCounts):
    """``slots`` slots and at most ``max_waiting`` waiting requests, over all workers."""

    def __init__(self, path: str | Path, slots: int, max_waiting: int) -> None:
        super().__init__(path, slots, max_waiting)
        self._semaphore = asyncio.Semaphore(slots)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(OSError):
            Path(self.path).unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        gone: asyncio.Future[bytes] | None = None
        try:
            if await reader.readline() != _ASK:
                return
            # Any byte or end-of-file from the worker means: done with (or no longer waiting
            # for) the slot.
            gone = asyncio.ensure_future(reader.read(1))
            if not await self._acquire(gone, writer):
                return
            self.in_use += 1
            try:
                writer.write(_GRANTED)
                await writer.drain()
                await gone
            finally:
                self.in_use -= 1
                self._semaphore.release()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if gone is not None and not gone.done():
                gone.cancel()
            writer.close()

    async def _acquire(self, gone: asyncio.Future[bytes], writer: asyncio.StreamWriter) -> bool:
        if not self._semaphore.locked():
            await self._semaphore.acquire()
            return True
        if self.waiting >= self.max_waiting:
            writer.write(b"F %d %d\n" % (self.slots, self.waiting))
            await writer.drain()
            return False
        self.waiting += 1
        acquiring = asyncio.ensure_future(self._semaphore.acquire())
        try:
            await asyncio.wait({acquiring, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
        if acquiring.done() and not acquiring.cancelled():
            if gone.done():  # granted just as the worker gave up
                self._semaphore.release()
                return False
            return True
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquiring
        if acquiring.done() and not acquiring.cancelled():
            self._semaphore.release()
        return False


class RemoteLimiter(_SlotCounts):
    """The worker's side: the same ``slot()`` interface as the in-process limiter."""

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            raise Overloaded(f"the shared backend slot is unavailable ({exc.strerror}); "
                             "retry shortly") from None
        try:
            self.waiting += 1
            try:
                writer.write(_ASK)
                await writer.drain()
                answer = await reader.readline()
            except ConnectionError:
                answer = b""
            finally:
                self.waiting -= 1
            if answer.startswith(_FULL):
                _, slots, waiting = (answer.decode().split() + ["?", "?"])[:3]
                raise Overloaded(
                    f"the backend is busy ({slots} in flight, {waiting} waiting across "
                    "workers); retry shortly"
                )
            if answer != _GRANTED:
                raise Overloaded("the shared backend slot is unavailable; retry shortly")
            self.in_use += 1
            try:
                yield
            finally:
                self.in_use -= 1
        finally:
            writer.close()
