"""What a session costs Redis per request, read from Redis's own command statistics.

An authenticated request served from the replica's cache sends nothing; once
per ``touch_interval`` a session is written back with a new ``last_seen`` in one
round trip: a compare-and-set (``EVAL``: one ``GET`` and one ``SET`` inside
Redis) that writes only if the store still holds the replica's copy, so the
replica neither reads first nor overwrites what another replica wrote. The
``sref:`` index is written at login and rotation only; it still leads to the
session however long it stays active, and to nothing once it ended.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from gateway.sessions.keys import ref_key
from gateway.sessions.manager import SessionManager
from gateway.sessions.settings import SessionSettings
from gateway.store.factory import StoreSettings, create_store
from tests.sessions.conftest import make_employers, make_identity
from tests.support.clock import FakeClock
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

SECRET = b"0123456789abcdef0123456789abcdef"


def _calls(server: RedisServer) -> dict[str, int]:
    """Commands Redis has run so far, by name (``INFO commandstats``)."""
    text = server.cli("INFO", "commandstats")
    return {m[1]: int(m[2]) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", text)}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = ("get", "set", "del", "eval", "info")
    return {n: after.get(n, 0) - before.get(n, 0) for n in names if n != "info"}


async def test_a_touch_is_one_compare_and_set_and_a_cached_request_sends_nothing(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock()
    monotonic = [0.0]
    store = create_store(StoreSettings(url=redis_server.url))
    manager = SessionManager(
        store,
        SessionSettings(cache_seconds=30, touch_interval=dt.timedelta(seconds=30)),
        ref_secret=SECRET,
        clock=clock.now,
        monotonic=lambda: monotonic[0],
    )
    try:
        session = await manager.create(make_identity(), make_employers(25))
        before = _calls(redis_server)
        for _ in range(20):
            clock.advance(seconds=1)
            monotonic[0] += 1
            assert await manager.load(session.id) is not None
        assert _delta(before, _calls(redis_server)) == {"get": 0, "set": 0, "del": 0, "eval": 0}

        # The cache entry has aged out and the touch is due: one round trip, the
        # script's GET and SET (Redis counts a script's calls too), nothing else.
        clock.advance(seconds=11)
        monotonic[0] += 11
        before = _calls(redis_server)
        touched = await manager.load(session.id)
        assert touched is not None and touched.last_seen == clock.now()
        assert _delta(before, _calls(redis_server)) == {"get": 1, "set": 1, "del": 0, "eval": 1}
    finally:
        await manager.aclose()
        await store.close()


async def test_the_ref_index_outlives_touches_and_ends_with_the_session(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    clock = FakeClock()
    store = create_store(StoreSettings(url=redis_server.url))
    settings = SessionSettings(
        cache_seconds=0,
        idle_timeout=dt.timedelta(minutes=2),
        touch_interval=dt.timedelta(seconds=30),
    )
    manager = SessionManager(store, settings, ref_secret=SECRET, clock=clock.now)
    try:
        session = await manager.create(make_identity(), make_employers(3))
        # Active for longer than the idle timeout the index was first written with.
        for _ in range(10):
            clock.advance(seconds=40)
            assert await manager.load(session.id) is not None
        # Redis expires keys by its own clock: the index's TTL is the absolute lifetime.
        left = await store.ttl(ref_key(session.ref))
        assert left is not None and left > settings.idle_timeout.total_seconds()
        view = await manager.view_by_ref(session.ref)
        assert view is not None and view.identity == session.identity
        await manager.destroy(session)
        assert await manager.view_by_ref(session.ref) is None
        assert await store.ttl(ref_key(session.ref)) is None
    finally:
        await manager.aclose()
        await store.close()


async def test_a_touch_never_undoes_what_a_replica_it_did_not_hear_wrote(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Replica A holds a cached copy and hears nothing (no listener: a lost message).

    Replica B changes the session, then another session ends on B. A's touches
    are compare-and-sets against its own copy: they fail, A reads the record as
    stored, and B's change stays; the ended session stays ended.
    """
    clock = FakeClock()
    monotonic = [0.0]
    store = create_store(StoreSettings(url=redis_server.url))
    settings = SessionSettings(cache_seconds=300, touch_interval=dt.timedelta(seconds=30))
    a = SessionManager(
        store, settings, ref_secret=SECRET, clock=clock.now, monotonic=lambda: monotonic[0]
    )
    b = SessionManager(store, settings, ref_secret=SECRET, clock=clock.now)
    try:
        changed = await a.create(make_identity(), make_employers(3))
        ended = await a.create(make_identity(), make_employers(3))
        kvk = changed.allowed[1].kvk
        on_b = await b.load(changed.id)
        assert on_b is not None
        await b.update(on_b, active_employer=kvk)
        await b.destroy(ended.id)

        clock.advance(seconds=31)  # A's touch is due; its cache entries are still fresh
        monotonic[0] += 31
        touched = await a.load(changed.id)
        assert touched is not None and touched.active_employer == kvk
        assert touched.last_seen == clock.now()
        assert await a.load(ended.id) is None
        assert await b.load(ended.id) is None

        clock.advance(seconds=31)  # and once more from a cache entry that aged out
        monotonic[0] += 400
        again = await b.load(changed.id)
        assert again is not None and again.active_employer == kvk
    finally:
        await a.aclose()
        await b.aclose()
        await store.close()
