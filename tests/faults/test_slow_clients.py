"""Clients that send slowly, or hang up, cannot hold the gateway (row 6 of the fault
table): a request's headers and its body each have a deadline (a 408, then the connection
closes), and a client closing mid-request leaves no traceback in the log. Raw sockets
against the real gateway process."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.faults.canned import StartGateway, log_of
from tests.support import GatewayProcess

HEADER_S = 1.0
BODY_S = 1.0
CONNECTIONS = 200


@pytest.fixture(scope="module")
def gw(module_gateway: StartGateway) -> GatewayProcess:
    return module_gateway(env={"COE_SERVER__HEADER_TIMEOUT_S": str(HEADER_S),
                               "COE_SERVER__BODY_TIMEOUT_S": str(BODY_S)})  # fmt: skip


def address(gw: GatewayProcess) -> tuple[str, int]:
    url = httpx.URL(gw.url)
    assert url.port is not None
    return url.host, url.port


async def drip(
    gw: GatewayProcess, data: bytes, every_s: float, limit_s: float
) -> tuple[bytes, float]:
    """Send ``data`` a byte at a time every ``every_s`` until the gateway closes the
    connection; what it answered and when (``limit_s``: give up, the test fails)."""
    reader, writer = await asyncio.open_connection(*address(gw))
    started = time.monotonic()
    received = b""

    async def read_all() -> None:
        nonlocal received
        while chunk := await reader.read(65536):
            received += chunk

    reading = asyncio.create_task(read_all())
    try:
        for byte in data:
            if reading.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([reading], timeout=every_s)
        await asyncio.wait_for(reading, limit_s)
    finally:
        writer.close()
    return received, time.monotonic() - started


HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


async def test_dripping_headers_are_closed_with_a_408(gw: GatewayProcess) -> None:
    results = await asyncio.gather(*(
        drip(gw, HEAD + b"x-pad: " + b"a" * 100 + b"\r\n\r\n", 0.25, HEADER_S + 5)
        for _ in range(CONNECTIONS)
    ))  # fmt: skip
    for received, elapsed in results:
        assert received.startswith(b"HTTP/1.1 408 "), received[:100]
        assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
        # From our connect, which the gateway saw a little before: 200 connects queue.
        assert HEADER_S - 0.5 <= elapsed <= HEADER_S + 3, elapsed
    async with httpx.AsyncClient(base_url=gw.url) as client:  # still serving
        assert (await client.get("/health")).status_code == 200


async def test_headers_of_a_second_request_on_a_kept_alive_connection_have_a_deadline(
    gw: GatewayProcess,
) -> None:
    first = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(first)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b'{"status":"ok"}'))
        started = time.monotonic()
        writer.write(b"GET /hea")  # and nothing more
        rest = await asyncio.wait_for(reader.read(), HEADER_S + 5)
        assert rest.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started <= HEADER_S + 3
    finally:
        writer.close()


async def test_a_dripping_body_gets_a_408_and_the_connection_closes(gw: GatewayProcess) -> None:
    body = json.dumps({"model": "coe", "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = HEAD + f"content-length: {len(body)}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection(*address(gw))
    writer.write(head)
    received, elapsed = await drip_on(reader, writer, body)
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408 "), received[:200]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    assert BODY_S - 0.1 <= elapsed <= BODY_S + 3


async def drip_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[bytes, float]:
    started = time.monotonic()
    reading = asyncio.create_task(reader.read())
    try:
        for byte in data:
            if reading.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([reading], timeout=0.25)
        return await asyncio.wait_for(reading, 5), time.monotonic() - started
    finally:
        writer.close()


async def test_clients_hanging_up_mid_request_leave_no_traceback(gw: GatewayProcess) -> None:
    body = json.dumps({"model": "coe", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for cut in (HEAD[:10], HEAD, HEAD + f"content-length: {len(body)}\r\n\r\n".encode() + body[:5]):
        for _ in range(20):
            _, writer = await asyncio.open_connection(*address(gw))
            writer.write(cut)
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.close()
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/health")).status_code == 200
    log = log_of(gw)
    assert "Traceback" not in log
    assert "ERROR" not in log
