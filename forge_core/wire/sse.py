"""Server-sent-events framing shared by both client protocols."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from forge_core.wire.jsonio import dumps

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def data_line(payload: str) -> bytes:
    """One OpenAI-style event: ``data: <json>`` and a blank line."""
    return b"data: " + payload.encode() + b"\n\n"


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One named event (Anthropic style): ``event:`` line, ``data:`` line, blank line."""
    return f"event: {name}\ndata: {dumps(payload)}\n\n".encode()


MAX_LINE = 32 * 1024 * 1024
"""Bytes a backend's SSE line may take at most (a tool call's arguments arrive in one)."""


class LineTooLong(ValueError):
    """A backend sent more than :data:`MAX_LINE` bytes without a line break."""


class Lines:
    """A backend stream's bytes cut into lines (``\n``, ``\r\n`` or ``\r``), as bytes.

    Reading bytes and cutting them here costs less than httpx's text decoding and line
    iterator, and a multi-byte character can never be cut: lines end at ASCII bytes. A
    ``\r\n`` split across two reads gives one extra blank line, which SSE ignores.
    """

    __slots__ = ("_parts", "_size", "_limit")

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes (maybe none)."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in data:
            self._keep(data)
            return []
        if self._parts:
            data = b"".join(self._parts) + data
            self._parts.clear()
            self._size = 0
        *lines, rest = data.split(b"\n")
        if rest:
            self._keep(rest)
        return lines

    def flush(self) -> list[bytes]:
        """The unterminated last line, if any."""
        if not self._parts:
            return []
        line = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return [line]

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise LineTooLong(f"sent more than {self._limit} bytes without a line break")
        self._parts.append(data)


MAX_BATCH = 64 * 1024
"""Bytes a :class:`Coalescer` gathers at most before its producer waits for the sender."""


class Coalescer:
    """Reads a stream's pieces in a task of its own; the sender takes whatever has piled up.

    Several pieces ready at the same moment (backend events that arrived in one read) then go
    out in one write instead of one each: the bytes are the same, and a write per event is most
    of a stream's CPU cost. Nothing waits for a batch to fill: the sender runs as soon as the
    producer has to wait for its next piece, so a piece that is alone goes out at once. The
    buffer is bounded, so a slow client still slows the reading down. Each side waits on a
    plain future (no ``asyncio.Event`` and its waiter list per piece).
    """

    def __init__(self, pieces: AsyncIterator[bytes], limit: int = MAX_BATCH) -> None:
        self._loop = asyncio.get_running_loop()
        self._pieces: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._done = False
        self._error: BaseException | None = None
        self._ready: asyncio.Future[None] | None = None  # the sender, waiting for a piece
        self._room: asyncio.Future[None] | None = None  # the producer, waiting for space
        self._task = asyncio.ensure_future(self._produce(pieces))

    async def _produce(self, pieces: AsyncIterator[bytes]) -> None:
        try:
            async for piece in pieces:
                self._pieces.append(piece)
                self._size += len(piece)
                _wake(self._ready)
                while self._size >= self._limit:
                    self._room = self._loop.create_future()
                    await self._room
        except asyncio.CancelledError as exc:
            self._error = exc
            raise
        except Exception as exc:  # handed to the sender, raised there
            self._error = exc
        finally:
            self._done = True
            _wake(self._ready)
            close = getattr(pieces, "aclose", None)
            if close is not None:  # stopped between pieces: finish the source's own cleanup
                with contextlib.suppress(Exception):
                    await close()

    async def take(self) -> tuple[bytes, bool]:
        """Everything gathered since the last take (waiting for something), and whether the
        stream is over. A failure of the producer is raised here."""
        while not self._pieces and not self._done:
            self._ready = self._loop.create_future()
            try:
                await self._ready
            finally:
                self._ready = None
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._size = 0
        _wake(self._room)
        if not self._done:
            return data, False
        if self._error is not None:
            if data:
                return data, False  # what came before the failure still goes out first
            raise self._error
        return data, True

    def cancel(self) -> None:
        """Stop the producer (it finishes at its next step)."""
        if not self._task.done():
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop the producer and wait until it has finished (and so closed its source)."""
        self.cancel()
        await asyncio.wait({self._task})


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
