"""The store protocol every piece of shared state goes through.

Sessions, pre-login state, the assertion replay cache, cached mandate sets and
short locks all live behind this protocol, so the same code runs on one process
(``MemoryStore``, the demo default) and on many replicas (``RedisStore``).

Rules every implementation keeps:

- Every key has a TTL; nothing is stored forever.
- Keys are plain strings chosen by the caller. A caller that needs several keys
  to live on one Redis Cluster slot puts the shared part in ``{braces}``
  (a hash tag), e.g. ``session:{abc}:data`` and ``session:{abc}:lock``.
- Values are bytes; callers serialise.
- Any failure to reach the backing service raises
  :class:`gateway.errors.StoreUnavailable`, never a library-specific error,
  so callers fail closed with one ``except``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

GAP = b""
"""What ``Store.subscribe`` yields where messages may have been lost."""


@runtime_checkable
class Store(Protocol):
    async def get(self, key: str) -> bytes | None:
        """Return the value, or ``None`` if absent or expired."""

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (> 0), replacing any old value."""

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if ``key`` is absent; True if stored. Used for locks and replay caches."""

    async def replace_if(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        """Compare and set: store ``value`` for ``ttl`` seconds only if ``key`` holds
        exactly ``expected`` now; True if stored. False also when ``key`` is absent.

        A caller that holds a copy of a value writes its update in one round trip,
        and never over a change (or a deletion) it has not seen: on False it reads
        the value again. (Sessions: the ``last_seen`` touch.)
        """

    async def take(self, key: str) -> bytes | None:
        """Atomically return and delete the value: single-use state (pending logins)."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are fine."""

    async def ttl(self, key: str) -> float | None:
        """Seconds left for ``key``, or ``None`` if absent."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every subscriber of ``channel`` on every replica."""

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Yield messages published to ``channel`` from now on, until cancelled.

        The iterator survives outages of the backing service: it reconnects by
        itself. Messages sent while disconnected are lost; after every such gap
        (a resubscription, a dropped backlog) it yields ``GAP`` (an empty
        message, which no publisher sends), so a caller holding state that a
        message would have invalidated can drop all of it.
        """

    async def take_token(self, key: str, *, rate: float, burst: int) -> float:
        """Take one token from the token bucket at ``key``, atomically across replicas.

        The bucket holds at most ``burst`` tokens and gains ``rate`` per second
        (the rule is ``gateway.store.token_bucket``). Returns 0.0 when a token was
        taken, else the seconds until one is there (nothing is taken then). The
        key expires once the bucket is full again.
        """

    async def push_bounded(self, key: str, member: bytes, limit: int, ttl: float) -> list[bytes]:
        """Put ``member`` at the head of the list at ``key`` and keep only the newest ``limit``.

        Returns the members that fell off the end (oldest last); the list expires
        ``ttl`` seconds from now. Atomic: concurrent pushes never keep more than
        ``limit`` members, and each dropped member is returned to exactly one caller.
        """

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store is usable right now."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
