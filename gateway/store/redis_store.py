"""``RedisStore``: the shared store for many replicas (standalone, Sentinel, Cluster).

The store is a thin, fail-closed mapping of the ``Store`` protocol onto Redis
commands; the client (standalone, Sentinel-managed or Cluster) is built by
:func:`gateway.store.factory.create_store` from the configured URL.

=============  ==============================================================
protocol       Redis
=============  ==============================================================
``get``        ``GET``
``set``        ``SET key value PX ttl_ms``
``add``        ``SET key value NX PX ttl_ms`` (locks, replay cache)
``take``       ``GETDEL`` (atomic single use; Redis >= 6.2)
``delete``     ``DEL``
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

Every failure to talk to Redis (refused, timed out, reset, cluster down, a
failover in progress, even an unexpected reply) becomes
:class:`gateway.errors.StoreUnavailable`, so callers fail closed with one
``except``. Socket and connect timeouts are short (settings) so an outage fails
fast instead of stalling requests.

Pub/sub on Cluster uses classic ``PUBLISH``/``SUBSCRIBE``: the cluster bus
broadcasts a classic publish to every node, so a subscriber connected to any
node receives it, and a failover or reshard never strands a subscription on the
wrong node. The cost (every node sees every message) is negligible for the
low-volume invalidation messages the gateway sends. Sharded pub/sub would only
pay off for high message rates.

A subscription survives outages: when its connection breaks it logs
``store_subscription_lost``, waits (exponential backoff with jitter, capped),
subscribes again and logs ``store_subscription_restored``. Messages published
while it was disconnected are lost, as the protocol allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from gateway.errors import StoreUnavailable

_log = structlog.get_logger("gateway.store")

# What a broken or unreachable Redis raises through redis-py: its own errors,
# cluster topology errors (not RedisError subclasses), and raw socket/timeouts.
_FAILURES = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)

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


class RedisStore:
    """Redis implementation of :class:`gateway.store.base.Store`."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        key_prefix: str = "gw:",
        description: str = "redis",
        subscribe_backoff_initial: float = 0.1,
        subscribe_backoff_max: float = 5.0,
        subscribe_poll_interval: float = 1.0,
        also_close: Sequence[Redis] = (),
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            # A brace in the prefix would become the hash tag of every key and put
            # the whole deployment on one Cluster slot.
            raise ValueError("key_prefix must not contain '{' or '}'")
        self._client = client
        self._prefix = key_prefix
        self.description = description
        """Where this store points, without credentials (for logs and health output)."""
        self._backoff_initial = subscribe_backoff_initial
        self._backoff_max = subscribe_backoff_max
        self._poll = subscribe_poll_interval
        # Clients the store owns besides ``client`` (Sentinel's connections to the
        # sentinels), closed with it.
        self._also_close = tuple(also_close)
        # EVALSHA, loading the script once per server when it is missing.
        self._take_token = client.register_script(_GCRA_LUA)
        self._push_bounded = client.register_script(_PUSH_BOUNDED_LUA)

    @property
    def client(self) -> Redis | RedisCluster:
        """The underlying redis-py client (for diagnostics such as ``MEMORY USAGE``)."""
        return self._client

    def full_key(self, key: str) -> str:
        """The key as stored in Redis, with the deployment prefix."""
        return self._prefix + key

    async def _call(self, op: str, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except _FAILURES as exc:
            # Only the exception type reaches the log: redis-py messages can quote
            # hosts and, for some errors, command arguments (our values).
            raise StoreUnavailable(
                f"{self.description}: {op} failed: {type(exc).__name__}"
            ) from exc

    @staticmethod
    def _ms(ttl: float) -> int:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        return max(1, math.ceil(ttl * 1000))

    # -- the protocol ------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", self._client.get(self.full_key(key)))
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        ms = self._ms(ttl)
        await self._call("set", self._client.set(self.full_key(key), value, px=ms))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        ms = self._ms(ttl)
        stored = await self._call(
            "add", self._client.set(self.full_key(key), value, px=ms, nx=True)
        )
        return bool(stored)

    async def take(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("take", self._client.getdel(self.full_key(key)))
        return value

    async def delete(self, key: str) -> None:
        await self._call("delete", self._client.delete(self.full_key(key)))

    async def ttl(self, key: str) -> float | None:
        ms: int = await self._call("ttl", self._client.pttl(self.full_key(key)))
        if ms == -2:
            return None
        if ms == -1:
            # A key without TTL was not written by us; report it honestly.
            return math.inf
        return ms / 1000.0

    async def publish(self, channel: str, message: bytes) -> None:
        await self._call("publish", self._client.publish(self.full_key(channel), message))

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        return self._subscription(self.full_key(channel))

    async def _subscription(self, channel: str) -> AsyncIterator[bytes]:
        backoff = self._backoff_initial
        lost = False
        while True:
            pubsub: Any = None
            try:
                if isinstance(self._client, RedisCluster):
                    # The cluster pubsub routes by the slot map, which is only loaded
                    # by the first command: load it now.
                    await self._client.initialize()
                pubsub = self._client.pubsub()
                await pubsub.subscribe(channel)
                if lost:
                    _log.info("store_subscription_restored", store=self.description)
                    lost = False
                backoff = self._backoff_initial
                while True:
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
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._backoff_max)

    async def take_token(self, key: str, *, rate: float, burst: int) -> float:
        if not rate > 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate!r}, {burst!r}")
        wait_ms = await self._call(
            "take_token",
            self._take_token(
                keys=[self.full_key(key)], args=[repr(1000.0 / rate), burst], client=self._client
            ),
        )
        return int(wait_ms) / 1000.0

    async def push_bounded(self, key: str, member: bytes, limit: int, ttl: float) -> list[bytes]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        dropped = await self._call(
            "push_bounded",
            self._push_bounded(
                keys=[self.full_key(key)], args=[member, limit, self._ms(ttl)], client=self._client
            ),
        )
        return [bytes(m) for m in dropped]

    async def ping(self) -> None:
        await self._call("ping", self._client.ping())

    async def close(self) -> None:
        for client in (self._client, *self._also_close):
            with contextlib.suppress(*_FAILURES):
                await client.aclose()
