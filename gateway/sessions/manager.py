"""``SessionManager``: create, load, touch, update, rotate and destroy sessions.

Storage: one store value per session under ``sess:{h}`` (``h`` = SHA-256 of the
session ID, see ``gateway.sessions.keys``), with TTL = the smaller of the idle
timeout and the time left in the absolute lifetime, so Redis drops abandoned
sessions by itself. The manager also checks both limits on every load with its
injectable clock, so expiry does not depend on store timing.

Touching: ``last_seen`` is written at most every ``touch_interval``; a touch
re-reads the record from the store (not the cache) and writes it back with a
fresh TTL, so a touch never writes an older cached copy over a newer change
made by another replica. Content changes themselves are last-writer-wins (the
store protocol has no compare-and-set); mandate changes are serialised per
session by the refresh lock, so the only writers that can race are rare user
actions (selecting an employer) against a re-check, and the next re-check
repairs either outcome.

Mandate freshness: a session carries the date of the registry answer its
allowed set comes from (``mandate_check_ok_at``: when the registry was asked)
and of its last re-check attempt (``last_mandate_check``). Whether a re-check is
due, and whether the answer is too stale to use, is decided by
``gateway.mandates.freshness`` (``self.freshness``), nothing here.

Cache: a replica keeps decoded sessions for ``cache_seconds`` (LRU-bounded),
because one Redis GET costs 150-180 µs of proxy CPU. Every save, rotation and
destroy publishes the session hash on ``sess:invalidate``; other replicas drop
their copy at once (``start()`` runs the listener). If a message is lost (a
Redis outage), the copy still ages out after ``cache_seconds``. After that the
record is read again, but only decoded again if its bytes changed (decoding a
10,000-employer record takes tens of milliseconds; comparing bytes, microseconds).

Session references (``session_ref``): HMAC-SHA256 of the ID under a configured
secret, base64url, 128 bits. They identify a session in logs, audit events and
the token ``sid`` claim without revealing the cookie; without the secret they
cannot be linked back to a session ID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import NamedTuple

import structlog

from gateway.audit import audit
from gateway.errors import StoreUnavailable
from gateway.identity import Employer, Identity
from gateway.mandates.freshness import Freshness, MandateCheck
from gateway.sessions.keys import (
    INVALIDATE_CHANNEL,
    digest,
    ref_key,
    refresh_lock_key,
    session_key,
)
from gateway.sessions.record import Session, decode_session, encode_session
from gateway.sessions.settings import SessionSettings
from gateway.store.base import GAP, Store

_log = structlog.get_logger("gateway.sessions")

# secrets.token_urlsafe(32): 32 random bytes (256 bits) as 43 base64url characters.
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_REF_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")


class _CacheEntry(NamedTuple):
    """One session in a replica's in-process cache."""

    session: Session
    expires: float
    """Monotonic time after which the entry must be checked against the store."""
    blob: bytes
    """The stored bytes ``session`` was decoded from (or encoded to)."""
    quiet_until: dt.datetime
    """Until then (by the manager's clock) nothing about the session is due: no expiry,
    no touch, no mandate re-check, no staleness (see ``SessionManager.load_quiet``)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_session_id() -> str:
    """A fresh opaque session ID (256 random bits)."""
    return secrets.token_urlsafe(32)


class SessionManager:
    """Sessions on top of any ``Store``; one instance per process."""

    def __init__(
        self,
        store: Store,
        settings: SessionSettings,
        *,
        ref_secret: bytes,
        clock: Callable[[], dt.datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._ref_secret = ref_secret
        self._clock = clock
        self._monotonic = monotonic
        self._freshness = Freshness(
            settings.mandate_recheck_interval, settings.mandate_max_staleness, clock=clock
        )
        self._cache: OrderedDict[str, _CacheEntry] = OrderedDict()
        # Session ID -> its hash, for the well-formed IDs of the sessions in ``_cache``
        # (kept in step by ``_cache_put`` and ``_cache_drop``): a cache hit then costs a
        # dict lookup instead of the ID check and a SHA-256. The IDs are those of the
        # cached sessions, which hold them anyway, and leave with them (logout,
        # invalidation, eviction).
        self._hashes: dict[str, str] = {}
        self._instance = secrets.token_hex(8)
        self._listener: asyncio.Task[None] | None = None

    @property
    def settings(self) -> SessionSettings:
        return self._settings

    @property
    def freshness(self) -> Freshness:
        """The mandate freshness rule (the sessions' interval and staleness, this clock)."""
        return self._freshness

    # -- references and keys -----------------------------------------------------

    def session_ref(self, session_id: str) -> str:
        """Keyed hash of a session ID for logs, audit and the token ``sid`` (never the ID)."""
        mac = hmac.new(self._ref_secret, session_id.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode("ascii")

    def _hash(self, session_id: str) -> str:
        """``digest(session_id)``, from ``_hashes`` when the session is cached."""
        return self._hashes.get(session_id) or digest(session_id)

    # -- lifecycle of the invalidation listener --------------------------------

    async def start(self) -> None:
        """Start listening for other replicas' invalidations (call once, in ``cleanup_ctx``)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="session-invalidation")

    async def aclose(self) -> None:
        """Stop the listener and drop the cache (the store is closed by its owner)."""
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._cache.clear()
        self._hashes.clear()

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._store.subscribe(INVALIDATE_CHANNEL):
                    if message == GAP:
                        # Invalidations may have been lost: no cached copy can be
                        # trusted any more, so every session is read again.
                        self._cache.clear()
                        self._hashes.clear()
                        continue
                    origin, _, session_hash = message.decode("ascii", "replace").partition(":")
                    if origin != self._instance:
                        self._cache_drop(session_hash)
            except StoreUnavailable:
                # The store's own subscription reconnects; this only covers a store
                # whose subscribe fails outright. The cache TTL bounds staleness meanwhile.
                await asyncio.sleep(1.0)

    async def _invalidate(self, session_hash: str) -> None:
        self._cache_drop(session_hash)
        await self._store.publish(INVALIDATE_CHANNEL, f"{self._instance}:{session_hash}".encode())

    # -- cache -------------------------------------------------------------------

    def _cache_get(self, session_hash: str) -> tuple[Session | None, _CacheEntry | None]:
        """(fresh cached session or None, the cache entry, even aged out, or None)."""
        item = self._cache.get(session_hash)
        if item is None:
            return None, None
        self._cache.move_to_end(session_hash)
        if item.expires <= self._monotonic():
            return None, item
        return item.session, item

    def _cache_put(self, session_hash: str, session: Session, blob: bytes) -> None:
        # With ``cache_seconds: 0`` the entry is born aged out: every load still
        # reads the store, and only the decoding is skipped while the stored bytes
        # stay the same (see ``_decode``).
        expires = self._monotonic() + self._settings.cache_seconds
        entry = _CacheEntry(session, expires, blob, self._quiet_until(session))
        self._cache[session_hash] = entry
        self._cache.move_to_end(session_hash)
        if _ID_RE.match(session.id):
            self._hashes[session.id] = session_hash
        while len(self._cache) > self._settings.cache_max_entries:
            _, evicted = self._cache.popitem(last=False)
            self._hashes.pop(evicted.session.id, None)

    def _cache_drop(self, session_hash: str) -> None:
        item = self._cache.pop(session_hash, None)
        if item is not None:
            self._hashes.pop(item.session.id, None)

    def _decode(self, session_id: str, session_hash: str, blob: bytes) -> Session:
        # An aged-out cache entry whose bytes equal what the store holds now is
        # still exact: reuse it instead of decoding again (a 10,000-employer
        # record costs tens of milliseconds to decode, a bytes comparison microseconds).
        item = self._cache.get(session_hash)
        if item is not None and item.blob == blob:
            return item.session
        return decode_session(session_id, self.session_ref(session_id), blob)

    # -- expiry ------------------------------------------------------------------

    def _ttl(self, session: Session, now: dt.datetime) -> float:
        s = self._settings
        left = (session.created_at + s.absolute_lifetime - now).total_seconds()
        return min(s.idle_timeout.total_seconds(), left)

    def _quiet_until(self, session: Session) -> dt.datetime:
        """The first moment at which ``load`` or the mandate checks would do more than
        return the session: the earliest of the expiry (``_expired_reason``), touch
        (``load``) and mandate (``Freshness.quiet_until``) conditions, each written
        as ``now >= start + limit`` instead of ``now - start >= limit`` (the same for
        the fixed-offset, UTC, datetimes sessions hold). A push is checked apart."""
        s = self._settings
        return min(
            session.created_at + s.absolute_lifetime,
            session.last_seen + s.idle_timeout,
            session.last_seen + s.touch_interval,
            self._freshness.quiet_until(
                fetched_at=session.mandate_check_ok_at, last_attempt=session.last_mandate_check
            ),
        )

    def _expired_reason(self, session: Session, now: dt.datetime) -> str | None:
        if now >= session.created_at + self._settings.absolute_lifetime:
            return "absolute"
        if now >= session.last_seen + self._settings.idle_timeout:
            return "idle"
        return None

    async def _write(self, session: Session, now: dt.datetime, *, index: bool = False) -> bytes:
        """Store the record (its TTL: the idle timeout, capped by the absolute lifetime).

        ``index``: also write the ``ref`` index, for a new session ID (login, rotation).
        The token's ``sid`` (the ref) leads back to the record for the employers
        endpoint; the index holds a hash, never the session ID. It lives for the
        session's absolute lifetime, so a touch (once per ``touch_interval`` per
        session) writes the record alone; after the record expired or ended, the
        index leads nowhere (``view_by_ref`` finds no record).
        """
        blob = encode_session(session)
        ttl = self._ttl(session, now)
        if ttl > 0:
            session_hash = self._hash(session.id)
            await self._store.set(session_key(session_hash), blob, ttl)
            if index:
                left = (session.created_at + self._settings.absolute_lifetime - now).total_seconds()
                await self._store.set(ref_key(session.ref), session_hash.encode(), left)
        return blob

    # -- the API -----------------------------------------------------------------

    async def create(
        self,
        identity: Identity,
        allowed: Iterable[Employer] = (),
        *,
        active_employer: str | None = None,
        mandates_fetched_at: dt.datetime | None = None,
    ) -> Session:
        """A new session with a fresh ID; never takes an ID from the caller (no fixation).

        ``mandates_fetched_at``: when the registry was asked for the answer ``allowed``
        comes from (``MandateSet.fetched_at``); the session re-checks when that answer
        stops being fresh, not a whole interval after the login. ``None``: now.
        """
        now = self._clock()
        fetched_at = now if mandates_fetched_at is None else min(now, mandates_fetched_at)
        session_id = new_session_id()
        session = Session(
            id=session_id,
            identity=identity,
            allowed=tuple(allowed),
            active_employer=active_employer,
            created_at=now,
            last_seen=now,
            last_mandate_check=fetched_at,
            mandate_check_ok_at=fetched_at,
            csrf_secret=secrets.token_urlsafe(32),
            version=1,
            ref=self.session_ref(session_id),
        )
        blob = await self._write(session, now, index=True)
        self._cache_put(self._hash(session_id), session, blob)
        return session

    def now(self) -> dt.datetime:
        """This manager's clock."""
        return self._clock()

    def mandates_due(self, session: Session) -> dt.datetime:
        """When ``session`` must next ask the registry (or end): until then, its answer holds.

        The earlier of its mandate re-check (``Freshness.quiet_until``) and its
        absolute lifetime; a revocation push can make the re-check come sooner.
        """
        return min(
            self._freshness.quiet_until(
                fetched_at=session.mandate_check_ok_at, last_attempt=session.last_mandate_check
            ),
            session.created_at + self._settings.absolute_lifetime,
        )

    def load_quiet(self, session_id: str | None) -> Session | None:
        """The session for a cookie value when this replica can answer it alone, else ``None``.

        Answers when the session is fresh in the in-process cache and nothing about
        it is due (see ``_CacheEntry.quiet_until``): then ``load`` would return this
        very object, and ``needs_mandate_check`` and ``mandates_stale`` would both say
        ``False``. ``None`` does *not* mean "no session": call ``load``, which handles
        every other case (store reads, expiry, touches). The authenticated path asks
        this first on every request: no coroutine, one clock reading, one comparison.
        """
        session_hash = self._hashes.get(session_id) if session_id else None
        if session_hash is None:
            return None
        item = self._cache.get(session_hash)
        if item is None or item.expires <= self._monotonic() or self._clock() >= item.quiet_until:
            return None
        self._cache.move_to_end(session_hash)
        return item.session

    async def load(self, session_id: str | None) -> Session | None:
        """The live session for a cookie value, or ``None`` (absent, expired, malformed).

        Raises ``StoreUnavailable`` when the store cannot answer: the caller fails closed.
        """
        if not session_id:
            return None
        # A known ID was checked when its session was cached; others are checked now.
        session_hash = self._hashes.get(session_id)
        if session_hash is None:
            if not _ID_RE.match(session_id):
                return None  # garbage never costs a store round trip
            session_hash = digest(session_id)
        session, entry = self._cache_get(session_hash)
        now = self._clock()
        if (
            session is None
            and entry is not None
            and now - entry.session.last_seen >= self._settings.touch_interval
        ):
            # Aged out and due for a touch: the compare-and-set of the touch also
            # tells whether the cached copy is still what the store holds.
            touched = await self._touch_cached(session_hash, entry, now)
            if touched is not None:
                return touched
        read_now = session is None
        if session is None:
            blob = await self._store.get(session_key(session_hash))
            if blob is None:
                self._cache_drop(session_hash)
                return None
            try:
                session = self._decode(session_id, session_hash, blob)
            except ValueError as exc:
                _log.warning("session_record_discarded", error=str(exc))
                await self._store.delete(session_key(session_hash))
                return None
            self._cache_put(session_hash, session, blob)
        reason = self._expired_reason(session, now)
        if reason is not None:
            await self._end(session_hash)
            audit(
                "session_expired",
                session_ref=session.ref,
                reason=reason,
                administrator_kvk=session.identity.administrator_kvk,
                acting_subject=session.identity.acting_subject,
            )
            return None
        if now - session.last_seen >= self._settings.touch_interval:
            return await self._touch(session_id, session_hash, now, session if read_now else None)
        return session

    async def _touch_cached(
        self, session_hash: str, entry: _CacheEntry, now: dt.datetime
    ) -> Session | None:
        """Write ``last_seen`` on the cached copy if the store still holds exactly it.

        One round trip (``Store.replace_if``) instead of a read and a write. The
        stored bytes equal the cached ones, so the cached copy is the session as
        stored, and nothing another replica wrote (a new employer, a logout) is
        overwritten. ``None``: not written (changed, gone, or expired): read it.
        """
        session = entry.session
        if self._expired_reason(session, now) is not None:
            return None  # the general path ends it, with its audit event
        touched = replace(session, last_seen=now)
        ttl = self._ttl(touched, now)
        if ttl <= 0:
            return None
        blob = encode_session(touched)
        if not await self._store.replace_if(session_key(session_hash), entry.blob, blob, ttl):
            return None
        self._cache_put(session_hash, touched, blob)
        return touched

    async def _touch(
        self, session_id: str, session_hash: str, now: dt.datetime, fresh: Session | None
    ) -> Session | None:
        """Write ``last_seen``, on the record as stored now (``fresh``: just read; else read)."""
        if fresh is None:
            entry = self._cache.get(session_hash)
            if entry is not None:
                touched = await self._touch_cached(session_hash, entry, now)
                if touched is not None:
                    return touched
            blob = await self._store.get(session_key(session_hash))
            if blob is None:
                self._cache_drop(session_hash)
                return None
            try:
                fresh = self._decode(session_id, session_hash, blob)
            except ValueError:
                return None
        touched = replace(fresh, last_seen=now)
        self._cache_put(session_hash, touched, await self._write(touched, now))
        return touched

    async def save(self, session: Session) -> Session:
        """Write ``session`` as is and tell other replicas to drop their copies."""
        now = self._clock()
        session_hash = self._hash(session.id)
        blob = await self._write(session, now)
        await self._invalidate(session_hash)
        self._cache_put(session_hash, session, blob)
        return session

    async def update(self, session: Session, **changes: object) -> Session:
        """Apply ``changes`` (e.g. ``active_employer=...``), bump the version and save."""
        return await self.save(session.with_changes(**changes))

    async def rotate(self, session: Session) -> Session:
        """The same session under a fresh ID; the old ID stops working everywhere."""
        now = self._clock()
        new_id = new_session_id()
        rotated = replace(session, id=new_id, ref=self.session_ref(new_id)).with_changes()
        blob = await self._write(rotated, now, index=True)
        await self._end(self._hash(session.id), session.ref)
        self._cache_put(self._hash(new_id), rotated, blob)
        return rotated

    async def view_by_ref(self, ref: str) -> Session | None:
        """A read-only view of the live session with this ``ref`` (the token's ``sid``).

        For backends that present a token, not a cookie: the view's ``id`` is
        empty, so it can never be saved, rotated or used as a cookie.
        """
        if not _REF_RE.match(ref):
            return None
        raw = await self._store.get(ref_key(ref))
        if raw is None:
            return None
        blob = await self._store.get(session_key(raw.decode("ascii", "replace")))
        if blob is None:
            return None
        try:
            session = decode_session("", ref, blob)
        except ValueError:
            return None
        if self._expired_reason(session, self._clock()) is not None:
            return None
        return session

    async def destroy(self, session: Session | str) -> None:
        """End a session (logout); other replicas drop their cached copy."""
        session_id = session if isinstance(session, str) else session.id
        await self._end(self._hash(session_id), self.session_ref(session_id))

    async def _end(self, session_hash: str, ref: str | None = None) -> None:
        if ref is not None:
            await self._store.delete(ref_key(ref))
        await self._store.delete(session_key(session_hash))
        await self._store.delete(refresh_lock_key(session_hash))
        await self._invalidate(session_hash)

    # -- mandate re-check support --------------------------------------------------

    def mandate_check(self, session: Session, pushed_at: dt.datetime | None = None) -> MandateCheck:
        """What this request must do about the session's mandates (one clock reading).

        ``pushed_at``: when the latest revocation push for the session's administrator
        reached this replica, if any.
        """
        return self._freshness.check(
            fetched_at=session.mandate_check_ok_at,
            last_attempt=session.last_mandate_check,
            pushed_at=pushed_at,
            now=self._clock(),
        )

    def needs_mandate_check(self, session: Session) -> bool:
        """True when the session's answer is no longer fresh (and no attempt is pending)."""
        return self.mandate_check(session).due

    def mandates_stale(self, session: Session) -> bool:
        """True when the session's answer is past ``mandate_max_staleness``: deny."""
        return self._freshness.is_stale(session.mandate_check_ok_at, self._clock())

    async def try_refresh_lock(self, session: Session) -> bool:
        """Take the per-session re-check lock (one holder across requests and replicas)."""
        return await self._store.add(
            refresh_lock_key(self._hash(session.id)),
            self._instance.encode(),
            self._settings.refresh_lock_seconds,
        )

    async def release_refresh_lock(self, session: Session) -> None:
        await self._store.delete(refresh_lock_key(self._hash(session.id)))

    async def record_mandate_check(
        self,
        session: Session,
        allowed: Iterable[Employer] | None,
        *,
        fetched_at: dt.datetime | None = None,
    ) -> Session:
        """Save the result of a re-check: the new allowed set, or ``None`` if the registry failed.

        On success the session takes the answer's date (``fetched_at``, when the
        registry was asked; ``None``: now) and an active employer that is no longer
        allowed is cleared (the caller sends the user to the overview). On failure
        only the attempt time moves, so staleness keeps growing from the last answer.
        """
        session = self.with_mandates(session, allowed, fetched_at=fetched_at)
        return await self.update(session)

    def with_mandates(
        self,
        session: Session,
        allowed: Iterable[Employer] | None,
        *,
        fetched_at: dt.datetime | None = None,
    ) -> Session:
        """``session`` after a re-check, as ``record_mandate_check`` would save it (not saved)."""
        now = self._clock()
        if allowed is None:
            return replace(session, last_mandate_check=now)
        answered = now if fetched_at is None else min(now, fetched_at)
        new_allowed = tuple(allowed)
        active = session.active_employer
        if active is not None and active not in {e.kvk for e in new_allowed}:
            active = None
        return replace(
            session,
            allowed=new_allowed,
            active_employer=active,
            last_mandate_check=answered,
            mandate_check_ok_at=answered,
        )
