"""A lean HTTP/1.1 client for the proxy's hot path: pooled keep-alive connections, streamed bodies.

Why not aiohttp's ``ClientSession`` for this: it is a general client (cookie
jar, redirects, tracing, auto headers, decompression, per-request timer
objects, a connector with its own bookkeeping), and a reverse proxy switches
every one of those off again. Measured with ``./dev bench proxy``, that
generality was most of the gateway's gap to a bare aiohttp proxy. This module
is the pool and does only what forwarding needs; one request and its answer on
one connection (framing by the llhttp parser) live in ``gateway.http1``.

What it does:

- One pool per origin (scheme, host, port), most recently used first; at most
  ``limit`` connections to all origins together. A full pool closes an idle
  connection of another origin, or waits (bounded by the connect timeout).
- Idle connections are closed after ``idle_timeout``; a connection the
  upstream closed is never handed out again.
- A request on a reused connection that dies before any byte of the answer
  came back is sent again once, on a newly opened connection (never another
  pooled one), but only when that is safe: an idempotent method and no
  streamed body (RFC 9110, 9.2.2).
- Request bodies stream with flow control: ``Content-Length`` when known,
  otherwise chunked. The answer may start before the body is sent (an early
  413, say); the connection is then not reused.
- Response bodies stream with flow control: reading from the upstream pauses
  while more than 256 KiB waits for the client.
- The read timeout is the longest the upstream may stay silent: before the
  status line and between body chunks.

Websockets do not pass through here (``gateway.proxy`` uses aiohttp for their
handshake and framing), but each open one holds one of the same ``limit``
places (``place``), so the limit covers every upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable

from gateway.http1 import (
    Connection,
    InvalidHeader,
    Origin,
    RequestBodyError,
    UpstreamError,
    UpstreamResponse,
    serialize_head,
)

__all__ = [
    "InvalidHeader",
    "Origin",
    "RequestBodyError",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
]

# Methods a client may send again without changing the outcome (RFC 9110, 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamClient:
    """Pooled HTTP/1.1 connections to any number of upstream origins."""

    def __init__(
        self, limit: int, idle_timeout: float = 15.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.idle_timeout = idle_timeout
        # How long connections have been idle is read from ``clock`` (the loop's
        # by default); waiting for a place always runs on the loop's own time.
        self._clock = clock or self.loop.time
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._sweeper = self.loop.create_task(self._sweep())

    @property
    def open_connections(self) -> int:
        return self._open

    def idle_connections(self, origin: Origin) -> int:
        return len(self._idle.get(origin, ()))

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        *,
        host: str | None = None,
        body: bytes | AsyncIterator[bytes] | None = None,
        content_length: int | None = None,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send one request and wait for the status line and headers of the answer.

        ``target`` is the raw path and query; ``headers`` must not contain
        ``Host`` (``host`` overrides the origin's) or framing headers: the
        body's framing is set here. ``content_length`` is the declared length
        of a streamed body (``None``: chunked).
        """
        streamed = body is not None and not isinstance(body, bytes)
        head = serialize_head(
            method,
            target,
            host or origin.host_header,
            headers,
            body if isinstance(body, bytes) else None,
            streamed,
            content_length,
        )
        retry_safe = method in IDEMPOTENT and not streamed
        fresh = False
        while True:
            conn, reused = await self._acquire(origin, connect_timeout, fresh=fresh)
            response = conn.begin(method == "HEAD", read_timeout)
            try:
                conn.write(head if not isinstance(body, bytes) or not body else head + body)
                if body is not None and not isinstance(body, bytes):
                    response.send_body(body, content_length)
                await response.head()
            except UpstreamError as exc:
                response.release()
                if reused and retry_safe and not response.started and exc.kind == "reset":
                    # The upstream had closed the idle connection: once more, on a new
                    # connection (other pooled ones may be just as dead).
                    fresh = True
                    continue
                raise
            except BaseException:
                response.release()
                raise
            return response

    async def _acquire(
        self, origin: Origin, wait: float, *, fresh: bool = False
    ) -> tuple[Connection, bool]:
        """A connection to ``origin`` and whether it was pooled; ``fresh``: a new one only."""
        if self._closed:
            raise UpstreamError("connect", "client closed")
        loop = self.loop
        deadline = loop.time() + wait
        while True:
            idle = None if fresh else self._idle.get(origin)
            now = self._clock()
            while idle:
                conn = idle.pop()
                if not conn.usable:
                    continue
                if now - conn.idle_since > self.idle_timeout:
                    conn.abort()
                    continue
                return conn, True
            if self._open < self.limit or self._evict_one():
                break
            await self._wait_for_place(deadline, wait)
        self._open += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=self._tls() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            self.release_place()
            raise UpstreamError("timeout", f"connect to {origin.host_header}") from None
        except (OSError, ssl.SSLError) as exc:
            self.release_place()
            raise UpstreamError("connect", f"{origin.host_header}: {exc}") from exc
        except BaseException:
            self.release_place()
            raise
        return conn, False

    async def _wait_for_place(self, deadline: float, wait: float) -> None:
        """Until a place may be free (a connection closed or went idle), or time is up."""
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"no free connection among {self.limit} within {wait:g} s"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    @contextlib.asynccontextmanager
    async def place(self, wait: float) -> AsyncIterator[None]:
        """Hold one of the ``limit`` places while a connection made elsewhere is open.

        For websockets, whose connections aiohttp makes: they count against the
        same limit as the pooled connections. An idle pooled connection is
        closed to make room, else this waits at most ``wait`` seconds
        (``UpstreamError`` "timeout" then).
        """
        if self._closed:
            raise UpstreamError("connect", "client closed")
        deadline = self.loop.time() + wait
        while not (self._open < self.limit or self._evict_one()):
            await self._wait_for_place(deadline, wait)
        self._open += 1
        try:
            yield
        finally:
            self.release_place()

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            # System trust store (or SSL_CERT_FILE), hostname checked: as aiohttp does.
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _evict_one(self) -> bool:
        """Close the oldest idle connection to any origin, to make room."""
        for conns in self._idle.values():
            if conns:
                conns.pop(0).abort()
                return True
        return False

    def idle_again(self, conn: Connection) -> None:
        if self._closed:
            conn.abort()
            return
        conn.idle_since = self._clock()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake_one()

    def forget(self, conn: Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def release_place(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout``."""
        while True:
            await asyncio.sleep(max(self.idle_timeout / 2, 0.5))
            cutoff = self._clock() - self.idle_timeout
            for conns in self._idle.values():
                while conns and conns[0].idle_since < cutoff:
                    conns.pop(0).abort()

    async def close(self) -> None:
        self._closed = True
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
            conns.clear()
