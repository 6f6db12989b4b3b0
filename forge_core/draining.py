"""A uvicorn server that drains politely: ``/ready`` turns 503 before the listener closes.

On SIGTERM (how Kubernetes, systemd and ``forge serve --workers`` stop a process) forge marks
itself draining, keeps serving for ``drain_delay`` seconds so a load balancer notices the 503
and stops sending, then stops accepting and gives in-flight requests ``--drain-timeout``. A
second SIGTERM, or SIGINT (Ctrl-C), skips the delay.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from forge_core.drain import HARD_CUT_AFTER

log = logging.getLogger("forge")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: Any, drain_delay: float = 0.0) -> None:
        super().__init__(config)
        self.state = state
        self.drain_delay = drain_delay
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.draining = True
        if sig == signal.SIGTERM and self.drain_delay > 0 and self._drain_until is None:
            self._drain_until = time.monotonic() + self.drain_delay
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
            log.info("draining: /ready answers 503 for %gs, then the listener closes",
                     self.drain_delay)
            return
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """At ``--drain-timeout`` forge ends what is still open in its protocol (see
        :mod:`forge_core.drain`); uvicorn's own cut of the tasks comes a little later."""
        bound = self.config.timeout_graceful_shutdown
        drain = getattr(self.state, "drain", None)
        if bound is not None and drain is not None:
            drain.begin(bound)
            self.config.timeout_graceful_shutdown = bound + HARD_CUT_AFTER
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)
