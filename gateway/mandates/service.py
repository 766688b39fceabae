"""Mandate lookups for logins and sessions: store cache, single flight, revocation push.

``MandateService.lookup`` answers "which mandates does the registry hold for
this administrator?" from one store entry per administrator, asking the
registry only when the entry is no longer fresh. How old an answer may be is
not decided here: ``gateway.mandates.freshness`` owns that rule (an answer is
dated when the registry was asked, and used only while younger than the
re-check interval R). Concurrent lookups for one administrator cause one
registry call: within a process they share one task; across replicas the
first takes a short store lock (``store.add``) and the others poll the cache
until the new entry appears, the holder reports a failure, or ``lock_wait``
runs out (then they fail closed with ``RegistryUnavailable``).

Registry unreachable: a direct login or a session re-check fails with
``RegistryUnavailable`` unless a fresh answer is cached (a running session then
keeps its own last answer within the staleness limit; see the gate). A chain
login asks the registry even when a fresh answer is cached, and uses that answer
only when the registry cannot be reached.

Revocation push: ``invalidate`` drops the entry, leaves a marker that makes
an in-flight lookup fetch again, and publishes the administrator's KvK on
``mandates:invalidate`` so every replica re-checks its sessions at once
(``invalidations()`` yields them).

Keys (hash-tagged on the KvK, so they share a Redis Cluster slot; all with TTLs)::

    mandates:{<kvk>}:set     the cached answer         R (never used when older)
    mandates:{<kvk>}:lock    single-flight lock        lock_ttl
    mandates:{<kvk>}:failed  last lookup failed        failure_hold
    mandates:{<kvk>}:inv     invalidation marker       max(R, lock_ttl) * 2
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
from gateway.mandates.freshness import Freshness
from gateway.mandates.model import KVK_PATTERN, Mandate, is_kvk
from gateway.mandates.rules import Decision, allowed_employers, fund_today
from gateway.mandates.settings import MandateSettings
from gateway.mandates.source import MandateSource, build_source
from gateway.store.base import GAP, Store

log = structlog.get_logger("gateway.mandates")

INVALIDATION_CHANNEL = "mandates:invalidate"
Origin = Literal["registry", "cache"]
Purpose = Literal["login", "recheck"]

# Shown when a chain login cannot be checked at the fund (the generic registry page
# speaks of "your mandates"; this one says what is missing and what still works).
_CHAIN_UNCHECKED_NL = (
    "Met een ketenmachtiging kunt u alleen inloggen als wij bij het pensioenfonds kunnen "
    "nagaan of deze klant u daar ook heeft gemachtigd. Dat lukt op dit moment niet. Probeer "
    "het over enkele minuten opnieuw."
)
_CHAIN_UNCHECKED_EN = (
    "You can only log in with a chain authorisation when we can check at the pension fund "
    "that this client has also authorised you there. That is not possible right now. "
    "Please try again in a few minutes."
)


@dataclass(frozen=True)
class MandateSet:
    """The registry's mandates for one administrator, and when the registry said so."""

    administrator_kvk: str
    mandates: tuple[Mandate, ...]
    fetched_at: dt.datetime
    """When the registry was asked for this answer (UTC): a session using it keeps this
    date, so its freshness is counted from the registry, not from the moment of use."""
    origin: Origin
    """``registry``: fetched for this call; ``cache``: a fresh cached entry."""

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
        freshness: Freshness,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.source = source
        self.settings = settings
        self.freshness = freshness
        self._clock = freshness.clock
        self._sleep = sleep
        self._flights: dict[str, asyncio.Task[MandateSet]] = {}
        self._flight_started: dict[str, dt.datetime] = {}
        # Decoding 10,000 mandates costs tens of milliseconds; a replica that reads
        # the same entry again (every re-check of every session of a big office)
        # reuses the decoded tuple when the stored bytes are unchanged.
        self._decoded: OrderedDict[str, tuple[bytes, tuple[Mandate, ...], dt.datetime]] = (
            OrderedDict()
        )
        self._decoded_budget = 200_000

    @classmethod
    def from_settings(
        cls, store: Store, settings: MandateSettings, freshness: Freshness
    ) -> MandateService:
        """A service with the source the settings name (call ``close()`` on shutdown)."""
        return cls(store, build_source(settings.source), settings, freshness=freshness)

    async def close(self) -> None:
        """Cancel lookups in flight and close the source."""
        for task in list(self._flights.values()):
            task.cancel()
        self._flights.clear()
        self._flight_started.clear()
        await self.source.close()

    # -- lookups -------------------------------------------------------------------

    async def lookup(
        self,
        administrator_kvk: str,
        *,
        not_before: dt.datetime | None = None,
        ask_registry: bool = False,
        audit_context: Mapping[str, Any] | None = None,
    ) -> MandateSet:
        """The administrator's mandates in an answer that ``freshness`` calls fresh.

        ``not_before``: the answer must have been asked for at or after this moment
        (the latest revocation push). ``ask_registry``: ask even when a fresh answer
        is cached, and use that answer only if the registry cannot be reached (a
        chain login). Nothing fresh and the registry unreachable: ``RegistryUnavailable``.
        ``StoreUnavailable`` propagates.
        """
        if not is_kvk(administrator_kvk):
            raise ValueError("administrator_kvk must be 8 digits")
        context = dict(audit_context or {})
        entry = await self._read(administrator_kvk, "cache")
        now = self._clock()
        fresh = entry is not None and self.freshness.is_fresh(
            entry.fetched_at, now, not_before=not_before
        )
        if fresh and not ask_registry:
            assert entry is not None
            self._audit_ok(entry, now, context)
            return entry
        try:
            result = await self._shared_fetch(administrator_kvk, entry, not_before=not_before)
        except RegistryUnavailable as exc:
            # A chain login asked although a fresh answer was cached: that answer may
            # stand in, unless a push dropped it meanwhile (read it again).
            entry = await self._read(administrator_kvk, "cache") if fresh else None
            now = self._clock()
            if entry is not None and self.freshness.is_fresh(
                entry.fetched_at, now, not_before=not_before
            ):
                log.warning(
                    "mandate_registry_unreachable_fresh_answer_used",
                    administrator_kvk=administrator_kvk,
                    age_seconds=round(entry.age(now), 1),
                )
                self._audit_ok(entry, now, context)
                return entry
            audit(
                "mandate_lookup_failed",
                administrator_kvk=administrator_kvk,
                reason=exc.detail,
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
        purpose: Purpose = "login",
        not_before: dt.datetime | None = None,
        audit_context: Mapping[str, Any] | None = None,
    ) -> tuple[Decision, MandateSet | None]:
        """Look up and apply the rules; the set is ``None`` when the identity has no usable KvK.

        ``purpose="login"`` follows the login rule of ``freshness`` (a chain login
        asks the registry); ``"recheck"`` is a running session's re-check.
        """
        now = now or self._clock()
        kvk = identity.administrator_kvk
        if not is_kvk(kvk):
            return allowed_employers(identity, (), fund_today(now)), None
        assert kvk is not None
        chain_login = purpose == "login" and self.freshness.login_asks_registry(identity.mode)
        try:
            mset = await self.lookup(
                kvk,
                not_before=not_before,
                ask_registry=chain_login,
                audit_context=audit_context,
            )
        except RegistryUnavailable as exc:
            if not chain_login:
                raise
            raise RegistryUnavailable(
                exc.detail, text_nl=_CHAIN_UNCHECKED_NL, text_en=_CHAIN_UNCHECKED_EN
            ) from exc
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

    async def _shared_fetch(
        self, kvk: str, seen: MandateSet | None, *, not_before: dt.datetime | None = None
    ) -> MandateSet:
        # One task per administrator per process; callers are shielded from each
        # other's cancellation (a closed browser must not abort everyone's lookup).
        # A caller that needs an answer asked for after a push does not join a
        # flight that asked before the push.
        task = self._flights.get(kvk)
        if (
            task is not None
            and not_before is not None
            and self._flight_started.get(kvk, not_before) < not_before
        ):
            task = None
        if task is None:
            started = self._clock()
            task = asyncio.create_task(self._fetch_across_replicas(kvk, seen, not_before))
            self._flights[kvk] = task
            self._flight_started[kvk] = started

            def _done(t: asyncio.Task[MandateSet]) -> None:
                if self._flights.get(kvk) is t:
                    del self._flights[kvk]
                    self._flight_started.pop(kvk, None)
                if not t.cancelled():
                    t.exception()  # retrieved, so an unobserved failure is not logged as lost

            task.add_done_callback(_done)
        return await asyncio.shield(task)

    async def _fetch_across_replicas(
        self, kvk: str, seen: MandateSet | None, not_before: dt.datetime | None
    ) -> MandateSet:
        s = self.settings
        token = secrets.token_hex(8).encode()
        lock_key, failed_key = _key(kvk, "lock"), _key(kvk, "failed")
        deadline = time.monotonic() + s.lock_wait

        def newer(entry: MandateSet | None) -> bool:
            # Another caller's answer, asked for after the one we found (and after the push).
            if entry is None or (seen is not None and entry.fetched_at <= seen.fetched_at):
                return False
            return not_before is None or entry.fetched_at >= not_before

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
                    if newer(entry):
                        assert entry is not None
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
            if newer(entry):
                assert entry is not None
                return entry
            failure = await self.store.get(failed_key)
            if failure is not None and failure != failure_seen:
                raise RegistryUnavailable("another replica's registry lookup just failed")
            if time.monotonic() >= deadline:
                raise RegistryUnavailable("timed out waiting for another replica's lookup")
            await self._sleep(s.lock_poll_interval)

    async def _fetch_and_store(self, kvk: str) -> MandateSet:
        inv_key = _key(kvk, "inv")
        for _ in range(3):
            marker = await self.store.get(inv_key)
            # The answer is dated when we ask: the registry's state in it is no older.
            fetched_at = self._clock()
            try:
                mandates = tuple(await self.source.mandates_for(kvk))
            except RegistryUnavailable:
                raise
            except Exception as exc:
                # A source bug must still fail closed as "registry unavailable"
                # (a 503 page and an audit event), not as an unexplained 500.
                log.exception("mandate_source_crashed", administrator_kvk=kvk)
                raise RegistryUnavailable(f"source error: {type(exc).__name__}") from exc
            data = encode_set(kvk, mandates, fetched_at)
            await self.store.set(_key(kvk, "set"), data, self.freshness.keep_seconds)
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
            max(self.freshness.keep_seconds, s.lock_ttl) * 2,
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
        re-check when their answer stops being fresh, so a lost message only delays.
        """
        async for raw in self.store.subscribe(INVALIDATION_CHANNEL):
            if raw == GAP:
                # Pushes may have been lost: sessions still re-check within R
                # (gateway.mandates.freshness), which is the bound a push shortens.
                continue
            try:
                kvk = json.loads(raw)["administrator_kvk"]
            except (ValueError, TypeError, KeyError):
                kvk = None
            if not is_kvk(kvk):
                log.warning("mandate_invalidation_malformed")
                continue
            self._source_changed()
            yield kvk
