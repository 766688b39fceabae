"""SessionManager on each store: lifetimes, touching, rotation, replicas, refresh lock."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio
import structlog

from gateway.sessions.keys import digest, session_key
from gateway.sessions.manager import SessionManager, new_session_id
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from tests.sessions.conftest import make_employers, make_identity
from tests.support.clock import FakeClock
from tests.support.redis import RedisServer, eventually

SECRET = b"0123456789abcdef0123456789abcdef"


def _manager(store: Store, clock: FakeClock, **settings: object) -> SessionManager:
    return SessionManager(
        store,
        SessionSettings(**settings),  # type: ignore[arg-type]
        ref_secret=SECRET,
        clock=clock.now,
    )


@pytest.fixture
async def manager(store: Store, clock: FakeClock) -> AsyncIterator[SessionManager]:
    m = _manager(store, clock)
    yield m
    await m.aclose()


async def test_create_then_load_returns_the_session(manager: SessionManager) -> None:
    """A created session loads back by its cookie value with identity and allowed set intact."""
    created = await manager.create(make_identity(), make_employers(3), active_employer="10000001")
    loaded = await manager.load(created.id)
    assert loaded == created
    assert loaded.active_employer == "10000001"


async def test_session_ids_are_fresh_and_long(manager: SessionManager) -> None:
    """Every session gets its own 256-bit URL-safe ID; the reference is not the ID."""
    ids = {(await manager.create(make_identity())).id for _ in range(20)}
    assert len(ids) == 20
    for session_id in ids:
        assert len(session_id) == 43
        assert manager.session_ref(session_id) != session_id
        assert session_id not in manager.session_ref(session_id)


@pytest.mark.parametrize("cookie", [None, "", "short", "x" * 43 + "y", "../" * 15, "a" * 43])
async def test_unknown_or_malformed_cookies_load_nothing(
    manager: SessionManager, cookie: str | None
) -> None:
    """Malformed, unknown or absent cookie values give no session."""
    assert await manager.load(cookie) is None


async def test_store_key_is_a_hash_not_the_id(store: Store, manager: SessionManager) -> None:
    """The session is stored under a hash of its ID with a TTL no longer than the idle timeout."""
    session = await manager.create(make_identity())
    key = session_key(digest(session.id))
    assert await store.get(key) is not None
    left = await store.ttl(key)
    assert left is not None
    assert 0 < left <= 15 * 60
    assert session.id not in key


async def test_idle_timeout_ends_the_session(
    store: Store, clock: FakeClock, manager: SessionManager
) -> None:
    """A session unused for the idle timeout is gone, audited, and removed from the store."""
    session = await manager.create(make_identity())
    clock.advance(minutes=15)
    with structlog.testing.capture_logs() as logs:
        assert await manager.load(session.id) is None
    expired = [e for e in logs if e["event"] == "session_expired"]
    assert expired[0]["reason"] == "idle"
    assert expired[0]["session_ref"] == session.ref
    assert session.id not in repr(logs)
    assert await store.get(session_key(digest(session.id))) is None


async def test_activity_keeps_the_session_alive(clock: FakeClock, manager: SessionManager) -> None:
    """Requests more often than the idle timeout keep a session alive past it."""
    session = await manager.create(make_identity())
    for _ in range(5):
        clock.advance(minutes=10)
        assert await manager.load(session.id) is not None


async def test_absolute_lifetime_ends_an_active_session(
    clock: FakeClock, manager: SessionManager
) -> None:
    """However active, a session ends at the absolute lifetime (8 hours by default)."""
    session = await manager.create(make_identity())
    for _ in range(47):
        clock.advance(minutes=10)
        assert await manager.load(session.id) is not None
    clock.advance(minutes=10)
    with structlog.testing.capture_logs() as logs:
        assert await manager.load(session.id) is None
    assert [e["reason"] for e in logs if e["event"] == "session_expired"] == ["absolute"]


async def test_store_ttl_never_outlives_the_absolute_lifetime(
    store: Store, clock: FakeClock, manager: SessionManager
) -> None:
    """Near the end of its life a session's store TTL is the time left, not the idle timeout."""
    session = await manager.create(make_identity())
    for _ in range(47):
        clock.advance(minutes=10)
        await manager.load(session.id)
    left = await store.ttl(session_key(digest(session.id)))
    assert left is not None
    assert left <= 10 * 60 + 1


async def test_touch_is_throttled(store: Store, clock: FakeClock, manager: SessionManager) -> None:
    """``last_seen`` is written at most every touch interval, not on every request."""
    interval = manager.settings.touch_interval.total_seconds()
    session = await manager.create(make_identity())
    clock.advance(seconds=interval - 5)
    assert (await manager.load(session.id)).last_seen == session.last_seen  # type: ignore[union-attr]
    clock.advance(seconds=5)
    touched = await manager.load(session.id)
    assert touched is not None
    assert touched.last_seen == clock.now()
    assert touched.version == session.version


async def test_touch_keeps_a_newer_change_from_another_replica(
    store: Store, clock: FakeClock
) -> None:
    """A touch re-reads the stored record, so it never writes a stale cached copy back."""
    touch = dt.timedelta(seconds=30)
    a = _manager(store, clock, cache_seconds=30, touch_interval=touch)
    b = _manager(store, clock, cache_seconds=30, touch_interval=touch)
    try:
        session = await a.create(make_identity(), make_employers(2))
        assert await a.load(session.id) is not None  # cached on A
        await b.update(session, active_employer="10000001")
        clock.advance(seconds=31)  # A's copy is due for a touch (its cache time is monotonic)
        touched = await a.load(session.id)
        assert touched is not None
        assert touched.active_employer == "10000001"
    finally:
        await a.aclose()
        await b.aclose()


async def test_update_bumps_the_version(manager: SessionManager) -> None:
    """Content changes are saved and bump the version counter."""
    session = await manager.create(make_identity(), make_employers(2))
    updated = await manager.update(session, active_employer="10000000")
    assert updated.version == session.version + 1
    assert (await manager.load(session.id)) == updated


async def test_rotate_moves_the_session_to_a_new_id(manager: SessionManager) -> None:
    """After rotation the old ID is dead and the new one carries the same content."""
    session = await manager.create(make_identity(), make_employers(2), active_employer="10000000")
    rotated = await manager.rotate(session)
    assert rotated.id != session.id
    assert rotated.ref != session.ref
    assert await manager.load(session.id) is None
    loaded = await manager.load(rotated.id)
    assert loaded == rotated
    assert (loaded.identity, loaded.allowed, loaded.active_employer) == (
        session.identity,
        session.allowed,
        session.active_employer,
    )
    assert loaded.csrf_secret == session.csrf_secret


async def test_destroy_ends_the_session(manager: SessionManager) -> None:
    """A destroyed session cannot be loaded any more (also by plain ID)."""
    first = await manager.create(make_identity())
    second = await manager.create(make_identity())
    await manager.destroy(first)
    await manager.destroy(second.id)
    assert await manager.load(first.id) is None
    assert await manager.load(second.id) is None


async def test_session_created_on_one_replica_loads_on_another(
    store: Store, clock: FakeClock
) -> None:
    """Two managers on one store (two replicas) see the same sessions."""
    a = _manager(store, clock)
    b = _manager(store, clock)
    try:
        session = await a.create(make_identity(), make_employers(5))
        assert await b.load(session.id) == session
    finally:
        await a.aclose()
        await b.aclose()


async def test_destroy_on_one_replica_drops_the_others_cache(
    store: Store, clock: FakeClock
) -> None:
    """A logout on replica A reaches replica B's in-process cache through pub/sub."""
    a = _manager(store, clock, cache_seconds=30)
    b = _manager(store, clock, cache_seconds=30)
    await b.start()
    try:
        # Make sure B's subscription is live before relying on it.
        probe = await a.create(make_identity())
        assert await b.load(probe.id) is not None
        for _ in range(200):
            await a.save(probe)
            await asyncio.sleep(0.02)
            if not b._cache:
                break
        session = await a.create(make_identity())
        assert await b.load(session.id) is not None  # now cached on B
        await a.destroy(session)
        await eventually(lambda: digest(session.id) not in b._cache)
        assert session.id not in b._hashes
        assert b.load_quiet(session.id) is None
        assert await b.load(session.id) is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_cache_is_bounded(store: Store, clock: FakeClock) -> None:
    """The in-process cache never holds more than its configured number of sessions."""
    m = _manager(store, clock, cache_max_entries=5)
    try:
        for _ in range(12):
            await m.create(make_identity())
        assert len(m._cache) == 5
    finally:
        await m.aclose()


async def test_refresh_lock_has_one_holder_across_replicas(store: Store, clock: FakeClock) -> None:
    """Of concurrent re-check attempts on two replicas exactly one gets the lock."""
    a = _manager(store, clock)
    b = _manager(store, clock)
    try:
        session = await a.create(make_identity())
        results = await asyncio.gather(
            *(m.try_refresh_lock(session) for m in (a, b) for _ in range(10))
        )
        assert results.count(True) == 1
        await a.release_refresh_lock(session)
        assert await b.try_refresh_lock(session) is True
    finally:
        await a.aclose()
        await b.aclose()


async def test_mandate_recheck_timing(clock: FakeClock, manager: SessionManager) -> None:
    """A re-check is due after the interval; staleness is measured from the last success."""
    session = await manager.create(make_identity(), make_employers(2))
    assert not manager.needs_mandate_check(session)
    clock.advance(seconds=60)
    assert manager.needs_mandate_check(session)
    failed = await manager.record_mandate_check(session, None)
    assert not manager.needs_mandate_check(failed)
    assert failed.allowed == session.allowed
    clock.advance(minutes=15)
    assert manager.mandates_stale(failed)
    ok = await manager.record_mandate_check(failed, make_employers(2))
    assert not manager.mandates_stale(ok)


async def test_a_session_is_dated_by_its_registry_answer(
    clock: FakeClock, manager: SessionManager
) -> None:
    """A session created (or re-checked) with an answer asked for earlier re-checks when that
    answer turns R old, not R after it started using it."""
    asked = clock.now()
    clock.advance(seconds=45)
    session = await manager.create(make_identity(), make_employers(2), mandates_fetched_at=asked)
    assert (session.mandate_check_ok_at, session.last_mandate_check) == (asked, asked)
    clock.advance(seconds=14)
    assert not manager.needs_mandate_check(session)
    clock.advance(seconds=1)  # the answer is 60 s old now
    assert manager.needs_mandate_check(session)
    other = clock.now() - dt.timedelta(seconds=50)  # another session's answer, 50 s old
    rechecked = await manager.record_mandate_check(session, make_employers(1), fetched_at=other)
    assert rechecked.mandate_check_ok_at == other
    clock.advance(seconds=9)
    assert not manager.needs_mandate_check(rechecked)
    clock.advance(seconds=1)
    assert manager.needs_mandate_check(rechecked)


async def test_a_push_makes_the_check_due_until_an_answer_after_it(
    clock: FakeClock, manager: SessionManager
) -> None:
    """A push newer than the session's answer makes a re-check due and asks for an answer
    from after the push; a failed attempt after the push is not forced again."""
    session = await manager.create(make_identity(), make_employers(2))
    clock.advance(seconds=5)
    pushed = clock.now()
    assert not manager.mandate_check(session, pushed_at=pushed - dt.timedelta(seconds=10)).due
    check = manager.mandate_check(session, pushed_at=pushed)
    assert (check.due, check.not_before, check.stale) == (True, pushed, False)
    clock.advance(seconds=1)
    failed = await manager.record_mandate_check(session, None)
    assert not manager.mandate_check(failed, pushed_at=pushed).due
    ok = await manager.record_mandate_check(failed, make_employers(1), fetched_at=clock.now())
    assert not manager.mandate_check(ok, pushed_at=pushed).due


async def test_revoked_active_employer_is_cleared(manager: SessionManager) -> None:
    """When the active employer disappears from the allowed set it is deselected."""
    employers = make_employers(3)
    session = await manager.create(make_identity(), employers, active_employer=employers[0].kvk)
    kept = await manager.record_mandate_check(session, employers[:1])
    assert kept.active_employer == employers[0].kvk
    revoked = await manager.record_mandate_check(kept, employers[1:])
    assert revoked.active_employer is None
    assert revoked.allowed_kvks == {employers[1].kvk, employers[2].kvk}
    assert (await manager.load(session.id)) == revoked


def test_session_ref_is_a_stable_keyed_hash(store: Store, clock: FakeClock) -> None:
    """The same ID gives the same 128-bit reference with one secret and another with another."""
    a = _manager(store, clock)
    other = SessionManager(
        store, SessionSettings(), ref_secret=b"another secret value!!", clock=clock.now
    )
    ref = a.session_ref("abc")
    assert ref == a.session_ref("abc")
    assert len(ref) == 22
    assert other.session_ref("abc") != ref


async def test_csrf_secret_checks(manager: SessionManager) -> None:
    """The session's CSRF secret matches itself and nothing else."""
    session = await manager.create(make_identity())
    assert session.csrf_matches(session.csrf_secret)
    assert not session.csrf_matches(None)
    assert not session.csrf_matches(session.csrf_secret + "x")


async def test_settings_validation() -> None:
    """Inconsistent lifetimes and non-__Host- cookie names are refused outside dev mode."""
    with pytest.raises(ValueError, match="idle_timeout"):
        SessionSettings(idle_timeout=dt.timedelta(hours=9))
    with pytest.raises(ValueError, match="__Host-"):
        SessionSettings(cookie_name="gw_session")
    dev = SessionSettings(cookie_name="gw_session", insecure_dev_cookies=True)
    assert dev.effective_cookie_name(dev.cookie_name) == "gw_session"


async def test_aged_out_cache_entry_is_reused_only_if_unchanged(
    store: Store, clock: FakeClock
) -> None:
    """After the cache time a session is re-read, and decoded again only if it changed."""
    ticks = FakeClock(0.0)  # the cache's monotonic clock
    a = SessionManager(
        store,
        SessionSettings(cache_seconds=2),
        ref_secret=SECRET,
        clock=clock.now,
        monotonic=ticks.time,
    )
    b = _manager(store, clock)
    try:
        session = await a.create(make_identity(), make_employers(50))
        ticks.advance(10)
        assert await a.load(session.id) is session  # same bytes: the decoded object is reused
        await b.update(session, active_employer="10000002")
        ticks.advance(10)
        changed = await a.load(session.id)
        assert changed is not None
        assert changed.active_employer == "10000002"
    finally:
        await a.aclose()
        await b.aclose()


async def test_view_by_ref_finds_live_session_only(store: Store) -> None:
    """A token sid leads to a read-only view of the live session, and to nothing after logout."""
    manager = SessionManager(store, SessionSettings(), ref_secret=b"k" * 32)
    session = await manager.create(make_identity(), ())
    view = await manager.view_by_ref(session.ref)
    assert view is not None
    assert view.id == ""
    assert view.identity == session.identity
    assert await manager.view_by_ref("not-a-ref") is None
    rotated = await manager.rotate(session)
    assert await manager.view_by_ref(session.ref) is None
    assert await manager.view_by_ref(rotated.ref) is not None
    await manager.destroy(rotated)
    assert await manager.view_by_ref(rotated.ref) is None


# -- the authenticated fast path: load_quiet, mandate_check, the ID -> hash memo --

_US = dt.timedelta(microseconds=1)
_AGES = {
    # age of each timestamp at the moment of the check: zero, just before and at
    # (or, for the strict staleness check, just after) each default limit
    "created_at": [dt.timedelta(0), dt.timedelta(hours=8) - _US, dt.timedelta(hours=8)],
    "last_seen": [
        dt.timedelta(0),
        dt.timedelta(seconds=30) - _US,
        dt.timedelta(seconds=30),
        dt.timedelta(minutes=15),
    ],
    "last_mandate_check": [
        dt.timedelta(0),
        dt.timedelta(seconds=60) - _US,
        dt.timedelta(seconds=60),
    ],
    "mandate_check_ok_at": [
        dt.timedelta(0),
        dt.timedelta(minutes=15),
        dt.timedelta(minutes=15) + _US,
    ],
}


async def test_load_quiet_answers_exactly_when_nothing_is_due(
    store: Store, clock: FakeClock
) -> None:
    """``load_quiet`` returns the session iff ``load`` would return that very object and
    neither a mandate re-check nor staleness is due, for every combination of ages
    around the expiry, touch, re-check and staleness limits (microsecond-exact)."""
    m = _manager(store, clock)
    try:
        template = await m.create(make_identity(), make_employers(2))
        outcomes = []
        for created, seen, checked, confirmed in itertools.product(*_AGES.values()):
            now = clock.now()
            session_id = new_session_id()
            session = replace(
                template,
                id=session_id,
                ref=m.session_ref(session_id),
                # A session is never younger than its other timestamps.
                created_at=now - max(created, seen, checked, confirmed),
                last_seen=now - seen,
                last_mandate_check=now - checked,
                mandate_check_ok_at=now - confirmed,
            )
            await m.save(session)
            quiet = m.load_quiet(session_id)
            check = m.mandate_check(session)
            assert (check.due, check.stale) == (
                m.needs_mandate_check(session),
                m.mandates_stale(session),
            )
            loaded = await m.load(session_id)
            expected = loaded is session and not check.due
            assert (quiet is session) is expected, (created, seen, checked, confirmed)
            assert quiet is None or quiet is session
            outcomes.append(expected)
        assert 0 < outcomes.count(True) < len(outcomes)
    finally:
        await m.aclose()


async def test_load_quiet_leaves_everything_else_to_load(store: Store, clock: FakeClock) -> None:
    """Absent, garbage, uncached, aged-out and ended sessions get ``None`` (ask ``load``)."""
    ticks = FakeClock(0.0)  # the cache's monotonic clock
    a = SessionManager(
        store,
        SessionSettings(cache_seconds=2),
        ref_secret=SECRET,
        clock=clock.now,
        monotonic=ticks.time,
    )
    b = _manager(store, clock)
    try:
        for cookie in (None, "", "short", "../" * 15, "a" * 43):
            assert a.load_quiet(cookie) is None
        session = await a.create(make_identity())
        assert a.load_quiet(session.id) is session
        assert b.load_quiet(session.id) is None  # another replica: not in its cache yet
        assert await b.load(session.id) == session
        assert b.load_quiet(session.id) is not None
        ticks.advance(2.0)  # the cache time (2 s) is over: the store must be asked
        assert a.load_quiet(session.id) is None
        assert await a.load(session.id) is session
        assert a.load_quiet(session.id) is session
        await a.destroy(session)
        assert a.load_quiet(session.id) is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_load_quiet_is_off_without_a_cache(store: Store, clock: FakeClock) -> None:
    """With ``cache_seconds: 0`` every request goes through ``load`` (and the store)."""
    m = _manager(store, clock, cache_seconds=0)
    try:
        session = await m.create(make_identity())
        assert m.load_quiet(session.id) is None
        assert await m.load(session.id) == session
        assert m.load_quiet(session.id) is None
    finally:
        await m.aclose()


async def test_without_a_cache_every_load_reads_the_store(store: Store, clock: FakeClock) -> None:
    """``cache_seconds: 0``: each load sees the store's current bytes; unchanged ones
    are not decoded again (the decoded object is reused), changed ones are."""
    a = _manager(store, clock, cache_seconds=0)
    b = _manager(store, clock, cache_seconds=0)
    try:
        session = await a.create(make_identity(), make_employers(50))
        first = await a.load(session.id)
        assert first is not None
        assert await a.load(session.id) is first  # same bytes: decoded once
        await b.update(session, active_employer="10000002")  # no pub/sub wait needed
        changed = await a.load(session.id)
        assert changed is not None
        assert changed.active_employer == "10000002"
        await b.destroy(changed)
        assert await a.load(session.id) is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_id_hash_memo_holds_exactly_the_cached_sessions(
    store: Store, clock: FakeClock
) -> None:
    """The ID -> hash memo follows the cache: eviction, logout and rotation remove IDs."""
    m = _manager(store, clock, cache_max_entries=3)
    try:
        sessions = [await m.create(make_identity()) for _ in range(5)]
        await m.destroy(sessions[-1])
        rotated = await m.rotate(sessions[-2])

        def consistent() -> None:
            assert len(m._hashes) == len(m._cache)
            for session_id, session_hash in m._hashes.items():
                assert session_hash == digest(session_id)
                assert m._cache[session_hash].session.id == session_id

        consistent()
        assert set(m._hashes) == {sessions[2].id, rotated.id}
        assert sessions[-2].id not in m._hashes
        assert await m.load(sessions[0].id) == sessions[0]  # evicted: read from the store
        consistent()
        assert sessions[0].id in m._hashes
    finally:
        await m.aclose()
    assert not m._hashes


async def test_a_broken_subscription_drops_the_whole_cache(redis_server: RedisServer) -> None:
    """Invalidations lost while a replica's subscription was down cannot leave a stale session.

    Real Redis: replica A caches a session; its pub/sub connection is killed
    (CLIENT KILL TYPE pubsub) and replica B ends the session at once, so the
    invalidation is published while A hears nothing. When A's subscription is
    back, A must no longer serve the session from its cache (it would for
    ``cache_seconds``, 30 s by default, if it trusted its copy).
    """
    store_a = create_store(StoreSettings(url=redis_server.url))
    store_b = create_store(StoreSettings(url=redis_server.url))
    settings = SessionSettings()
    assert settings.cache_seconds >= 30
    a = SessionManager(store_a, settings, ref_secret=SECRET)
    b = SessionManager(store_b, settings, ref_secret=SECRET)
    await a.start()
    try:
        session = await a.create(make_identity(), make_employers(3))
        assert a.load_quiet(session.id) is session
        admin = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            for _ in range(50):  # A's subscription is up once Redis lists it
                if await admin.pubsub_numsub("gw:sess:invalidate") != [(b"gw:sess:invalidate", 0)]:
                    break
                await asyncio.sleep(0.05)
            await admin.client_kill_filter(_type="pubsub")
            await b.destroy(session)  # published while A is not listening
        finally:
            await admin.aclose()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while a.load_quiet(session.id) is not None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert a.load_quiet(session.id) is None
        assert await a.load(session.id) is None
    finally:
        await a.aclose()
        await b.aclose()
        await store_a.close()
        await store_b.close()
