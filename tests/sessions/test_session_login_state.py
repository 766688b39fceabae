"""Pending logins and the replay cache on each store: single use, bound to one browser."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.errors import LoginExpired
from gateway.sessions.keys import replay_key
from gateway.sessions.login_state import LoginStateStore
from gateway.sessions.replay import ReplayCache
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store
from tests.sessions.conftest import Clock


def _logins(store: Store, **settings: object) -> LoginStateStore:
    return LoginStateStore(store, SessionSettings(**settings))  # type: ignore[arg-type]


async def test_login_completes_once(store: Store) -> None:
    """The browser that started a login completes it once and gets its ``next`` path back."""
    logins = _logins(store)
    pending = await logins.begin("/werkgevers?page=2")
    assert pending.request_id.startswith("_")
    assert len(pending.relay_state.encode()) <= 80
    done = await logins.consume(pending.prelogin_cookie, pending.relay_state)
    assert done.next_path == "/werkgevers?page=2"
    assert done.request_id == pending.request_id
    with pytest.raises(LoginExpired):
        await logins.consume(pending.prelogin_cookie, pending.relay_state)


async def test_given_request_id_and_relay_state_are_used(store: Store) -> None:
    """The SAML layer may supply the AuthnRequest ID and RelayState it sent."""
    logins = _logins(store)
    pending = await logins.begin("/", request_id="_abc123", relay_state="opaque-key")
    assert pending.request_id == "_abc123"
    done = await logins.consume(pending.prelogin_cookie, "opaque-key")
    assert done.request_id == "_abc123"


async def test_other_browser_is_refused_and_does_not_consume(store: Store) -> None:
    """A response brought by another browser fails and leaves the real login usable."""
    logins = _logins(store)
    victim = await logins.begin("/a")
    attacker = await logins.begin("/b")
    with pytest.raises(LoginExpired):
        await logins.consume(attacker.prelogin_cookie, victim.relay_state)
    with pytest.raises(LoginExpired):
        await logins.consume(None, victim.relay_state)
    assert (await logins.consume(victim.prelogin_cookie, victim.relay_state)).next_path == "/a"


@pytest.mark.parametrize("relay_state", [None, "", "forged", "x" * 81])
async def test_missing_unknown_or_oversized_relay_state_is_refused(
    store: Store, relay_state: str | None
) -> None:
    """A response without, with a foreign, or with an over-long RelayState is refused."""
    logins = _logins(store)
    pending = await logins.begin("/")
    with pytest.raises(LoginExpired):
        await logins.consume(pending.prelogin_cookie, relay_state)
    assert (await logins.consume(pending.prelogin_cookie, pending.relay_state)).next_path == "/"


async def test_oversized_relay_state_is_never_sent(store: Store) -> None:
    """begin refuses a RelayState over SAML's 80-byte limit."""
    with pytest.raises(ValueError, match="80 bytes"):
        await _logins(store).begin("/", relay_state="r" * 81)


async def test_pending_login_expires(store: Store) -> None:
    """A login not completed within the pre-login TTL fails."""
    logins = _logins(store, prelogin_ttl=dt.timedelta(seconds=0.2))
    pending = await logins.begin("/")
    await asyncio.sleep(0.35)
    with pytest.raises(LoginExpired):
        await logins.consume(pending.prelogin_cookie, pending.relay_state)


async def test_concurrent_completions_have_one_winner(store: Store) -> None:
    """Of many simultaneous uses of one response exactly one succeeds."""
    logins = _logins(store)
    pending = await logins.begin("/")
    results = await asyncio.gather(
        *(logins.consume(pending.prelogin_cookie, pending.relay_state) for _ in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, LoginExpired) for r in results if isinstance(r, BaseException))


async def test_two_tabs_of_one_browser_each_complete(store: Store) -> None:
    """A second login in the same browser reuses its cookie and both logins can finish."""
    logins = _logins(store)
    first = await logins.begin("/one")
    second = await logins.begin("/two", existing_cookie=first.prelogin_cookie)
    assert second.prelogin_cookie == first.prelogin_cookie
    assert (await logins.consume(first.prelogin_cookie, second.relay_state)).next_path == "/two"
    assert (await logins.consume(first.prelogin_cookie, first.relay_state)).next_path == "/one"


async def test_unsafe_next_is_replaced_by_root(store: Store) -> None:
    """An off-site ``next`` never survives into the pending login."""
    logins = _logins(store)
    pending = await logins.begin("//evil.example/")
    assert pending.next_path == "/"
    gw = await logins.begin("/_gateway/logout", forbidden_prefixes=("/_gateway/",))
    assert gw.next_path == "/"


async def test_login_started_on_one_replica_completes_on_another(store: Store) -> None:
    """Pending logins live in the store, so any replica can complete them."""
    a, b = _logins(store), _logins(store)
    pending = await a.begin("/x")
    assert (await b.consume(pending.prelogin_cookie, pending.relay_state)).next_path == "/x"


async def test_replay_cache_accepts_an_assertion_once(store: Store, clock: Clock) -> None:
    """An assertion ID is accepted once, also when the second try reaches another replica."""
    a = ReplayCache(store, clock=clock)
    b = ReplayCache(store, clock=clock)
    expiry = clock.now + dt.timedelta(minutes=5)
    assert await a.remember("_assertion1", expiry, issuer="urn:broker") is True
    assert await b.remember("_assertion1", expiry, issuer="urn:broker") is False
    assert await a.remember("_assertion1", expiry, issuer="urn:other") is True
    assert await a.remember("_assertion2", expiry, issuer="urn:broker") is True


async def test_replay_entry_lives_until_expiry_plus_skew(store: Store, clock: Clock) -> None:
    """A replay entry is kept until NotOnOrAfter plus the skew; an expired one still blocks."""
    cache = ReplayCache(store, clock=clock, clock_skew=dt.timedelta(seconds=0.3))
    assert await cache.remember("_a", clock.now + dt.timedelta(minutes=10)) is True
    left = await store.ttl(replay_key("", "_a"))
    assert left is not None
    assert 600 < left <= 601
    assert await cache.remember("_b", clock.now - dt.timedelta(minutes=1)) is True
    assert await cache.remember("_b", clock.now - dt.timedelta(minutes=1)) is False
