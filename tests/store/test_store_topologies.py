"""RedisStore against real Sentinel and Cluster deployments (several redis processes)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import structlog

from gateway.errors import StoreUnavailable
from gateway.sessions.manager import SessionManager
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from gateway.store.redis_store import RedisStore
from gateway.store.topology import SentinelTopology
from tests.sessions.conftest import make_employers, make_identity
from tests.support.redis import ClusterSetup, RedisServer, SentinelSetup, eventually

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
            # No WAIT by hand: the store waits for the replica after every write.
            created = [await sessions.create(make_identity(), make_employers(3)) for _ in range(20)]
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


async def test_store_follows_switch_master_with_one_sentinel_dead() -> None:
    """With the first sentinel of the URL killed, ``SENTINEL FAILOVER`` through another one
    moves the store to the new primary by the ``+switch-master`` announcement alone (no
    traffic), before Sentinel turns the old primary into a replica."""
    with SentinelSetup(replicas=1, sentinels=3) as setup:
        store = create_store(StoreSettings(url=setup.url, subscribe_backoff_max=0.3), environ={})
        assert isinstance(store, RedisStore)
        topology = store.topology
        assert isinstance(topology, SentinelTopology)
        old, new = setup.primary, setup.replica
        try:
            with structlog.testing.capture_logs() as logs:
                await store.set("before", b"1", ttl=60)
                assert topology.primary == ("127.0.0.1", old.port)
                setup.sentinels[0].kill()
                await eventually(
                    lambda: any(e["event"] == "store_sentinel_watch_lost" for e in logs),
                    within=10,
                )
                await asyncio.to_thread(setup.manual_failover)
                await eventually(lambda: topology.primary == ("127.0.0.1", new.port), within=10)
            switched = [e for e in logs if e["event"] == "store_primary_switched"]
            assert [(e["old"], e["new"]) for e in switched] == [(old.address, new.address)]
            # Written on the new primary only; the store reads it from there.
            new.cli("SET", "gw:marker", "on-new-primary")
            assert await store.get("marker") == b"on-new-primary"
            assert await store.get("before") == b"1"
        finally:
            await store.close()


def _slot_owner(cluster: ClusterSetup, slot: int) -> tuple[RedisServer, str]:
    ids = {n.cli("CLUSTER", "MYID").strip(): n for n in cluster.nodes}
    for line in cluster.nodes[0].cli("CLUSTER", "NODES").splitlines():
        fields = line.split()
        for part in fields[8:]:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return ids[fields[0]], fields[0]
    raise AssertionError(f"no owner for slot {slot}")


def _other(cluster: ClusterSetup, node: RedisServer) -> tuple[RedisServer, str]:
    other = next(n for n in cluster.nodes if n is not node)
    return other, other.cli("CLUSTER", "MYID").strip()


def _begin_migration(
    slot: int, src: RedisServer, src_id: str, dst: RedisServer, dst_id: str
) -> None:
    dst.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
    src.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)


def _move_keys(slot: int, src: RedisServer, dst: RedisServer) -> None:
    keys = src.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
    if keys:
        src.cli("MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS", *keys)


def _finish_migration(cluster: ClusterSetup, slot: int, dst_id: str) -> None:
    for node in cluster.nodes:
        node.cli("CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)


async def test_cluster_writes_follow_moved_and_ask() -> None:
    """A slot moved to another node (``MOVED``) and a slot in mid-migration (``ASK``): writes
    with ``WAIT`` and single-use takes reach the node that owns the key, reads follow."""
    with ClusterSetup() as cluster:
        store = create_store(StoreSettings(url=cluster.url), environ={})
        try:
            # MOVED: the store's slot map still names the old owner.
            await store.set("sess:{moved}", b"1", ttl=60)
            slot = int(cluster.nodes[0].cli("CLUSTER", "KEYSLOT", "gw:sess:{moved}"))
            src, src_id = _slot_owner(cluster, slot)
            dst, dst_id = _other(cluster, src)
            _begin_migration(slot, src, src_id, dst, dst_id)
            _move_keys(slot, src, dst)
            _finish_migration(cluster, slot, dst_id)
            await store.set("sess:{moved}", b"2", ttl=60)
            assert dst.cli("GET", "gw:sess:{moved}").strip() == "2"
            assert await store.add("sess:{moved}:lock", b"x", ttl=60) is True
            assert await store.take("sess:{moved}") == b"2"
            assert await store.get("sess:{moved}:lock") == b"x"

            # ASK: the slot is migrating and the key already left the old owner.
            await store.set("login:{asked}", b"pending", ttl=60)
            slot = int(cluster.nodes[0].cli("CLUSTER", "KEYSLOT", "gw:login:{asked}"))
            src, src_id = _slot_owner(cluster, slot)
            dst, dst_id = _other(cluster, src)
            _begin_migration(slot, src, src_id, dst, dst_id)
            _move_keys(slot, src, dst)
            assert await store.take("login:{asked}") == b"pending"
            await store.set("login:{asked}:next", b"new", ttl=60)
            _finish_migration(cluster, slot, dst_id)
            assert dst.cli("GET", "gw:login:{asked}:next").strip() == "new"
            assert await store.get("login:{asked}") is None
            assert await store.get("login:{asked}:next") == b"new"
        finally:
            await store.close()
