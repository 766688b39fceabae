"""Pending logins and logouts: state a browser leaves with us while it is at the broker.

Both are one mechanism, ``BrowserBoundState``: a small JSON record stored under
``{kind}:{h(browser cookie)}:h(relay state)`` (``kind`` is ``login`` or
``logout``; ``gateway.sessions.keys``) for ``prelogin_ttl``, and *taken* (read
and deleted in one step) by what the browser brings back *before* any message
from the broker is looked at: its pre-login cookie and the RelayState. So

- a response brought by a browser that did not start the exchange (another
  browser, an unsolicited response) finds nothing;
- a second use finds nothing (replay);
- a RelayState over SAML's 80-byte limit is never sent and never looked up.

The caller then requires the broker's message to answer exactly the request
ID in the record (``InResponseTo``). State lives in the store, so an exchange
started on replica A completes on B. Keys hold only hashes of the cookie and
RelayState; ``relay_state`` is an opaque random key (22 characters) carrying no
data, so nothing in it can redirect the user.

Logins (``LoginStateStore``) record ``{request_id, next, created}``. Several
tabs of one browser may each have a login pending (one cookie value, one entry
per RelayState; ``begin`` reuses the browser's existing cookie), at most
``sessions.login_limits.pending_per_browser`` of them: each browser has a list
of its pending logins in the store (``Store.push_bounded``), and starting one
more deletes the oldest, so a client that keeps its cookie cannot pile up state
either (a client that drops it is bounded by the rate limit,
``gateway.sessions.login_limits``). A ``next`` longer than
``login_limits.next_max_length`` is replaced by ``/``, like an unsafe one: a
login never stores more than that, and cutting it short could name another
page (``next`` stays server-side and is checked by ``safe_next_path`` on the
way in and out). A login that finds nothing is ``LoginExpired``.

Logouts (``PendingLogouts``) record ``{request_id, session ref, who}`` when the
gateway sends a LogoutRequest; the browser cookie is the pre-login cookie (the
session cookie is gone by then: the local session ends first). A LogoutResponse
that finds nothing is ``SamlInvalid("logout_<reason>")``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from gateway.errors import LoginExpired, SamlInvalid
from gateway.sessions.keys import digest, pending_key, pending_list_key
from gateway.sessions.manager import utcnow
from gateway.sessions.next_path import safe_next_path
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store

_log = structlog.get_logger("gateway.sessions")

_COOKIE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
RELAY_STATE_MAX = 80

Reason = Literal[
    "browser_cookie_missing",
    "relay_state_missing",
    "relay_state_too_long",
    "not_pending",
    "state_corrupt",
    "relay_state_mismatch",
]


class PendingGone(Exception):
    """Nothing usable is pending for this browser and RelayState; ``reason`` says why."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


@dataclass(frozen=True)
class Taken:
    """A record taken from the store, with the browser cookie and RelayState that found it."""

    browser_cookie: str
    relay_state: str
    record: dict[str, Any]


def browser_cookie_value(existing: str | None) -> str:
    """Reuse the browser's pre-login cookie value when well-formed, else a fresh one."""
    if existing and _COOKIE_RE.match(existing):
        return existing
    return secrets.token_urlsafe(32)


def new_relay_state() -> str:
    """A fresh opaque RelayState: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def new_request_id() -> str:
    """A fresh AuthnRequest ID: ``_`` + 160 random bits in hex (a valid xsd:ID)."""
    return "_" + secrets.token_hex(20)


class BrowserBoundState:
    """Single-use JSON records of one ``kind``, keyed by (browser cookie, RelayState)."""

    def __init__(
        self,
        store: Store,
        kind: Literal["login", "logout"],
        ttl_seconds: float,
        *,
        per_browser: int | None = None,
    ) -> None:
        self._store = store
        self._kind = kind
        self._ttl = ttl_seconds
        self._per_browser = per_browser

    async def put(
        self, browser_cookie: str, relay_state: str, record: Mapping[str, str | None]
    ) -> None:
        """Store ``record`` for this browser and RelayState until the TTL ends.

        With ``per_browser``, the browser's oldest records beyond that many are deleted.
        """
        if not _COOKIE_RE.match(browser_cookie):
            raise ValueError("malformed browser cookie")
        if len(relay_state.encode()) > RELAY_STATE_MAX:
            raise ValueError("RelayState longer than 80 bytes")
        blob = json.dumps({**record, "rs": relay_state}, separators=(",", ":")).encode()
        relay_hash = digest(relay_state)
        # The entry first, then the list: whatever the list drops was written before
        # it was listed, so the delete below always finds it.
        await self._store.set(pending_key(self._kind, browser_cookie, relay_hash), blob, self._ttl)
        if self._per_browser is None:
            return
        dropped = await self._store.push_bounded(
            pending_list_key(self._kind, browser_cookie),
            relay_hash.encode(),
            self._per_browser,
            self._ttl,
        )
        if dropped:
            await asyncio.gather(
                *(
                    self._store.delete(pending_key(self._kind, browser_cookie, old.decode()))
                    for old in dropped
                )
            )
            _log.info(
                f"pending_{self._kind}s_dropped",
                count=len(dropped),
                reason=f"newer {self._kind} started",
            )

    async def take(self, browser_cookie: str | None, relay_state: str | None) -> Taken:
        """This browser's record for ``relay_state``, once; else ``PendingGone``."""
        if not browser_cookie or not _COOKIE_RE.match(browser_cookie):
            raise PendingGone("browser_cookie_missing")
        if not relay_state:
            raise PendingGone("relay_state_missing")
        if len(relay_state.encode()) > RELAY_STATE_MAX:
            raise PendingGone("relay_state_too_long")
        key = pending_key(self._kind, browser_cookie, digest(relay_state))
        blob = await self._store.take(key)
        if blob is None:
            # Replayed, expired, unsolicited, or another browser's response.
            raise PendingGone("not_pending")
        try:
            record = json.loads(blob)
            if not isinstance(record, dict) or not isinstance(record.get("rs"), str):
                raise TypeError("not a record")
            stored: str = record["rs"]
        except (ValueError, KeyError, TypeError):
            raise PendingGone("state_corrupt") from None
        # The key already binds the RelayState; comparing again guards against a
        # hash collision or a key written by something else.
        if not hmac.compare_digest(relay_state.encode(), stored.encode()):
            raise PendingGone("relay_state_mismatch")
        return Taken(browser_cookie, relay_state, record)


# -- logins ------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingLogin:
    """A started login: what the SAML layer needs to send, and what comes back."""

    prelogin_cookie: str
    """Value for the pre-login cookie (a secret: never log it)."""
    request_id: str
    """The AuthnRequest ID (an xsd:ID: starts with ``_``)."""
    relay_state: str
    """Opaque key to send as RelayState (≤ 80 bytes)."""
    next_path: str
    created_at: dt.datetime


# What a refused login's LoginExpired says (logs and audit only, never shown).
_LOGIN_GONE: dict[Reason, str] = {
    "browser_cookie_missing": "no pre-login cookie",
    "relay_state_missing": "response without RelayState (unsolicited)",
    "relay_state_too_long": "RelayState longer than 80 bytes",
    "not_pending": "no pending login for this browser and RelayState",
    "state_corrupt": "corrupt pending login",
    "relay_state_mismatch": "RelayState does not match the pending login",
}


class LoginStateStore:
    """Pending logins on top of any ``Store``."""

    def __init__(
        self,
        store: Store,
        settings: SessionSettings,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._state = BrowserBoundState(
            store,
            "login",
            settings.prelogin_ttl.total_seconds(),
            per_browser=settings.login_limits.pending_per_browser,
        )

    async def begin(
        self,
        next_path: str | None,
        *,
        request_id: str | None = None,
        relay_state: str | None = None,
        existing_cookie: str | None = None,
        forbidden_prefixes: tuple[str, ...] = (),
    ) -> PendingLogin:
        """Record a new pending login; ``next_path`` is sanitised with ``safe_next_path``."""
        pending = PendingLogin(
            prelogin_cookie=browser_cookie_value(existing_cookie),
            request_id=request_id or new_request_id(),
            relay_state=relay_state or new_relay_state(),
            next_path=safe_next_path(
                next_path,
                forbidden_prefixes=forbidden_prefixes,
                max_length=self._settings.login_limits.next_max_length,
            ),
            created_at=self._clock(),
        )
        record = {
            "rid": pending.request_id,
            "next": pending.next_path,
            "ca": pending.created_at.isoformat(),
        }
        await self._state.put(pending.prelogin_cookie, pending.relay_state, record)
        return pending

    async def consume(self, prelogin_cookie: str | None, relay_state: str | None) -> PendingLogin:
        """Take this browser's pending login for ``relay_state``, once; else ``LoginExpired``.

        The caller must then require the response's InResponseTo to equal the
        returned ``request_id`` (the SAML layer's ``Expectation`` does).
        """
        try:
            taken = await self._state.take(prelogin_cookie, relay_state)
        except PendingGone as gone:
            raise LoginExpired(_LOGIN_GONE[gone.reason]) from None
        record = taken.record
        try:
            return PendingLogin(
                prelogin_cookie=taken.browser_cookie,
                request_id=record["rid"],
                relay_state=taken.relay_state,
                next_path=safe_next_path(record["next"]),
                created_at=dt.datetime.fromisoformat(record["ca"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LoginExpired(_LOGIN_GONE["state_corrupt"]) from exc


# -- logouts -----------------------------------------------------------------------


@dataclass(frozen=True)
class PendingLogout:
    """One sent LogoutRequest and whose session it ended (for the audit on return)."""

    request_id: str
    session_ref: str
    administrator_kvk: str | None = None
    acting_subject: str | None = None


class PendingLogouts:
    """Pending LogoutRequests on top of any ``Store``."""

    def __init__(self, store: Store, ttl_seconds: float) -> None:
        self._state = BrowserBoundState(store, "logout", ttl_seconds)

    async def begin(self, browser_cookie: str, relay_state: str, pending: PendingLogout) -> None:
        """Remember ``pending`` for this browser and RelayState until the TTL ends."""
        record = {
            "rid": pending.request_id,
            "ref": pending.session_ref,
            "adm": pending.administrator_kvk,
            "as": pending.acting_subject,
        }
        await self._state.put(browser_cookie, relay_state, record)

    async def take(self, browser_cookie: str | None, relay_state: str | None) -> PendingLogout:
        """This browser's pending logout for ``relay_state``, once; else ``SamlInvalid``."""
        try:
            record = (await self._state.take(browser_cookie, relay_state)).record
        except PendingGone as gone:
            raise SamlInvalid(f"logout_{gone.reason}") from None
        try:
            return PendingLogout(
                request_id=str(record["rid"]),
                session_ref=str(record["ref"]),
                administrator_kvk=record.get("adm"),
                acting_subject=record.get("as"),
            )
        except KeyError as exc:
            raise SamlInvalid("logout_state_corrupt") from exc
