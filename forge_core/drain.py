"""The end of ``--drain-timeout``: what is still open ends in its protocol, not cut.

On shutdown, uvicorn gives in-flight requests ``--drain-timeout`` seconds and then cancels
their tasks, which would cut a stream without an error event or its proper end. So forge
keeps its own clock (:meth:`Drain.begin`, called when the server starts shutting down) and,
when it runs out, first ends every request still open: a stream writes the protocol's error
event and end (OpenAI ``data: {"error": ...}`` then ``data: [DONE]``, Anthropic ``event:
error``), a request still waiting answers 503, and their backend requests are closed.
uvicorn's own cut comes a little later (:data:`HARD_CUT_AFTER`), for anything that did not
manage even that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from forge_core.errors import ShuttingDown

log = logging.getLogger("forge")

HARD_CUT_AFTER = 2.0
"""Seconds after forge's own drain end before uvicorn cancels what is left."""


class Drain:
    """Shutdown's deadline, shared by every request of one app."""

    def __init__(self) -> None:
        self.expired = False
        self.timeout: float | None = None
        self._waiting: set[asyncio.Task[object]] = set()
        self._interrupted: set[asyncio.Task[object]] = set()
        self._future: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, timeout: float) -> None:
        """Start the clock (from the running loop); a second call changes nothing."""
        if self._timer is not None or self.expired:
            return
        self.timeout = timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, self.expire)

    def expire(self) -> None:
        """End everything still open now."""
        if self.expired:
            return
        self.expired = True
        if self._waiting:
            log.warning("drain timeout: ending %d open stream(s) with an error", len(self._waiting))
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        for task in list(self._waiting):
            self._interrupted.add(task)
            task.cancel()

    def future(self) -> asyncio.Future[None]:
        """Done when the drain time is over: to wait on next to a request's own work."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            if self.expired:
                self._future.set_result(None)
        return self._future

    def error(self) -> ShuttingDown:
        return ShuttingDown(self.timeout)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A wait (for the backend, inside a stream) that the drain's end may interrupt: it
        then raises :class:`ShuttingDown` for the stream to report, instead of the task being
        cut later. Only waits are interrupted, never the writing of an event."""
        if self.expired:
            raise self.error()
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._interrupted:
                raise
            self._interrupted.discard(task)
            if task.uncancel() > 0:
                raise  # someone else cancelled it too (the client left): that one wins
            raise self.error() from None
        finally:
            self._waiting.discard(task)
            self._interrupted.discard(task)
