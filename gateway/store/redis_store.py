"""``RedisStore``: the shared store for many replicas (standalone, Sentinel, Cluster).

The store is a thin, fail-closed mapping of the ``Store`` protocol onto Redis
commands. Where the commands go (one server, the primary Sentinel names, a
Cluster) is a :mod:`gateway.store.topology`, built by
:func:`gateway.store.factory.create_store` from the configured URL.

=============  ==============================================================
protocol       Redis
=============  ==============================================================
``get``        ``GET``
``set``        ``SET key value PX ttl_ms``, then ``WAIT``
``add``        ``SET key value NX PX ttl_ms`` (locks, replay cache), then ``WAIT``
``take``       ``GETDEL`` (atomic single use; Redis >= 6.2), then ``WAIT``
``delete``     ``DEL``, then ``WAIT``
``ttl``        ``PTTL``
``publish``    ``PUBLISH`` (also on Cluster: see below)
``subscribe``  ``SUBSCRIBE`` on a dedicated connection, reconnecting with backoff
``ping``       ``PING``
``take_token`` a Lua script: GCRA token bucket on one key, Redis ``TIME``
``push_bounded`` a Lua script: ``LPUSH`` + ``LRANGE``/``LTRIM`` + ``PEXPIRE``
=============  ==============================================================

The two scripts touch one key each, so they run on any topology (on Cluster
on the key's slot); ``take_token`` reads the clock of Redis itself, so every
replica's token bucket runs on one clock whatever the skew between hosts.

Keys and channels get the deployment's ``key_prefix`` (default ``gw:``) in
front, so several deployments can share one Redis. The prefix never contains a
hash tag, so a caller's ``{tag}`` still decides the Cluster slot.

Every TTL is sent in milliseconds (at least 1 ms): nothing is stored forever.

**Durability.** Redis replicates asynchronously: a primary acknowledges a write
before any replica has it, and a failover discards what the replica did not get.
So every write is followed, on the same connection, by ``WAIT replica_acks
timeout`` (:class:`Durability`). A write no replica acknowledged in time is
accepted only as :func:`gateway.store.failover.accept_unreplicated` allows;
otherwise the caller gets ``StoreUnavailable`` (a login fails with a 503 page
and can be repeated) instead of a session that a failover would silently drop.

**Failures and the one retry.** Every failure to talk to Redis (refused, timed
out, reset, read-only, cluster down, a failover in progress, an unexpected
reply) is classified by :func:`gateway.store.failover.classify`; the operation
is sent once more, after the topology has looked for the current primary, when
:func:`gateway.store.failover.may_retry` allows it (never a consume-once
``take`` or an ``add`` that may already have run). Otherwise it becomes
:class:`gateway.errors.StoreUnavailable`, so callers fail closed with one
``except``. Socket and connect timeouts are short (settings) so an outage
fails fast instead of stalling requests.

Pub/sub on Cluster uses classic ``PUBLISH``/``SUBSCRIBE``: the cluster bus
broadcasts a classic publish to every node, so a subscriber connected to any
node receives it, and a failover or reshard never strands a subscription on the
wrong node. The cost (every node sees every message) is negligible for the
low-volume invalidation messages the gateway sends. Sharded pub/sub would only
pay off for high message rates.

A subscription survives outages: when its connection breaks it logs
``store_subscription_lost``, waits (exponential backoff with jitter, capped),
subscribes again and logs ``store_subscription_restored``. After a Sentinel
switch it subscribes again on the new primary. Messages published while it was
disconnected are lost, as the protocol allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from gateway.errors import StoreUnavailable
from gateway.store.base import GAP
from gateway.store.failover import (
    NotConnected,
    NotDurable,
    UnreplicatedMode,
    accept_unreplicated,
    classify,
    may_retry,
)
from gateway.store.topology import Command, Topology

_log = structlog.get_logger("gateway.store")

# What a broken or unreachable Redis raises through redis-py: its own errors,
# cluster topology errors (not RedisError subclasses), and raw socket/timeouts.
_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
# ... and the store's own verdicts on an attempt.
_ATTEMPT_FAILURES = (*_FAILURES, NotConnected, NotDurable)
# At most one warning per this many seconds about writes no replica acknowledged.
_UNREPLICATED_LOG_INTERVAL = 10.0
# After a write was accepted on a confirmed primary that no replica acknowledged
# (a primary left without replicas, e.g. after its only replica was promoted),
# later writes skip the WAIT for this many seconds and go straight to the
# confirmation; then one write waits in full again to see whether a replica is
# back. A short WAIT would not help: Redis checks WAIT timeouts only every
# 1/hz s (100 ms by default). Acceptance still needs the primary confirmed each
# time: skipping the wait changes how long a replica gets, never whether an
# unacknowledged write counts.
_DEGRADED_FOR = 1.0

T = TypeVar("T")


@dataclass(frozen=True)
class Durability:
    """How many replicas must acknowledge a write, how long to wait, and what then."""

    replica_acks: int = 0
    """``WAIT`` for this many replicas after every write; 0 sends no ``WAIT``."""
    timeout: float = 0.1
    """Seconds ``WAIT`` blocks at most."""
    unreplicated: UnreplicatedMode = "accept_on_primary"
    """What a write no replica acknowledged in time counts as (see ``failover``)."""

    @property
    def timeout_ms(self) -> int:
        return max(1, math.ceil(self.timeout * 1000))


# gateway.store.token_bucket in Lua, in milliseconds. ARGV: interval (ms), burst.
# Returns 0 when a token was taken, else the wait in whole milliseconds (>= 1).
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return math.max(1, math.ceil(allow_at - now))
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat),
           'PX', math.max(1, math.ceil(new_tat - now)))
return 0
"""

# ARGV: member, limit, ttl (ms). Returns the members that fell off the end.
_PUSH_BOUNDED_LUA = """
redis.call('LPUSH', KEYS[1], ARGV[1])
local limit = tonumber(ARGV[2])
local dropped = redis.call('LRANGE', KEYS[1], limit, -1)
if #dropped > 0 then
  redis.call('LTRIM', KEYS[1], 0, limit - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return dropped
"""


# Compare and set. ARGV: expected value, new value, ttl (ms). Returns 1 if stored.
_REPLACE_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class RedisStore:
    """Redis implementation of :class:`gateway.store.base.Store`."""

    def __init__(
        self,
        topology: Topology,
        *,
        key_prefix: str = "gw:",
        description: str = "redis",
        durability: Durability | None = None,
        retries: int = 1,
        subscribe_backoff_initial: float = 0.1,
        subscribe_backoff_max: float = 5.0,
        subscribe_poll_interval: float = 1.0,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            # A brace in the prefix would become the hash tag of every key and put
            # the whole deployment on one Cluster slot.
            raise ValueError("key_prefix must not contain '{' or '}'")
        self._topology = topology
        self._prefix = key_prefix
        self.description = description
        """Where this store points, without credentials (for logs and health output)."""
        self.durability = durability or Durability()
        self._retries = retries
        self._backoff_initial = subscribe_backoff_initial
        self._backoff_max = subscribe_backoff_max
        self._poll = subscribe_poll_interval
        self._unreplicated = 0
        self._unreplicated_logged_at = -math.inf
        self._degraded_until = -math.inf

    @property
    def topology(self) -> Topology:
        """Where the commands go (for diagnostics and tests)."""
        return self._topology

    def full_key(self, key: str) -> str:
        """The key as stored in Redis, with the deployment prefix."""
        return self._prefix + key

    async def _run(self, op: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt``; once more after a failure where ``may_retry`` allows it."""
        tries = 0
        while True:
            generation = self._topology.generation
            try:
                return await attempt()
            except _ATTEMPT_FAILURES as exc:
                failure = classify(exc)
                if tries < self._retries and may_retry(op, failure):
                    tries += 1
                    with contextlib.suppress(*_FAILURES):
                        # A health check answers for now; it does not wait for a failover.
                        await self._topology.recover(failure, generation, patient=op != "ping")
                    continue
                # Only the failure's name reaches the log: redis-py messages can
                # quote hosts and, for some errors, command arguments (our values).
                raise StoreUnavailable(
                    f"{self.description}: {op} failed: {failure.reason}"
                ) from exc

    async def _write(self, op: str, key: str, command: Command) -> Any:
        durability = self.durability

        async def attempt() -> Any:
            wanted = durability.replica_acks
            full_wait = time.monotonic() >= self._degraded_until
            result = await self._topology.write(
                key, command, wanted if full_wait else 0, durability.timeout_ms
            )
            if wanted <= 0:
                return result.reply
            if result.acks is None and full_wait:
                # No replica serves this Cluster slot: nothing could acknowledge it.
                if durability.unreplicated == "fail":
                    raise NotDurable(still_primary=True)
                return result.reply
            if (result.acks or 0) >= wanted:
                self._degraded_until = -math.inf
                return result.reply
            confirmed = await self._topology.confirm_primary(result.address)
            if accept_unreplicated(durability.unreplicated, confirmed):
                if full_wait:
                    self._degraded_until = time.monotonic() + _DEGRADED_FOR
                self._note_unreplicated(op)
                return result.reply
            raise NotDurable(still_primary=confirmed)

        return await self._run(op, attempt)

    def _note_unreplicated(self, op: str) -> None:
        self._unreplicated += 1
        now = time.monotonic()
        if now - self._unreplicated_logged_at >= _UNREPLICATED_LOG_INTERVAL:
            self._unreplicated_logged_at = now
            _log.warning(
                "store_write_unreplicated",
                store=self.description,
                op=op,
                count=self._unreplicated,
                replica_acks=self.durability.replica_acks,
            )

    @property
    def unreplicated_writes(self) -> int:
        """Writes accepted on a confirmed primary that no replica acknowledged in time."""
        return self._unreplicated

    @staticmethod
    def _ms(ttl: float) -> int:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        return max(1, math.ceil(ttl * 1000))

    # -- the protocol ------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        full = self.full_key(key)

        async def attempt() -> bytes | None:
            lane = self._topology.lane()
            if lane is not None:
                value = await lane.execute(("GET", full))
            else:
                value = await (await self._topology.client()).get(full)
            # No decode_responses anywhere: values come back as bytes.
            assert value is None or isinstance(value, bytes)
            return value

        return await self._run("get", attempt)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        ms = self._ms(ttl)
        full = self.full_key(key)
        await self._write("set", full, ("SET", full, value, "PX", ms))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        ms = self._ms(ttl)
        full = self.full_key(key)
        stored = await self._write("add", full, ("SET", full, value, "NX", "PX", ms))
        return stored is not None

    async def replace_if(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        ms = self._ms(ttl)
        full = self.full_key(key)
        stored = await self._write(
            "replace_if", full, ("EVAL", _REPLACE_IF_LUA, 1, full, expected, value, ms)
        )
        return int(stored) == 1

    async def take(self, key: str) -> bytes | None:
        full = self.full_key(key)
        value: bytes | None = await self._write("take", full, ("GETDEL", full))
        return value

    async def delete(self, key: str) -> None:
        full = self.full_key(key)
        await self._write("delete", full, ("DEL", full))

    async def ttl(self, key: str) -> float | None:
        async def attempt() -> int:
            ms: int = await (await self._topology.client()).pttl(self.full_key(key))
            return ms

        ms = await self._run("ttl", attempt)
        if ms == -2:
            return None
        if ms == -1:
            # A key without TTL was not written by us; report it honestly.
            return math.inf
        return ms / 1000.0

    async def publish(self, channel: str, message: bytes) -> None:
        async def attempt() -> None:
            await (await self._topology.client()).publish(self.full_key(channel), message)

        await self._run("publish", attempt)

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        return self._subscription(self.full_key(channel))

    async def _subscription(self, channel: str) -> AsyncIterator[bytes]:
        backoff = self._backoff_initial
        lost = False
        subscribed_before = False
        while True:
            pubsub: Any = None
            try:
                client = await self._topology.client()
                generation = self._topology.generation
                if isinstance(client, RedisCluster):
                    # The cluster pubsub routes by the slot map, which is only loaded
                    # by the first command: load it now.
                    await client.initialize()
                pubsub = client.pubsub()
                await pubsub.subscribe(channel)
                if lost:
                    _log.info("store_subscription_restored", store=self.description)
                    lost = False
                if subscribed_before:
                    # Whatever was published between the old subscription and this
                    # one is lost: say so (base.GAP), so caches can drop everything.
                    yield GAP
                subscribed_before = True
                backoff = self._backoff_initial
                # After a switch to another primary, subscribe there (messages are
                # published on the new primary).
                while self._topology.generation == generation:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._poll
                    )
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        yield data if isinstance(data, bytes) else str(data).encode()
            except Exception as exc:
                # Broader than _FAILURES on purpose: a subscription is a background
                # lifeline (cache invalidation) and must outlive any client-side
                # surprise; it retries instead of dying.
                if not lost:
                    _log.warning(
                        "store_subscription_lost", store=self.description, error=type(exc).__name__
                    )
                    lost = True
            else:
                continue
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._backoff_max)

    async def take_token(self, key: str, *, rate: float, burst: int) -> float:
        if not rate > 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate!r}, {burst!r}")
        full = self.full_key(key)
        wait_ms = await self._write(
            "take_token", full, ("EVAL", _GCRA_LUA, 1, full, repr(1000.0 / rate), burst)
        )
        return int(wait_ms) / 1000.0

    async def push_bounded(self, key: str, member: bytes, limit: int, ttl: float) -> list[bytes]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        full = self.full_key(key)
        dropped = await self._write(
            "push_bounded", full, ("EVAL", _PUSH_BOUNDED_LUA, 1, full, member, limit, self._ms(ttl))
        )
        return [bytes(m) for m in dropped]

    async def ping(self) -> None:
        async def attempt() -> None:
            await (await self._topology.client()).ping()

        await self._run("ping", attempt)

    async def close(self) -> None:
        await self._topology.aclose()
