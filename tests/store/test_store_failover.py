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
import re
from pathlib import Path

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


def _doc_block(first_line: str) -> list[str]:
    """The ```conf block of docs/state.md that starts with ``first_line`` (without comments)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "state.md").read_text()
    for block in re.findall(r"```conf\n(.*?)```", text, re.S):
        lines = block.strip().splitlines()
        if lines[0] == first_line:
            return [line for line in lines if line and not line.startswith("#")]
    raise AssertionError(f"no conf block starting {first_line!r} in docs/state.md")


async def test_documented_redis_settings_lose_nothing_when_the_primary_is_killed() -> None:
    """The redis.conf and sentinel.conf of docs/state.md (two replicas, three sentinels,
    min-replicas-to-write 1): ``kill -9`` of the primary under login traffic loses no
    acknowledged session, and logins go on after the failover."""
    data_args = [
        arg
        for line in _doc_block(
            "# redis.conf on every data node of the gateway's Redis (primary and replicas)"
        )
        for arg in ("--" + line.split()[0], *line.split()[1:])
    ]
    sentinel_lines = _doc_block("# sentinel.conf on each of three sentinels (quorum 2)")

    def sentinel_text(port: int) -> str:
        # The documented file, pointed at this test's primary on loopback.
        lines = [
            line.replace("gateway 10.0.0.11 6379", f"gateway 127.0.0.1 {port}")
            for line in sentinel_lines
        ]
        return "\n".join([*lines, "sentinel resolve-hostnames no", ""])

    with SentinelSetup(
        "gateway", replicas=2, sentinels=3, data_args=data_args, sentinel_text=sentinel_text
    ) as setup:
        assert setup.primary.cli("CONFIG", "GET", "min-replicas-to-write").split()[1] == "1"
        store = create_store(StoreSettings(url=setup.url), environ={})

        async def crash() -> None:
            await asyncio.to_thread(setup.kill_primary, 60.0)
            await asyncio.to_thread(setup.wait_replicated, 60.0)

        try:
            report = await run_load(store, crash, after=2.0)
        finally:
            await store.close()
        await find_lost(setup.url, report)
        print("\n" + report.summary("documented settings, kill -9 primary"))
        assert report.acknowledged
        assert report.lost == []
        assert report.read_missing == 0
        settled = report.settled_at - report.trigger_at  # type: ignore[operator]
        assert any(t > settled for t in report.created_at)
