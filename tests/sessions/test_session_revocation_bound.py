"""The revocation bound, end to end on a fake clock: logins, sessions, the gate, the mandate cache.

A registry revocation must stop every session of the administrator from using
the employer within the re-check interval R, however many sessions (and
replicas) there are, and a new login must never use an answer older than R.
The scenarios drive the real ``SessionManager``, ``MandateService`` (on a
``MemoryStore``) and ``gate.current_session`` one simulated second at a time;
only the registry at the far edge is a dictionary. The revocation lands right
after the registry answered (the worst moment: that answer is the one that
lives longest).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import pytest

from gateway import gate
from gateway.errors import MandateMissing, RegistryUnavailable
from gateway.identity import Identity, Loa
from gateway.mandates import FileSourceSettings, Mandate, MandateService, MandateSettings
from gateway.mandates.model import MandateStatus
from gateway.services import Services
from gateway.sessions import Session, SessionManager, SessionSettings
from gateway.store.memory import MemoryStore
from tests.support.clock import FakeClock

ADMIN = "12345678"
EMPLOYER = "23456789"  # the employer whose mandate is revoked
OTHER = "30000002"  # stays authorised
R = 15  # seconds: sessions.mandate_recheck_interval (the demo's)


def _mandate(employer: str) -> Mandate:
    return Mandate(
        employer, f"Werkgever {employer}", ADMIN, MandateStatus.ACTIVE, dt.date(2020, 1, 1)
    )


def _identity(*, chain_for: str | None = None) -> Identity:
    if chain_for is None:
        return Identity(
            "pseudonym-direct", ADMIN, Loa.EH3, "svc", dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
        )
    return Identity(
        "pseudonym-chain",
        chain_for,
        Loa.EH3,
        "svc",
        dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
        intermediary_kvk=ADMIN,
    )


@dataclass
class Registry:
    """The fund's registry: answers from a dict; can revoke right after its n-th answer."""

    clock: FakeClock
    employers: set[str] = field(default_factory=lambda: {EMPLOYER, OTHER})
    calls: int = 0
    down: bool = False
    revoke_after_call: int | None = None
    revoked_at: dt.datetime | None = None
    hold: asyncio.Event | None = None
    """When set, answers wait for it (a slow registry)."""
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise RegistryUnavailable("registry down")
        self.calls += 1
        answer = [_mandate(e) for e in sorted(self.employers)]
        if self.calls == self.revoke_after_call:
            self.revoke()
        return answer

    def revoke(self) -> None:
        self.employers.discard(EMPLOYER)
        self.revoked_at = self.clock.now()

    async def close(self) -> None:
        pass


@dataclass
class Replica:
    """One gateway process: its session manager and mandate service on the shared store."""

    services: Services
    manager: SessionManager
    mandates: MandateService
    clock: FakeClock


def _replica(store: MemoryStore, registry: Registry, clock: FakeClock) -> Replica:
    settings = SessionSettings(
        insecure_dev_cookies=True, mandate_recheck_interval=dt.timedelta(seconds=R)
    )
    manager = SessionManager(
        store,
        settings,
        ref_secret=b"s" * 32,
        clock=clock.now,
        monotonic=clock.time,
    )
    mandate_settings = MandateSettings(
        source=FileSourceSettings(path="unused.yaml"), lock_wait=1, lock_poll_interval=0.001
    )
    mandates = MandateService(store, registry, mandate_settings, freshness=manager.freshness)
    config = SimpleNamespace(
        sessions=settings, server=SimpleNamespace(reserved_prefix="/_gateway/")
    )
    services = SimpleNamespace(config=config, sessions=manager, mandates=mandates, invalidated={})
    return Replica(cast(Services, services), manager, mandates, clock)


async def _login(replica: Replica, identity: Identity) -> Session:
    """What the assertion consumer does after a valid assertion: decide, then create."""
    decision, mset = await replica.mandates.decide(identity)
    error = decision.error()
    if error is not None:
        raise error
    fetched_at = mset.fetched_at if mset else None
    return await replica.manager.create(identity, decision.allowed, mandates_fetched_at=fetched_at)


async def _request(replica: Replica, session: Session) -> Session | None:
    """One authenticated request: the session as the gate lets it through (None: ended)."""
    found = await gate.current_session(
        replica.services, session.id, "req", browser=False, return_to="/portaal"
    )
    return found if isinstance(found, Session) else None


# (second session's login, in seconds after the first; the registry answer after which
#  the revocation lands: 1 = the first login's, 2 = the next one, ...; replicas)
CASES = [
    (b_at, revoke_after, replicas)
    for b_at in (1, R // 2, R - 1)
    for revoke_after in (1, 2, 3)
    for replicas in (1, 2)
]


@pytest.mark.parametrize(("b_at", "revoke_after", "replicas"), CASES)
async def test_every_session_drops_a_revoked_employer_within_the_interval(
    b_at: int, revoke_after: int, replicas: int
) -> None:
    """Two sessions of one administrator, each asking every second: neither uses the
    revoked employer R or more seconds after the revocation (no push)."""
    clock = FakeClock()
    store = MemoryStore()
    registry = Registry(clock, revoke_after_call=revoke_after)
    worlds = [_replica(store, registry, clock) for _ in range(replicas)]
    first, second = worlds[0], worlds[-1]
    try:
        sessions: dict[str, tuple[Replica, Session]] = {}
        last_seen_with: dict[str, dt.datetime] = {}
        for second_of_test in range(6 * R):
            if second_of_test == 0:
                sessions["a"] = (first, await _login(first, _identity()))
            if second_of_test == b_at:
                sessions["b"] = (second, await _login(second, _identity()))
            for name, (replica, session) in sessions.items():
                found = await _request(replica, session)
                assert found is not None
                if EMPLOYER in found.allowed_kvks:
                    last_seen_with[name] = clock.now()
            clock.advance(seconds=1)
        assert registry.revoked_at is not None
        delays = {n: (t - registry.revoked_at).total_seconds() for n, t in last_seen_with.items()}
        assert all(d < R for d in delays.values()), delays
    finally:
        await store.close()


async def test_a_chain_login_right_after_a_revocation_is_refused() -> None:
    """A chain login asks the registry: one second after the revocation it is refused,
    although an answer from before the revocation is still in the cache."""
    clock = FakeClock()
    registry = Registry(clock, revoke_after_call=1)
    replica = _replica(MemoryStore(), registry, clock)
    await _login(replica, _identity())  # fills the cache; the revocation follows at once
    clock.advance(seconds=1)
    with pytest.raises(MandateMissing):
        await _login(replica, _identity(chain_for=EMPLOYER))


@pytest.mark.parametrize("age", [1, R // 2, R - 1, R, R + 1])
async def test_a_direct_login_never_uses_an_answer_r_or_more_old(age: int) -> None:
    """A direct login may use a cached answer younger than R, never one R or more old."""
    clock = FakeClock()
    registry = Registry(clock, revoke_after_call=1)
    replica = _replica(MemoryStore(), registry, clock)
    await _login(replica, _identity())
    clock.advance(seconds=age)
    session = await _login(replica, _identity())
    assert (EMPLOYER in session.allowed_kvks) is (age < R)


async def test_a_push_reaches_every_session_at_its_next_request() -> None:
    """With a push the revocation applies to each session at its next request, on every
    replica, long before R (one registry call for the administrator per replica at most)."""
    clock = FakeClock()
    store = MemoryStore()
    registry = Registry(clock)
    replicas = [_replica(store, registry, clock) for _ in range(2)]
    try:
        sessions = [(r, await _login(r, _identity())) for r in replicas for _ in range(2)]
        clock.advance(seconds=1)
        registry.revoke()
        await replicas[0].mandates.invalidate(ADMIN)
        for replica in replicas:  # what the listener does when the message arrives
            replica.services.invalidated[ADMIN] = clock.now()
        clock.advance(seconds=1)
        for replica, session in sessions:
            found = await _request(replica, session)
            assert found is not None and EMPLOYER not in found.allowed_kvks
        assert registry.calls <= 1 + len(replicas)
    finally:
        await store.close()


async def test_requests_during_a_recheck_do_not_use_the_expired_answer() -> None:
    """While one request of a session waits for the registry, its other requests wait for
    the same answer instead of going on with the one that just stopped being fresh."""
    clock = FakeClock()
    registry = Registry(clock)
    replica = _replica(MemoryStore(), registry, clock)
    session = await _login(replica, _identity())
    clock.advance(seconds=R)
    registry.revoke()
    registry.hold, registry.entered = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_request(replica, session))
    await registry.entered.wait()  # the first request holds the refresh lock, asking
    second = asyncio.create_task(_request(replica, session))
    await asyncio.sleep(0.05)
    assert not second.done()
    registry.hold.set()
    for found in await asyncio.gather(first, second):
        assert found is not None and EMPLOYER not in found.allowed_kvks
    assert registry.calls == 2  # the login's and one shared re-check


async def test_a_chain_login_with_the_registry_down_past_r_is_refused() -> None:
    """Registry unreachable: a chain login uses an answer younger than R, never an older one,
    and the refusal says why (503, Dutch first)."""
    clock = FakeClock()
    registry = Registry(clock)
    replica = _replica(MemoryStore(), registry, clock)
    await _login(replica, _identity())
    registry.down = True
    clock.advance(seconds=R - 1)
    chain = await _login(replica, _identity(chain_for=EMPLOYER))
    assert chain.allowed_kvks == {EMPLOYER}
    clock.advance(seconds=1)
    with pytest.raises(RegistryUnavailable) as refused:
        await _login(replica, _identity(chain_for=EMPLOYER))
    assert refused.value.status == 503
    assert refused.value.text_nl.startswith("Met een ketenmachtiging")


def test_default_session_bounds_stay_within_the_mandate_recheck_interval() -> None:
    """The session defaults never outlast the gateway's one-minute bound.

    A cached session copy (``cache_seconds``: only a pub/sub loss nobody noticed
    relies on it) and a ``last_seen`` write (``touch_interval``) are each at most
    the mandate re-check interval R, the bound the docs give for a revocation;
    the idle timeout stays exact to within one touch interval.
    """
    defaults = SessionSettings()
    bound = defaults.mandate_recheck_interval.total_seconds()
    assert bound == 60
    assert 0 < defaults.cache_seconds <= bound
    assert dt.timedelta(0) < defaults.touch_interval <= defaults.mandate_recheck_interval
    assert defaults.idle_timeout - defaults.touch_interval >= dt.timedelta(minutes=14)
