"""The event loop forge serves on: uvloop where it is installed, asyncio's own otherwise.

uvloop's loop (libuv) and uvicorn's httptools parser (picked by uvicorn's ``http="auto"``
when installed) take most of the per-request and per-chunk cost of the pure-Python stack
off forge: see docs/benchmarks.md. Both are core dependencies; the fallback keeps a
platform without their wheels working. ``FORGE_LOOP=asyncio`` and ``FORGE_HTTP=h11`` choose
the pure-Python stack anyway (to rule the fast one out when diagnosing, or to compare).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


HTTP_CHOICES = ("auto", "httptools", "h11")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None (asyncio's default) when uvloop is missing or
    ``FORGE_LOOP=asyncio``."""
    if os.environ.get("FORGE_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest loop available (Python 3.11 has no
    ``loop_factory`` argument on ``asyncio.run``, so through ``asyncio.Runner``)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_name() -> str:
    """"uvloop" or "asyncio", for the start-up line and the benchmarks."""
    return "uvloop" if loop_factory() is not None else "asyncio"


def http_impl() -> str:
    """uvicorn's ``http`` setting: ``auto`` (httptools when installed) unless ``FORGE_HTTP``
    names one of :data:`HTTP_CHOICES`."""
    chosen = os.environ.get("FORGE_HTTP", "auto").lower()
    return chosen if chosen in HTTP_CHOICES else "auto"


class TimedWait:
    """Waits on one future at a time with a timeout, through a single loop timer that is
    re-armed lazily: a wait costs no task and usually no new timer (``asyncio.wait_for``
    costs a task and a timer per wait, which streaming pays per chunk). A wait whose end is
    later than the armed timer's leaves it be; the timer, when it fires early, sleeps on.
    """

    __slots__ = ("_loop", "_timer", "_until", "_waiter", "_timed_out")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._until = 0.0  # when the current wait times out; 0: no timed wait
        self._waiter: asyncio.Future[Any] | None = None
        self._timed_out = False

    async def wait(self, waiter: asyncio.Future[Any], timeout: float | None) -> bool:
        """Wait for ``waiter`` (whoever completes it ends the wait); True when ``timeout``
        seconds passed first (the waiter is then completed with None)."""
        self._waiter = waiter
        if timeout is not None:
            self._arm(self._loop.time() + max(timeout, 0.0))
        try:
            await waiter
        finally:
            self._waiter = None
            self._until = 0.0
        timed_out, self._timed_out = self._timed_out, False
        return timed_out

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, until: float) -> None:
        self._until = until
        if self._timer is None or self._timer.when() > until:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(until, self._expire)

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or not self._until:
            return  # nobody waits: the next wait arms the timer again
        if self._loop.time() >= self._until:
            self._timed_out = True
            waiter.set_result(None)
        else:  # a later wait moved the end: sleep on until then
            self._timer = self._loop.call_at(self._until, self._expire)
