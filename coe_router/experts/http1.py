"""A lean HTTP/1.1 keep-alive client for the expert calls on the request path.

Profiling the gateway under ``bench/gateway_overhead.py`` showed httpx (client, httpcore
pool, anyio streams) spending about 60% of the gateway's CPU per relayed request at
concurrency 16, most of it generic machinery an expert call does not need: auth and
redirect hooks, URL re-parsing, per-request pool scans of every connection. This client
does one thing: ``POST`` (or ``GET``) a body to one ``host:port`` over pooled keep-alive
connections, parsing the answer with ``httptools`` (the C parser uvicorn already uses).

What it keeps from httpx, so the rest of the code cannot tell the difference:

* every wait has an explicit timeout (connect, write, read between chunks, pool), taken
  from the same :class:`~coe_router.config.UpstreamSettings`;
* failures raise httpx's exception types (:class:`httpx.ConnectError`,
  :class:`httpx.ReadTimeout`, :class:`httpx.RemoteProtocolError`...), so that
  :func:`coe_router.errors.map_httpx_exceptions` stays the one place that translates them;
* closing a response before its end closes the connection (vLLM then aborts the request);
  a complete response returns its connection to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import json
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from coe_router.experts.http1_connection import KEEPALIVE_EXPIRY_S, Connection, Timeouts

__all__ = ["KEEPALIVE_EXPIRY_S", "ConnectionPool", "Headers", "Response", "Timeouts"]


class Headers:
    """Response headers (names lower-case), read-only; ``get`` as on a dict of str."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str, default: str = "") -> str:
        """The first value of ``name`` (case-insensitive), decoded as latin-1."""
        key = name.lower().encode()
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default


def _decoder(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return zlib.decompressobj()
    return encoding  # unsupported: reading the body raises DecodingError


class Response:
    """An upstream answer whose head arrived; read or iterate its body, then ``aclose``."""

    def __init__(self, pool: ConnectionPool, conn: Connection) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self.status_code = conn.status
        self.headers = Headers(conn.headers)
        self.content = b""
        encoding = self.headers.get("content-encoding").strip().lower()
        # We ask for identity; a server that compresses anyway is decoded like httpx would.
        self._decoder = None if encoding in ("", "identity") else _decoder(encoding)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked encoding already undone)."""
        conn = self._conn
        if conn is None:
            return
        while True:
            # Read "complete" before taking the bytes: the end may arrive while this
            # generator is suspended at its yield, together with the last bytes, and those
            # must come out on the next turn rather than be dropped with the connection.
            complete = conn.complete
            data = conn.take()
            if data and self._decoder is not None:
                data = self._decode(data, complete)
            if data:
                yield data
            if complete:
                break
            await conn.wait(self._pool.timeouts.read)
        await self.aclose()

    def _decode(self, data: bytes, final: bool) -> bytes:
        assert self._decoder is not None
        if isinstance(self._decoder, str):
            raise httpx.DecodingError(f"the body is in an encoding we did not ask for: "
                                      f"{self._decoder}")  # fmt: skip
        try:
            out: bytes = self._decoder.decompress(data)
            return out + self._decoder.flush() if final else out
        except zlib.error as exc:
            raise httpx.DecodingError(f"the body does not decode: {exc}") from None

    async def aread(self) -> bytes:
        """The whole body (kept in :attr:`content`)."""
        parts = [chunk async for chunk in self.aiter_bytes()]
        self.content = b"".join(parts)
        return self.content

    def json(self) -> Any:
        """The body read by :meth:`aread`, parsed as JSON (ValueError when it is not)."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        """The body read by :meth:`aread`, decoded as UTF-8 (errors replaced)."""
        return self.content.decode(errors="replace")

    async def aclose(self) -> None:
        """Give the connection back (complete answer) or close it (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class ConnectionPool:
    """Keep-alive connections to one ``http://host:port`` (at most ``max_connections``)."""

    def __init__(self, base_url: str, timeouts: Timeouts, max_connections: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the lean client speaks plain http only, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeouts = timeouts
        self._authority = parts.netloc.encode()
        self._max = max_connections
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, busy or idle."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Kept-alive connections waiting for the next request."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> Response:
        """Send one request; returns once the response head arrived (the whole body too
        unless ``stream``). A streamed response must be closed with ``aclose``."""
        conn = await self._acquire()
        try:
            await conn.write(self._head(method, path, body, headers) + body, self.timeouts.write)
            wait_s = self.timeouts.read if read_timeout is None else read_timeout
            while not conn.headers_done:
                await conn.wait(wait_s)
        except BaseException:
            conn.close()
            self.release(conn)
            raise
        response = Response(self, conn)
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    def _head(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> bytes:
        lines = [
            f"{method} {self.prefix}{path} HTTP/1.1".encode(),
            b"host: " + self._authority,
            b"content-length: " + str(len(body)).encode(),
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _acquire(self) -> Connection:
        if self._closed:
            raise httpx.ConnectError("the client is closed")
        self.prune()
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reset()
                return conn
            self._open -= 1
        if self._open >= self._max:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self.timeouts.pool):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._notify()  # handed a free slot, but leaving: the next in line has it
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout(
                        f"no free connection within {self.timeouts.pool:g} s"
                    ) from None
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            return await self._acquire()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._notify()
            raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop), self.host, self.port
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {self.host}:{self.port} within {self.timeouts.connect:g} s"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn

    def release(self, conn: Connection) -> None:
        """Back to the pool if reusable, else closed; wakes a waiter either way."""
        if conn.reusable and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._notify()

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def prune(self) -> None:
        """Close idle connections older than :data:`KEEPALIVE_EXPIRY_S` (called on each
        request and by the replica's health rounds, so an idle gateway lets them go)."""
        if not self._idle:
            return
        cutoff = asyncio.get_running_loop().time() - KEEPALIVE_EXPIRY_S
        if self._idle[0].idle_since >= cutoff:  # the oldest is first: nothing to do
            return
        keep = [c for c in self._idle if c.idle_since >= cutoff]
        for conn in self._idle:
            if conn.idle_since < cutoff:
                conn.close()
                self._open -= 1
        self._idle = keep

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            self._open -= 1
