"""One pipelined Redis connection for the store's hot commands: RESP on an asyncio protocol.

The authenticated path reads a session record, and writes its ``last_seen``
once per touch interval. Through redis-py's asyncio client one ``GET`` costs
about 200 µs of CPU (a pool checkout, two ``wait_for`` timers, a stream reader
and several event-loop turns per command); here about a quarter of that. A
:class:`Pipelined` connection writes each command at once and matches replies
to callers in order (Redis answers in order on a connection), parsing them
with hiredis, so under load one read from the socket answers many commands.

It carries plain commands only: ``GET``, and writes for which the store waits
for no replica. ``WAIT`` (it blocks the connection, and every command queued
behind it), subscriptions, scripts and the Sentinel and Cluster control
traffic stay on redis-py, whose pools :mod:`gateway.store.topology` keeps for
them. Failures are redis-py's exception classes, so the store's failover rules
(:func:`gateway.store.failover.classify`) apply unchanged:

- an error reply raises the class redis-py would (``READONLY`` is
  ``ReadOnlyError``, ``MOVED`` is ``MovedError``...), and the connection stays
  usable;
- a lost connection fails every command on it with ``ConnectionError``; a
  reply that does not arrive within ``timeout`` closes the connection and fails
  every command on it with ``TimeoutError`` (the replies could no longer be
  matched to their commands);
- a connection that cannot be opened raises ``NotConnected`` (nothing was sent).

A :class:`Lane` owns the connection to one address and opens it again on the
next command after it broke.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.failover import NotConnected

Command = tuple[Any, ...]


class Pipelined(asyncio.Protocol):
    """One connection: commands written as they come, replies matched in order."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._broken: BaseException | None = None
        self._outgoing: list[bytes] = []

    @property
    def usable(self) -> bool:
        return self._transport is not None and self._broken is None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; they act as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self._fail(RedisConnectionError("a reply no command asked for"))
                return
            future, _ = pending.popleft()
            if future.done():
                continue  # its caller gave up (cancelled); the reply is dropped in order
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError("Connection closed by server.")
        error.__cause__ = exc
        self._fail(error)

    # -- commands --------------------------------------------------------------------

    def execute(self, command: Command) -> asyncio.Future[Any]:
        """Send ``command``; the future holds its reply (or raises its error)."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if self._broken is not None or self._transport is None:
            future.set_exception(RedisConnectionError("connection is closed"))
            return future
        # Commands issued in one turn of the event loop leave in one write (one
        # system call for the requests that read their sessions at the same time).
        self._outgoing.append(hiredis.pack_command(command))
        if len(self._outgoing) == 1:
            self._loop.call_soon(self._send)
        self._pending.append((future, self._loop.time() + self._timeout))
        if self._timer is None:
            self._timer = self._loop.call_at(self._pending[0][1], self._check_deadline)
        return future

    def _send(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and self._broken is None:
            self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline <= self._loop.time():
            self._fail(RedisTimeoutError("Timeout reading from the store"))
            return
        self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _fail(self, error: BaseException) -> None:
        if self._broken is None:
            self._broken = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        """Close now; commands still waiting fail with ``ConnectionError``."""
        self._fail(RedisConnectionError("connection closed by the gateway"))


class Lane:
    """The pipelined connection to one Redis node, (re)opened on demand.

    ``settings``: redis-py connection keywords of that node's pool (``host``,
    ``port``, ``db``, ``username``, ``password``, ``socket_timeout``,
    ``socket_connect_timeout``); see :func:`lane_for`.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.address: tuple[str, int] = (str(settings["host"]), int(settings["port"]))
        self._db = int(settings.get("db") or 0)
        self._username = settings.get("username")
        self._password = settings.get("password")
        self._timeout = float(settings.get("socket_timeout") or 5.0)
        self._connect_timeout = float(settings.get("socket_connect_timeout") or self._timeout)
        self._connection: Pipelined | None = None
        self._opening: asyncio.Future[Pipelined] | None = None
        self._closed = False

    def execute(self, command: Command) -> Awaitable[Any]:
        """Run ``command`` on the open connection, opening one first when there is none."""
        connection = self._connection
        if connection is not None and connection.usable:
            return connection.execute(command)
        return self._open_then(command)

    async def _open_then(self, command: Command) -> Any:
        connection = await self._open()
        return await connection.execute(command)

    async def _open(self) -> Pipelined:
        if self._closed:
            raise NotConnected(RedisConnectionError("the store is closed"))
        if self._opening is not None:
            # Another command is opening it: share that attempt (and its failure).
            return await asyncio.shield(self._opening)
        opening: asyncio.Future[Pipelined] = asyncio.get_running_loop().create_future()
        self._opening = opening
        try:
            connection = await self._connect()
        except BaseException as exc:
            failure = exc if isinstance(exc, NotConnected) else NotConnected(exc)
            opening.set_exception(failure)
            opening.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise failure from exc
        finally:
            self._opening = None
        opening.set_result(connection)
        self._connection = connection
        return connection

    async def _connect(self) -> Pipelined:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Pipelined(self._timeout), self.address[0], self.address[1]
                ),
                self._connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            error = RedisConnectionError(f"cannot connect to {self.address[0]}:{self.address[1]}")
            raise NotConnected(error) from exc
        try:
            if self._password is not None:
                auth = (
                    ("AUTH", self._username, self._password)
                    if self._username
                    else ("AUTH", self._password)
                )
                await protocol.execute(auth)
            if self._db:
                await protocol.execute(("SELECT", self._db))
        except BaseException:
            protocol.close()
            raise
        return protocol

    def close(self) -> None:
        """Close the connection; later commands fail (the owner makes a new lane)."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def lane_for(client: Redis) -> Lane | None:
    """A lane to the node a redis-py client points at, with its credentials, if it can have one.

    TLS, Unix sockets and credential providers stay on redis-py (``None``).
    """
    pool = client.connection_pool
    settings = pool.connection_kwargs
    if "SSL" in pool.connection_class.__name__ or "Unix" in pool.connection_class.__name__:
        return None
    if settings.get("credential_provider") is not None or "host" not in settings:
        return None
    return Lane(settings)


async def close_soon(lane: Lane, after: float) -> None:
    """Close ``lane`` after ``after`` seconds (commands already sent get their replies)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(after)
    lane.close()
