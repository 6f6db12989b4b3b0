"""``/ready`` without a backend request per call: the last probe, kept briefly and shared.

A readiness probe every second from each of several load balancers, or anyone hammering
``/ready``, must not turn into as many backend requests (a managed llama-server has one slot
and vLLM's probe is a generation). Callers within :data:`READY_TTL` of a probe get its answer;
concurrent callers during a probe wait for that one probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from forge_core.backend import BackendStatus

READY_TTL = 2.0
"""Seconds a readiness probe's answer is reused."""


class StatusCache:
    def __init__(
        self, probe: Callable[[], Awaitable[BackendStatus]], ttl: float = READY_TTL
    ) -> None:
        self._probe = probe
        self._ttl = ttl
        self._value: BackendStatus | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> BackendStatus:
        if self._fresh():
            assert self._value is not None
            return self._value
        async with self._lock:  # one probe at a time; the others take its answer
            if not self._fresh():
                self._value = await self._probe()
                self._at = time.monotonic()
            assert self._value is not None
            return self._value

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._at < self._ttl
