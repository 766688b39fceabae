"""Login-start limits: which client an address is, the two buckets, cheap refusals, audit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from gateway.config import parse_config
from gateway.errors import ConfigInvalid
from gateway.sessions.login_limits import LoginStartLimiter, Refusal, client_bucket
from gateway.sessions.settings import LoginLimits, SessionSettings
from gateway.store.memory import MemoryStore
from tests.support.clock import FakeClock


class CountingStore(MemoryStore):
    """The memory store, counting ``take_token`` calls (how many hits reached the store)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock.time)
        self.token_calls = 0

    async def take_token(self, key: str, *, rate: float, burst: int) -> float:
        self.token_calls += 1
        return await super().take_token(key, rate=rate, burst=burst)


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: the IPv4 client
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # one customer line, any address
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("[2001:db8::1]", "2001:db8::/64"),
        ("unknown", "unknown"),  # not an address: counted as it is, never an error
    ],
)
def test_client_bucket(address: str, bucket: str) -> None:
    """IPv4 per address, IPv6 per /64, anything else as given."""
    assert client_bucket(address, 64) == bucket


def test_ipv6_prefix_length_is_configurable() -> None:
    """A deployment may count IPv6 clients per /56 (or per address with 128)."""
    assert client_bucket("2001:db8:1:2:aaaa::1", 56) == "2001:db8:1::/56"
    assert client_bucket("2001:db8:1:2:aaaa::1", 128) == "2001:db8:1:2:aaaa::1/128"


async def test_address_bucket_then_cheap_local_refusals_then_refill() -> None:
    """Burst passes, then 429s; refusals in the window cost no store call; refill lets one in."""
    clock = FakeClock(1000.0)
    store = CountingStore(clock)
    limits = LoginLimits(per_address_burst=3, per_address_per_minute=6)  # one per 10 s
    limiter = LoginStartLimiter(store, limits, clock=clock.time)
    assert [await limiter.check("192.0.2.7") for _ in range(3)] == [None, None, None]
    assert await limiter.check("192.0.2.7") == Refusal("address", 10)
    calls = store.token_calls
    for _ in range(100):
        assert (await limiter.check("192.0.2.7")) == Refusal("address", 10)
    assert store.token_calls == calls  # the flood's refusals never reached the store
    assert await limiter.check("198.51.100.1") is None  # another client is not affected
    clock.advance(4.2)
    assert await limiter.check("192.0.2.7") == Refusal("address", 6)
    clock.advance(6)
    assert await limiter.check("192.0.2.7") is None
    assert await limiter.check("192.0.2.7") == Refusal("address", 10)


async def test_the_deployment_bucket_refuses_with_scope_total() -> None:
    """Many addresses together hit the deployment's bucket: refused as ``total``."""
    clock = FakeClock(1000.0)
    limits = LoginLimits(total_burst=4, total_per_second=0.5)
    limiter = LoginStartLimiter(MemoryStore(clock=clock.time), limits, clock=clock.time)
    with capture_logs() as logs:
        results = [await limiter.check(f"192.0.2.{i}") for i in range(6)]
        limiter.close()
    assert results == [None, None, None, None, Refusal("total", 2), Refusal("total", 2)]
    events = [e for e in logs if e["event"] == "login_rate_limited"]
    # One summary for everyone, not one audit line per refused address.
    assert [(e["scope"], e["client_address"], e["refused"]) for e in events] == [
        ("total", "*", 1),
        ("total", "*", 1),
    ]
    clock.advance(2)
    assert await limiter.check("192.0.2.99") is None


async def test_two_replicas_share_the_buckets_through_the_store() -> None:
    """Two limiters (two replicas) on one store hand out one burst between them, not two."""
    clock = FakeClock(1000.0)
    store = MemoryStore(clock=clock.time)
    limits = LoginLimits(per_address_burst=4, per_address_per_minute=1)
    a = LoginStartLimiter(store, limits, clock=clock.time)
    b = LoginStartLimiter(store, limits, clock=clock.time)
    results = [await (a if i % 2 else b).check("192.0.2.7") for i in range(8)]
    assert sum(r is None for r in results) == 4


async def test_refusals_are_audited_once_then_summed_per_interval() -> None:
    """The first refusal is audited at once; later ones arrive summed, and close() flushes."""
    clock = FakeClock(1000.0)
    limits = LoginLimits(per_address_burst=1, per_address_per_minute=1)
    limiter = LoginStartLimiter(
        MemoryStore(clock=clock.time), limits, clock=clock.time, audit_interval=0.05
    )
    with capture_logs() as logs:
        assert await limiter.check("192.0.2.7", request_id="r1") is None
        for i in range(5):
            assert await limiter.check("192.0.2.7", request_id=f"r{i + 2}") is not None
        # After an interval the other four arrive as one event; after a quiet
        # interval the client is forgotten, so its next refusal is written at once.
        await asyncio.sleep(0.2)
        for i in range(3):
            assert await limiter.check("192.0.2.7", request_id=f"s{i}") is not None
        limiter.close()
    events = [e for e in logs if e["event"] == "login_rate_limited"]
    # Typically (1, r2), (4, r3), (1, s0), (2, s1); how the later ones split depends
    # on when the timers ran, but the first is immediate and none is lost or doubled.
    assert (events[0]["refused"], events[0]["request_id"]) == (1, "r2")
    assert sum(e["refused"] for e in events) == 8
    assert 2 <= len(events) <= 4
    assert all(e["audit"] is True and e["client_address"] == "192.0.2.7" for e in events)
    assert all(e["scope"] == "address" for e in events)


def test_example_config_states_the_real_defaults() -> None:
    """config/gateway.example.yaml lists every login limit with its actual default."""
    root = Path(__file__).resolve().parents[2]
    example = yaml.safe_load((root / "config" / "gateway.example.yaml").read_text())["sessions"]
    assert example["login_limits"] == LoginLimits().model_dump()
    assert example["prelogin_ttl"] == SessionSettings().prelogin_ttl.total_seconds() == 300


def test_config_errors_name_file_path_and_problem() -> None:
    """A too-long pending-login TTL or a zero burst is reported with file and path."""
    bad = {
        "routes": [{"name": "p", "match": {"path": "/"}, "upstream": "http://127.0.0.1:9"}],
        "sessions": {"prelogin_ttl": 1800, "login_limits": {"per_address_burst": 0}},
    }
    with pytest.raises(ConfigInvalid) as info:
        parse_config(yaml.safe_dump(bad), file="gw.yaml", environ={})
    text = str(info.value)
    assert "gw.yaml: sessions.login_limits.per_address_burst" in text
    assert "greater than or equal to 1" in text
    bad["sessions"] = {"prelogin_ttl": 1800}
    with pytest.raises(ConfigInvalid) as info:
        parse_config(yaml.safe_dump(bad), file="gw.yaml", environ={})
    assert "gw.yaml: sessions" in str(info.value)
    assert "prelogin_ttl must be at most 15 minutes" in str(info.value)
