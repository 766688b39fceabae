"""Pending logins: the AuthnRequest ID and ``next`` path, bound to one browser, used once.

``begin`` stores ``{request_id, next, relay_state, created}`` under
``login:{h(prelogin cookie)}:h(relay state)`` for ``prelogin_ttl``; the caller
sets the pre-login cookie to the returned value and sends ``relay_state`` as
the AuthnRequest's RelayState. With the Artifact binding the gateway learns
the response's InResponseTo only after resolving the artifact, so the pending
login is found by what the browser brings back *before* any network call: its
pre-login cookie and the RelayState. ``consume`` atomically *takes* that entry
(strict order: state first, then the message), and the SAML layer then checks
that the response's InResponseTo equals the entry's request ID. So:

- a response brought by a browser that did not start the login (another
  browser, an unsolicited response) finds nothing: ``LoginExpired``;
- a second use finds nothing: ``LoginExpired`` (replay);
- several tabs of one browser may each have a login pending (one cookie value,
  one entry per RelayState; ``begin`` reuses the browser's existing cookie), at
  most ``sessions.login_limits.pending_per_browser`` of them: each browser has a
  list of its pending logins in the store (``Store.push_bounded``), and starting
  one more deletes the oldest, so a client that keeps its cookie cannot pile up
  state either (a client that drops it is bounded by the rate limit,
  ``gateway.sessions.login_limits``).

A ``next`` longer than ``login_limits.next_max_length`` is replaced by ``/``,
like an unsafe one: a login never stores more than that, and cutting it short
could name another page.

State lives in the store, so a login started on replica A completes on B.
``relay_state`` is an opaque random key (22 characters, well under SAML's
80-byte limit). It carries no data, so nothing in it can redirect the user
(``next`` stays server-side and is checked by ``safe_next_path`` on the way in).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway.errors import LoginExpired
from gateway.sessions.keys import digest, login_key, login_key_for, pending_logins_key
from gateway.sessions.manager import utcnow
from gateway.sessions.next_path import safe_next_path
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store

_log = structlog.get_logger("gateway.sessions")

_COOKIE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
RELAY_STATE_MAX = 80


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


def new_relay_state() -> str:
    """A fresh opaque RelayState: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def new_request_id() -> str:
    """A fresh AuthnRequest ID: ``_`` + 160 random bits in hex (a valid xsd:ID)."""
    return "_" + secrets.token_hex(20)


class LoginStateStore:
    """Pending logins on top of any ``Store``."""

    def __init__(
        self,
        store: Store,
        settings: SessionSettings,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock

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
        cookie = (
            existing_cookie
            if existing_cookie and _COOKIE_RE.match(existing_cookie)
            else secrets.token_urlsafe(32)
        )
        pending = PendingLogin(
            prelogin_cookie=cookie,
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
            "rs": pending.relay_state,
            "ca": pending.created_at.isoformat(),
        }
        if len(pending.relay_state.encode()) > RELAY_STATE_MAX:
            raise ValueError("RelayState longer than 80 bytes")
        ttl = self._settings.prelogin_ttl.total_seconds()
        relay_hash = digest(pending.relay_state)
        # The entry first, then the list: whatever the list drops was written before
        # it was listed, so the delete below always finds it.
        await self._store.set(
            login_key_for(cookie, relay_hash),
            json.dumps(record, separators=(",", ":")).encode(),
            ttl,
        )
        dropped = await self._store.push_bounded(
            pending_logins_key(cookie),
            relay_hash.encode(),
            self._settings.login_limits.pending_per_browser,
            ttl,
        )
        if dropped:
            await asyncio.gather(
                *(self._store.delete(login_key_for(cookie, old.decode())) for old in dropped)
            )
            _log.info("pending_logins_dropped", count=len(dropped), reason="newer login started")
        return pending

    async def consume(self, prelogin_cookie: str | None, relay_state: str | None) -> PendingLogin:
        """Take this browser's pending login for ``relay_state``, once; else ``LoginExpired``.

        The caller must then require the response's InResponseTo to equal the
        returned ``request_id`` (the SAML layer's ``Expectation`` does).
        """
        if not prelogin_cookie or not _COOKIE_RE.match(prelogin_cookie):
            raise LoginExpired("no pre-login cookie")
        if not relay_state:
            raise LoginExpired("response without RelayState (unsolicited)")
        if len(relay_state.encode()) > RELAY_STATE_MAX:
            raise LoginExpired("RelayState longer than 80 bytes")
        blob = await self._store.take(login_key(prelogin_cookie, relay_state))
        if blob is None:
            raise LoginExpired("no pending login for this browser and RelayState")
        try:
            record = json.loads(blob)
            pending = PendingLogin(
                prelogin_cookie=prelogin_cookie,
                request_id=record["rid"],
                relay_state=record["rs"],
                next_path=safe_next_path(record["next"]),
                created_at=dt.datetime.fromisoformat(record["ca"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LoginExpired("corrupt pending login") from exc
        # The key already binds the RelayState; comparing again guards against a
        # hash collision or a key written by something else.
        if not hmac.compare_digest(relay_state, pending.relay_state):
            raise LoginExpired("RelayState does not match the pending login")
        return pending
