"""The store contract: the same behaviour from every ``Store`` implementation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.store.base import Store
from tests.support.redis import eventually

SHORT_TTL = 0.15


async def test_get_absent_returns_none(store: Store) -> None:
    """Reading a key that was never set answers None."""
    assert await store.get("missing") is None


async def test_set_then_get_round_trips_bytes(store: Store) -> None:
    """A value set is read back byte for byte, including NUL and high bytes."""
    value = bytes(range(256)) * 3
    await store.set("k", value, ttl=10)
    assert await store.get("k") == value


async def test_set_replaces_value_and_ttl(store: Store) -> None:
    """A second set replaces both the value and the TTL."""
    await store.set("k", b"one", ttl=100)
    await store.set("k", b"two", ttl=5)
    assert await store.get("k") == b"two"
    left = await store.ttl("k")
    assert left is not None
    assert 0 < left <= 5


async def test_key_expires_after_ttl(store: Store) -> None:
    """A key is gone once its TTL has passed."""
    await store.set("k", b"v", ttl=SHORT_TTL)
    assert await store.get("k") == b"v"
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.get("k") is None
    assert await store.ttl("k") is None


async def test_ttl_reports_seconds_left(store: Store) -> None:
    """``ttl`` answers the remaining lifetime in seconds, and None for an absent key."""
    await store.set("k", b"v", ttl=30)
    left = await store.ttl("k")
    assert left is not None
    assert 25 < left <= 30
    assert await store.ttl("nope") is None


async def test_sub_second_ttl_is_kept(store: Store) -> None:
    """Fractional TTLs are honoured rather than rounded to zero or to whole seconds."""
    await store.set("k", b"v", ttl=0.5)
    left = await store.ttl("k")
    assert left is not None
    assert 0 < left <= 0.5


@pytest.mark.parametrize("ttl", [0, -1])
async def test_non_positive_ttl_is_refused(store: Store, ttl: float) -> None:
    """Nothing is stored forever or with a nonsense lifetime: ttl must be > 0."""
    with pytest.raises(ValueError, match="ttl"):
        await store.set("k", b"v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await store.add("k", b"v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await store.replace_if("k", b"", b"v", ttl=ttl)


async def test_add_stores_only_when_absent(store: Store) -> None:
    """``add`` stores a new key, refuses an existing one and keeps the first value."""
    assert await store.add("lock", b"a", ttl=10) is True
    assert await store.add("lock", b"b", ttl=10) is False
    assert await store.get("lock") == b"a"


async def test_add_succeeds_again_after_expiry(store: Store) -> None:
    """A lock taken with ``add`` can be taken again once it expired."""
    assert await store.add("lock", b"a", ttl=SHORT_TTL) is True
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.add("lock", b"b", ttl=10) is True
    assert await store.get("lock") == b"b"


async def test_add_race_has_exactly_one_winner(store: Store) -> None:
    """Of many concurrent ``add`` calls for one key exactly one wins."""
    results = await asyncio.gather(*(store.add("race", str(i).encode(), 10) for i in range(50)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get("race") == str(winner).encode()


async def test_replace_if_writes_only_over_the_expected_value(store: Store) -> None:
    """Compare and set: the new value and TTL only where the key holds exactly ``expected``."""
    await store.set("k", b"one", ttl=100)
    assert await store.replace_if("k", b"other", b"two", ttl=100) is False
    assert await store.get("k") == b"one"
    assert await store.replace_if("k", b"one", b"two", ttl=5) is True
    assert await store.get("k") == b"two"
    left = await store.ttl("k")
    assert left is not None and 0 < left <= 5
    # The same update again finds its own result, not what it expected.
    assert await store.replace_if("k", b"one", b"two", ttl=5) is False


async def test_replace_if_never_brings_back_a_deleted_or_expired_key(store: Store) -> None:
    """An absent key holds nothing to compare with: nothing is written."""
    assert await store.replace_if("never", b"", b"v", ttl=10) is False
    await store.set("k", b"one", ttl=10)
    await store.delete("k")
    assert await store.replace_if("k", b"one", b"two", ttl=10) is False
    await store.set("short", b"one", ttl=SHORT_TTL)
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.replace_if("short", b"one", b"two", ttl=10) is False
    assert await store.get("k") is None and await store.get("short") is None


async def test_replace_if_race_has_exactly_one_winner(store: Store) -> None:
    """Of many concurrent updates of the same value exactly one is written."""
    await store.set("k", b"v0", ttl=10)
    results = await asyncio.gather(
        *(store.replace_if("k", b"v0", f"v{i}".encode(), 10) for i in range(1, 40))
    )
    assert results.count(True) == 1
    assert await store.get("k") == f"v{results.index(True) + 1}".encode()


async def test_replace_if_keeps_bytes_exact(store: Store) -> None:
    """Values with NUL and high bytes compare and store byte for byte."""
    old, new = bytes(range(256)) * 3, bytes(reversed(range(256))) * 3
    await store.set("k", old, ttl=10)
    assert await store.replace_if("k", old[:-1] + b"x", new, ttl=10) is False
    assert await store.replace_if("k", old, new, ttl=10) is True
    assert await store.get("k") == new


async def test_take_returns_value_once(store: Store) -> None:
    """``take`` returns the value and deletes it, so a second take gets None."""
    await store.set("pending", b"state", ttl=10)
    assert await store.take("pending") == b"state"
    assert await store.take("pending") is None
    assert await store.get("pending") is None


async def test_take_is_single_use_under_concurrency(store: Store) -> None:
    """Of many concurrent ``take`` calls for one key exactly one gets the value."""
    await store.set("pending", b"state", ttl=10)
    results = await asyncio.gather(*(store.take("pending") for _ in range(50)))
    assert [r for r in results if r is not None] == [b"state"]


async def test_take_of_expired_key_returns_none(store: Store) -> None:
    """An expired key cannot be taken."""
    await store.set("pending", b"state", ttl=SHORT_TTL)
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.take("pending") is None


async def test_delete_removes_and_tolerates_absent(store: Store) -> None:
    """``delete`` removes a key and is a no-op for an absent one."""
    await store.set("k", b"v", ttl=10)
    await store.delete("k")
    assert await store.get("k") is None
    await store.delete("k")


async def test_keys_are_independent(store: Store) -> None:
    """Keys with hash tags and similar names do not affect each other."""
    await store.set("session:{abc}:data", b"1", ttl=10)
    await store.set("session:{abc}:lock", b"2", ttl=10)
    await store.set("session:{abd}:data", b"3", ttl=10)
    assert await store.get("session:{abc}:data") == b"1"
    assert await store.get("session:{abc}:lock") == b"2"
    assert await store.get("session:{abd}:data") == b"3"


async def test_ping_succeeds_on_a_working_store(store: Store) -> None:
    """``ping`` returns quietly when the store is usable."""
    await store.ping()


async def _collect(store: Store, channel: str, n: int, out: list[bytes]) -> None:
    async for message in store.subscribe(channel):
        out.append(message)
        if len(out) >= n:
            return


async def publish_until_received(store: Store, channel: str, received: list[bytes]) -> None:
    """Publish a probe until a subscriber has it: a subscription is live only once connected."""
    for _ in range(500):
        if received:
            return
        await store.publish(channel, b"probe")
        await asyncio.sleep(0.02)
    raise AssertionError("subscription never received a message")


async def test_publish_reaches_every_subscriber_in_order(store: Store) -> None:
    """Every subscriber of a channel gets every message, in publish order."""
    first: list[bytes] = []
    second: list[bytes] = []
    tasks = [
        asyncio.create_task(_collect(store, "chan", 10_000, first)),
        asyncio.create_task(_collect(store, "chan", 10_000, second)),
    ]
    try:
        await publish_until_received(store, "chan", first)
        await publish_until_received(store, "chan", second)
        for i in range(5):
            await store.publish("chan", f"m{i}".encode())
        await eventually(lambda: first[-1:] == [b"m4"] and second[-1:] == [b"m4"])
        for got in (first, second):
            assert [m for m in got if m != b"probe"] == [f"m{i}".encode() for i in range(5)]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_subscriber_gets_only_its_channel(store: Store) -> None:
    """Messages on another channel do not reach a subscriber."""
    got: list[bytes] = []
    task = asyncio.create_task(_collect(store, "mine", 10_000, got))
    try:
        await publish_until_received(store, "mine", got)
        await store.publish("other", b"not for you")
        await store.publish("mine", b"for you")
        await eventually(lambda: got[-1:] == [b"for you"])
        assert b"not for you" not in got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_publish_without_subscribers_is_fine(store: Store) -> None:
    """Publishing to a channel nobody listens to is not an error."""
    await store.publish("nobody", b"hello")


async def test_cancelled_subscription_stops_receiving(store: Store) -> None:
    """After its consumer is cancelled a subscription is released; publishing still works."""
    got: list[bytes] = []
    task = asyncio.create_task(_collect(store, "chan", 10_000, got))
    await publish_until_received(store, "chan", got)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.publish("chan", b"after")
    await asyncio.sleep(0.05)
    assert b"after" not in got
