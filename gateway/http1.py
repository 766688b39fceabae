"""HTTP/1.1 on one upstream connection: the request head, the body, the parsed answer.

``gateway.upstream_client`` pools these connections; this module is one
exchange on one of them. Answers are parsed by llhttp (``httptools``, the
parser behind uvicorn), so framing (content length, chunked, read-until-close,
1xx, 204/304, HEAD) comes from a strict, well-tested C parser.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

_HIGH_WATER = 256 * 1024


class Pool(Protocol):
    """What a connection tells the pool that owns it."""

    loop: asyncio.AbstractEventLoop

    def idle_again(self, conn: Connection) -> None:
        """``conn`` finished an exchange and may be handed out again."""

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: never hand it out again."""

    def release_place(self) -> None:
        """A connection stopped counting against the pool's limit (it is closed)."""


UpstreamFailure = Literal["connect", "timeout", "reset", "invalid"]
"""How an upstream failed: ``connect``: no connection could be made; ``timeout``:
the connection or the answer took too long; ``reset``: the connection broke;
``invalid``: the upstream's answer was not valid HTTP."""


class UpstreamError(Exception):
    """The upstream could not be reached or broke off; ``kind`` names how (``UpstreamFailure``)."""

    def __init__(self, kind: UpstreamFailure, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class InvalidHeader(Exception):
    """A header name or value the request head cannot carry (a line break, say)."""


class RequestBodyError(Exception):
    """Reading the client's body failed (the client went away or sent too much)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class Origin:
    """Where connections go: the pool key."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


class UpstreamResponse:
    """One answer from the upstream: status and headers now, the body as it arrives.

    Call ``release`` when done (``gateway.proxy`` does so in ``finally``): the
    connection goes back to the pool only if the answer was read whole, the
    request was sent whole, and both sides keep the connection alive.
    """

    __slots__ = (
        "_body_sent",
        "_body_task",
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_head",
        "_keep_alive",
        "_paused",
        "_read_timeout",
        "_released",
        "_started",
        "_timer",
        "_until_close",
        "_waiter",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection, head_request: bool, read_timeout: float) -> None:
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _EMPTY
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = read_timeout
        self._head = head_request
        self._keep_alive = False
        self._until_close = False
        self._started = False  # any byte of the answer has arrived
        self._body_task: asyncio.Task[None] | None = None
        self._body_sent = True
        self._released = False
        self._paused = False

    # -- the sending side (gateway.upstream_client) ------------------------------

    def send_body(self, body: AsyncIterator[bytes], declared: int | None) -> None:
        """Stream the client's body upstream in the background while the answer is awaited.

        ``declared``: the client's Content-Length, or ``None`` to send chunked.
        """
        self._body_sent = False
        self._body_task = self._conn.loop.create_task(send_body(self._conn, self, body, declared))

    async def head(self) -> None:
        """Wait for the status line and headers; raise how the exchange failed otherwise."""
        while self.status == 0:
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def started(self) -> bool:
        """Any byte of the answer has arrived (a failed request was then seen upstream)."""
        return self._started

    # -- the reading side (gateway.proxy) -------------------------------------

    @property
    def paused(self) -> bool:
        """Reading from the upstream is paused: more than 256 KiB waits for the client."""
        return self._paused

    @property
    def buffered(self) -> int:
        """Body bytes that have arrived and were not read yet."""
        return self._buffered

    @property
    def complete(self) -> bool:
        """The whole body has arrived (nothing more to wait for)."""
        return self._complete and self._error is None

    def take_buffered(self) -> bytes:
        """The body bytes that have arrived and were not read yet, joined."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        return data

    async def read_chunk(self) -> bytes:
        """The next piece of the body (everything buffered, joined); ``b""`` at the end.

        Raises ``UpstreamError`` when the upstream breaks off or stays silent
        longer than the read timeout.
        """
        while True:
            if self._chunks:
                return self.take_buffered()
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (for small answers the gateway itself consumes)."""
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Hand the connection back (reusable) or close it; idempotent."""
        if self._released:
            return
        self._released = True
        self._cancel_timer()
        task = self._body_task
        if task is not None and not task.done():
            task.cancel()
        reusable = (
            self._complete
            and self._error is None
            and self._keep_alive
            and self._body_sent
            and not self._chunks
        )
        self._conn.finish(reusable)

    # -- the connection side (called by Connection) ------------------------------

    async def _wait(self) -> None:
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        self._timer = loop.call_later(self._read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        self._timer = None
        if not waiter.done():
            self.fail(UpstreamError("timeout", f"no answer within {self._read_timeout:g} s"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._conn.abort()

    def got_headers(
        self, status: int, reason: str, headers: CIMultiDictProxy[str], keep_alive: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._keep_alive = keep_alive
        if self._head or status in (204, 304):
            # No body follows, whatever the headers say (RFC 9112, 6.3).
            self._complete = True
        elif "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self._until_close = True  # HTTP/1.0 style: the body ends when the connection does
            self._keep_alive = False
        self._wake()

    def got_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def got_end(self) -> None:
        self._complete = True
        self._wake()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._complete:
            return
        if self._until_close and exc is None:
            self.got_end()
            return
        self.fail(UpstreamError("reset", f"connection closed: {exc or 'end of stream'}"))


_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses answers with llhttp as bytes arrive."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._counted = True  # holds one of the pool's ``limit`` places
        self.lost = False
        self.idle_since = 0.0
        self.response: UpstreamResponse | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._parser_used = False
        self._reason = b""
        self._raw_headers: list[tuple[str, str]] = []
        self._interim = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but act as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._complete:
            # Bytes nobody asked for: the connection's framing can't be trusted.
            self.abort()
            return
        response._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            response.fail(UpstreamError("invalid", f"answer could not be read: {exc}"))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            response.fail(UpstreamError("invalid", f"not a valid HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.give_up_place()
        self.pool.forget(self)
        if self.response is not None:
            self.response.connection_lost(exc)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamError("reset", "connection closed while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- llhttp callbacks ---------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status  # may come in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        raw, reason = self._raw_headers, self._reason
        self._raw_headers, self._reason = [], b""
        if status < 200:
            # 100 Continue, 103 Early Hints: interim answers are not passed on.
            self._interim = True
            return
        response = self.response
        if response is None or response._complete:
            # A second answer to one request: the framing can't be trusted.
            self.abort()
            return
        response.got_headers(
            status,
            reason.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(CIMultiDict(raw)),
            parser.should_keep_alive(),
        )
        if response._head:
            # llhttp would wait for the body that Content-Length announces but a
            # HEAD answer never has: the next request starts with a new parser.
            self._parser_used = True

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.got_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.response is not None:
            self.response.got_end()

    # -- used by the client -------------------------------------------------------

    def begin(self, head_request: bool, read_timeout: float) -> UpstreamResponse:
        if self._parser_used:
            self._parser = httptools.HttpResponseParser(self)
            self._parser_used = False
        self._interim = False
        self.response = response = UpstreamResponse(self, head_request, read_timeout)
        return response

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise UpstreamError("reset", "connection closed while sending")
        transport.write(data)

    async def drain(self) -> None:
        if not self._write_paused:
            return
        if self.lost:
            raise UpstreamError("reset", "connection closed while sending")
        self._drain = self.loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def finish(self, reusable: bool) -> None:
        self.response = None
        transport = self.transport
        if reusable and not self.lost and transport is not None and not transport.is_closing():
            self.pool.idle_again(self)
        else:
            self.abort()

    @property
    def usable(self) -> bool:
        """Open, as far as this side knows: not lost, not closing."""
        transport = self.transport
        return not self.lost and transport is not None and not transport.is_closing()

    def give_up_place(self) -> None:
        """Stop counting against the pool's limit (once; the connection is closing)."""
        if self._counted:
            self._counted = False
            self.pool.release_place()

    def abort(self) -> None:
        """Close now (unread bytes would corrupt the next answer) and give up the place."""
        self.give_up_place()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


async def send_body(
    conn: Connection,
    response: UpstreamResponse,
    body: AsyncIterator[bytes],
    declared: int | None,
) -> None:
    """Stream the client's body upstream; the answer may already be on its way.

    ``declared``: the client's Content-Length, or ``None`` to send chunked.
    """
    chunked = declared is None
    sent = 0
    try:
        try:
            async for chunk in body:
                if not chunk:
                    continue
                sent += len(chunk)
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
        except UpstreamError:
            raise
        except Exception as exc:  # reading the client's side failed
            response.fail(RequestBodyError(exc))
            return
        if chunked:
            conn.write(b"0\r\n\r\n")
        elif sent != declared:
            response.fail(RequestBodyError(ValueError(f"body had {sent} of {declared} bytes")))
            return
        response._body_sent = True
    except UpstreamError as exc:
        response.fail(exc)


def serialize_head(
    method: str,
    target: str,
    host: str,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
    streamed: bool,
    content_length: int | None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    count = 2
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
        count += 1
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
        count += 1
    elif streamed:
        lines.append(
            f"Content-Length: {content_length}\r\n"
            if content_length is not None
            else "Transfer-Encoding: chunked\r\n"
        )
        count += 1
    lines.append("\r\n")
    text = "".join(lines)
    # Every line break must be one of ours: a CR or LF inside a name or value
    # would let it smuggle a header or a second request.
    if text.count("\n") != count + 1 or text.count("\r") != count + 1:
        raise InvalidHeader("line break inside a request header")
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidHeader("a request header that cannot be encoded") from None
