"""forge's network backend under httpx: real sockets on loopback, raw asyncio servers."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from forge_core import httpio
from forge_core.wire.sse import Lines, LineTooLong

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def client(timeout: float = 5.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_keepalive_connections=4, keepalive_expiry=30)
    return httpx.AsyncClient(transport=httpio.transport(limits), timeout=timeout)


async def test_requests_reuse_one_connection_and_arrive_whole() -> None:
    connections: list[int] = []
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                _, body = await read_request(reader)
                bodies.append(body)
                writer.write(OK)
                await writer.drain()

    async with raw_server(handler) as url, client() as http:
        for i in range(3):
            r = await http.post(url + "/v1/chat/completions", content=b'{"n": %d}' % i)
            assert r.status_code == 200 and r.json() == {}
    assert bodies == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert len(connections) == 1


async def test_a_request_leaves_in_one_write() -> None:
    """Headers and body are gathered until the response is read: one write, one packet."""
    writes: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    async with raw_server(handler) as url:
        backend = httpio.AsyncioBackend()
        host, port = url[7:].split(":")
        stream = await backend.connect_tcp(host, int(port))
        transport = stream._protocol.transport  # type: ignore[attr-defined]

        real_write = transport.write

        def write(data: bytes) -> None:
            writes.append(bytes(data))
            real_write(data)

        transport.write = write  # type: ignore[method-assign]
        await stream.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\n\r\n")
        await stream.write(b'{"a":1}')
        assert writes == []  # nothing sent before the read
        data = await stream.read(65536, timeout=5)
        await stream.aclose()
    assert writes == [b'POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 7\r\n\r\n{"a":1}']
    assert data.startswith(b"HTTP/1.1 200 OK")


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        await read_request(reader)
        writer.write(OK)  # keep-alive is advertised by default, then the server hangs up
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url, client() as http:
        assert (await http.post(url + "/", content=b"{}")).status_code == 200
        await asyncio.sleep(0.2)  # the FIN arrives while the connection is pooled
        assert (await http.post(url + "/", content=b"{}")).status_code == 200
    assert len(served) == 2


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async with raw_server(handler) as url, client(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url + "/", content=b"{}")


async def test_a_stream_that_trickles_within_the_timeout_is_read_to_the_end() -> None:
    """The per-read timeout restarts with every read (one lazily re-armed timer)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"2\r\n%02d\r\n" % i)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as url, client(timeout=0.4) as http:
        r = await http.post(url + "/", content=b"{}")
    assert r.content == b"000102030405"


async def test_refused_connection_is_a_connect_error() -> None:
    async with raw_server(lambda r, w: asyncio.sleep(0)) as url:
        pass  # closed: nothing listens on the port any more
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(url + "/", content=b"{}")


async def test_a_server_that_hangs_up_mid_answer_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url + "/", content=b"{}")


async def test_a_slow_reader_stops_the_socket_being_read() -> None:
    """Unread bytes are bounded: past READ_AHEAD the socket is paused, so a slow consumer
    slows the backend down instead of buffering its whole answer in forge."""
    size = 16 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async with (
        raw_server(handler) as url,
        client() as http,
        http.stream("POST", url + "/", content=b"{}") as response,
    ):
        await asyncio.sleep(0.3)
        buffered = response.extensions["network_stream"]._protocol.size
        assert 0 < buffered <= 2 * httpio.READ_AHEAD  # paused, not 16 MB
        total = 0
        async for part in response.aiter_raw():
            total += len(part)
    assert total == size


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_goes_through_the_tls_handshake_and_verifies(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                _, body = await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    trusted = ssl.create_default_context(cafile=str(cert))
    limits = httpx.Limits(max_keepalive_connections=2)
    try:
        async with httpx.AsyncClient(transport=httpio.transport(limits, trusted)) as http:
            for i in range(2):  # the second on the same TLS connection
                r = await http.post(f"https://localhost:{port}/", content=b"hi %d" % i)
                assert r.content == b"hi %d" % i
        async with httpx.AsyncClient(transport=httpio.transport(limits)) as http:
            with pytest.raises(httpx.ConnectError):  # not signed by a known authority
                await http.post(f"https://localhost:{port}/", content=b"x")
    finally:
        server.close()


def test_lines_cut_on_every_line_ending_and_across_reads() -> None:
    lines = Lines()
    assert lines.feed(b"data: {\"a\"") == []
    assert lines.feed(b": 1}\n\ndata: x\r\n") == [b'data: {"a": 1}', b"", b"data: x"]
    assert lines.feed(b"one\rtwo\r") == [b"one", b"two"]
    assert lines.feed("é".encode()[:1]) == []
    assert lines.feed("é".encode()[1:] + b"\n") == ["é".encode()]
    assert lines.feed(b"tail") == []
    assert lines.flush() == [b"tail"]
    assert lines.flush() == []


def test_a_line_without_end_is_bounded() -> None:
    lines = Lines(limit=10)
    lines.feed(b"12345")
    with pytest.raises(LineTooLong):
        lines.feed(b"678901")
