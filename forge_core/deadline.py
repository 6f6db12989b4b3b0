"""Deadlines on a backend's answer, for every plugin alike: a wait bounded by progress, not
by reads.

httpx's timeouts limit each read, so a backend that trickles a byte every half second, or
only SSE comments or pings, would hold a request (and with serialization the only slot)
forever. The engine wraps each backend call instead:

- **first token** (``--backend-timeout``): from sending the request until the first chunk
  that carries something (text, reasoning, a tool-call fragment, a finish, usage); for a
  non-streamed request, until the whole answer. Prompt processing on a CPU backend counts
  against it, so the default is generous (300 s).
- **silence** (``--backend-idle-timeout``): once chunks flow, the longest gap between two.

Keep-alive bytes are no progress: a plugin yields a chunk only for content, so comments,
pings, empty deltas and blank NDJSON lines never reset a deadline. The deadline applies only
while the backend is awaited, never while the client is slow to read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from forge_core.backend import BackendSettings
from forge_core.errors import BackendTimeout

T = TypeVar("T")

DEFAULT_IDLE = 60.0
"""Seconds of silence allowed mid-answer when ``--backend-idle-timeout`` is not given."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    first_token: float
    idle: float

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> Deadlines:
        idle = settings.idle_timeout or min(DEFAULT_IDLE, settings.timeout)
        return cls(first_token=settings.timeout, idle=idle)

    async def answer(self, backend: str, work: Awaitable[T]) -> T:
        """``work`` (a non-streamed call) within the first-token deadline, as a 504 if not."""
        scope = asyncio.timeout(self.first_token)
        try:
            async with scope:
                return await work
        except TimeoutError:
            if not scope.expired():
                raise
            raise BackendTimeout(
                backend, f"did not answer within {self.first_token:g}s (--backend-timeout)"
            ) from None

    async def paced(self, backend: str, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """``source``'s chunks, ended by a :class:`BackendTimeout` when the first one takes
        longer than the first-token deadline or a later one longer than the silence bound.

        Only the wait for the next chunk is timed (never the time the consumer takes between
        chunks), and progress costs one assignment: a single timer re-arms itself lazily
        instead of a timeout scope per chunk (measured ~35 µs a chunk under load).
        """
        loop = asyncio.get_running_loop()
        watch = _Watch(loop, loop.time() + self.first_token, self.idle)
        started = False
        try:
            while True:
                watch.task = asyncio.current_task()
                watch.waiting = True
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not watch.fired or watch.task is None or watch.task.uncancel() > 0:
                        raise  # not (only) ours: the consumer is being cancelled
                    raise self._timeout(backend, started) from None
                finally:
                    watch.waiting = False
                yield chunk
                started = True
                watch.deadline = loop.time() + self.idle
        finally:
            watch.stop()
            await source.aclose()  # type: ignore[attr-defined]

    def _timeout(self, backend: str, started: bool) -> BackendTimeout:
        if started:
            return BackendTimeout(
                backend,
                f"went silent for {self.idle:g}s in the middle of its answer "
                "(--backend-idle-timeout)",
            )
        return BackendTimeout(
            backend, f"sent no token within {self.first_token:g}s (--backend-timeout)"
        )


class _Watch:
    """One timer for a stream's deadline: it cancels the waiting task once the deadline has
    passed, and otherwise re-arms itself for the deadline as it stands then."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, idle: float) -> None:
        self.loop = loop
        self.deadline = deadline
        self.idle = idle
        self.task: asyncio.Task[object] | None = None
        self.waiting = False
        self.fired = False
        self._handle: asyncio.TimerHandle | None = loop.call_at(deadline, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        if self.waiting and now >= self.deadline and self.task is not None:
            self.fired = True
            self._handle = None
            self.task.cancel()
            return
        # Not waiting: the next wait starts a new silence bound, no sooner than now + idle.
        at = self.deadline if self.waiting else max(self.deadline, now + self.idle)
        self._handle = self.loop.call_at(at, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
