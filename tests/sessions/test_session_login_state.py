"""Pending logins and the replay cache on each store: single use, bound to one browser."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.errors import LoginExpired
from gateway.sessions.keys import login_key, pending_logins_key, replay_key
from gateway.sessions.pending import LoginStateStore
from gateway.sessions.replay import ReplayCache
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store
from tests.support.clock import FakeClock


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


async def test_replay_cache_accepts_an_assertion_once(store: Store, clock: FakeClock) -> None:
    """An assertion ID is accepted once, also when the second try reaches another replica."""
    a = ReplayCache(store, clock=clock.now)
    b = ReplayCache(store, clock=clock.now)
    expiry = clock.now() + dt.timedelta(minutes=5)
    assert await a.remember("_assertion1", expiry, issuer="urn:broker") is True
    assert await b.remember("_assertion1", expiry, issuer="urn:broker") is False
    assert await a.remember("_assertion1", expiry, issuer="urn:other") is True
    assert await a.remember("_assertion2", expiry, issuer="urn:broker") is True


async def test_replay_entry_lives_until_expiry_plus_skew(store: Store, clock: FakeClock) -> None:
    """A replay entry is kept until NotOnOrAfter plus the skew; an expired one still blocks."""
    cache = ReplayCache(store, clock=clock.now, clock_skew=dt.timedelta(seconds=30))
    assert await cache.remember("_a", clock.now() + dt.timedelta(minutes=10)) is True
    left = await store.ttl(replay_key("", "_a"))
    assert left is not None
    # 630 s were asked for; the real store's clock runs on while the test waits for it,
    # so the skew is large enough that "with the skew" and "without" never overlap.
    assert 610 < left <= 630
    assert await cache.remember("_b", clock.now() - dt.timedelta(minutes=1)) is True
    assert await cache.remember("_b", clock.now() - dt.timedelta(minutes=1)) is False


async def test_a_browser_keeps_at_most_n_pending_logins_the_oldest_go(store: Store) -> None:
    """Seven logins started in one browser with a limit of five: the two oldest are gone."""
    logins = _logins(store, login_limits={"pending_per_browser": 5})
    first = await logins.begin("/0")
    cookie = first.prelogin_cookie
    started = [first] + [await logins.begin(f"/{i}", existing_cookie=cookie) for i in range(1, 7)]
    for pending in started[:2]:
        with pytest.raises(LoginExpired):
            await logins.consume(cookie, pending.relay_state)
    for i, pending in enumerate(started[2:], start=2):
        assert (await logins.consume(cookie, pending.relay_state)).next_path == f"/{i}"
    # Another browser's logins are its own: they do not push this one's out.
    other = await logins.begin("/other")
    assert other.prelogin_cookie != cookie
    again = await logins.begin("/again", existing_cookie=cookie)
    assert (await logins.consume(other.prelogin_cookie, other.relay_state)).next_path == "/other"
    assert (await logins.consume(cookie, again.relay_state)).next_path == "/again"


async def test_concurrent_logins_of_one_browser_never_leave_more_than_n(
    store: Store,
) -> None:
    """Twenty logins started at once in one browser: exactly the limit of them stay usable."""
    logins = _logins(store, login_limits={"pending_per_browser": 3})
    first = await logins.begin("/first")
    cookie = first.prelogin_cookie
    started = await asyncio.gather(
        *(logins.begin(f"/{i}", existing_cookie=cookie) for i in range(20))
    )
    usable = 0
    for pending in [first, *started]:
        try:
            await logins.consume(cookie, pending.relay_state)
            usable += 1
        except LoginExpired:
            pass
    assert usable == 3


async def test_next_longer_than_the_limit_becomes_root_never_cut_short(store: Store) -> None:
    """A ``next`` over ``next_max_length`` is replaced by ``/``; one at the limit is kept."""
    logins = _logins(store, login_limits={"next_max_length": 40})
    at_limit = "/werkgevers?page=" + "9" * 23
    assert len(at_limit) == 40
    assert (await logins.begin(at_limit)).next_path == at_limit
    assert (await logins.begin(at_limit + "9")).next_path == "/"


async def test_pending_login_ttl_is_five_minutes_by_default(store: Store) -> None:
    """By default a pending login (and its browser's list) is kept five minutes, not longer."""
    pending = await _logins(store).begin("/")
    for key in (
        login_key(pending.prelogin_cookie, pending.relay_state),
        pending_logins_key(pending.prelogin_cookie),
    ):
        left = await store.ttl(key)
        assert left is not None and 299 < left <= 300, (key, left)


def test_prelogin_ttl_above_fifteen_minutes_is_refused() -> None:
    """A pending-login TTL over 15 minutes is a configuration error naming the setting."""
    with pytest.raises(ValueError, match="prelogin_ttl must be at most 15 minutes"):
        SessionSettings(prelogin_ttl=dt.timedelta(minutes=16))
    assert SessionSettings(prelogin_ttl=dt.timedelta(minutes=15)).prelogin_ttl.seconds == 900
