"""MandateService: store cache, single flight across callers and replicas, freshness, revocation."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from conftest import http_settings
from structlog.testing import capture_logs

from gateway.errors import RegistryUnavailable, StoreUnavailable
from gateway.identity import Identity, Loa
from gateway.mandates import (
    FileSourceSettings,
    Mandate,
    MandateService,
    MandateSettings,
    MandateStatus,
)
from gateway.mandates.freshness import Freshness
from gateway.mandates.http_source import HttpMandateSource
from gateway.mandates.service import Purpose
from gateway.store.base import Store
from gateway.store.memory import MemoryStore
from tests.support.clock import FakeClock
from tests.support.registry import RegistryServer

ADMIN = "11111111"
EMP = "30000001"
T0 = dt.datetime(2025, 6, 15, 10, 0, tzinfo=dt.UTC)
R = 60  # seconds: the re-check interval, how long an answer is fresh


def m(employer: str = EMP, status: MandateStatus = MandateStatus.ACTIVE) -> Mandate:
    return Mandate(employer, f"Werkgever {employer}", ADMIN, status, dt.date(2020, 1, 1))


class FakeRegistry:
    """The far edge: a registry answering from a dict, optionally held at a gate or down."""

    def __init__(self, mandates: list[Mandate] | None = None) -> None:
        self.mandates = {ADMIN: list(mandates if mandates is not None else [m()])}
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise RegistryUnavailable("registry down")
        return list(self.mandates.get(administrator_kvk, []))

    async def close(self) -> None:
        pass


def settings(**overrides: Any) -> MandateSettings:
    values: dict[str, Any] = {
        "source": FileSourceSettings(path="unused.yaml"),
        "lock_ttl": 5,
        "lock_wait": 3,
        "lock_poll_interval": 0.01,
    }
    values.update(overrides)
    return MandateSettings(**values)


def service(
    store: Store, source: Any, clock: FakeClock | None = None, **overrides: Any
) -> MandateService:
    freshness = Freshness(
        dt.timedelta(seconds=R), dt.timedelta(seconds=900), clock=(clock or FakeClock(T0)).now
    )
    return MandateService(store, source, settings(**overrides), freshness=freshness)


async def test_first_lookup_asks_the_registry_then_the_cache_answers(store: Store) -> None:
    """Within R the second lookup is served from the store without a registry call."""
    clock, reg = FakeClock(T0), FakeRegistry()
    svc = service(store, reg, clock)
    first = await svc.lookup(ADMIN)
    clock.advance(59)
    second = await svc.lookup(ADMIN)
    assert (first.origin, second.origin) == ("registry", "cache")
    assert second.mandates == (m(),)
    assert second.fetched_at == T0
    assert reg.calls == 1


async def test_answers_r_old_or_from_before_a_push_cause_a_new_fetch(store: Store) -> None:
    """An answer R old, or asked for before a push (``not_before``), is not used again."""
    clock, reg = FakeClock(T0), FakeRegistry()
    svc = service(store, reg, clock)
    await svc.lookup(ADMIN)
    clock.advance(10)
    assert (await svc.lookup(ADMIN, not_before=T0)).origin == "cache"
    pushed = await svc.lookup(ADMIN, not_before=T0 + dt.timedelta(seconds=5))
    assert pushed.origin == "registry"
    assert pushed.fetched_at == T0 + dt.timedelta(seconds=10)
    clock.advance(R - 1)
    assert (await svc.lookup(ADMIN)).origin == "cache"
    clock.advance(1)
    again = await svc.lookup(ADMIN)
    assert again.origin == "registry"
    assert again.fetched_at == T0 + dt.timedelta(seconds=10 + R)
    assert reg.calls == 3


class SlowRegistry(FakeRegistry):
    """A registry whose answer takes ``latency`` seconds of the fake clock to arrive."""

    def __init__(self, clock: FakeClock, latency: float) -> None:
        super().__init__()
        self.clock, self.latency = clock, latency

    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        answer = await super().mandates_for(administrator_kvk)
        self.clock.advance(self.latency)
        return answer


async def test_an_answer_is_dated_when_the_registry_was_asked(store: Store) -> None:
    """fetched_at is the moment the request left, not the answer's arrival: the registry's
    state in it is no older, so R counts from there."""
    clock = FakeClock(T0)
    svc = service(store, SlowRegistry(clock, latency=3), clock)
    first = await svc.lookup(ADMIN)
    assert first.fetched_at == T0
    clock.advance(R - 3 - 1)
    assert (await svc.lookup(ADMIN)).origin == "cache"
    clock.advance(1)
    assert (await svc.lookup(ADMIN)).origin == "registry"


async def test_zero_mandates_are_cached_as_an_answer(store: Store) -> None:
    """An administrator without mandates is a cached answer, not a miss."""
    reg = FakeRegistry([])
    svc = service(store, reg)
    assert (await svc.lookup(ADMIN)).mandates == ()
    assert (await svc.lookup(ADMIN)).origin == "cache"
    assert reg.calls == 1


async def test_concurrent_lookups_in_one_process_make_one_call(store: Store) -> None:
    """Many simultaneous lookups for one administrator share a single registry call."""
    reg = FakeRegistry()
    reg.gate = asyncio.Event()
    svc = service(store, reg)
    tasks = [asyncio.create_task(svc.lookup(ADMIN)) for _ in range(20)]
    await reg.entered.wait()
    reg.gate.set()
    results = await asyncio.gather(*tasks)
    assert reg.calls == 1
    assert {r.fetched_at for r in results} == {T0}


async def test_a_cancelled_caller_does_not_abort_the_shared_lookup(store: Store) -> None:
    """One caller giving up (browser closed) leaves the shared lookup running for the others."""
    reg = FakeRegistry()
    reg.gate = asyncio.Event()
    svc = service(store, reg)
    quitter = asyncio.create_task(svc.lookup(ADMIN))
    stayer = asyncio.create_task(svc.lookup(ADMIN))
    await reg.entered.wait()
    quitter.cancel()
    reg.gate.set()
    assert (await stayer).mandates == (m(),)
    assert quitter.cancelled()


async def test_two_replicas_make_one_registry_call(store: Store, registry: RegistryServer) -> None:
    """Two services sharing a store (two replicas) hit the real registry once between them."""
    registry.delay = 0.3
    sources = [HttpMandateSource(http_settings(registry, read_timeout=2)) for _ in range(2)]
    replicas = [service(store, s) for s in sources]
    try:
        results = await asyncio.gather(*(replicas[i % 2].lookup(ADMIN) for i in range(10)))
    finally:
        for r in replicas:
            await r.close()
    assert registry.requests == 1
    assert {r.fetched_at for r in results} == {T0}
    assert {len(r.mandates) for r in results} == {2}
    assert {r.origin for r in results} == {"registry", "cache"}


async def test_waiting_replica_fails_fast_when_the_holder_fails(store: Store) -> None:
    """If the replica holding the lock fails, waiting replicas fail too without calling out."""
    holder_reg, waiter_reg = FakeRegistry(), FakeRegistry()
    holder_reg.gate, holder_reg.down = asyncio.Event(), True
    holder, waiter = service(store, holder_reg), service(store, waiter_reg)
    first = asyncio.create_task(holder.lookup(ADMIN))
    await holder_reg.entered.wait()
    second = asyncio.create_task(waiter.lookup(ADMIN))
    await asyncio.sleep(0.05)
    holder_reg.gate.set()
    with pytest.raises(RegistryUnavailable):
        await first
    with pytest.raises(RegistryUnavailable, match="another replica"):
        await second
    assert waiter_reg.calls == 0


async def test_a_dead_replicas_lock_expires(store: Store) -> None:
    """A lock left by a crashed replica delays lookups only until its TTL runs out."""
    reg = FakeRegistry()
    await store.add("mandates:{11111111}:lock", b"crashed", 0.3)
    svc = service(store, reg)
    assert (await svc.lookup(ADMIN)).origin == "registry"
    assert reg.calls == 1


async def test_waiting_too_long_fails_closed(store: Store) -> None:
    """Waiting longer than lock_wait for another replica raises RegistryUnavailable."""
    reg = FakeRegistry()
    await store.add("mandates:{11111111}:lock", b"busy", 30)
    svc = service(store, reg, lock_wait=0.2)
    with pytest.raises(RegistryUnavailable, match="timed out"):
        await svc.lookup(ADMIN)
    assert reg.calls == 0


async def test_registry_down_at_login_fails_closed(store: Store) -> None:
    """A login lookup never uses a stale set: registry down raises, with an audit event."""
    clock, reg = FakeClock(T0), FakeRegistry()
    svc = service(store, reg, clock)
    await svc.lookup(ADMIN)
    clock.advance(R)
    reg.down = True
    with capture_logs() as logs, pytest.raises(RegistryUnavailable):
        await svc.lookup(ADMIN, audit_context={"request_id": "r-1"})
    failed = [e for e in logs if e["event"] == "mandate_lookup_failed"]
    assert failed == [
        {
            "event": "mandate_lookup_failed",
            "audit": True,
            "administrator_kvk": ADMIN,
            "reason": "registry down",
            "request_id": "r-1",
            "log_level": "info",
        }
    ]


def _ident(legal: str | None, intermediary: str | None = None) -> Identity:
    return Identity("p", legal, Loa.EH3, "svc", T0, intermediary_kvk=intermediary)


async def test_registry_down_a_fresh_answer_serves_and_nothing_older(store: Store) -> None:
    """Registry unreachable: a direct login or a re-check uses an answer younger than R,
    never one R or more old (the session's own staleness allowance is the gate's)."""
    clock, reg = FakeClock(T0), FakeRegistry()
    svc = service(store, reg, clock, failure_hold=0)
    await svc.lookup(ADMIN)
    reg.down = True
    clock.advance(R - 1)
    purposes: tuple[Purpose, ...] = ("login", "recheck")
    for purpose in purposes:
        decision, mset = await svc.decide(_ident(ADMIN), purpose=purpose)
        assert [e.kvk for e in decision.allowed] == [EMP]
        assert mset is not None and mset.origin == "cache"
    clock.advance(1)
    for purpose in purposes:
        with pytest.raises(RegistryUnavailable):
            await svc.decide(_ident(ADMIN), purpose=purpose)


async def test_a_chain_login_asks_the_registry_even_with_a_fresh_answer(store: Store) -> None:
    """A chain login asks the registry: a mandate revoked a second after a cached answer is
    already missing; a chain session's re-check may use the cached answer."""
    clock, reg = FakeClock(T0), FakeRegistry([m(EMP), m("30000002")])
    svc = service(store, reg, clock)
    await svc.lookup(ADMIN)
    reg.mandates[ADMIN] = [m("30000002")]
    clock.advance(1)
    recheck, _ = await svc.decide(_ident(EMP, ADMIN), purpose="recheck")
    assert [e.kvk for e in recheck.allowed] == [EMP]
    assert reg.calls == 1
    login, mset = await svc.decide(_ident(EMP, ADMIN))
    assert login.refusal == "chain_without_mandate"
    assert mset is not None and (mset.origin, mset.fetched_at) == ("registry", clock.now())
    assert reg.calls == 2


@pytest.mark.parametrize(("age", "accepted"), [(0, True), (R - 1, True), (R, False)])
async def test_a_chain_login_with_the_registry_down_uses_only_a_fresh_answer(
    store: Store, age: int, accepted: bool
) -> None:
    """Registry unreachable at a chain login: an answer younger than R stands in (logged);
    an older one refuses the login with a page saying why a chain login needs the fund."""
    clock, reg = FakeClock(T0), FakeRegistry()
    svc = service(store, reg, clock, failure_hold=0)
    await svc.lookup(ADMIN)
    reg.down = True
    clock.advance(age)
    if accepted:
        with capture_logs() as logs:
            decision, _ = await svc.decide(_ident(EMP, ADMIN))
        assert [e.kvk for e in decision.allowed] == [EMP]
        used = [e for e in logs if e["event"] == "mandate_registry_unreachable_fresh_answer_used"]
        assert [e["age_seconds"] for e in used] == [age]
        return
    with pytest.raises(RegistryUnavailable) as refused:
        await svc.decide(_ident(EMP, ADMIN))
    assert "ketenmachtiging" in refused.value.text_nl
    assert "chain authorisation" in refused.value.text_en
    assert refused.value.status == 503


async def test_invalidate_drops_the_cache_and_notifies_every_replica(store: Store) -> None:
    """invalidate() forces a fresh lookup and every replica's subscriber hears about it."""
    reg = FakeRegistry()
    a, b = service(store, reg), service(store, reg)
    await a.lookup(ADMIN)
    received: list[str] = []

    async def listen() -> None:
        async for kvk in b.invalidations():
            received.append(kvk)
            return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.05)  # let the subscription register
    await store.publish("mandates:invalidate", b"not json")  # ignored, logged
    reg.mandates[ADMIN] = [m(status=MandateStatus.REVOKED)]
    with capture_logs() as logs:
        await a.invalidate(ADMIN, employer_kvk=EMP, audit_context={"request_id": "r-2"})
    await asyncio.wait_for(listener, 5)
    assert received == [ADMIN]
    assert next(e for e in logs if e["event"] == "mandates_invalidated")["employer_kvk"] == EMP
    after = await b.lookup(ADMIN)
    assert after.origin == "registry"
    assert after.mandates[0].status is MandateStatus.REVOKED
    assert reg.calls == 2


async def test_invalidation_during_a_lookup_makes_it_fetch_again(store: Store) -> None:
    """A revocation pushed while a lookup is in flight is not overwritten by the older answer."""
    reg = FakeRegistry()
    reg.gate = asyncio.Event()
    svc = service(store, reg)
    pending = asyncio.create_task(svc.lookup(ADMIN))
    await reg.entered.wait()
    await svc.invalidate(ADMIN)  # the registry changed while our request was out
    reg.mandates[ADMIN] = []
    reg.gate.set()
    result = await pending
    assert reg.calls == 2
    assert result.mandates == ()
    assert (await svc.lookup(ADMIN)).mandates == ()


async def test_keys_share_a_hash_tag_and_all_expire(store: Store) -> None:
    """Every key is hash-tagged on the administrator KvK and carries a TTL; the lock is released."""
    clock, reg = FakeClock(T0), FakeRegistry()
    svc = service(store, reg, clock, failure_hold=2)
    await svc.lookup(ADMIN)
    set_ttl = await store.ttl("mandates:{11111111}:set")
    assert set_ttl is not None
    assert R - 5 < set_ttl <= R  # kept only while it may be used
    assert await store.get("mandates:{11111111}:lock") is None
    await svc.invalidate(ADMIN)
    assert await store.ttl("mandates:{11111111}:inv") is not None
    reg.down = True
    with pytest.raises(RegistryUnavailable):
        await svc.lookup(ADMIN)
    failed_ttl = await store.ttl("mandates:{11111111}:failed")
    assert failed_ttl is not None
    assert failed_ttl <= 2


async def test_store_outage_propagates_as_store_unavailable() -> None:
    """Without a store there is no lookup: StoreUnavailable, never a registry call around it."""
    store = MemoryStore()
    await store.close()
    reg = FakeRegistry()
    svc = service(store, reg)
    with pytest.raises(StoreUnavailable):
        await svc.lookup(ADMIN)
    assert reg.calls == 0


async def test_decide_applies_the_rules_for_both_modes(store: Store) -> None:
    """decide() looks up the administrator and applies the rules (chain: the one employer)."""
    reg = FakeRegistry([m(EMP), m("30000002")])
    svc = service(store, reg)

    direct, mset = await svc.decide(_ident(ADMIN), now=T0)
    assert [e.kvk for e in direct.allowed] == [EMP, "30000002"]
    assert mset is not None
    assert mset.administrator_kvk == ADMIN
    chain, _ = await svc.decide(_ident("30000002", ADMIN), now=T0, purpose="recheck")
    assert [e.kvk for e in chain.allowed] == ["30000002"]
    refused, _ = await svc.decide(_ident("30000009", ADMIN), now=T0, purpose="recheck")
    assert refused.refusal == "chain_without_mandate"
    no_kvk, none = await svc.decide(_ident(None), now=T0)
    assert no_kvk.refusal == "administrator_kvk_missing"
    assert none is None
    assert reg.calls == 1


async def test_lookup_audit_events_carry_counts_not_lists(store: Store) -> None:
    """The lookup audit event says how many mandates and where they came from, not which."""
    svc = service(store, FakeRegistry([m(EMP), m("30000002")]))
    with capture_logs() as logs:
        await svc.lookup(ADMIN, audit_context={"request_id": "r-3", "session_ref": "s"})
    (event,) = [e for e in logs if e["event"] == "mandate_lookup_succeeded"]
    assert event["mandates"] == 2
    assert event["origin"] == "registry"
    assert event["request_id"] == "r-3"
    assert EMP not in repr(event)


async def test_malformed_kvk_is_a_programming_error(store: Store) -> None:
    """lookup() and invalidate() refuse anything but an 8-digit KvK number."""
    svc = service(store, FakeRegistry())
    with pytest.raises(ValueError, match="8 digits"):
        await svc.lookup("1234")
    with pytest.raises(ValueError, match="8 digits"):
        await svc.invalidate("abc")


class BrokenRegistry(FakeRegistry):
    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        raise KeyError("bug in a source")


async def test_a_crashing_source_fails_closed_as_registry_unavailable(store: Store) -> None:
    """An unexpected error inside a source becomes RegistryUnavailable with a log event."""
    svc = service(store, BrokenRegistry())
    with capture_logs() as logs, pytest.raises(RegistryUnavailable, match="KeyError"):
        await svc.lookup(ADMIN)
    assert "mandate_source_crashed" in [e["event"] for e in logs]


async def test_an_old_failure_marker_expiring_is_not_a_new_failure(store: Store) -> None:
    """A failure marker from before we started waiting that merely expires does not fail us."""
    reg = FakeRegistry()
    await store.set("mandates:{11111111}:failed", b"earlier", 0.1)
    await store.add("mandates:{11111111}:lock", b"crashed", 0.3)
    svc = service(store, reg)
    assert (await svc.lookup(ADMIN)).origin == "registry"
