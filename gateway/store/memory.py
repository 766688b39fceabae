"""``MemoryStore``: the single-process store (demo, development, tests).

Everything lives in one dict in this process, so it is only correct with ONE
gateway process: a second replica would not see these sessions, pending logins
or replay entries. Production with replicas uses ``RedisStore``.

Expiry is both lazy (a read of an expired key deletes it and answers "absent")
and periodic (at most every ``sweep_interval`` seconds, the next write walks the
dict and drops expired keys), so keys nobody reads again do not pile up.
Sweeping inline instead of in a background task keeps the store free of task
lifecycles: it can be created outside an event loop and needs no shutdown.

Pub/sub delivers to subscribers in this process through one ``asyncio.Queue``
per subscription. A subscription is registered when its iterator is first
advanced and removed when the iterator is closed or cancelled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from gateway.errors import StoreUnavailable
from gateway.store import token_bucket
from gateway.store.base import GAP

Clock = Callable[[], float]

# A subscriber that stops reading must not make the process grow without bound;
# beyond this many unread messages the oldest are dropped (invalidation messages
# are hints backed by TTLs, so losing some is allowed by the protocol).
_QUEUE_LIMIT = 10_000


class MemoryStore:
    """In-process implementation of :class:`gateway.store.base.Store`."""

    def __init__(self, *, clock: Clock = time.monotonic, sweep_interval: float = 30.0) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float]] = {}
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._sweep_interval = sweep_interval
        self._next_sweep = clock() + sweep_interval
        self._closed = False

    # -- helpers -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory store closed")

    @staticmethod
    def _check_ttl(ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")

    def _live(self, key: str, now: float) -> tuple[bytes, float] | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._data[key]
            return None
        return item

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        expired = [k for k, (_, exp) in self._data.items() if exp <= now]
        for k in expired:
            del self._data[k]

    def __len__(self) -> int:
        """Number of keys held, expired or not (for tests and metrics)."""
        return len(self._data)

    # -- the protocol ------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        self._check_open()
        item = self._live(key, self._clock())
        return None if item is None else item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check_open()
        self._check_ttl(ttl)
        now = self._clock()
        self._maybe_sweep(now)
        self._data[key] = (bytes(value), now + ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        self._check_open()
        self._check_ttl(ttl)
        now = self._clock()
        self._maybe_sweep(now)
        # No await between the check and the write: atomic on the event loop.
        if self._live(key, now) is not None:
            return False
        self._data[key] = (bytes(value), now + ttl)
        return True

    async def replace_if(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        self._check_open()
        self._check_ttl(ttl)
        now = self._clock()
        item = self._live(key, now)
        # No await between the comparison and the write: atomic on the event loop.
        if item is None or item[0] != expected:
            return False
        self._data[key] = (bytes(value), now + ttl)
        return True

    async def take(self, key: str) -> bytes | None:
        self._check_open()
        item = self._live(key, self._clock())
        if item is None:
            return None
        del self._data[key]
        return item[0]

    async def delete(self, key: str) -> None:
        self._check_open()
        self._data.pop(key, None)

    async def ttl(self, key: str) -> float | None:
        self._check_open()
        now = self._clock()
        item = self._live(key, now)
        return None if item is None else item[1] - now

    async def take_token(self, key: str, *, rate: float, burst: int) -> float:
        self._check_open()
        now = self._clock()
        self._maybe_sweep(now)
        item = self._live(key, now)
        decision = token_bucket.take(now, float(item[0]) if item else None, rate=rate, burst=burst)
        if not decision.allowed:
            return decision.wait
        self._data[key] = (repr(decision.tat).encode(), decision.tat)
        return 0.0

    async def push_bounded(self, key: str, member: bytes, limit: int, ttl: float) -> list[bytes]:
        self._check_open()
        self._check_ttl(ttl)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        now = self._clock()
        self._maybe_sweep(now)
        item = self._live(key, now)
        members = [bytes(member), *(_decode_list(item[0]) if item else [])]
        self._data[key] = (_encode_list(members[:limit]), now + ttl)
        return members[limit:]

    async def publish(self, channel: str, message: bytes) -> None:
        self._check_open()
        for queue in tuple(self._subscribers.get(channel, ())):
            if queue.full():
                # The oldest unread messages are dropped: the subscriber hears of
                # the gap first (base.GAP), then the newest messages.
                queue.get_nowait()
                queue.get_nowait()
                queue.put_nowait(GAP)
            queue.put_nowait(bytes(message))

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        return self._subscription(channel)

    async def _subscription(self, channel: str) -> AsyncIterator[bytes]:
        self._check_open()
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._subscribers.setdefault(channel, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            subs = self._subscribers.get(channel)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subscribers[channel]

    async def ping(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True
        self._data.clear()


# Lists (``push_bounded``) live in the same dict as every other value, encoded,
# so expiry, sweeping, ``delete`` and ``ttl`` treat them like any key, as Redis does.
def _encode_list(members: list[bytes]) -> bytes:
    return json.dumps([m.hex() for m in members]).encode()


def _decode_list(blob: bytes) -> list[bytes]:
    return [bytes.fromhex(m) for m in json.loads(blob)]
