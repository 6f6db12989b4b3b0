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
