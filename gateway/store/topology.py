"""Where the store's commands go: one Redis, the primary Sentinel names, or a Cluster.

A topology owns the redis-py clients of one deployment kind and answers four
things for :class:`gateway.store.redis_store.RedisStore`:

- ``client()``: the client for reads, ``PUBLISH`` and subscriptions, pointing at
  the current primary;
- ``write()``: run one write command and ``WAIT`` on the *same connection* (the
  only way ``WAIT`` counts that write), returning the reply, how many replicas
  acknowledged it, and which node ran it;
- ``confirm_primary()``: is that node still the primary, with no failover under
  way (asked only when no replica acknowledged a write);
- ``recover()``: after a failed attempt, find the current primary before the one
  retry (Sentinel: ask the sentinels and wait, bounded, for a switch; Cluster:
  ask for a new slot map).

**Sentinel** (:class:`SentinelTopology`). The store keeps one connection pool
per primary address. It learns the primary from the sentinels (the answer with
the newest ``config-epoch`` wins: a sentinel that missed a switch still names
the old primary with an older epoch) and follows a switch three ways:

1. every sentinel's ``+switch-master`` channel is subscribed, each on its own
   connection with its own reconnect loop, so one dead sentinel (or two)
   does not blind the store; after every (re)subscription the store asks the
   sentinels again, which covers a switch announced while it was not listening;
2. a write that no replica acknowledged makes the store ask the sentinels
   whether the node that ran it is still the primary;
3. a failed operation makes the store ask the sentinels before its retry and,
   when the failure says the node is gone or read-only, wait up to
   ``failover_wait`` seconds for a switch.

On a switch new operations go to the new primary at once; the old pool's idle
connections are closed, the busy ones finish their command and the pool is
closed a little later. Pooled connections never keep writing to the old primary,
which is what lost every session written in the ~10 s until Sentinel turned
the old primary into a replica (it does that only when it next polls it).

**Cluster** (:class:`gateway.store.cluster.ClusterTopology`, its own module):
redis-py routes reads and follows ``MOVED``/``ASK``; writes with ``WAIT`` go
on one connection of the slot's primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisError,
    ResponseError,
)

from gateway.store.failover import (
    Failure,
    NotConnected,
    Outcome,
    SentinelView,
    newest_primary,
    parse_sentinel_master,
    parse_switch_message,
    primary_confirmed,
)
from gateway.store.pipelined import Lane, close_soon, lane_for

_log = structlog.get_logger("gateway.store")

Address = tuple[str, int]
Command = tuple[Any, ...]

# What opening a connection can raise: nothing was sent yet.
CONNECT_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
# After a +switch-master: ask the sentinels this often, this many times, until
# their newest configuration names a primary the store can adopt.
_FOLLOW_ATTEMPTS = 20
_FOLLOW_INTERVAL = 0.25


@dataclass(frozen=True)
class WriteReply:
    """The reply to one write, and what ``WAIT`` said about it."""

    reply: Any
    acks: int | None
    """Replicas that acknowledged the write; ``None`` when no ``WAIT`` was sent."""
    address: Address
    """The node that ran the write."""


class Topology(Protocol):
    """What ``RedisStore`` needs from a deployment (see the module docstring)."""

    @property
    def generation(self) -> int:
        """Changes whenever the store switches to another primary."""

    async def client(self) -> Redis | RedisCluster:
        """The client for reads, publishing and subscriptions."""

    def lane(self) -> Lane | None:
        """The pipelined connection to the current primary (``gateway.store.pipelined``)
        for ``GET`` and writes without ``WAIT``; ``None``: use ``client()``."""

    async def write(self, key: str, command: Command, acks: int, timeout_ms: int) -> WriteReply:
        """Run ``command`` (which writes ``key``) and ``WAIT acks timeout_ms`` after it."""

    async def confirm_primary(self, address: Address) -> bool:
        """Whether ``address`` is confirmed as the primary, with no failover under way."""

    async def recover(self, failure: Failure, generation: int, *, patient: bool = True) -> None:
        """Prepare the one retry after ``failure`` (an attempt begun at ``generation``);
        ``patient``: a failover under way may be waited for."""

    async def aclose(self) -> None:
        """Stop background work and close every connection."""


async def exchange(connection: Connection, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` in one write on one connection and read every reply.

    Error replies are returned as exception objects (the connection stays
    usable); a broken connection raises, and the caller must not reuse it.
    """
    await connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def with_wait(command: Command, acks: int, timeout_ms: int) -> list[Command]:
    return [command, ("WAIT", acks, timeout_ms)] if acks > 0 else [command]


def split_replies(replies: list[Any], acks: int) -> tuple[Any, int | None]:
    """(the command's reply or raised error, the replica count ``WAIT`` returned)."""
    reply = replies[0]
    if isinstance(reply, Exception):
        raise reply
    if acks <= 0:
        return reply, None
    waited = replies[1]
    if isinstance(waited, Exception):
        raise waited
    return reply, int(waited)


async def _write_on_pool(client: Redis, command: Command, acks: int, timeout_ms: int) -> WriteReply:
    pool = client.connection_pool
    try:
        connection: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    except CONNECT_FAILURES as exc:
        raise NotConnected(exc) from exc
    try:
        replies = await exchange(connection, with_wait(command, acks, timeout_ms))
    except BaseException:
        # A reply may still be on its way: the connection must not be reused.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    reply, acked = split_replies(replies, acks)
    return WriteReply(reply, acked, (str(connection.host), int(connection.port)))


async def _write_on_lane(lane: Lane, command: Command) -> WriteReply:
    """A write no replica must acknowledge, on the pipelined connection (no ``WAIT``)."""
    return WriteReply(await lane.execute(command), None, lane.address)


async def _role(client: Redis) -> str:
    reply = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    first = reply[0] if isinstance(reply, list | tuple) and reply else b""
    return first.decode() if isinstance(first, bytes) else str(first)


class StandaloneTopology:
    """One Redis server (``redis://``): nothing to follow."""

    generation = 0

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._lane = lane_for(client)

    async def client(self) -> Redis:
        return self._client

    def lane(self) -> Lane | None:
        return self._lane

    async def write(self, key: str, command: Command, acks: int, timeout_ms: int) -> WriteReply:
        if acks <= 0 and self._lane is not None:
            return await _write_on_lane(self._lane, command)
        return await _write_on_pool(self._client, command, acks, timeout_ms)

    async def confirm_primary(self, address: Address) -> bool:
        try:
            return await _role(self._client) == "master"
        except CONNECT_FAILURES:
            return False

    async def recover(self, failure: Failure, generation: int, *, patient: bool = True) -> None:
        await asyncio.sleep(random.uniform(0.01, 0.03))

    async def aclose(self) -> None:
        if self._lane is not None:
            self._lane.close()
        with contextlib.suppress(*CONNECT_FAILURES):
            await self._client.aclose()


class SentinelTopology:
    """The primary that the sentinels name, followed across failovers (module docstring)."""

    def __init__(
        self,
        sentinels: Sequence[Redis],
        service: str,
        make_client: Callable[[Address], Redis],
        *,
        failover_wait: float,
        retire_after: float,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        self._sentinels = tuple(sentinels)
        self._service = service
        self._make_client = make_client
        self._failover_wait = failover_wait
        self._retire_after = retire_after
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poll = poll_interval
        self._current: tuple[Address, Redis] | None = None
        self._lane: Lane | None = None
        self._epoch = -1
        self._generation = 0
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_refresh = -1.0
        self._watchers: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def primary(self) -> Address | None:
        """The address operations go to now (``None`` before the first one)."""
        return self._current[0] if self._current else None

    async def client(self) -> Redis:
        self._start_watchers()
        current = self._current
        if current is None:
            await self.refresh(force=True)
            current = self._current
            if current is None:
                raise NotConnected(RedisConnectionError("no sentinel names a usable primary"))
        return current[1]

    def lane(self) -> Lane | None:
        return self._lane

    async def write(self, key: str, command: Command, acks: int, timeout_ms: int) -> WriteReply:
        lane = self._lane
        if acks <= 0 and lane is not None:
            return await _write_on_lane(lane, command)
        return await _write_on_pool(await self.client(), command, acks, timeout_ms)

    # -- what the sentinels say ----------------------------------------------------

    async def _view(self, sentinel: Redis) -> SentinelView:
        reply = await sentinel.execute_command(  # type: ignore[no-untyped-call]
            "SENTINEL", "MASTER", self._service
        )
        return parse_sentinel_master(reply)

    async def views(self) -> list[SentinelView]:
        """Every reachable sentinel's view of the primary, asked in parallel."""
        answers = await asyncio.gather(
            *(self._view(s) for s in self._sentinels), return_exceptions=True
        )
        views: list[SentinelView] = []
        for answer in answers:
            if isinstance(answer, SentinelView):
                views.append(answer)
            elif isinstance(answer, asyncio.CancelledError):
                raise answer
        return views

    async def confirm_primary(self, address: Address) -> bool:
        views = await self.views()
        if not primary_confirmed(views, address):
            self._adopt(views)
            return False
        return True

    async def refresh(self, *, force: bool = False, hint: Address | None = None) -> bool:
        """Ask the sentinels and switch if they name another primary; True if switched.

        Calls close together share one round of questions (``force`` skips that).
        """
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return True
            now = time.monotonic()
            if not force and now - self._last_refresh < 0.1:
                return False
            self._last_refresh = now
            views = await self.views()
            if not views and hint is not None and self._current is not None:
                # No sentinel answers, but one just announced a switch.
                self._install(hint, self._epoch)
                return True
            return self._adopt(views)

    def _adopt(self, views: list[SentinelView]) -> bool:
        address = newest_primary(views)
        if address is None:
            return False
        epoch = max(v.config_epoch for v in views)
        if self._current is not None and (address == self._current[0] or epoch < self._epoch):
            self._epoch = max(self._epoch, epoch)
            return False
        self._install(address, epoch)
        return True

    def _install(self, address: Address, epoch: int) -> None:
        old, old_lane = self._current, self._lane
        client = self._make_client(address)
        self._current = (address, client)
        self._lane = lane_for(client)
        if old_lane is not None:
            # Commands already sent to the old primary get their replies first.
            task = asyncio.create_task(
                close_soon(old_lane, self._retire_after), name="store-retire-lane"
            )
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._epoch = epoch
        self._generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if old is not None:
            _log.warning(
                "store_primary_switched",
                service=self._service,
                old=f"{old[0][0]}:{old[0][1]}",
                new=f"{address[0]}:{address[1]}",
            )
            task = asyncio.create_task(self._retire(old[1]), name="store-retire-pool")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, client: Redis) -> None:
        # Idle connections go now; commands still running on busy ones finish
        # (their writes are checked by WAIT) before the pool is closed.
        try:
            with contextlib.suppress(*CONNECT_FAILURES):
                await client.connection_pool.disconnect(inuse_connections=False)
            await asyncio.sleep(self._retire_after)
        finally:
            with contextlib.suppress(*CONNECT_FAILURES):
                await client.aclose()

    async def _answers(self) -> bool:
        """Whether the current primary answers a PING (a broken connection or a dead node?)."""
        current = self._current
        if current is None:
            return False
        try:
            await current[1].ping()
        except CONNECT_FAILURES:
            return False
        return True

    async def recover(self, failure: Failure, generation: int, *, patient: bool = True) -> None:
        if self._generation != generation or await self.refresh():
            return
        if failure.outcome is Outcome.FINAL or not patient:
            return
        if not failure.primary_lost and await self._answers():
            # One broken connection to a healthy primary: retry at once.
            return
        # The node is gone, read-only or being replaced and the sentinels still name
        # it: a failover is under way (or about to be). Wait for the switch, asking
        # now and then in case the announcement is missed.
        # Also done when the current primary answers and the sentinels settle on it
        # (just after a switch they briefly show stale down flags on the new one).
        deadline = time.monotonic() + self._failover_wait
        while self._generation == generation:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(0.25, left))
            if self._generation == generation:
                views = await self.views()
                current = self.primary
                if self._adopt(views) or (
                    current is not None
                    and primary_confirmed(views, current)
                    and await self._answers()
                ):
                    return

    # -- following +switch-master ----------------------------------------------------

    def _start_watchers(self) -> None:
        if self._watchers or self._closed:
            return
        self._watchers = [
            asyncio.create_task(self._watch(i, s), name=f"store-sentinel-watch-{i}")
            for i, s in enumerate(self._sentinels)
        ]

    async def _watch(self, index: int, sentinel: Redis) -> None:
        backoff = self._backoff_initial
        lost = False
        while True:
            pubsub: Any = None
            try:
                pubsub = sentinel.pubsub()
                await pubsub.subscribe("+switch-master")
                if lost:
                    _log.info("store_sentinel_watch_restored", sentinel=index)
                    lost = False
                backoff = self._backoff_initial
                # A switch announced while this watcher was not listening.
                await self.refresh()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._poll
                    )
                    if message is None or message.get("type") != "message":
                        continue
                    address = parse_switch_message(message["data"], self._service)
                    if address is not None and address != self.primary:
                        await self._follow(address)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A dead sentinel must not stop this loop: the others keep watching
                # and this one is subscribed again when it is back.
                if not lost:
                    _log.warning(
                        "store_sentinel_watch_lost", sentinel=index, error=type(exc).__name__
                    )
                    lost = True
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._backoff_max)

    async def _follow(self, announced: Address) -> None:
        """After a ``+switch-master``: ask until the sentinels' newest view is adopted.

        The announcing sentinel may answer for a moment with the configuration
        it is still writing; a few more questions settle it.
        """
        for _ in range(_FOLLOW_ATTEMPTS):
            if await self.refresh(force=True, hint=announced) or self.primary == announced:
                return
            await asyncio.sleep(_FOLLOW_INTERVAL)

    async def aclose(self) -> None:
        self._closed = True
        tasks = [*self._watchers, *self._retiring]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers = []
        if self._lane is not None:
            self._lane.close()
        clients: list[Redis] = [*self._sentinels]
        if self._current is not None:
            clients.append(self._current[1])
        for client in clients:
            with contextlib.suppress(*CONNECT_FAILURES):
                await client.aclose()
