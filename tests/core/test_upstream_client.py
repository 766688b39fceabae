"""The proxy's own HTTP/1.1 client against real sockets on loopback.

Most tests use a *scripted* upstream: an asyncio TCP server whose answers are
written byte for byte by the test, so framing edge cases (interim answers,
HEAD, read-until-close, a connection closed while idle, garbage) are exact.
The proxy tests (``test_proxy.py``) cover the same client through the gateway
against an aiohttp application.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.proxy import OneWriteResponse
from gateway.upstream_client import (
    InvalidHeader,
    Origin,
    RequestBodyError,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)
from gateway_dev.devkeys import rsa_keypair
from tests.conftest import GatewayFactory
from tests.support.clock import FakeClock

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Scripted"], Awaitable[None]]


@dataclass
class Scripted:
    """A raw TCP upstream; ``script`` runs once per accepted connection."""

    script: Script
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def origin(self) -> Origin:
        assert self.server is not None
        return Origin("http", "127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request head (and a Content-Length body, if any); b"" at end of stream."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        body = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":")[1]))
        self.requests.append(head + body)
        return head + body


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> Scripted:
        upstream = Scripted(script)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream.connections += 1
            try:
                await script(reader, writer, upstream)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        upstream.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(upstream.server)
        return upstream

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(limit=10)
    yield c
    await c.close()


async def get(
    client: UpstreamClient, origin: Origin, path: str = "/", method: str = "GET", **kw: object
) -> tuple[UpstreamResponse, bytes]:
    kw.setdefault("connect_timeout", 2.0)
    kw.setdefault("read_timeout", 2.0)
    resp = await client.request(origin, method, path, [("X-Test", "1")], **kw)  # type: ignore[arg-type]
    try:
        return resp, await resp.read()
    finally:
        resp.release()


def answer(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def answering(reply: Callable[[bytes], bytes]) -> Script:
    """An upstream that answers each request on a connection with ``reply(request)``."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        while request := await up.read_request(reader):
            writer.write(reply(request))
            await writer.drain()

    return script


def answer_once(raw: bytes, linger: float = 1.0) -> Script:
    """An upstream that reads one request head, writes ``raw``, and keeps the line open."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(linger)

    return script


keep_answering = answering(lambda _: answer())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return as soon as ``condition`` holds (checked on every turn of the loop)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_keep_alive_connection_is_reused(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    up = await scripted(keep_answering)
    for _ in range(3):
        resp, body = await get(client, up.origin)
        assert (resp.status, body) == (200, b"hello")
    assert up.connections == 1
    assert client.idle_connections(up.origin) == 1
    assert up.requests[0].startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-Test: 1\r\n" in up.requests[0]


async def test_idle_connection_closed_by_upstream_is_not_reused(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        await up.read_request(reader)
        writer.write(answer())  # keep-alive promised, then closed while idle
        await writer.drain()

    up = await scripted(one_per_connection)
    await get(client, up.origin)
    # The close reaches the client while the connection is idle: the pool drops it.
    await until(lambda: client.idle_connections(up.origin) == 0)
    resp, body = await get(client, up.origin, method="POST", body=b"x=1")
    assert (resp.status, body) == (200, b"hello")
    assert up.connections == 2


def _dies_on_second_request(answered: list[int]) -> Script:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        if up.connections == 1:
            await up.read_request(reader)
            writer.write(answer())
            await writer.drain()
            await up.read_request(reader)  # the next request: dropped without an answer
            writer.transport.abort()
            return
        await keep_answering(reader, writer, up)
        answered.append(up.connections)

    return script


async def test_idempotent_request_on_a_dead_connection_is_sent_again(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    up = await scripted(_dies_on_second_request([]))
    await get(client, up.origin)
    resp, body = await get(client, up.origin)  # GET: safe to send again on a new connection
    assert (resp.status, body) == (200, b"hello")
    assert up.connections == 2


async def test_a_dead_pooled_connection_costs_one_resend_on_a_new_connection(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    """With several dead idle connections pooled, a GET is sent again once, on a fresh one."""
    three = asyncio.Event()

    async def first_answered_then_dead(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        number = up.connections
        await up.read_request(reader)
        if number > 3:  # a new connection, opened for the resend
            writer.write(answer())
            await writer.drain()
            return
        if number == 3:
            three.set()
        await three.wait()  # all three requests in flight: three pooled connections after
        writer.write(answer())
        await writer.drain()
        if await up.read_request(reader):  # the pooled ones die as if closed while idle
            writer.transport.abort()

    up = await scripted(first_answered_then_dead)
    await asyncio.gather(*(get(client, up.origin) for _ in range(3)))
    assert client.idle_connections(up.origin) == 3
    resp, body = await get(client, up.origin, "/again")
    assert (resp.status, body) == (200, b"hello")
    assert sum(r.startswith(b"GET /again ") for r in up.requests) == 2
    assert up.connections == 4


async def test_post_on_a_dead_connection_is_not_sent_again(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    up = await scripted(_dies_on_second_request([]))
    await get(client, up.origin)
    with pytest.raises(UpstreamError) as err:
        await get(client, up.origin, method="POST", body=b"pay=1")
    assert err.value.kind == "reset"
    assert up.connections == 1  # never silently repeated (RFC 9110, 9.2.2)


async def test_interim_answers_are_skipped(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    up = await scripted(answering(lambda _: hints + answer(b"final", b"X-Final: yes\r\n")))
    for _ in range(2):
        resp, body = await get(client, up.origin)
        assert (resp.status, body, resp.headers["X-Final"]) == (200, b"final", "yes")
        assert "Link" not in resp.headers
    assert up.connections == 1


async def test_head_answer_has_no_body_and_the_connection_stays_usable(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    def head_then_get(request: bytes) -> bytes:
        if request.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
        return answer(b"after head")

    up = await scripted(answering(head_then_get))
    resp, body = await get(client, up.origin, method="HEAD")
    assert (resp.status, body, resp.headers["Content-Length"]) == (200, b"", "12345")
    resp, body = await get(client, up.origin)
    assert body == b"after head"
    assert up.connections == 1


async def test_no_content_and_not_modified_have_no_body(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    answers = iter(
        [
            b'HTTP/1.1 204 No Content\r\nETag: "1"\r\n\r\n',
            b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\n\r\n',
            answer(b"then a body"),
        ]
    )
    up = await scripted(answering(lambda _: next(answers)))
    assert [(r.status, b) for r, b in [await get(client, up.origin) for _ in range(3)]] == [
        (204, b""),
        (304, b""),
        (200, b"then a body"),
    ]
    assert up.connections == 1


async def test_chunked_and_read_until_close_answers(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    async def framings(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        request = await up.read_request(reader)
        if b"/chunked" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await writer.drain()
            await up.read_request(reader)  # stays open for the next one
        else:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
            await writer.drain()  # then closes: that ends the body

    up = await scripted(framings)
    _, body = await get(client, up.origin, "/chunked")
    assert body == b"hello world"
    assert client.idle_connections(up.origin) == 1
    _, body = await get(client, up.origin, "/close")
    assert body == b"until the end"
    assert client.idle_connections(up.origin) == 0  # a read-until-close connection is spent


async def test_invalid_answer_is_an_upstream_error(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    up = await scripted(
        answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
    )
    with pytest.raises(UpstreamError) as err:
        await get(client, up.origin)
    assert err.value.kind == "invalid"
    assert client.open_connections == 0


async def test_silent_upstream_times_out_before_and_during_the_body(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    async def stalls(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        request = await up.read_request(reader)
        if b"/mid" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
        await asyncio.sleep(5)

    up = await scripted(stalls)
    with pytest.raises(UpstreamError) as err:
        await get(client, up.origin, "/head", read_timeout=0.2)
    assert err.value.kind == "timeout"
    resp = await client.request(up.origin, "GET", "/mid", [], connect_timeout=1, read_timeout=0.2)
    try:
        assert await resp.read_chunk() == b"partial"
        with pytest.raises(UpstreamError) as err:
            await resp.read_chunk()
        assert err.value.kind == "timeout"
    finally:
        resp.release()
    assert client.open_connections == 0


async def test_refused_connection_is_a_connect_error(client: UpstreamClient) -> None:
    with socket_on_free_port() as port:
        pass  # bound and released: nothing listens there now
    with pytest.raises(UpstreamError) as err:
        await get(client, Origin("http", "127.0.0.1", port))
    assert err.value.kind == "connect"
    assert client.open_connections == 0


async def test_pool_limit_makes_requests_wait_for_a_free_connection(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    gate = asyncio.Event()

    async def held(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted
    ) -> None:
        while request := await up.read_request(reader):
            if b"/held" in request:
                await gate.wait()
            writer.write(answer())
            await writer.drain()

    up = await scripted(held)
    client = UpstreamClient(limit=1)
    try:
        first = asyncio.create_task(get(client, up.origin, "/held"))
        await until(lambda: len(up.requests) == 1)  # the one connection is busy
        with pytest.raises(UpstreamError) as err:  # waits at most the connect timeout
            await get(client, up.origin, "/quick", connect_timeout=0.1)
        assert err.value.kind == "timeout"
        second = asyncio.create_task(get(client, up.origin, "/quick"))
        await asyncio.sleep(0.05)
        assert not second.done()
        gate.set()
        assert (await first)[1] == (await second)[1] == b"hello"
        assert up.connections == 1  # the waiting request took over the freed connection
    finally:
        await client.close()


async def test_streamed_body_with_and_without_length(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Scripted) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"chunked" in head.lower():
                body = await reader.readuntil(b"0\r\n\r\n")
            else:
                body = await reader.readexactly(10)
            up.requests.append(head + body)
            writer.write(answer())
            await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        for piece in (b"01234", b"", b"56789"):
            yield piece

    up = await scripted(raw)
    await get(client, up.origin, method="POST", body=parts(), content_length=10)
    await get(client, up.origin, method="POST", body=parts())
    with_length, chunked = up.requests
    assert b"\r\nContent-Length: 10\r\n" in with_length and with_length.endswith(b"0123456789")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in chunked
    assert chunked.endswith(b"\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n")
    assert up.connections == 1


async def test_short_streamed_body_is_not_sent_as_complete(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    up = await scripted(keep_answering)

    async def short() -> AsyncIterator[bytes]:
        yield b"only five"

    with pytest.raises(RequestBodyError):
        await get(client, up.origin, method="PUT", body=short(), content_length=100)
    assert client.open_connections == 0  # the upstream half-request was cut off


async def test_early_answer_while_the_body_still_streams(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    never_ends = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"start"
        await never_ends.wait()
        yield b"never"

    up = await scripted(
        answer_once(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
    )
    resp, body = await get(client, up.origin, method="POST", body=slow_body())
    assert (resp.status, body) == (413, b"big")
    assert client.open_connections == 0  # half-sent request: the connection is not reused


async def test_header_values_cannot_smuggle_lines(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    """A CR or LF inside a header value is refused before anything is sent (no smuggling)."""
    up = await scripted(keep_answering)
    for bad in ("a\r\nX-Injected: 1", "a\nb", "a\rb"):
        with pytest.raises(InvalidHeader, match="line break"):
            await client.request(
                up.origin, "GET", "/", [("X-Bad", bad)], connect_timeout=1, read_timeout=1
            )
    assert up.requests == []


async def test_gateway_answers_502_for_an_invalid_upstream_answer(
    scripted: Callable[[Script], Awaitable[Scripted]], gateway: GatewayFactory
) -> None:
    up = await scripted(answer_once(b"NOT HTTP AT ALL\r\n\r\n"))
    url = f"http://127.0.0.1:{up.origin.port}"
    gw = await gateway(
        [{"name": "all", "match": {"path": "/"}, "upstream": url, "policy": "public"}]
    )
    resp = await gw.get("/page", headers={"Accept": "application/json"})
    assert resp.status == 502
    assert (await resp.json())["error"] == "upstream_unavailable"
    metrics = await (await gw.get("/_gateway/metrics")).text()
    assert 'gateway_upstream_errors_total{kind="invalid",route="all"} 1.0' in metrics


async def test_tls_upstream_is_verified(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """https upstreams: the certificate must chain to a trusted root and name the host."""
    cert, key = tmp_path / "upstream.crt", tmp_path / "upstream.key"
    rsa_keypair("localhost").write(key, cert)  # names localhost and 127.0.0.1
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_get("/", hello)
    server = await aiohttp_server(app, ssl=server_ctx)
    origin = Origin("https", "127.0.0.1", server.port or 0)

    untrusting = UpstreamClient(limit=2)
    try:
        with pytest.raises(UpstreamError) as err:
            await get(untrusting, origin)
        assert err.value.kind == "connect"
    finally:
        await untrusting.close()

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system trust store, extended
    trusting = UpstreamClient(limit=2)
    try:
        resp, body = await get(trusting, origin)
        assert (resp.status, body) == (200, b"over tls")
    finally:
        await trusting.close()


class socket_on_free_port:  # noqa: N801 - used as a context manager
    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_connection_idle_too_long_is_not_reused(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    """``server.upstream_idle_seconds``: a connection unused that long is closed, not reused."""
    up = await scripted(keep_answering)
    clock = FakeClock(0.0)
    client = UpstreamClient(limit=4, idle_timeout=0.2, clock=clock.time)
    try:
        await get(client, up.origin)
        clock.advance(0.2)  # idle exactly as long as allowed: still reused
        await get(client, up.origin)
        assert up.connections == 1
        clock.advance(0.3)
        await get(client, up.origin)
        assert up.connections == 2
    finally:
        await client.close()


async def test_a_full_pool_closes_an_idle_connection_of_another_origin(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    """With every place taken by idle connections to one origin, a request to another origin
    closes the oldest of them instead of waiting."""
    first, second = await scripted(keep_answering), await scripted(keep_answering)
    client = UpstreamClient(limit=1)
    try:
        await get(client, first.origin)
        assert client.idle_connections(first.origin) == 1
        resp, body = await get(client, second.origin, connect_timeout=5.0)
        assert (resp.status, body) == (200, b"hello")
        assert client.idle_connections(first.origin) == 0
        assert client.idle_connections(second.origin) == 1
        assert client.open_connections == 1
        await get(client, first.origin)  # and back: the second origin's goes now
        assert (first.connections, second.connections) == (2, 1)
        assert client.open_connections == 1
    finally:
        await client.close()


async def test_reading_pauses_while_more_than_256_kib_waits_for_the_client(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    """An upstream faster than the client is held back by TCP flow control: reading stops
    once 256 KiB wait unread, and resumes, losing nothing, when the client reads."""
    size = 32 * 1024 * 1024  # far more than the loopback socket buffers hold
    block = bytes(range(256)) * 256
    finished = asyncio.Event()

    async def flood(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: Scripted
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        finished.set()

    up = await scripted(flood)
    resp = await client.request(up.origin, "GET", "/", [], connect_timeout=2, read_timeout=10)
    try:
        async with asyncio.timeout(10):
            while not resp.paused:
                await asyncio.sleep(0.01)
        held = resp.buffered
        assert 256 * 1024 < held <= 2 * 256 * 1024  # one read past the mark, no more
        await asyncio.sleep(0.2)  # time the upstream would use to fill memory if not held
        assert resp.paused and resp.buffered == held
        assert not finished.is_set()
        got, sent = hashlib.sha256(), hashlib.sha256()
        async with asyncio.timeout(30):
            while chunk := await resp.read_chunk():
                got.update(chunk)
        for _ in range(size // len(block)):
            sent.update(block)
        assert got.digest() == sent.digest()
        assert finished.is_set()
    finally:
        resp.release()


async def test_an_upstream_that_breaks_off_mid_body_is_a_reset(
    scripted: Callable[[Script], Awaitable[Scripted]], client: UpstreamClient
) -> None:
    """Headers and part of the body, then the connection closes: what arrived is readable,
    then ``reset``; the connection is not pooled again."""
    up = await scripted(
        answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100, linger=0)
    )
    resp = await client.request(up.origin, "GET", "/", [], connect_timeout=2, read_timeout=2)
    try:
        assert resp.status == 200
        with pytest.raises(UpstreamError) as err:
            await resp.read()
        assert err.value.kind == "reset"
    finally:
        resp.release()
    assert client.open_connections == 0
    assert client.idle_connections(up.origin) == 0


async def test_the_gateway_cuts_the_client_off_when_the_upstream_breaks_off_mid_body(
    scripted: Callable[[Script], Awaitable[Scripted]], gateway: GatewayFactory
) -> None:
    """Headers already went to the client, so it gets an incomplete answer (not a page that
    looks whole), and the failure is counted as the upstream's."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    up = await scripted(answer_once(head + b"x" * 300_000, linger=0))
    gw = await gateway(
        [
            {
                "name": "all",
                "match": {"path": "/"},
                "upstream": f"http://127.0.0.1:{up.origin.port}",
                "policy": "public",
            }
        ]
    )
    resp = await gw.get("/download")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    metrics = await (await gw.get("/_gateway/metrics")).text()
    assert 'gateway_upstream_errors_total{kind="reset",route="all"} 1.0' in metrics


async def test_a_complete_answer_leaves_in_one_write() -> None:
    """The proxy's one-write response relies on aiohttp's private ``_send_headers_immediately``:
    its headers must still wait for the body on this aiohttp version (else every small page
    costs two writes, and this fails)."""
    sizes: dict[str, int] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = OneWriteResponse(status=200)
        resp.headers["Content-Type"] = "text/plain"
        await resp.prepare(request)
        sizes["after_prepare"] = request.writer.output_size
        await resp.write_eof(b"hello, one write")
        sizes["after_eof"] = request.writer.output_size
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/")) as resp:
            assert await resp.read() == b"hello, one write"
    assert "_send_headers_immediately" in vars(web.StreamResponse)
    assert sizes["after_prepare"] == 0, "aiohttp sent the headers before the body"
    assert sizes["after_eof"] > len(b"hello, one write")
