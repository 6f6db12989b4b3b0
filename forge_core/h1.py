"""HTTP/1.1 for forge's backend httpx clients: httptools' C parser on forge's connections.

httpx stays the API of every backend call (requests, responses, timeouts, error types, event
hooks, proxies from the environment); this is the transport under it, in place of httpcore's
pool and its pure-Python h11 framing. h11 parses every chunk of a streamed answer in Python
(each SSE event of a backend is usually a chunk of its own) and httpcore wraps each read in
its own context managers, lock and trace calls: together the largest share of forge's CPU per
request left (docs/benchmarks.md). Here a response is parsed by llhttp (``httptools``, also
uvicorn's parser) and every read yields all the body that arrived with it.

Connections come from :mod:`forge_core.httpio` (asyncio protocols, one write per request, a
lazily re-armed timer per wait); the pool keeps idle ones per origin, most recent first, up to
the client's ``httpx.Limits``. A response read to its end returns its connection unless either
side said ``Connection: close``; anything else (an error, a cancelled or abandoned read) closes
it, so no half-read connection is ever reused.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httptools
import httpx

from forge_core import httpio

READ_SIZE = 64 * 1024
_NONE = sys.maxsize

_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.WriteError: httpx.WriteError,
}


def _mapped(exc: Exception, request: httpx.Request) -> Exception:
    """httpx's error for the network layer's (the same mapping httpx applies to httpcore's)."""
    kind = _ERRORS.get(type(exc))
    if kind is not None:
        return kind(str(exc), request=request)
    if isinstance(exc, httptools.HttpParserError):
        return httpx.RemoteProtocolError(f"invalid HTTP response: {exc}", request=request)
    return exc


class _Parsed:
    """One response as llhttp reports it (its callbacks land here)."""

    __slots__ = (
        "headers", "reason", "body", "headers_done", "done", "messages", "keep_alive", "parser",
        "interim",
    )

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.keep_alive = False
        self.interim = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.body: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.messages = 0

    def on_message_begin(self) -> None:
        self.messages += 1  # a second one means bytes after the response: no reuse

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code() if self.parser is not None else 0
        if 100 <= status < 200 and status != 101:
            # 100 Continue and the like: forgotten, the real answer follows.
            self.interim = True
            self.headers, self.reason = [], b""
            return
        self.headers_done = True
        # Read now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.messages -= 1
            return
        self.done = True


class _Connection:
    __slots__ = ("stream", "origin", "idle_since")

    def __init__(self, stream: httpio._Stream, origin: tuple[bytes, bytes, int]) -> None:
        self.stream = stream
        self.origin = origin
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Open, and nothing unasked arrived while idle (an EOF, a stray byte)."""
        protocol = self.stream._protocol
        transport = protocol.transport
        return not (
            protocol.eof or protocol.chunks or transport is None or transport.is_closing()
        )

    def close(self) -> None:
        self.stream.close()


class H1Transport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` for HTTP/1.1 over TCP (TLS for ``https``)."""

    def __init__(self, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        # httpx's None means no limit.
        self._max_open = limits.max_connections if limits.max_connections is not None else _NONE
        idle = limits.max_keepalive_connections
        self._max_idle = min(idle if idle is not None else _NONE, self._max_open)
        expiry = limits.keepalive_expiry
        self._expiry = expiry if expiry is not None else float("inf")
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[bytes, bytes, int], deque[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._backend = httpio.AsyncioBackend()
        self._closed = False

    # --- the pool --------------------------------------------------------------------------

    async def _acquire(self, request: httpx.Request, timeouts: dict[str, Any]) -> _Connection:
        url = request.url
        scheme = url.raw_scheme
        port = url.port or (443 if scheme == b"https" else 80)
        origin = (scheme, url.raw_host, port)
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be expired
            self._idle_count -= 1
            if conn.usable() and now - conn.idle_since < self._expiry:
                return conn
            self._discard(conn)
        await self._room(timeouts.get("pool"))
        self._open += 1
        try:
            return await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _room(self, timeout: float | None) -> None:
        """Wait until a new connection may be opened (``max_connections``)."""
        while self._open >= self._max_open:
            if self._idle_count:  # an idle connection elsewhere gives way
                self._discard(self._oldest_idle())
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no connection became free in time") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _oldest_idle(self) -> _Connection:
        oldest: deque[_Connection] | None = None
        for queue in self._idle.values():
            if queue and (oldest is None or queue[0].idle_since < oldest[0].idle_since):
                oldest = queue
        assert oldest is not None
        self._idle_count -= 1
        return oldest.popleft()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _release(self, conn: _Connection, reuse: bool) -> None:
        if not reuse or self._closed or self._idle_count >= self._max_idle or not conn.usable():
            self._discard(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.origin, deque()).append(conn)
        self._idle_count += 1
        self._wake_one()  # a waiter for another origin may now evict it

    async def _connect(
        self, origin: tuple[bytes, bytes, int], timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        name = host.decode("ascii")
        stream = await self._backend.connect_tcp(name, port, timeout=timeout)
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(verify=self._verify)
            await stream.start_tls(self._ssl, server_hostname=name, timeout=timeout)
        return _Connection(stream, origin)  # type: ignore[arg-type]

    # --- a request -------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.raw_scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{request.url.scheme}://'.",
                request=request,
            )
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            conn = await self._acquire(request, timeouts)
        except (httpcore.NetworkError, httpcore.TimeoutException) as exc:
            raise _mapped(exc, request) from None
        parsed = _Parsed()
        parser = parsed.parser = httptools.HttpResponseParser(parsed)
        read_timeout = timeouts.get("read")
        try:
            await self._send(conn, request, timeouts.get("write"))
            while not parsed.headers_done:
                data = await conn.stream.read(READ_SIZE, read_timeout)
                if not data:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    )
                parser.feed_data(data)
        except BaseException as exc:
            self._discard(conn)
            if isinstance(exc, Exception):
                raise _mapped(exc, request) from None
            raise
        if request.method == "HEAD":
            parsed.done = True  # a HEAD answer has headers only, whatever they announce
        body = _Body(self, conn, parser, parsed, request, read_timeout)
        version = b"HTTP/" + parser.get_http_version().encode("ascii")
        return httpx.Response(
            parser.get_status_code(),
            headers=parsed.headers,
            stream=body,
            extensions={
                "http_version": version,
                "reason_phrase": parsed.reason,
                "network_stream": conn.stream,
            },
        )

    async def _send(
        self, conn: _Connection, request: httpx.Request, timeout: float | None
    ) -> None:
        head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise httpx.LocalProtocolError("a header holds a line break", request=request)
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        stream = conn.stream
        content = request.stream
        if isinstance(content, httpx.ByteStream):
            await stream.write(b"".join(head) + b"".join(content), timeout)  # type: ignore[arg-type]
            return
        await stream.write(b"".join(head), timeout)
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        async for piece in content:  # type: ignore[union-attr]
            if not piece:
                continue
            if chunked:
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            await stream.write(piece, timeout)
        if chunked:
            await stream.write(b"0\r\n\r\n", timeout)

    async def aclose(self) -> None:
        self._closed = True
        for queue in self._idle.values():
            while queue:
                self._discard(queue.pop())
        self._idle_count = 0


class _Body(httpx.AsyncByteStream):
    """A response's body as it arrives: one piece per read, all the body that read brought."""

    def __init__(
        self,
        transport: H1Transport,
        conn: _Connection,
        parser: httptools.HttpResponseParser,
        parsed: _Parsed,
        request: httpx.Request,
        timeout: float | None,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._parser = parser
        self._parsed = parsed
        self._request = request
        self._timeout = timeout
        headers = {name.lower(): value for name, value in parsed.headers}
        # Neither a length nor chunks: the body ends when the server closes (HTTP/1.0 style).
        self._until_close = (
            b"content-length" not in headers
            and b"chunked" not in headers.get(b"transfer-encoding", b"").lower()
        )
        self._close_asked = (
            request.headers.get("connection", "").lower() == "close"
            or headers.get(b"connection", b"").lower() == b"close"
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        parsed, parser = self._parsed, self._parser
        try:
            while True:
                if parsed.body:
                    pieces = parsed.body
                    parsed.body = []
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if parsed.done:
                    break
                data = await conn.stream.read(READ_SIZE, self._timeout)
                if not data:
                    if self._until_close and not parsed.done:
                        self._finish(reuse=False)
                        return
                    raise httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body",
                        request=self._request,
                    )
                parser.feed_data(data)
        except BaseException as exc:
            self._finish(reuse=False)
            if isinstance(exc, Exception) and not isinstance(exc, httpx.HTTPError):
                raise _mapped(exc, self._request) from None
            raise
        reuse = (
            parsed.messages == 1
            and not self._close_asked
            and not self._until_close
            and parsed.keep_alive
        )
        self._finish(reuse)

    def _finish(self, reuse: bool) -> None:
        self._parsed.parser = None  # no cycle left behind
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(conn, reuse)

    async def aclose(self) -> None:
        self._finish(reuse=False)  # no-op after the end; else a half-read connection closes
