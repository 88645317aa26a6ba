"""The web side's HTTP over raw TCP: what a real client or a hostile one sends.

test_web.py speaks through aiohttp's client, which only sends well-formed
requests one at a time; here the bytes are ours: pipelining, Expect:
100-continue, HTTP/1.0, chunked bodies, malformed and oversized requests,
bodies that trickle, idle keep-alive connections, and a stop with clients
still connected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from ctrackd.configdynamic import WebConfig
from ctrackd.web import server as web_server
from ctrackd.web.ratelimit import RateLimiter
from ctrackd.web.server import WebServer
from tests.test_web import ORIGIN, Clock, make_plan


@pytest.fixture
async def web(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WebServer]:
    # Short bounds so the timeouts show within a test.
    monkeypatch.setattr(web_server, "BODY_SECONDS", 0.3)
    monkeypatch.setattr(web_server, "KEEPALIVE_SECONDS", 0.4)
    monkeypatch.setattr(web_server, "SWEEP_SECONDS", 0.05)
    config = WebConfig(host="127.0.0.1", port=0, origins=(ORIGIN,), replace=("+74951234567",),
                       max_body_bytes=1024)
    plan = make_plan()
    server = WebServer(config, lambda: plan, clock=Clock())
    await server.start()
    yield server
    await server.stop()


class Client:
    """A raw HTTP/1.1 connection: write bytes, read whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: WebServer) -> Client:
        assert server.address is not None
        return cls(*await asyncio.open_connection(*server.address))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status_line = await asyncio.wait_for(self.reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length)
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        """True once the server closed the connection (EOF within a second)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 1.0) == b""
        except (TimeoutError, ConnectionError):
            return False

    def close(self) -> None:
        self.writer.close()


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + b"".join(extra) + b"\r\n" + body)


def visit(visitor: str) -> bytes:
    return json.dumps({"visitor_id": visitor}).encode()


async def test_pipelined_requests_are_answered_in_order_on_one_connection(web) -> None:
    client = await Client.open(web)
    await client.send(post("/v1/sessions", visit("a")) + post("/v1/sessions/nope/heartbeat", b"{}")
                      + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first, second, third = [await client.response() for _ in range(3)]
    assert first[0] == 200 and json.loads(first[2])["number"]
    assert first[1]["access-control-allow-origin"] == ORIGIN and first[1]["vary"] == "Origin"
    assert first[1]["x-content-type-options"] == "nosniff" and "date" in first[1]
    assert second[0] == 404 and "ask for a number again" in json.loads(second[2])["error"]
    assert third[0] == 200 and json.loads(third[2])["sessions"] == 1
    assert "access-control-allow-origin" not in third[1]  # no Origin sent
    session = json.loads(first[2])["session_id"]
    await client.send(post(f"/v1/sessions/{session}/heartbeat", b"{}"))  # still open
    assert (await client.response())[2] == b'{"ok": true}'
    client.close()


async def test_expect_continue_and_a_chunked_body(web) -> None:
    client = await Client.open(web)
    await client.send(post("/v1/sessions", b"", b"Expect: 100-continue\r\n")
                      .replace(b"Content-Length: 0", b"Content-Length: 21"))
    assert await client.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert await client.reader.readline() == b"\r\n"
    await client.send(b'{"visitor_id": "b"}  ')
    assert (await client.response())[0] == 200
    body = visit("c")
    await client.send(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 5 + body[:5]
                      + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n")
    assert (await client.response())[0] == 200
    client.close()


async def test_a_body_too_large_is_refused_before_it_is_read(web) -> None:
    client = await Client.open(web)  # announced too large, the client waits for our word
    await client.send(post("/v1/sessions", b"", b"Expect: 100-continue\r\n")
                      .replace(b"Content-Length: 0", b"Content-Length: 999999"))
    status, _, body = await client.response()
    assert status == 413 and json.loads(body)["error"] == "body larger than 1024 bytes"
    assert await client.closed()
    client = await Client.open(web)  # chunked past the bound: refused, the rest dropped
    await client.send(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + (b"400\r\n" + b" " * 1024 + b"\r\n") * 3 + b"0\r\n\r\n")
    assert (await client.response())[0] == 413
    await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection goes on
    assert (await client.response())[0] == 200
    client.close()


@pytest.mark.parametrize("request_bytes, status, message", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "not a valid HTTP request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URL is longer"),
    (b"GET / HTTP/1.1\r\n" + b"X-Junk: " + b"j" * 8000 + b"\r\n" + b"X-More: " + b"m" * 9000
     + b"\r\n\r\n", 431, "headers are larger"),
    (b"GET / HTTP/1.1\r\nX-Endless: " + b"e" * 300_000, 431, "headers are larger"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 404,
     "not found"),
])
async def test_bad_http_gets_a_json_error_and_the_connection_ends(
        web, request_bytes: bytes, status: int, message: str) -> None:
    client = await Client.open(web)
    await client.send(request_bytes)
    got, headers, body = await client.response()
    assert got == status and message in json.loads(body)["error"]
    assert headers["connection"] == "close" and await client.closed()


async def test_head_and_http_1_0(web) -> None:
    client = await Client.open(web)
    await client.send(b"HEAD /ctrack.js HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await client.response(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 1000
    assert headers["content-type"] == "application/javascript; charset=utf-8"
    await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # no body came after the head
    assert (await client.response())[0] == 200
    client.close()
    old = await Client.open(web)
    await old.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    status, headers, _ = await old.response()
    assert status == 200 and headers["connection"] == "close" and await old.closed()
    old = await Client.open(web)
    await old.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = await old.response()
    assert headers["connection"] == "keep-alive"
    await old.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (await old.response())[0] == 200
    old.close()


async def test_a_trickled_body_gets_408_and_slow_headers_the_close(web) -> None:
    client = await Client.open(web)
    await client.send(post("/v1/sessions", b"").replace(b"Content-Length: 0",
                                                        b"Content-Length: 40") + b'{"vis')
    status, headers, body = await client.response()  # within BODY_SECONDS and a sweep
    assert status == 408 and json.loads(body)["error"] == "the body did not arrive within 0.3 s"
    assert headers["access-control-allow-origin"] == ORIGIN and await client.closed()
    client = await Client.open(web)
    await client.send(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\n")
    assert await client.closed()


async def test_an_idle_keep_alive_connection_is_closed(web) -> None:
    client = await Client.open(web)
    await client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response())[0] == 200
    assert len(web.connections) == 1
    assert await client.closed()  # KEEPALIVE_SECONDS later
    assert not web.connections


async def test_stop_closes_the_connections_and_the_listener(web) -> None:
    clients = [await Client.open(web) for _ in range(3)]
    await clients[0].send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await clients[0].response())[0] == 200
    assert web.address is not None
    address = web.address
    await web.stop()
    for client in clients:
        assert await client.closed()
    with pytest.raises(OSError):
        await asyncio.open_connection(*address)


async def test_a_client_that_reads_nothing_holds_neither_memory_nor_the_stop(web) -> None:
    web.routes.limiter = RateLimiter(per_minute=10**6, burst=10**6)  # as behind a busy nginx
    client = await Client.open(web)
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    flood = b"GET /ctrack.js HTTP/1.1\r\nHost: x\r\n\r\n" * 5000  # ~90 MB of replies asked
    client.writer.write(flood)
    await asyncio.sleep(0.3)
    (connection,) = web.connections
    assert connection._transport is not None
    assert connection._transport.get_write_buffer_size() < 2 * 1024 * 1024  # cut off at 1 MiB
    await asyncio.wait_for(web.stop(), 5)
    assert not web.connections
    client.writer.transport.abort()
