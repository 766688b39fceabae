"""Client connections at the edge: deadlines, caps, and running out of descriptors.

aiohttp gives each connection a ``RequestHandler`` (an asyncio protocol) and
offers an idle keep-alive timeout, header size limits and nothing else for
hostile clients. This module owns what it lacks, with nginx's behaviour as
the reference (docs/operations.md compares every setting):

- **Head deadline** (``client_header_timeout_seconds``, nginx
  ``client_header_timeout``): a request's whole head must arrive in time, from
  the connection's start for its first request, from its first byte for later
  ones. A slowloris client sending a byte now and then is closed without an
  answer, as nginx does. aiohttp's keep-alive timer does the closing: the
  deadline only moves its due time, so a request costs no extra timer.
- **Idle keep-alive** (``client_keepalive_seconds``, nginx
  ``keepalive_timeout``): aiohttp's own ``keepalive_timeout``.
- **Body deadline** (``client_body_timeout_seconds``, nginx
  ``client_body_timeout``): the longest pause between two reads of a request
  body. The body's reader then fails with ``RequestTimeout``, the client gets
  a 408 page and the connection is closed. Time in which the gateway itself
  does not read (its buffer is full because the upstream is slow) does not
  count against the client.
- **Caps** (``max_connections``, ``max_connections_per_client``): a connection
  over a cap is answered at once with a fixed 503 page and closed; it is never
  parsed, queued or left hanging. The per-client count is keyed by the peer
  address (IPv6: its /64); peers in ``trusted_proxies`` (a load balancer
  carrying many clients) count only toward the total.
- **Descriptors**: the default total cap leaves room under the process's
  descriptor limit for upstream connections. When ``accept()`` still fails for
  lack of descriptors, uvloop (libuv) closes waiting connections at once; on
  asyncio's loop, ``AcceptGuard`` answers them with the same 503 page using one
  descriptor kept in reserve, instead of leaving them in the backlog.
- **Client gone** (499): when a client closes its connection during a proxied
  request before the answer's head was sent, the request is cancelled (nginx:
  ``proxy_ignore_client_abort off``), which stops the upstream exchange;
  ``gateway.edge`` logs it as 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.config import ServerSettings
from gateway.errors import RequestTimeout
from gateway.metrics import Metrics
from gateway.pages import refusal_bytes

log = structlog.get_logger("gateway.connections")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The default total cap: at most this many, and no more than the descriptor
# limit allows after a reserve for upstream connections and the process's own
# files (listening socket, event loop, Redis, logs).
AUTO_MAX_CONNECTIONS = 4096
_OWN_DESCRIPTORS = 32
# A refused connection is half-closed after its 503 and read from until the
# client closes (at most this long), so the client reads the page instead of
# a reset; only a few at a time, as each holds a descriptor.
_REFUSAL_LINGER_SECONDS = 1.0
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


# -- pure decisions -------------------------------------------------------------


def connection_cap(configured: int | None, descriptor_limit: int, upstream_pool: int) -> int:
    """The total cap on client connections for one worker.

    An explicit setting is used as it is. The default keeps client connections
    plus upstream connections (at most one per client connection, and at most
    the pool size) plus the process's own files under the descriptor limit.
    """
    if configured is not None:
        return configured
    reserve = min(upstream_pool, descriptor_limit // 2) + _OWN_DESCRIPTORS
    return max(1, min(AUTO_MAX_CONNECTIONS, descriptor_limit - reserve))


def client_key(peer: Any, trusted: Iterable[Network]) -> str:
    """Who a connection counts against: an IPv4 address, an IPv6 /64, or "" (not counted).

    "" for a trusted proxy (its connections carry many clients; the proxy in
    front limits those) and for a peer without an address.
    """
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return ""
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    if any(ip in net for net in trusted):
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        # One IPv6 host can use a whole /64 (privacy addresses); count the /64.
        return f"{ipaddress.IPv6Network((ip, 64), strict=False).network_address}/64"
    return str(ip)


def descriptor_exhaustion(exc: BaseException | None) -> OSError | None:
    """The EMFILE/ENFILE error behind ``exc`` (its causes included), if there is one."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; return the soft limit.

    The soft limit is often 1024 while the hard limit is far higher (as Go's
    runtime does, and nginx's ``worker_rlimit_nofile`` lets you): a gateway
    holds two descriptors per proxied request.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class Throttle:
    """At most one log line per event name and interval; the lines between are counted."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, event: str) -> int | None:
        """None: skip this line. Otherwise log it, with this many lines skipped before it."""
        now = time.monotonic()
        if now < self._next.get(event, 0.0):
            self._skipped[event] = self._skipped.get(event, 0) + 1
            return None
        self._next[event] = now + self.interval
        return self._skipped.pop(event, 0)


# -- per-worker state -------------------------------------------------------------


class ConnectionGuard:
    """One worker's client connections: the caps, the counts, and what to report."""

    def __init__(
        self,
        server: ServerSettings,
        metrics: Metrics,
        descriptor_limit: int,
        cancel_when_gone: Callable[[web.BaseRequest], bool] = lambda request: False,
    ) -> None:
        self.metrics = metrics
        self.descriptor_limit = descriptor_limit
        self.max_connections = connection_cap(
            server.max_connections, descriptor_limit, server.upstream_pool_size
        )
        self.per_client = server.max_connections_per_client
        self.trusted = tuple(server.trusted_proxies)
        self.header_timeout = server.client_header_timeout_seconds
        self.body_timeout = server.client_body_timeout_seconds
        self.cancel_when_gone = cancel_when_gone
        self.max_lingering = max(4, min(64, self.max_connections // 8))
        self.refusal = refusal_bytes()
        self.open = 0
        self.lingering = 0
        self._by_client: dict[str, int] = {}
        self.throttle = Throttle()

    def admit(self, key: str) -> str | None:
        """Count a new connection from ``key``, or say which cap refuses it."""
        if self.open >= self.max_connections:
            return "total"
        if key:
            count = self._by_client.get(key, 0)
            if count >= self.per_client:
                return "per_client"
            self._by_client[key] = count + 1
        self.open += 1
        self.metrics.connection_opened()
        return None

    def release(self, key: str) -> None:
        self.open -= 1
        self.metrics.connection_closed()
        if key:
            left = self._by_client.pop(key, 1) - 1
            if left > 0:
                self._by_client[key] = left

    def refused(self, reason: str, key: str) -> None:
        self.metrics.client_refused.labels(reason).inc()
        skipped = self.throttle.allow("client_connections_refused")
        if skipped is not None:
            log.warning(
                "client_connections_refused",
                reason=reason,
                client=key or "-",
                open=self.open,
                max_connections=self.max_connections,
                max_connections_per_client=self.per_client,
                skipped_since_last=skipped,
            )

    def timed_out(self, kind: str, key: str) -> None:
        self.metrics.client_timeouts.labels(kind).inc()
        if kind == "keepalive":
            return  # the normal end of an idle connection
        skipped = self.throttle.allow(f"client_{kind}_timeout")
        if skipped is not None:
            log.info(f"client_{kind}_timeout", client=key or "-", skipped_since_last=skipped)

    def exhausted(self, where: str, exc: BaseException) -> None:
        """Out of descriptors: log it (with the traceback), at most every few seconds."""
        skipped = self.throttle.allow("descriptors_exhausted")
        if skipped is not None:
            log.error(
                "descriptors_exhausted",
                where=where,
                descriptor_limit=self.descriptor_limit,
                open=self.open,
                skipped_since_last=skipped,
                exc_info=exc,
            )


# -- the protocol -------------------------------------------------------------------


class EdgeProtocol(RequestHandler):
    """aiohttp's request handler plus the caps and deadlines described above."""

    __slots__ = (
        "_body",
        "_body_handle",
        "_body_last",
        "_counted",
        "_guard",
        "_head_pending",
        "_key",
        "_linger_handle",
        "body_timed_out",
    )

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._key = ""
        self._counted = False
        # True from the start of a request head until it is complete.
        self._head_pending = False
        self._body: StreamReader | None = None
        self._body_last = 0.0
        self._body_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        self.body_timed_out = False

    @property
    def guard(self) -> ConnectionGuard:
        return self._guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        key = client_key(transport.get_extra_info("peername"), guard.trusted)
        reason = guard.admit(key)
        if reason is not None:
            self._refuse(transport, reason, key)
            return
        self._key = key
        self._counted = True
        super().connection_made(transport)
        self._start_head_deadline()

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, key: str) -> None:
        """Answer 503 without parsing anything, and close."""
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self._force_close = True  # RequestHandler.data_received now drops every byte
        guard = self._guard
        guard.refused(reason, key)
        transport.write(guard.refusal)
        if guard.lingering < guard.max_lingering and transport.can_write_eof():
            guard.lingering += 1
            transport.write_eof()
            self._linger_handle = self._loop.call_later(_REFUSAL_LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def _start_head_deadline(self) -> None:
        """The next request head must be complete by now + the head timeout.

        aiohttp's keep-alive timer closes a connection that is waiting for a
        request when it fires after ``_next_keepalive_close_time``; moving that
        time is all a deadline needs (the timer re-arms itself when it fires
        early, and is only replaced when the new time is earlier).
        """
        self._head_pending = True
        loop = self._loop
        deadline = loop.time() + self._guard.header_timeout
        self._next_keepalive_close_time = deadline
        # Always a timer handle (call_at), also on uvloop, whose class is its own.
        handle = cast(asyncio.TimerHandle | None, self._keepalive_handle)
        if handle is None or deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._keepalive_handle = loop.call_at(deadline, self._process_keepalive)

    def data_received(self, data: bytes) -> None:
        # Runs for every read: keep the common case (a whole request head in
        # one read, no body) to a few attribute reads.
        count = self._request_count
        RequestHandler.data_received(self, data)
        if self._request_count != count:
            # One or more request heads are complete; only the last one's body
            # can still be arriving (a request without one has EMPTY_PAYLOAD).
            self._head_pending = False
            messages = self._messages
            if messages:
                payload = messages[-1][1]
                if payload is not EMPTY_PAYLOAD and not payload.is_eof():
                    self._watch_body(payload)
                    return
            if self._body is not None:
                self._stop_body_watch()
        elif self._body is not None:
            if self._body.is_eof():
                self._stop_body_watch()
            else:
                self._body_last = self._loop.time()
        elif not self._head_pending and data:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                # The first bytes of a new request on an idle keep-alive connection.
                self._start_head_deadline()

    def _process_keepalive(self) -> None:
        was_open = self.transport is not None
        super()._process_keepalive()
        if was_open and self.transport is None:
            self._guard.timed_out("header" if self._head_pending else "keepalive", self._key)

    # -- the body deadline ----------------------------------------------------------

    def _watch_body(self, payload: StreamReader) -> None:
        self._body = payload
        self._body_last = now = self._loop.time()
        if self._body_handle is None:
            self._body_handle = self._loop.call_at(now + self._guard.body_timeout, self._check_body)

    def _stop_body_watch(self) -> None:
        self._body = None
        if self._body_handle is not None:
            self._body_handle.cancel()
            self._body_handle = None

    def _check_body(self) -> None:
        self._body_handle = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            self._body = None
            return
        loop = self._loop
        now = loop.time()
        if self._reading_paused or self._buffer_paused:
            # The gateway is not reading (its buffer is full): not the client's delay.
            self._body_last = now
        due = self._body_last + self._guard.body_timeout
        if now < due:
            self._body_handle = loop.call_at(due, self._check_body)
            return
        self._body = None
        self.body_timed_out = True
        self._guard.timed_out("body", self._key)
        if self._request_in_progress:
            # The handler (or the one before it, pipelined) answers 408; nothing
            # is left to drain afterwards, the connection just closes.
            body.set_exception(RequestTimeout("request body stalled"))
            self._lingering_time = 0.0
        else:
            self.force_close()  # already answered, only the rest of the body was awaited

    # -- the end ---------------------------------------------------------------------

    def connection_lost(self, exc: BaseException | None) -> None:
        request = self._current_request
        task = self._task_handler
        super().connection_lost(exc)
        self._stop_body_watch()
        if self._counted:
            self._counted = False
            self._guard.release(self._key)
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
            self._guard.lingering -= 1
        if (
            request is not None
            and task is not None
            and not task.done()
            and request.writer.output_size == 0
            and self._guard.cancel_when_gone(request)
        ):
            # Nobody is waiting for the answer: stop the upstream exchange. Once
            # the answer's head has left, the proxy finds out at its next write
            # and logs the status it sent (as nginx does).
            task.cancel()


class EdgeServer(web.Server):
    """aiohttp's low-level server, making ``EdgeProtocol`` connections."""

    def __init__(self, base: web.Server, guard: ConnectionGuard) -> None:
        # The same handler, request factory and protocol settings as ``base``
        # (what AppRunner made for the application), only another protocol.
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=False,
            loop=asyncio.get_running_loop(),
            **base._kwargs,
        )
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self._loop, guard=self.guard, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose server makes ``EdgeProtocol`` connections."""

    __slots__ = ("_guard",)

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        return EdgeServer(await super()._make_server(), self._guard)


# -- accept() without descriptors (asyncio's loop) ------------------------------------


class AcceptGuard:
    """Answer connections with a 503 when ``accept()`` fails for lack of descriptors.

    asyncio's loop logs such a failure and pauses accepting for a second,
    leaving clients waiting in the backlog. Installed as the loop's exception
    handler, this keeps one descriptor in reserve; on that failure it frees it,
    accepts each waiting connection with it, writes the fixed 503 page, closes
    it and takes the reserve back. (uvloop does the same in libuv, closing the
    connections without an answer, and never calls this handler for it.)
    """

    _MESSAGE = "socket.accept() out of system resource"

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self._reserve = self._take_reserve()

    @staticmethod
    def _take_reserve() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            listener = context.get("socket")
            if (
                context.get("message") == self._MESSAGE
                and isinstance(exc, OSError)
                and listener is not None
            ):
                self.guard.exhausted("accept", exc)
                self.answer_waiting(listener.fileno())
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def answer_waiting(self, listen_fd: int) -> int:
        """Accept, answer and close what waits on ``listen_fd``; return how many."""
        if self._reserve < 0:
            self._reserve = self._take_reserve()
            return 0
        os.close(self._reserve)
        self._reserve = -1
        answered = 0
        # A second socket object on the listening descriptor (no new descriptor);
        # detached afterwards, so the listener itself is never closed here.
        listener = socket.socket(fileno=listen_fd)
        try:
            while answered < 1024:
                try:
                    conn, _ = listener.accept()
                except OSError:  # nothing waiting (EAGAIN), or still no descriptor
                    break
                answered += 1
                with conn:
                    try:
                        conn.setblocking(False)
                        conn.send(self.guard.refusal)
                    except OSError:
                        pass
        finally:
            listener.detach()
            self._reserve = self._take_reserve()
        for _ in range(answered):
            self.guard.metrics.client_refused.labels("descriptors").inc()
        return answered

    def close(self) -> None:
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
