"""MemoryStore specifics the shared contract cannot see: the injected clock and the sweep."""

from __future__ import annotations

import pytest

from gateway.errors import StoreUnavailable
from gateway.store.base import Store
from gateway.store.memory import MemoryStore
from tests.support.clock import FakeClock


def test_memory_store_satisfies_the_protocol() -> None:
    """MemoryStore is a structural ``Store``."""
    assert isinstance(MemoryStore(), Store)


async def test_expiry_follows_the_injected_clock() -> None:
    """Keys expire when the injected clock passes their deadline, without sleeping."""
    clock = FakeClock(1000.0)
    store = MemoryStore(clock=clock.time)
    await store.set("k", b"v", ttl=60)
    clock.advance(59.9)
    assert await store.get("k") == b"v"
    clock.advance(0.2)
    assert await store.get("k") is None


async def test_periodic_sweep_drops_unread_expired_keys() -> None:
    """Expired keys nobody reads again are removed by the next write after the sweep interval."""
    clock = FakeClock(1000.0)
    store = MemoryStore(clock=clock.time, sweep_interval=10)
    for i in range(100):
        await store.set(f"k{i}", b"v", ttl=5)
    assert len(store) == 100
    clock.advance(11)
    await store.set("fresh", b"v", ttl=5)
    assert len(store) == 1


async def test_closed_store_raises_store_unavailable() -> None:
    """After ``close`` every operation fails closed with StoreUnavailable."""
    store = MemoryStore()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get("k")
    with pytest.raises(StoreUnavailable):
        await store.ping()
