"""The policy's async shell (``gateway.gate``) on real sessions and a real token minter.

These run the policy without a server, with the session cache on (the flow
tests' login world turns it off), so the fast path that answers from the
cache is covered: it must still see revocation pushes, due re-checks and
withdrawn chain mandates, and a token must be re-signed after every change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway import gate
from gateway.config import RouteSettings
from gateway.errors import MandateWithdrawn, NotAuthenticated
from gateway.identity import Employer, Identity
from gateway.mandates.freshness import Freshness
from gateway.mandates.rules import Decision
from gateway.policy import Redirect, RequestFacts
from gateway.services import Services
from gateway.sessions import Session, SessionManager, SessionSettings
from gateway.store.memory import MemoryStore
from gateway.target import parse_target
from gateway.tokens import KeySet, TokenKeyFiles, TokenMinter, TokenSettings, init_keys_dir
from tests.sessions.conftest import make_employers, make_identity
from tests.support.clock import FakeClock

ROUTE = RouteSettings.model_validate(
    {"name": "portal", "match": {"path": "/portaal"}, "upstream": "http://127.0.0.1:9"}
)


@dataclass
class FakeMandates:
    """The registry as the re-check sees it: the current allowed set, and the push
    moment each re-check asked its answer to be newer than (``None``: no push)."""

    allowed: tuple[Employer, ...]
    calls: list[dt.datetime | None] = field(default_factory=list)

    async def decide(
        self, identity: Identity, *, not_before: dt.datetime | None = None, **_: Any
    ) -> tuple[Decision, None]:
        self.calls.append(not_before)
        decision = Decision(
            mode=identity.mode,
            administrator_kvk=identity.administrator_kvk,
            employer_kvk=None,
            allowed=self.allowed,
        )
        return decision, None


@dataclass
class World:
    services: Services
    manager: SessionManager
    mandates: FakeMandates
    minter: TokenMinter
    clock: FakeClock

    async def current(self, session: Session | None) -> Session | Redirect:
        return await gate.current_session(
            self.services,
            session.id if session else None,
            "req-1",
            browser=True,
            return_to="/portaal/start",
        )

    async def token(self, session: Session) -> str:
        facts = RequestFacts("GET", parse_target("/portaal/start"), {}, browser=True)
        decision = await gate.authorize(self.services, ROUTE, facts, session.id, "req-1")
        assert isinstance(decision, gate.Forward)
        return decision.headers["X-Gateway-Identity"]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    settings = SessionSettings(insecure_dev_cookies=True, cache_seconds=30)
    manager = SessionManager(MemoryStore(), settings, ref_secret=b"s" * 32, clock=clock.now)
    init_keys_dir(tmp_path / "keys", "ES256")
    tokens = TokenSettings(
        issuer="https://gw.example", keys=TokenKeyFiles.in_dir(tmp_path / "keys")
    )
    minter = TokenMinter(tokens, KeySet.from_settings(tokens), clock=clock.time)
    mandates = FakeMandates(make_employers(3))
    config = SimpleNamespace(
        sessions=settings, tokens=tokens, server=SimpleNamespace(reserved_prefix="/_gateway/")
    )
    services = SimpleNamespace(
        config=config, sessions=manager, minter=minter, mandates=mandates, invalidated={}
    )
    yield World(cast(Services, services), manager, mandates, minter, clock)
    await manager.aclose()


async def test_a_cached_session_with_nothing_due_is_served_from_the_cache(world: World) -> None:
    """The usual request: the cached session object itself, no registry call."""
    session = await world.manager.create(make_identity(), make_employers(3))
    assert await world.current(session) is session
    world.clock.advance(seconds=29)
    assert await world.current(session) is session
    assert world.mandates.calls == []


async def test_no_session_still_sends_the_browser_to_the_login(world: World) -> None:
    """No cookie, or one for no session: a redirect for browsers, 401 for API clients."""
    found = await world.current(None)
    assert isinstance(found, Redirect)
    assert found.location.startswith("/_gateway/login?next=")
    with pytest.raises(NotAuthenticated):
        await gate.current_session(
            world.services, None, "req-1", browser=False, return_to="/portaal/x"
        )


async def test_a_push_reaches_a_cached_session_on_its_next_request(world: World) -> None:
    """A revocation push for the administrator forces a re-check (bypassing the mandate
    cache) even while the session is cached and otherwise quiet; then it is quiet again."""
    employers = make_employers(3)
    session = await world.manager.create(make_identity(), employers)
    assert await world.current(session) is session
    world.services.invalidated["99999999"] = world.clock.now()  # another administrator
    assert await world.current(session) is session
    assert world.mandates.calls == []
    world.clock.advance(seconds=1)
    world.mandates.allowed = employers[:2]
    pushed = world.clock.now()
    world.services.invalidated["12345678"] = pushed
    rechecked = await world.current(session)
    assert isinstance(rechecked, Session)
    assert rechecked.allowed == employers[:2]
    assert world.mandates.calls == [pushed]  # an answer from after the push
    world.clock.advance(seconds=1)
    assert await world.current(session) is rechecked  # the push is older than the check
    assert world.mandates.calls == [pushed]


async def test_a_due_recheck_happens_on_a_cached_session(world: World) -> None:
    """After the re-check interval the cached session is checked again (cache allowed)."""
    session = await world.manager.create(make_identity(), make_employers(3))
    assert await world.current(session) is session
    world.clock.advance(seconds=60)
    found = await world.current(session)
    assert isinstance(found, Session)
    assert world.mandates.calls == [None]
    assert found.last_mandate_check == world.clock.now()


async def test_a_chain_session_without_its_mandate_ends_even_from_the_cache(world: World) -> None:
    """A cached chain session whose one employer is gone is destroyed, not served."""
    session = await world.manager.create(make_identity(chain=True), ())
    with pytest.raises(MandateWithdrawn):
        await world.current(session)
    assert await world.manager.load(session.id) is None


async def test_the_token_is_reused_until_the_session_changes(world: World) -> None:
    """Requests of one session version share a token; a switch or a touch-free change
    re-signs; close to expiry it is renewed."""
    session = await world.manager.create(make_identity(), make_employers(3))
    first = await world.token(session)
    assert await world.token(session) == first
    assert world.minter.signs == 1
    switched = await world.manager.update(session, active_employer=make_employers(3)[1].kvk)
    second = await world.token(switched)
    assert second != first
    assert world.minter.signs == 2
    world.clock.advance(seconds=49)  # 60 s lifetime, renewed with 20 % left
    assert await world.token(switched) != second
    assert world.minter.signs == 3


def test_push_pending_compares_with_the_last_check() -> None:
    """Only a push newer than the session's last mandate check counts."""
    now = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    session = Session(
        id="x" * 43,
        identity=make_identity(),
        allowed=(),
        active_employer=None,
        created_at=now,
        last_seen=now,
        last_mandate_check=now,
        mandate_check_ok_at=now,
        csrf_secret="c",
    )

    freshness = Freshness(dt.timedelta(seconds=60), dt.timedelta(minutes=15))

    def pending(invalidated: dict[str, dt.datetime]) -> bool:
        services = SimpleNamespace(
            invalidated=invalidated, sessions=SimpleNamespace(freshness=freshness)
        )
        return gate._push_pending(cast(Services, services), session)

    assert not pending({})
    assert not pending({"12345678": now})
    assert not pending({"99999999": now + dt.timedelta(seconds=1)})
    assert pending({"12345678": now + dt.timedelta(microseconds=1)})
