"""HTTP/1.1 at the byte level, for tests that must see exactly what crossed the wire.

``RawUpstream`` is an upstream server that records every request it receives
as the raw bytes of its head and body (framing parsed by llhttp, the parser
behind Node.js, through httptools: not by the gateway's own code), and
answers each with a small fixed page. ``raw_exchange`` sends bytes a client
chose, byte for byte, and returns what came back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httptools


@dataclass
class Received:
    """One request as the upstream received it."""

    head: bytes
    body: bytes = b""

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        lines = self.head.split(b"\r\n")[1:]
        out = []
        for line in lines:
            if not line:
                continue
            name, _, value = line.partition(b":")
            out.append((name, value.strip()))
        return out

    def header(self, name: str) -> list[bytes]:
        want = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == want]


class _Conn(asyncio.Protocol):
    def __init__(self, server: RawUpstream) -> None:
        self.server = server
        self.buf = b""
        self.head_end: int | None = None
        self.body = b""
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.start = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.server.unparsable.append(self.buf)
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body = b""

    def on_headers_complete(self) -> None:
        end = self.buf.find(b"\r\n\r\n", self.start)
        if end == -1:  # a bare-LF head: keep what there is
            end = len(self.buf)
        self.head_end = end
        self.head = self.buf[self.start : end]

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.server.received.append(Received(self.head, self.body))
        self.server.arrived.set()
        self.buf = b""
        self.start = 0
        if self.transport is not None:
            page = b"ok"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(page), page)
            )


@dataclass
class RawUpstream:
    """A recording HTTP/1.1 server on 127.0.0.1 (start it with ``async with``)."""

    received: list[Received] = field(default_factory=list)
    unparsable: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        self.received.clear()
        self.unparsable.clear()
        self.arrived.clear()


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is and read until the server closes (or ``timeout`` passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def statuses(answer: bytes) -> list[int]:
    """The status codes of every response in ``answer`` (pipelined answers included)."""
    found = []
    pos = 0
    while True:
        idx = answer.find(b"HTTP/1.", pos)
        if idx == -1:
            return found
        line = answer[idx : answer.find(b"\r\n", idx)]
        parts = line.split(b" ")
        if len(parts) >= 2 and parts[1].isdigit():
            found.append(int(parts[1]))
        pos = idx + 8
