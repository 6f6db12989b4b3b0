"""The network layer under forge's backend httpx clients: httpcore on asyncio's own transports.

httpx and httpcore still do all of HTTP (h11 framing, the pool, timeouts, error types); this
replaces only httpcore's network backend, the part that moves bytes. The default one goes
through anyio: every read and write enters a cancel scope with its own timer and yields to the
event loop once more, a pooled connection is probed with a ``select()`` call before each
reuse, and a request's headers and body leave in two ``send()`` calls. Here:

- bytes arrive through an :class:`asyncio.Protocol`, so a read of data already there costs no
  wait, no timer and no extra loop turn; a read that must wait arms one lazily re-armed
  timer per connection (the pattern of :mod:`forge_core.deadline`);
- writes are gathered until the first read, so a request goes out in one ``send()``;
- whether an idle pooled connection was closed by the server is known without a system call
  (the protocol has seen the EOF).

Measured in docs/benchmarks.md. A transport built by :func:`transport` behaves like
``httpx.AsyncHTTPTransport(limits=...)`` for every caller, tests' mock transports aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from forge_core.aio import TimedWait

READ_AHEAD = 256 * 1024
"""Bytes received but not yet read at most before the socket stops being read: a slow
consumer still slows the backend down."""
FLUSH_AT = 64 * 1024
"""Gathered request bytes sent without waiting for the first read."""


class _Protocol(asyncio.Protocol):
    """Receives a connection's bytes and events for :class:`_Stream`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.paused_reading = False
        self.paused_writing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > READ_AHEAD and not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()
        _wake(self.waiter)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.waiter)
        return False  # close our side too: HTTP/1.1 has no use for a half-open connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self.waiter)
        _wake(self.drain)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        _wake(self.drain)


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _Stream(httpcore.AsyncNetworkStream):
    """One connection as httpcore reads and writes it."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self._loop = protocol.loop
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._timed = TimedWait(self._loop)

    # --- reading ---------------------------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if self._pending:
            self._flush()
        if not protocol.chunks:
            if protocol.eof:
                return self._at_eof()
            await self._wait(timeout, httpcore.ReadTimeout)
            if not protocol.chunks:
                return self._at_eof()
        chunks = protocol.chunks
        if len(chunks) > 1 and protocol.size <= max_bytes:
            data = b"".join(chunks)  # all that arrived: one parse, one pass down the stack
            chunks.clear()
        else:
            data = chunks.popleft()
        if len(data) > max_bytes:
            protocol.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.size -= len(data)
        if protocol.paused_reading and protocol.size <= READ_AHEAD // 2:
            protocol.paused_reading = False
            if protocol.transport is not None and not protocol.transport.is_closing():
                protocol.transport.resume_reading()
        return data

    def _at_eof(self) -> bytes:
        error = self._protocol.error
        if error is not None:
            raise httpcore.ReadError(str(error) or type(error).__name__)
        return b""  # httpcore reads this as the server closing the connection

    async def _wait(self, timeout: float | None, timeout_error: type[Exception]) -> None:
        """Until the protocol wakes us (data, EOF, loss, room to write) or ``timeout`` passes."""
        protocol = self._protocol
        waiter = self._loop.create_future()
        if timeout_error is httpcore.WriteTimeout:
            protocol.drain = waiter
        else:
            protocol.waiter = waiter
        try:
            timed_out = await self._timed.wait(waiter, timeout)
        finally:
            protocol.waiter = protocol.drain = None
        if timed_out:
            raise timeout_error("timed out")

    # --- writing ---------------------------------------------------------------------------

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or protocol.transport is None or (
            protocol.transport.is_closing()
        ):
            raise httpcore.WriteError("the connection is closed")
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size >= FLUSH_AT:
            self._flush()
            while protocol.paused_writing and protocol.error is None:
                await self._wait(timeout, httpcore.WriteTimeout)
            if protocol.error is not None:
                raise httpcore.WriteError(str(protocol.error))

    def _flush(self) -> None:
        pending, self._pending, self._pending_size = self._pending, [], 0
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            return  # the read that follows reports the closed connection
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    # --- the rest --------------------------------------------------------------------------

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Drop what was not sent and close the connection (nothing to wait for)."""
        self._pending.clear()
        self._timed.cancel()
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        protocol = self._protocol
        if self._pending:
            self._flush()
        try:
            async with asyncio.timeout(timeout):
                new = await self._loop.start_tls(
                    protocol.transport,  # type: ignore[arg-type]
                    protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                )
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc)) from None
        protocol.transport = new  # type: ignore[assignment]
        return self

    def get_extra_info(self, info: str) -> Any:
        protocol = self._protocol
        transport = protocol.transport
        if info == "is_readable":
            # Idle and readable means the server closed it: known without a system call.
            return bool(protocol.chunks) or protocol.eof
        if transport is None:
            return None
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on the running asyncio (or uvloop) loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        connecting = loop.create_connection(lambda: _Protocol(loop), host, port, local_addr=local)
        return await _connected(connecting, f"{host}:{port}", timeout, socket_options, True)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        connecting = loop.create_unix_connection(lambda: _Protocol(loop), path)
        return await _connected(connecting, path, timeout, socket_options, False)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(
    connecting: Any,
    target: str,
    timeout: float | None,
    options: Iterable[httpcore.SOCKET_OPTION] | None,
    nodelay: bool,
) -> _Stream:
    """The stream of a connection being made, with httpcore's errors for a timeout or a
    refusal."""
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await connecting
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"connecting to {target} timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from None
    stream = _Stream(protocol)
    _set_options(stream, options, nodelay=nodelay)
    return stream


def _set_options(
    stream: _Stream, options: Iterable[httpcore.SOCKET_OPTION] | None, nodelay: bool
) -> None:
    sock = stream.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if nodelay:  # small requests and stream events must not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in options or ():
            sock.setsockopt(*option)


def transport(
    limits: httpx.Limits, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncBaseTransport:
    """The transport of forge's backend clients: HTTP/1.1 on httptools' parser over this
    module's connections (:class:`forge_core.h1.H1Transport`), with httpx's pool limits."""
    from forge_core.h1 import H1Transport  # h1 builds on this module

    return H1Transport(limits, verify)
