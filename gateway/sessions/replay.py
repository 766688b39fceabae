"""``ReplayCache``: each assertion ID is accepted once, on any replica, until it expires.

``remember`` does ``store.add`` under ``replay:{h(issuer, assertion id)}`` with a
TTL lasting until the assertion's NotOnOrAfter plus the clock skew (at least the
skew), so an assertion cannot be replayed while it could still pass the time
checks. The ID is hashed because it is chosen by the sender: the key size stays
fixed whatever it sends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from gateway.sessions.keys import replay_key
from gateway.sessions.manager import utcnow
from gateway.store.base import Store


class ReplayCache:
    """Seen assertion IDs, shared through the store."""

    def __init__(
        self,
        store: Store,
        *,
        clock_skew: dt.timedelta = dt.timedelta(seconds=60),
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._store = store
        self._skew = clock_skew
        self._clock = clock

    async def remember(
        self, assertion_id: str, not_on_or_after: dt.datetime, *, issuer: str = ""
    ) -> bool:
        """True the first time an ID is seen; False if it was seen before (a replay).

        Raises ``StoreUnavailable`` if the store is down: the caller refuses the login.
        """
        remaining = (not_on_or_after - self._clock()).total_seconds()
        ttl = max(remaining, 0.0) + self._skew.total_seconds()
        return await self._store.add(replay_key(issuer, assertion_id), b"1", max(ttl, 1.0))
