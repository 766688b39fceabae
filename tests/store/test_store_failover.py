"""No acknowledged session is lost when Redis fails over (real Sentinel and Cluster processes).

Each test drives login-like traffic through the session manager (see
``failover_load``), makes Redis fail over under it, waits until the topology has
settled (the old primary, if alive, replicates the new one: the moment writes
that only it had would vanish), and then reads back every session whose
creation was acknowledged. Failed operations and recovery time are printed
(``-s`` shows them), not asserted: they depend on the machine.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.factory import StoreSettings, create_store
from tests.store.failover_load import find_lost, run_load
from tests.support.redis import ClusterSetup, SentinelSetup

pytestmark = pytest.mark.slow


async def test_sentinel_manual_failover_loses_no_acknowledged_session() -> None:
    """``SENTINEL FAILOVER`` under login traffic: every acknowledged session is readable after."""
    with SentinelSetup(replicas=1, sentinels=3) as setup:
        store = create_store(StoreSettings(url=setup.url), environ={})

        async def failover() -> None:
            await asyncio.to_thread(setup.manual_failover)
            # The old primary becomes a replica of the new one only when a sentinel
            # next looks at it (up to ~10 s): until then it still takes writes.
            await asyncio.to_thread(setup.wait_replicated)

        try:
            report = await run_load(store, failover, after=1.0)
        finally:
            await store.close()
        await find_lost(setup.url, report)
        print("\n" + report.summary("sentinel SENTINEL FAILOVER"))
        assert report.acknowledged
        assert report.lost == []
        assert report.read_missing == 0


async def test_sentinel_primary_kill_loses_no_acknowledged_session() -> None:
    """``kill -9`` of the primary under login traffic: every acknowledged session is readable."""
    with SentinelSetup(replicas=1, sentinels=3) as setup:
        store = create_store(StoreSettings(url=setup.url), environ={})

        async def crash() -> None:
            await asyncio.to_thread(setup.kill_primary)

        try:
            report = await run_load(store, crash, after=2.0)
        finally:
            await store.close()
        await find_lost(setup.url, report)
        print("\n" + report.summary("sentinel kill -9 primary"))
        assert report.acknowledged
        assert report.lost == []
        assert report.read_missing == 0


async def test_cluster_manual_failover_loses_no_acknowledged_session() -> None:
    """``CLUSTER FAILOVER`` of one shard under login traffic: every acknowledged session stays."""
    with ClusterSetup(size=3, replicas=1) as cluster:
        store = create_store(StoreSettings(url=cluster.url), environ={})
        primary = cluster.primaries()[0]

        async def failover() -> None:
            await asyncio.to_thread(cluster.manual_failover, primary)
            await asyncio.to_thread(cluster.wait_replicating, primary)

        try:
            report = await run_load(store, failover, after=2.0)
        finally:
            await store.close()
        await find_lost(cluster.url, report)
        print("\n" + report.summary("cluster CLUSTER FAILOVER"))
        assert report.acknowledged
        assert report.lost == []
        assert report.read_missing == 0


async def test_cluster_primary_kill_loses_no_acknowledged_session() -> None:
    """``kill -9`` of one shard's primary under login traffic: every acknowledged session stays."""
    with ClusterSetup(size=3, replicas=1) as cluster:
        store = create_store(StoreSettings(url=cluster.url), environ={})
        # Not a seed node, so the loss check below starts from a live node too.
        primary = next(p for p in cluster.primaries() if p not in cluster.nodes[:2])

        async def crash() -> None:
            await asyncio.to_thread(cluster.kill, primary)

        try:
            report = await run_load(store, crash, after=2.0)
        finally:
            await store.close()
        await find_lost(cluster.url, report)
        print("\n" + report.summary("cluster kill -9 primary"))
        assert report.acknowledged
        assert report.lost == []
        assert report.read_missing == 0
