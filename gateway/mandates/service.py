"""Mandate lookups for logins and sessions: store cache, single flight, staleness, revocation.

``MandateService.lookup`` answers "which mandates does the registry hold for
this administrator?" from one store entry per administrator, asking the
registry only when the entry is older than ``cache_ttl`` (or the caller's
``max_age``). Concurrent lookups for one administrator cause one registry
call: within a process they share one task; across replicas the first takes a
short store lock (``store.add``) and the others poll the cache until the new
entry appears, the holder reports a failure, or ``lock_wait`` runs out (then
they fail closed with ``RegistryUnavailable``).

Staleness: the entry outlives its freshness (it is kept for ``max_staleness``)
so that a *session* re-check (``allow_stale=True``) can keep using the last
known good set while the registry is down, until that set is ``max_staleness``
old. A *login* (``allow_stale=False``) never gets a stale set: registry down
means ``RegistryUnavailable`` (fail closed).

Revocation push: ``invalidate`` drops the entry, leaves a marker that makes
an in-flight lookup fetch again, and publishes the administrator's KvK on
``mandates:invalidate`` so every replica re-checks its sessions at once
(``invalidations()`` yields them).

Keys (hash-tagged on the KvK, so they share a Redis Cluster slot; all with TTLs)::

    mandates:{<kvk>}:set     the cached set            max(cache_ttl, max_staleness)
    mandates:{<kvk>}:lock    single-flight lock        lock_ttl
    mandates:{<kvk>}:failed  last lookup failed        failure_hold
    mandates:{<kvk>}:inv     invalidation marker       max(cache_ttl, lock_ttl) * 2
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway.audit import audit
from gateway.errors import RegistryUnavailable
from gateway.identity import Identity
from gateway.mandates.codec import decode_set, encode_set
from gateway.mandates.model import KVK_PATTERN, Mandate, is_kvk
from gateway.mandates.rules import Decision, allowed_employers, fund_today
from gateway.mandates.settings import MandateSettings
from gateway.mandates.source import MandateSource, build_source
from gateway.store.base import Store

log = structlog.get_logger("gateway.mandates")

INVALIDATION_CHANNEL = "mandates:invalidate"
Origin = Literal["registry", "cache", "stale"]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class MandateSet:
    """The registry's mandates for one administrator, and when the registry said so."""

    administrator_kvk: str
    mandates: tuple[Mandate, ...]
    fetched_at: dt.datetime
    """When the registry answered (UTC). Store it as the session's "last mandate check"."""
    origin: Origin
    """``registry``: fetched for this call; ``cache``: a fresh cached entry;
    ``stale``: the registry is down and this is the last known good set."""

    @property
    def stale(self) -> bool:
        return self.origin == "stale"

    def age(self, now: dt.datetime) -> float:
        return max(0.0, (now - self.fetched_at).total_seconds())


class InvalidateRequest(BaseModel):
    """Body of ``POST /_gateway/admin/mandates/invalidate`` (see ``docs/mandates.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    administrator_kvk: Annotated[str, Field(pattern=KVK_PATTERN)]
    employer_kvk: Annotated[str, Field(pattern=KVK_PATTERN)] | None = None
    """Optional, for the audit trail only: the cache is per administrator."""


def _key(kvk: str, part: str) -> str:
    return f"mandates:{{{kvk}}}:{part}"


class MandateService:
    """Cached, single-flight registry lookups; see the module docstring."""

    def __init__(
        self,
        store: Store,
        source: MandateSource,
        settings: MandateSettings,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.source = source
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._flights: dict[str, asyncio.Task[MandateSet]] = {}
        # Decoding 10,000 mandates costs tens of milliseconds; a replica that reads
        # the same entry again (every re-check of every session of a big office)
        # reuses the decoded tuple when the stored bytes are unchanged.
        self._decoded: OrderedDict[str, tuple[bytes, tuple[Mandate, ...], dt.datetime]] = (
            OrderedDict()
        )
        self._decoded_budget = 200_000

    @classmethod
    def from_settings(cls, store: Store, settings: MandateSettings) -> MandateService:
        """A service with the source the settings name (call ``close()`` on shutdown)."""
        return cls(store, build_source(settings.source), settings)

    async def close(self) -> None:
        """Cancel lookups in flight and close the source."""
        for task in list(self._flights.values()):
            task.cancel()
        self._flights.clear()
        await self.source.close()

    # -- lookups -------------------------------------------------------------------

    async def lookup(
        self,
        administrator_kvk: str,
        *,
        max_age: float | None = None,
        allow_stale: bool = False,
        audit_context: Mapping[str, Any] | None = None,
    ) -> MandateSet:
        """The administrator's mandates, at most ``min(cache_ttl, max_age)`` seconds old.

        ``allow_stale=False`` (login): registry down raises ``RegistryUnavailable``.
        ``allow_stale=True`` (session re-check): registry down returns the last
        known good set (``origin="stale"``) if it is at most ``max_staleness``
        old, else raises. ``StoreUnavailable`` propagates either way.
        """
        if not is_kvk(administrator_kvk):
            raise ValueError("administrator_kvk must be 8 digits")
        context = dict(audit_context or {})
        limit = (
            self.settings.cache_ttl if max_age is None else min(max_age, self.settings.cache_ttl)
        )
        entry = await self._read(administrator_kvk, "cache")
        now = self._clock()
        if entry is not None and entry.age(now) <= limit:
            self._audit_ok(entry, now, context)
            return entry
        try:
            result = await self._shared_fetch(administrator_kvk, entry)
        except RegistryUnavailable as exc:
            if allow_stale:
                last = await self._read(administrator_kvk, "stale")
                now = self._clock()
                if last is not None and last.age(now) <= self.settings.max_staleness:
                    log.warning(
                        "mandate_stale_set_used",
                        administrator_kvk=administrator_kvk,
                        age_seconds=round(last.age(now)),
                    )
                    self._audit_ok(last, now, context)
                    return last
            audit(
                "mandate_lookup_failed",
                administrator_kvk=administrator_kvk,
                reason=exc.detail,
                allow_stale=allow_stale,
                **context,
            )
            raise
        self._audit_ok(result, self._clock(), context)
        return result

    async def decide(
        self,
        identity: Identity,
        *,
        now: dt.datetime | None = None,
        max_age: float | None = None,
        allow_stale: bool = False,
        audit_context: Mapping[str, Any] | None = None,
    ) -> tuple[Decision, MandateSet | None]:
        """Look up and apply the rules; the set is ``None`` when the identity has no usable KvK."""
        now = now or self._clock()
        kvk = identity.administrator_kvk
        if not is_kvk(kvk):
            return allowed_employers(identity, (), fund_today(now)), None
        assert kvk is not None
        mset = await self.lookup(
            kvk, max_age=max_age, allow_stale=allow_stale, audit_context=audit_context
        )
        return allowed_employers(identity, mset.mandates, fund_today(now)), mset

    def _audit_ok(self, mset: MandateSet, now: dt.datetime, context: dict[str, Any]) -> None:
        audit(
            "mandate_lookup_succeeded",
            administrator_kvk=mset.administrator_kvk,
            mandates=len(mset.mandates),
            origin=mset.origin,
            age_seconds=round(mset.age(now), 1),
            **context,
        )

    async def _read(self, kvk: str, origin: Origin) -> MandateSet | None:
        data = await self.store.get(_key(kvk, "set"))
        if data is None:
            return None
        memo = self._decoded.get(kvk)
        if memo is not None and memo[0] == data:
            self._decoded.move_to_end(kvk)
            return MandateSet(kvk, memo[1], memo[2], origin)
        decoded = decode_set(data)
        if decoded is None or decoded[0] != kvk:
            log.warning("mandate_cache_entry_unreadable", administrator_kvk=kvk)
            return None
        self._remember(kvk, data, decoded[1], decoded[2])
        return MandateSet(kvk, decoded[1], decoded[2], origin)

    def _remember(
        self, kvk: str, data: bytes, mandates: tuple[Mandate, ...], fetched_at: dt.datetime
    ) -> None:
        self._decoded[kvk] = (data, mandates, fetched_at)
        self._decoded.move_to_end(kvk)
        total = sum(len(m) + 1 for _, m, _ in self._decoded.values())
        while total > self._decoded_budget and len(self._decoded) > 1:
            _, (_, dropped, _) = self._decoded.popitem(last=False)
            total -= len(dropped) + 1

    async def _shared_fetch(self, kvk: str, seen: MandateSet | None) -> MandateSet:
        # One task per administrator per process; callers are shielded from each
        # other's cancellation (a closed browser must not abort everyone's lookup).
        task = self._flights.get(kvk)
        if task is None:
            task = asyncio.create_task(self._fetch_across_replicas(kvk, seen))
            self._flights[kvk] = task

            def _done(t: asyncio.Task[MandateSet]) -> None:
                if self._flights.get(kvk) is t:
                    del self._flights[kvk]
                if not t.cancelled():
                    t.exception()  # retrieved, so an unobserved failure is not logged as lost

            task.add_done_callback(_done)
        return await asyncio.shield(task)

    async def _fetch_across_replicas(self, kvk: str, seen: MandateSet | None) -> MandateSet:
        s = self.settings
        token = secrets.token_hex(8).encode()
        lock_key, failed_key = _key(kvk, "lock"), _key(kvk, "failed")
        deadline = time.monotonic() + s.lock_wait
        # A failure marker that changes while we wait means the lock holder's
        # lookup failed: we fail with it instead of queueing for the registry.
        failure_seen = await self.store.get(failed_key)
        while True:
            if await self.store.add(lock_key, token, s.lock_ttl):
                try:
                    # A holder writes the cache (success) or its failure marker
                    # before releasing the lock, so checking both right after
                    # acquiring it cannot miss the outcome we were waiting for.
                    failure = await self.store.get(failed_key)
                    if failure is not None and failure != failure_seen:
                        raise RegistryUnavailable("another replica's registry lookup just failed")
                    entry = await self._read(kvk, "cache")
                    if entry is not None and (seen is None or entry.fetched_at != seen.fetched_at):
                        return entry
                    try:
                        return await self._fetch_and_store(kvk)
                    except RegistryUnavailable:
                        if s.failure_hold > 0:
                            await self.store.set(failed_key, token, s.failure_hold)
                        raise
                finally:
                    # No compare-and-delete in the store protocol: check, then delete.
                    # If our lock expired and another replica took it in between, the
                    # cost is one extra registry call, never a wrong answer.
                    if await self.store.get(lock_key) == token:
                        await self.store.delete(lock_key)
            entry = await self._read(kvk, "cache")
            if entry is not None and (seen is None or entry.fetched_at != seen.fetched_at):
                return entry
            failure = await self.store.get(failed_key)
            if failure is not None and failure != failure_seen:
                raise RegistryUnavailable("another replica's registry lookup just failed")
            if time.monotonic() >= deadline:
                raise RegistryUnavailable("timed out waiting for another replica's lookup")
            await self._sleep(s.lock_poll_interval)

    async def _fetch_and_store(self, kvk: str) -> MandateSet:
        s = self.settings
        inv_key = _key(kvk, "inv")
        for _ in range(3):
            marker = await self.store.get(inv_key)
            try:
                mandates = tuple(await self.source.mandates_for(kvk))
            except RegistryUnavailable:
                raise
            except Exception as exc:
                # A source bug must still fail closed as "registry unavailable"
                # (a 503 page and an audit event), not as an unexplained 500.
                log.exception("mandate_source_crashed", administrator_kvk=kvk)
                raise RegistryUnavailable(f"source error: {type(exc).__name__}") from exc
            fetched_at = self._clock()
            data = encode_set(kvk, mandates, fetched_at)
            await self.store.set(_key(kvk, "set"), data, max(s.cache_ttl, s.max_staleness))
            self._remember(kvk, data, mandates, fetched_at)
            # Written first, checked second: an invalidation that lands after this
            # check deletes what we wrote; one that landed before it makes us fetch
            # again, because the registry may have answered before the revocation.
            if await self.store.get(inv_key) == marker:
                return MandateSet(kvk, mandates, fetched_at, "registry")
            log.info("mandate_lookup_repeated_after_invalidation", administrator_kvk=kvk)
        await self.store.delete(_key(kvk, "set"))
        raise RegistryUnavailable("mandates kept changing during the lookup")

    # -- revocation push -------------------------------------------------------------

    async def invalidate(
        self,
        administrator_kvk: str,
        *,
        employer_kvk: str | None = None,
        audit_context: Mapping[str, Any] | None = None,
    ) -> None:
        """Forget the cached set and tell every replica to re-check this administrator."""
        if not is_kvk(administrator_kvk):
            raise ValueError("administrator_kvk must be 8 digits")
        s = self.settings
        self._source_changed()
        await self.store.set(
            _key(administrator_kvk, "inv"),
            secrets.token_hex(8).encode(),
            max(s.cache_ttl, s.lock_ttl) * 2,
        )
        await self.store.delete(_key(administrator_kvk, "set"))
        message = {"administrator_kvk": administrator_kvk}
        await self.store.publish(INVALIDATION_CHANNEL, json.dumps(message).encode())
        fields: dict[str, Any] = {"administrator_kvk": administrator_kvk}
        if employer_kvk is not None:
            fields["employer_kvk"] = employer_kvk
        audit("mandates_invalidated", **fields, **dict(audit_context or {}))

    def _source_changed(self) -> None:
        # A push means the registry changed: a file source must not answer from
        # the version it read moments ago (its check_interval), or the revocation
        # would wait a whole re-check interval.
        mark = getattr(self.source, "mark_stale", None)
        if callable(mark):
            mark()

    async def invalidations(self) -> AsyncIterator[str]:
        """Administrator KvKs whose mandates changed, from any replica, until cancelled.

        Messages can be lost while the store is unreachable; sessions still
        re-check every ``recheck_interval``, so a lost message only delays.
        """
        async for raw in self.store.subscribe(INVALIDATION_CHANNEL):
            try:
                kvk = json.loads(raw)["administrator_kvk"]
            except (ValueError, TypeError, KeyError):
                kvk = None
            if not is_kvk(kvk):
                log.warning("mandate_invalidation_malformed")
                continue
            self._source_changed()
            yield kvk
