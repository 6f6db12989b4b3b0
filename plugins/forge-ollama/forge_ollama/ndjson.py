"""Incremental NDJSON decoding that does not care where the network cut the bytes."""

from __future__ import annotations

from typing import Any

from forge_core.errors import BackendProtocolError
from forge_core.wire.jsonio import JSONRejected, loads

MAX_LINE_BYTES = 64 * 1024 * 1024
"""A line longer than this is treated as a broken stream rather than buffered forever."""


class NDJSONDecoder:
    """Collects bytes and returns each complete line as a parsed JSON value.

    Lines are split on ``\\n`` before decoding, so a multi-byte UTF-8 character or a JSON object
    cut anywhere by the transport is reassembled. Blank lines and ``\\r`` are ignored. A line
    that is not JSON raises :class:`BackendProtocolError` naming the backend.
    """

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no newline

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the values of the lines they completed, in order."""
        self._buffer += data
        values: list[Any] = []
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(self._buffer)
                if self._scanned > MAX_LINE_BYTES:
                    raise BackendProtocolError(
                        self._backend, f"sent a stream line longer than {MAX_LINE_BYTES} bytes"
                    )
                return values
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            self._parse_into(line, values)

    def close(self) -> list[Any]:
        """End of stream: the value of a last line that had no trailing newline, if any."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        values: list[Any] = []
        self._parse_into(rest, values)
        return values

    def _parse_into(self, line: bytes, values: list[Any]) -> None:
        line = line.strip()
        if not line:
            return
        try:
            values.append(loads(line))  # strict: NaN, 1e400, deep nesting are refused too
        except JSONRejected as exc:
            excerpt = line[:200].decode("utf-8", errors="replace")
            raise BackendProtocolError(
                self._backend,
                f"sent a stream line that is not JSON ({exc.reason}): {excerpt!r}",
            ) from None
