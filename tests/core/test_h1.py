"""forge's HTTP/1.1 transport (forge_core/h1.py) against raw asyncio servers on loopback: the
framings a backend may use, when a connection is reused and when it must not be, the pool's
limits and the errors httpx callers expect."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from forge_core import httpio
from tests.core.test_httpio import OK, Handler, raw_server, read_request


def client(timeout: float = 5.0, **limits: float | int | None) -> httpx.AsyncClient:
    settings = {"max_keepalive_connections": 4, "keepalive_expiry": 30.0, **limits}
    return httpx.AsyncClient(transport=httpio.transport(httpx.Limits(**settings)), timeout=timeout)


def serving(answers: list[bytes], connections: list[int]) -> Handler:
    """A server answering each request on a connection with the next of ``answers``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while answers:
                await read_request(reader)
                writer.write(answers.pop(0))
                await writer.drain()
            await reader.read()  # keep it open until the client hangs up
        writer.close()

    return handler


async def test_a_chunked_answer_arrives_whole_and_its_connection_is_reused() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    connections: list[int] = []
    async with raw_server(serving([chunked, OK], connections)) as url, client() as http:
        first = await http.post(url + "/a", content=b"{}")
        second = await http.post(url + "/b", content=b"{}")
    assert first.text == "hello world" and first.http_version == "HTTP/1.1"
    assert second.json() == {}
    assert len(connections) == 1


async def test_streamed_pieces_come_as_they_arrive() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"3\r\ntwo\r\n0\r\n\r\n")
        await writer.drain()

    async with (
        raw_server(handler) as url,
        client() as http,
        http.stream("POST", url, content=b"{}") as response,
    ):
        pieces = response.aiter_raw()
        assert await anext(pieces) == b"one"  # before the rest was even sent
        release.set()
        assert [p async for p in pieces] == [b"two"]


async def test_a_body_ending_with_the_connection_is_read_and_the_connection_not_reused() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await read_request(reader)
        writer.write(until_close)
        await writer.drain()
        writer.close()

    connections: list[int] = []
    async with raw_server(handler) as url, client() as http:
        assert (await http.post(url, content=b"{}")).text == "all of it"
        assert (await http.post(url, content=b"{}")).text == "all of it"
    assert len(connections) == 2


@pytest.mark.parametrize(
    ("request_headers", "answer"),
    [
        ({"connection": "close"}, OK),  # the client asked (llamafile after a stream)
        ({}, OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)),  # the server said
    ],
)
async def test_connection_close_from_either_side_is_never_reused(
    request_headers: dict[str, str], answer: bytes
) -> None:
    connections: list[int] = []
    async with (
        raw_server(serving([answer, answer, answer], connections)) as url,
        client() as http,
    ):
        for _ in range(2):
            response = await http.post(url, content=b"{}", headers=request_headers)
            assert response.json() == {}
    assert len(connections) == 2


async def test_a_head_answer_has_no_body_and_keeps_the_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
    connections: list[int] = []
    async with raw_server(serving([head, OK], connections)) as url, client() as http:
        response = await asyncio.wait_for(http.head(url), 2)
        assert response.headers["content-length"] == "1234" and response.content == b""
        assert (await http.post(url, content=b"{}")).json() == {}
    assert len(connections) == 1


async def test_an_interim_100_continue_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    connections: list[int] = []
    async with raw_server(serving([answer, OK], connections)) as url, client() as http:
        response = await http.post(url, content=b"{}")
        assert response.status_code == 200 and response.json() == {}
        assert (await http.post(url, content=b"{}")).json() == {}
    assert len(connections) == 1


async def test_an_abandoned_answer_closes_its_connection() -> None:
    """A stream left half-read (the client went away) must not be reused: the next request
    would read the rest of the old answer."""
    endless = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst part"
    connections: list[int] = []
    async with raw_server(serving([endless, OK], connections)) as url, client() as http:
        async with http.stream("POST", url, content=b"{}") as response:
            assert await anext(response.aiter_raw()) == b"first part"
        assert (await http.post(url, content=b"{}")).json() == {}
    assert len(connections) == 2


async def test_a_cancelled_request_closes_its_connection() -> None:
    seen_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()  # returns at EOF: the client closed the connection
        seen_eof.set()

    async with raw_server(handler) as url, client() as http:

        async def read_all() -> bytes:
            return (await http.post(url, content=b"{}")).content

        task = asyncio.ensure_future(read_all())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen_eof.wait(), 2)


async def test_the_pool_limit_makes_requests_wait_then_time_out() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await read_request(reader)
                await gate.wait()
                writer.write(OK)
                await writer.drain()

    timeout = httpx.Timeout(5.0, pool=0.3)
    async with raw_server(handler) as url, client(max_connections=1) as http:
        first = asyncio.ensure_future(http.post(url, content=b"{}", timeout=timeout))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await http.post(url, content=b"{}", timeout=timeout)
        waiting = asyncio.ensure_future(http.post(url, content=b"{}"))
        await asyncio.sleep(0.1)
        gate.set()
        assert (await first).json() == {} and (await waiting).json() == {}


async def test_an_expired_idle_connection_is_not_reused() -> None:
    connections: list[int] = []
    async with (
        raw_server(serving([OK, OK], connections)) as url,
        client(keepalive_expiry=0.1) as http,
    ):
        await http.post(url, content=b"{}")
        await asyncio.sleep(0.3)
        await http.post(url, content=b"{}")
    assert len(connections) == 2


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(1000))

    async with raw_server(handler) as url, client() as http:
        request = http.build_request("POST", url, content=b"{}")
        request.headers["x-evil"] = "a"
        request.headers._list[-1] = (b"x-evil", b"x-evil", b"a\r\nx-injected: 1")
        with pytest.raises(httpx.LocalProtocolError):
            await http.send(request)
    await asyncio.sleep(0.1)
    assert b"x-injected" not in b"".join(received)


async def test_a_streamed_request_body_goes_out_chunked() -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        got.append(head + await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK)
        await writer.drain()

    async def parts():  # type: ignore[no-untyped-def]
        yield b'{"a": '
        yield b"1}"

    async with raw_server(handler) as url, client() as http:
        assert (await http.post(url, content=parts())).json() == {}
    assert b"transfer-encoding: chunked" in got[0].lower()
    assert got[0].endswith(b'6\r\n{"a": \r\n2\r\n1}\r\n0\r\n\r\n')


@pytest.mark.parametrize(
    "answer",
    [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n"],
)
async def test_an_answer_that_is_not_http_is_a_protocol_error(answer: bytes) -> None:
    async with raw_server(serving([answer], [])) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, content=b"{}")


async def test_a_server_closing_before_any_answer_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with raw_server(handler) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.post(url, content=b"{}")
