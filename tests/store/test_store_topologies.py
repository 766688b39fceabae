"""RedisStore against real Sentinel and Cluster deployments (several redis processes)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.errors import StoreUnavailable
from gateway.sessions.manager import SessionManager
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from tests.sessions.conftest import make_employers, make_identity
from tests.support.redis import ClusterSetup, SentinelSetup, eventually

pytestmark = pytest.mark.slow


async def _traffic(store: Store, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Steady writes and reads; counts successes and fail-closed errors, nothing else allowed."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            await store.set(f"traffic:{i % 50}", b"x", ttl=30)
            await store.get(f"traffic:{(i + 7) % 50}")
            counts["ok"] += 1
        except StoreUnavailable:
            counts["unavailable"] += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.005)


async def test_sentinel_failover_during_traffic_keeps_sessions() -> None:
    """A primary crash under traffic fails requests closed briefly; sessions survive promotion."""
    with SentinelSetup() as setup:
        store = create_store(StoreSettings(url=setup.url, subscribe_backoff_max=0.3), environ={})
        sessions = SessionManager(store, SessionSettings(), ref_secret=b"s" * 32)
        counts = {"ok": 0, "unavailable": 0}
        stop = asyncio.Event()
        traffic = asyncio.create_task(_traffic(store, stop, counts))
        got: list[bytes] = []

        async def listen() -> None:
            async for message in store.subscribe("events"):
                got.append(message)

        listener = asyncio.create_task(listen())
        try:
            created = [await sessions.create(make_identity(), make_employers(3)) for _ in range(20)]
            # Acknowledged by the replica before the crash: Redis replication is
            # asynchronous, so a write not yet replicated may be lost in a failover.
            setup.primary.cli("WAIT", "1", "2000")
            await eventually(lambda: counts["ok"] > 20)
            before = counts["ok"]
            await asyncio.to_thread(setup.failover)
            await eventually(lambda: counts["ok"] > before + 20, within=15)
            fresh = SessionManager(store, SessionSettings(), ref_secret=b"s" * 32)
            for session in created:
                assert await fresh.load(session.id) == session
            for _ in range(300):
                if b"after-failover" in got:
                    break
                with contextlib.suppress(StoreUnavailable):
                    await store.publish("events", b"after-failover")
                await asyncio.sleep(0.03)
            assert b"after-failover" in got
        finally:
            stop.set()
            for task in (traffic, listener):
                task.cancel()
            await asyncio.gather(traffic, listener, return_exceptions=True)
            await sessions.aclose()
            await store.close()


async def test_cluster_store_contract_and_sessions() -> None:
    """On a 3-primary Cluster keys spread over slots work, pub/sub crosses nodes, sessions load."""
    with ClusterSetup() as cluster:
        store = create_store(StoreSettings(url=cluster.url), environ={})
        other = create_store(
            StoreSettings(url="redis+cluster://" + cluster.nodes[2].address), environ={}
        )
        got: list[bytes] = []

        async def listen() -> None:
            async for message in other.subscribe("sess:invalidate"):
                got.append(message)

        listener = asyncio.create_task(listen())
        try:
            for i in range(30):
                await store.set(f"k{i}:{{t{i}}}", str(i).encode(), ttl=10)
            for i in range(30):
                assert await other.get(f"k{i}:{{t{i}}}") == str(i).encode()
            assert await store.add("lock", b"1", ttl=5) is True
            assert await other.add("lock", b"2", ttl=5) is False
            assert await other.take("k1:{t1}") == b"1"
            assert await store.take("k1:{t1}") is None
            left = await store.ttl("k2:{t2}")
            assert left is not None
            assert 0 < left <= 10
            a = SessionManager(store, SessionSettings(), ref_secret=b"s" * 32)
            b = SessionManager(other, SessionSettings(), ref_secret=b"s" * 32)
            session = await a.create(make_identity(), make_employers(100))
            assert await b.load(session.id) == session
            for _ in range(300):
                if got:
                    break
                await store.publish("sess:invalidate", b"x:probe")
                await asyncio.sleep(0.02)
            assert got
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await store.close()
            await other.close()
