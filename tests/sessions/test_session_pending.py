"""Pending logins and logouts are one mechanism: each refusal holds for both, on each store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from gateway.errors import LoginExpired, SamlInvalid
from gateway.sessions.keys import login_key, logout_key
from gateway.sessions.pending import LoginStateStore, PendingLogout, PendingLogouts
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store

COOKIE = "c" * 43
OTHER_BROWSER = "o" * 43


@dataclass(frozen=True)
class Kind:
    """Start and finish one kind of pending exchange through its public API."""

    name: str
    error: type[Exception]
    key: Callable[[str, str], str]
    start: Callable[[Store, str], Awaitable[None]]
    finish: Callable[[Store, str | None, str | None], Awaitable[str]]
    """Returns the request ID the finished exchange answered."""


async def _login_start(store: Store, relay_state: str) -> None:
    logins = LoginStateStore(store, SessionSettings())
    await logins.begin("/", request_id="_req", relay_state=relay_state, existing_cookie=COOKIE)


async def _login_finish(store: Store, cookie: str | None, relay_state: str | None) -> str:
    return (await LoginStateStore(store, SessionSettings()).consume(cookie, relay_state)).request_id


async def _logout_start(store: Store, relay_state: str) -> None:
    await PendingLogouts(store, 300).begin(COOKIE, relay_state, PendingLogout("_req", "ref"))


async def _logout_finish(store: Store, cookie: str | None, relay_state: str | None) -> str:
    return (await PendingLogouts(store, 300).take(cookie, relay_state)).request_id


KINDS = [
    Kind("login", LoginExpired, login_key, _login_start, _login_finish),
    Kind("logout", SamlInvalid, logout_key, _logout_start, _logout_finish),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("cookie", "relay_state"),
    [
        (None, "rs-1"),  # unsolicited: the browser has no pre-login cookie
        ("not-a-cookie", "rs-1"),
        (OTHER_BROWSER, "rs-1"),  # another browser brings the response
        (COOKIE, None),  # no RelayState
        (COOKIE, "rs-2"),  # another RelayState
        (COOKIE, "r" * 81),  # longer than SAML allows
    ],
)
async def test_only_the_same_browser_and_relay_state_finish_it(
    store: Store, kind: Kind, cookie: str | None, relay_state: str | None
) -> None:
    """A wrong or missing browser cookie or RelayState is refused and leaves the entry usable."""
    await kind.start(store, "rs-1")
    with pytest.raises(kind.error):
        await kind.finish(store, cookie, relay_state)
    assert await kind.finish(store, COOKIE, "rs-1") == "_req"


async def test_finishes_once(store: Store, kind: Kind) -> None:
    """The second use of the same browser cookie and RelayState finds nothing (replay)."""
    await kind.start(store, "rs-1")
    assert await kind.finish(store, COOKIE, "rs-1") == "_req"
    with pytest.raises(kind.error):
        await kind.finish(store, COOKIE, "rs-1")


async def test_a_corrupt_entry_is_refused(store: Store, kind: Kind) -> None:
    """An entry under the right key that is not a record of ours is refused, not a 500."""
    for blob in (b"not json", b"[1, 2]", b'{"rid": "_req"}', b'{"rs": "rs-1"}'):
        await store.set(kind.key(COOKIE, "rs-1"), blob, 60)
        with pytest.raises(kind.error):
            await kind.finish(store, COOKIE, "rs-1")


async def test_the_entry_is_stored_under_its_documented_key_with_the_ttl(
    store: Store, kind: Kind
) -> None:
    """The entry lives under ``{kind}:{h(cookie)}:h(relay)`` (gateway/sessions/keys.py), 300 s."""
    await kind.start(store, "rs-1")
    key = kind.key(COOKIE, "rs-1")
    assert key.startswith(f"{kind.name}:{{")
    left = await store.ttl(key)
    assert left is not None and 299 < left <= 300


async def test_an_oversized_relay_state_is_never_stored(store: Store, kind: Kind) -> None:
    """Starting with a RelayState over SAML's 80 bytes fails before anything is stored."""
    with pytest.raises(ValueError, match="80 bytes"):
        await kind.start(store, "r" * 81)
