"""Who may start a login now: a token bucket per client address and one for everyone.

Each started login costs a signed AuthnRequest (RSA) and a pending-login entry
in the store until it completes or expires. Without a limit one client could
fill the store with them and push out, or block writes of, the sessions of
everyone who is signed in. ``LoginStartLimiter.check`` therefore takes, before
anything is signed or stored:

1. a token from the bucket of the client's address
   (``sessions.login_limits.per_address_*``), refused with **429**;
2. a token from the deployment's bucket (``total_*``), refused with **503**:
   nobody in particular is at fault, the gateway is busy (a flood from many
   addresses). It bounds the pending logins in the store to about
   ``total_burst + total_per_second * prelogin_ttl`` whatever the attacker does.

Both buckets live in the store (``Store.take_token``), so the limits hold for
the deployment as configured however many replicas share the traffic and
however the load balancer spreads it: a per-replica limit would multiply with
the replica count and change with autoscaling. The store is needed for the
login anyway, so this adds no new dependency; if it is down the login fails
closed with the usual 503.

A refused hit must stay cheap, because floods are made of them: after the
store refuses an address, this replica refuses that address locally, without
a store call, until the moment the store named (other replicas taking tokens
can only make that moment later, never earlier). Refusals are audited as
``login_rate_limited``, at most one event per address and scope per
``audit_interval`` with the number refused since the previous one (for the
deployment's bucket one event for all clients, ``client_address`` ``*``), so a
flood cannot flood the audit log either.

The client address is what ``gateway.client.client_view`` trusts: the peer, or
the ``X-Forwarded-For`` hop a configured trusted proxy vouches for. IPv4 counts
per address (IPv4-mapped IPv6 as IPv4), IPv6 per network of
``ipv6_prefix_length`` bits.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.audit import audit
from gateway.sessions.keys import login_rate_key, login_rate_total_key
from gateway.sessions.settings import LoginLimits
from gateway.store.base import Store

Scope = Literal["address", "total"]


@dataclass(frozen=True)
class Refusal:
    """A login start refused: by which bucket, and when to try again (whole seconds)."""

    scope: Scope
    retry_after: int


def client_bucket(address: str, ipv6_prefix_length: int) -> str:
    """The client an address counts as: an IPv4 address, an IPv6 network, or the text."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address  # not an address (a misconfigured proxy's header): count it as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix_length), strict=False))
    return str(ip)


@dataclass
class _Reported:
    """Refusals of one (scope, client) not yet in an audit event."""

    count: int
    request_id: str | None


class LoginStartLimiter:
    """The two buckets, the local refusal memory and the audit summaries (one per process)."""

    def __init__(
        self,
        store: Store,
        limits: LoginLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        audit_interval: float = 10.0,
    ) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock
        self._audit_interval = audit_interval
        # (scope, client) -> monotonic time until which the store said no. Entries end
        # with their window (swept on use), so this holds only clients refused within
        # the last refill interval.
        self._refused_until: dict[tuple[Scope, str], float] = {}
        self._reported: dict[tuple[Scope, str], _Reported] = {}
        self._timers: dict[tuple[Scope, str], asyncio.TimerHandle] = {}
        self._next_sweep = 0.0

    async def check(self, address: str, *, request_id: str | None = None) -> Refusal | None:
        """``None`` if this client may start a login now (a token was taken), else why not."""
        limits = self._limits
        client = client_bucket(address, limits.ipv6_prefix_length)
        now = self._clock()
        self._sweep(now)
        checks: tuple[tuple[Scope, str], ...] = (("address", client), ("total", "*"))
        for scope, who in checks:
            until = self._refused_until.get((scope, who))
            if until is not None and now < until:
                return self._refuse(scope, who, until - now, request_id)
        wait = await self._store.take_token(
            login_rate_key(client),
            rate=limits.per_address_per_minute / 60.0,
            burst=limits.per_address_burst,
        )
        if wait > 0:
            self._refused_until[("address", client)] = self._clock() + wait
            return self._refuse("address", client, wait, request_id)
        wait = await self._store.take_token(
            login_rate_total_key(), rate=limits.total_per_second, burst=limits.total_burst
        )
        if wait > 0:
            self._refused_until[("total", "*")] = self._clock() + wait
            return self._refuse("total", "*", wait, request_id)
        return None

    def close(self) -> None:
        """Write the audit summaries still pending (on shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for key in list(self._reported):
            self._report(key, rearm=False)

    # -- internals -------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for key in [k for k, until in self._refused_until.items() if until <= now]:
            del self._refused_until[key]

    def _refuse(self, scope: Scope, client: str, wait: float, request_id: str | None) -> Refusal:
        key = (scope, client)
        pending = self._reported.get(key)
        if pending is None:
            # The first refusal is written at once; later ones are summed up.
            self._reported[key] = _Reported(1, request_id)
            self._report(key, rearm=True)
        else:
            pending.count += 1
            pending.request_id = pending.request_id or request_id
        return Refusal(scope, max(1, math.ceil(wait)))

    def _report(self, key: tuple[Scope, str], *, rearm: bool) -> None:
        self._timers.pop(key, None)
        pending = self._reported.get(key)
        if pending is None:
            return
        if pending.count == 0:
            del self._reported[key]  # quiet for a whole interval: forget the client
            return
        scope, client = key
        audit(
            "login_rate_limited",
            scope=scope,
            client_address=client,
            refused=pending.count,
            request_id=pending.request_id,
        )
        if not rearm:
            del self._reported[key]
            return
        pending.count, pending.request_id = 0, None
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(
            self._audit_interval, functools.partial(self._report, key, rearm=True)
        )
