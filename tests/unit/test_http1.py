"""The lean HTTP/1.1 client (coe_router/experts/http1.py) against a scripted server.

The server runs in the test's own event loop on a loopback port; each test scripts what
it answers, byte for byte, so framing, keep-alive, timeouts and failures are exact.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from coe_router.experts import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FAST = http1.Timeouts(connect=1.0, read=1.0, write=1.0, pool=0.3)


class Server:
    """Counts connections; answers each request with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                await self.handler(reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


def answer(body: bytes, *headers: str) -> Handler:
    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *headers]
        w.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)

    return handle


@pytest.fixture
async def pools() -> AsyncIterator[list[http1.ConnectionPool]]:
    made: list[http1.ConnectionPool] = []
    yield made
    for pool in made:
        await pool.aclose()


def pool_for(
    server: Server, made: list[http1.ConnectionPool], timeouts: http1.Timeouts = FAST, n: int = 4
) -> http1.ConnectionPool:
    pool = http1.ConnectionPool(server.url, timeouts, n)
    made.append(pool)
    return pool


async def test_answers_reuse_one_kept_alive_connection(pools: list[http1.ConnectionPool]) -> None:
    async with Server(answer(b'{"ok":1}', "content-type: application/json")) as server:
        pool = pool_for(server, pools)
        for i in range(3):
            resp = await pool.request("POST", "/v1/x", f"body{i}".encode(), {"x-a": "b"})
            assert resp.status_code == 200
            assert resp.headers.get("Content-Type") == "application/json"
            assert resp.json() == {"ok": 1}
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/x HTTP/1.1\r\n")
        assert b"\r\nx-a: b\r\n" in first
        assert first.endswith(b"body0")


async def test_a_chunked_stream_arrives_as_it_is_sent(pools: list[http1.ConnectionPool]) -> None:
    release = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await release.wait()
        w.write(b"4\r\nlast\r\n0\r\n\r\n")

    async with Server(handle) as server:
        resp = await pool_for(server, pools).request("POST", "/", b"", stream=True)
        chunks = resp.aiter_bytes()
        assert await anext(chunks) == b"first"  # before the server sent the rest
        release.set()
        assert [c async for c in chunks] == [b"last"]


async def test_a_body_that_ends_with_the_connection_is_complete(
    pools: list[http1.ConnectionPool],
) -> None:
    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\ndata: x\n\n")
        await w.drain()
        w.close()

    async with Server(handle) as server:
        pool = pool_for(server, pools)
        resp = await pool.request("POST", "/", b"")
        assert resp.content == b"data: x\n\n"
        await pool.request("POST", "/", b"")  # the closed connection is not reused
        assert server.connections == 2


async def test_closing_a_stream_early_closes_its_connection(
    pools: list[http1.ConnectionPool],
) -> None:
    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await asyncio.sleep(10)

    async with Server(handle) as server:
        pool = pool_for(server, pools)
        resp = await pool.request("POST", "/", b"", stream=True)
        assert await anext(resp.aiter_bytes()) == b"a"
        await resp.aclose()
        # Closed, not kept: what vLLM sees as an abort.
        assert pool.open_connections == 0
        assert pool.idle_connections == 0


async def test_a_silent_server_is_a_read_timeout(pools: list[http1.ConnectionPool]) -> None:
    async def handle(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async with Server(handle) as server:
        timeouts = http1.Timeouts(connect=1.0, read=0.2, write=1.0, pool=1.0)
        with pytest.raises(httpx.ReadTimeout):
            await pool_for(server, pools, timeouts).request("POST", "/", b"")


async def test_a_refused_connection_is_a_connect_error(pools: list[http1.ConnectionPool]) -> None:
    async with Server(answer(b"")) as server:
        url = server.url
    pool = http1.ConnectionPool(url, FAST, 1)
    pools.append(pool)
    with pytest.raises(httpx.ConnectError):
        await pool.request("GET", "/health")
    assert pool.open_connections == 0


async def test_a_full_pool_is_a_pool_timeout(pools: list[http1.ConnectionPool]) -> None:
    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")

    async with Server(handle) as server:
        pool = pool_for(server, pools, n=1)
        held = await pool.request("POST", "/", b"", stream=True)
        with pytest.raises(httpx.PoolTimeout):
            await pool.request("POST", "/", b"")
        await held.aclose()


async def test_a_disconnect_mid_body_is_a_protocol_error(
    pools: list[http1.ConnectionPool],
) -> None:
    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly some")
        await w.drain()
        w.close()

    async with Server(handle) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await pool_for(server, pools).request("POST", "/", b"")


async def test_gzip_is_decoded_and_junk_is_a_decoding_error(
    pools: list[http1.ConnectionPool],
) -> None:
    async with Server(answer(gzip.compress(b"hello"), "content-encoding: gzip")) as server:
        assert (await pool_for(server, pools).request("POST", "/", b"")).content == b"hello"
    async with Server(answer(b"not gzip at all", "content-encoding: gzip")) as server:
        with pytest.raises(httpx.DecodingError):
            await pool_for(server, pools).request("POST", "/", b"")


async def test_idle_connections_expire(
    pools: list[http1.ConnectionPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_EXPIRY_S", 0.05)
    async with Server(answer(b"{}")) as server:
        pool = pool_for(server, pools)
        await pool.request("POST", "/", b"")
        assert pool.idle_connections == 1
        await asyncio.sleep(0.1)
        pool.prune()
        assert pool.open_connections == 0
        assert pool.idle_connections == 0


async def test_bytes_that_arrive_while_the_reader_is_busy_are_not_waited_for(
    pools: list[http1.ConnectionPool],
) -> None:
    sent_second = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"1\r\nb\r\n")  # then silence, the stream still open
        await w.drain()
        sent_second.set()
        await asyncio.sleep(10)

    async with Server(handle) as server:
        timeouts = http1.Timeouts(connect=1.0, read=0.5, write=1.0, pool=1.0)
        resp = await pool_for(server, pools, timeouts).request("POST", "/", b"", stream=True)
        chunks = resp.aiter_bytes()
        assert await anext(chunks) == b"a"
        await sent_second.wait()  # "b" arrives while nobody waits on the connection
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(anext(chunks), 0.3) == b"b"  # not a read timeout
        await resp.aclose()


async def test_the_end_of_a_stream_that_arrives_while_the_reader_is_busy_is_read(
    pools: list[http1.ConnectionPool],
) -> None:
    # The rest of the body and its end arrive together while the reader is elsewhere (a
    # relay writing to a slow client): the message is complete by the time it asks again,
    # and what arrived with the end must still come out before the iteration stops.
    sent_rest = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"6\r\nsecond\r\n4\r\nlast\r\n0\r\n\r\n")
        await w.drain()
        sent_rest.set()

    async with Server(handle) as server:
        pool = pool_for(server, pools)
        resp = await pool.request("POST", "/", b"", stream=True)
        chunks = resp.aiter_bytes()
        assert await anext(chunks) == b"first"
        await sent_rest.wait()
        await asyncio.sleep(0.05)  # the end is parsed before the reader asks again
        assert b"".join([c async for c in chunks]) == b"secondlast"
        assert pool.idle_connections == 1  # and the finished connection is kept alive
