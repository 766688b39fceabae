"""``take_token`` and ``push_bounded``: the rule, and each store (memory, Redis, Cluster)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.base import Store
from gateway.store.factory import StoreSettings, create_store
from gateway.store.memory import MemoryStore
from gateway.store.token_bucket import take
from tests.support.clock import FakeClock
from tests.support.redis import ClusterSetup, RedisServer


def test_bucket_passes_a_burst_then_one_per_interval_and_refusals_cost_nothing() -> None:
    """Burst 3 at 1/s: three pass at once, then one a second; a refusal leaves the state."""
    tat = None
    for _ in range(3):
        decision = take(100.0, tat, rate=1.0, burst=3)
        assert decision.allowed and decision.wait == 0.0
        tat = decision.tat
    refused = take(100.0, tat, rate=1.0, burst=3)
    assert not refused.allowed and refused.wait == pytest.approx(1.0)
    assert refused.tat == tat  # refused hits take nothing: hammering does not push it back
    assert not take(100.5, tat, rate=1.0, burst=3).allowed
    assert take(101.0, tat, rate=1.0, burst=3).allowed
    # The state is the moment the bucket is full again (the key's expiry): after it,
    # stored or not, a whole burst passes again.
    assert tat == 103.0
    for state in (tat, None):
        full = state
        for _ in range(3):
            decision = take(103.0, full, rate=1.0, burst=3)
            assert decision.allowed
            full = decision.tat
        assert not take(103.0, full, rate=1.0, burst=3).allowed


def test_bucket_rejects_nonsense_settings() -> None:
    """A rate of zero or a burst below one is a programming error, not a silent block."""
    with pytest.raises(ValueError, match="rate must be > 0"):
        take(0.0, None, rate=0.0, burst=1)
    with pytest.raises(ValueError, match="burst >= 1"):
        take(0.0, None, rate=1.0, burst=0)


async def test_take_token_on_each_store(store: Store) -> None:
    """Burst then refusals with the wait; after the wait one more; the key expires when full."""
    rate, burst = 20.0, 3  # one token per 50 ms
    results = [await store.take_token("rl:{a}", rate=rate, burst=burst) for _ in range(5)]
    assert results[:3] == [0.0, 0.0, 0.0]
    assert all(0 < wait <= 1 / rate + 0.001 for wait in results[3:]), results
    await asyncio.sleep(results[-1] + 0.01)
    assert await store.take_token("rl:{a}", rate=rate, burst=burst) == 0.0
    left = await store.ttl("rl:{a}")
    assert left is not None and 0 < left <= burst / rate + 0.001
    assert await store.take_token("rl:{b}", rate=rate, burst=burst) == 0.0  # its own bucket


async def test_take_token_is_atomic_across_clients(redis_server: RedisServer) -> None:
    """Two replicas' clients racing for one bucket: exactly ``burst`` tokens are handed out."""
    stores = [create_store(StoreSettings(url=redis_server.url), environ={}) for _ in range(2)]
    try:
        waits = await asyncio.gather(
            *(stores[i % 2].take_token("rl:{shared}", rate=0.01, burst=10) for i in range(60))
        )
    finally:
        for s in stores:
            await s.close()
    assert sum(1 for w in waits if w == 0.0) == 10


async def test_push_bounded_keeps_the_newest_and_returns_each_dropped_once(
    store: Store,
) -> None:
    """Seven pushes with limit 3: the four oldest come back, newest first, each exactly once."""
    dropped: list[bytes] = []
    for i in range(7):
        dropped += await store.push_bounded("idx:{a}", f"m{i}".encode(), 3, ttl=30)
    assert dropped == [b"m0", b"m1", b"m2", b"m3"]
    left = await store.ttl("idx:{a}")
    assert left is not None and 0 < left <= 30
    # Concurrent pushes: nothing is kept beyond the limit, nothing dropped twice.
    batches = await asyncio.gather(
        *(store.push_bounded("idx:{b}", f"c{i}".encode(), 4, ttl=30) for i in range(40))
    )
    returned = [m for batch in batches for m in batch]
    assert len(returned) == len(set(returned)) == 36
    with pytest.raises(ValueError, match="limit must be >= 1"):
        await store.push_bounded("idx:{c}", b"x", 0, ttl=30)


async def test_memory_store_expires_lists_and_buckets_with_its_clock() -> None:
    """In the memory store a list and a bucket vanish at their expiry like any key."""
    clock = FakeClock(0.0)
    store = MemoryStore(clock=clock.time)
    await store.push_bounded("idx:{a}", b"m", 2, ttl=5)
    assert await store.take_token("rl:{a}", rate=1.0, burst=2) == 0.0
    clock.set(5.0)
    assert await store.ttl("idx:{a}") is None
    assert await store.ttl("rl:{a}") is None
    assert await store.push_bounded("idx:{a}", b"n", 1, ttl=5) == []


@pytest.mark.slow
async def test_both_scripts_on_a_cluster() -> None:
    """On a 3-primary Cluster the bucket and the bounded list work on keys of any slot."""
    with ClusterSetup() as cluster:
        store = create_store(StoreSettings(url=cluster.url), environ={})
        try:
            for tag in ("a", "b", "c", "d"):
                waits = [
                    await store.take_token(f"rl:{{{tag}}}", rate=0.01, burst=2) for _ in range(3)
                ]
                assert waits[:2] == [0.0, 0.0] and waits[2] > 0
                dropped = [
                    m
                    for i in range(3)
                    for m in await store.push_bounded(f"idx:{{{tag}}}", str(i).encode(), 2, 30)
                ]
                assert dropped == [b"0"]
        finally:
            await store.close()
