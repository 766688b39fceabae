"""Redis failover under login traffic, and what the durability wait costs.

Run: ``./dev bench failover`` (or ``.venv/bin/python -m bench failover``).
Starts real ``redis-server``/``redis-sentinel`` processes on loopback ports and
prints numbers; asserts nothing.

``--part failover`` (default: both parts): login-like traffic through the session
manager (``tests/store/failover_load.py``: each worker creates a session and
reads back an earlier one) while Redis fails over, then every session whose
creation was acknowledged is read back through a fresh store. Four scenarios:
Sentinel (one primary, one replica, three sentinels) with ``SENTINEL
FAILOVER`` and with ``kill -9`` of the primary; Cluster (three shards, one
replica each) with ``CLUSTER FAILOVER`` and ``kill -9`` of a shard primary.
``--replica-acks 0`` turns the wait for a replica off, to see what it prevents.

``--part wait``: the cost of ``WAIT`` after each write on a primary with one
replica (the write latency and the throughput of 16 concurrent writers, for
``replica_acks`` 0 and 1), and of a write with no replica left (the primary
is confirmed through the sentinels before the write counts).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog

from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from tests.store.failover_load import find_lost, run_load
from tests.support.redis import ClusterSetup, SentinelSetup


def _settings(url: str, acks: str) -> StoreSettings:
    return StoreSettings(url=url, replica_acks=acks if acks == "auto" else int(acks))


async def _sentinel(event: str, acks: str) -> str:
    with SentinelSetup(replicas=1, sentinels=3) as setup:
        store = create_store(_settings(setup.url, acks), environ={})

        async def trigger() -> None:
            if event == "manual":
                await asyncio.to_thread(setup.manual_failover)
                await asyncio.to_thread(setup.wait_replicated)
            else:
                await asyncio.to_thread(setup.kill_primary)

        try:
            report = await run_load(store, trigger, after=2.0)
        finally:
            await store.close()
        await find_lost(setup.url, report)
        name = "SENTINEL FAILOVER" if event == "manual" else "kill -9 primary"
        return report.summary(f"sentinel {name} (replica_acks={acks})")


async def _cluster(event: str, acks: str) -> str:
    with ClusterSetup(size=3, replicas=1) as cluster:
        store = create_store(_settings(cluster.url, acks), environ={})
        primary = next(p for p in cluster.primaries() if p not in cluster.nodes[:2])

        async def trigger() -> None:
            if event == "manual":
                await asyncio.to_thread(cluster.manual_failover, primary)
                await asyncio.to_thread(cluster.wait_replicating, primary)
            else:
                await asyncio.to_thread(cluster.kill, primary)

        try:
            report = await run_load(store, trigger, after=2.0)
        finally:
            await store.close()
        await find_lost(cluster.url, report)
        name = "CLUSTER FAILOVER" if event == "manual" else "kill -9 shard primary"
        return report.summary(f"cluster {name} (replica_acks={acks})")


async def _latencies(op: Callable[[int], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        await op(i)
        out.append(time.perf_counter() - start)
    return out


async def _throughput(store: Store, seconds: float, writers: int = 16) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            await store.set(f"bench:{w}:{i % 100}", b"x" * 600, ttl=60)
            i += 1
            done += 1

    await asyncio.gather(*(writer(w) for w in range(writers)))
    return done / seconds


def _fmt(label: str, lat: list[float]) -> str:
    lat = sorted(lat)
    return (
        f"{label}: p50={statistics.median(lat) * 1000:.2f} ms "
        f"p99={lat[int(len(lat) * 0.99)] * 1000:.2f} ms mean={statistics.fmean(lat) * 1000:.2f} ms"
    )


async def _wait_cost(n: int) -> list[str]:
    lines = []
    with SentinelSetup(replicas=1, sentinels=1) as setup:
        for acks in (0, 1):
            store = create_store(StoreSettings(url=setup.url, replica_acks=acks), environ={})
            try:
                await store.set("warm", b"x", ttl=60)

                async def one(i: int, store: Store = store) -> None:
                    await store.set(f"bench:{i % 100}", b"x" * 600, ttl=60)

                lat = await _latencies(one, n)
                rate = await _throughput(store, 3.0)
                lines.append(
                    _fmt(f"SET, replica_acks={acks}, one writer", lat)
                    + f" | 16 writers: {rate:.0f} writes/s"
                )
            finally:
                await store.close()
        # No replica left: WAIT cannot be satisfied. The first write waits the full
        # replica_ack_timeout; then writes are confirmed through the sentinels.
        setup.replica.kill()
        store = create_store(StoreSettings(url=setup.url), environ={})
        try:
            await store.set("warm", b"x", ttl=60)

            async def degraded(i: int) -> None:
                await store.set(f"bench:{i % 100}", b"x" * 600, ttl=60)

            lat = await _latencies(degraded, min(n, 500))
            rate = await _throughput(store, 3.0)
            lines.append(
                _fmt("SET, replica_acks=1, replica gone (accept_on_primary)", lat)
                + f" | 16 writers: {rate:.0f} writes/s"
            )
        finally:
            await store.close()
    return lines


async def _main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if args.part in ("wait", "all"):
        print("== cost of waiting for a replica (primary + 1 replica, loopback)")
        for line in await _wait_cost(args.writes):
            print(line, flush=True)
    if args.part in ("failover", "all"):
        print("== failover under login traffic (4 workers)")
        for topology in args.topology:
            for event in args.event:
                run = _sentinel if topology == "sentinel" else _cluster
                print(await run(event, args.replica_acks), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench failover", description=__doc__)
    parser.add_argument("--part", choices=["failover", "wait", "all"], default="all")
    parser.add_argument(
        "--topology", nargs="+", choices=["sentinel", "cluster"], default=["sentinel", "cluster"]
    )
    parser.add_argument(
        "--event", nargs="+", choices=["manual", "kill"], default=["manual", "kill"]
    )
    parser.add_argument("--replica-acks", default="auto", help="auto (default), 0 or 1")
    parser.add_argument("--writes", type=int, default=2000, help="sequential writes timed")
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
