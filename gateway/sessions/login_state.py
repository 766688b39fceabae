"""Pending logins: the AuthnRequest ID and ``next`` path, bound to one browser, used once.

``begin`` stores ``{request_id, next, relay_state, created}`` under
``login:{h(prelogin cookie)}:h(request id)`` for ``prelogin_ttl``; the caller sets
the pre-login cookie to the returned value. ``consume`` atomically *takes* the
entry for (this browser's cookie, the response's InResponseTo). So:

- a response for a request this browser did not start (another browser, an
  unsolicited response, a forged InResponseTo) finds nothing: ``LoginExpired``;
- a second use of the same response finds nothing: ``LoginExpired`` (replay);
- a wrong browser's attempt does not consume the real browser's entry;
- several tabs of one browser may each have a login pending (one cookie value,
  one entry per request ID; ``begin`` reuses the browser's existing cookie).

State lives in the store, so a login started on replica A completes on B.

``relay_state`` is an opaque random key (22 characters, well under SAML's
80-byte limit) the SAML layer may send as RelayState; if the broker returns one,
it must match the pending entry. It carries no data, so nothing in it can
redirect the user (``next`` stays server-side and is checked by
``safe_next_path`` on the way in).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import LoginExpired
from gateway.sessions.keys import login_key
from gateway.sessions.manager import utcnow
from gateway.sessions.next_path import safe_next_path
from gateway.sessions.settings import SessionSettings
from gateway.store.base import Store

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
            relay_state=secrets.token_urlsafe(16),
            next_path=safe_next_path(next_path, forbidden_prefixes=forbidden_prefixes),
            created_at=self._clock(),
        )
        record = {
            "rid": pending.request_id,
            "next": pending.next_path,
            "rs": pending.relay_state,
            "ca": pending.created_at.isoformat(),
        }
        await self._store.set(
            login_key(cookie, pending.request_id),
            json.dumps(record, separators=(",", ":")).encode(),
            self._settings.prelogin_ttl.total_seconds(),
        )
        return pending

    async def consume(
        self,
        prelogin_cookie: str | None,
        in_response_to: str | None,
        *,
        relay_state: str | None = None,
    ) -> PendingLogin:
        """Take the pending login this response answers, once; else ``LoginExpired``.

        ``relay_state``: pass what the broker sent back, if anything; a mismatch fails.
        """
        if not prelogin_cookie or not _COOKIE_RE.match(prelogin_cookie):
            raise LoginExpired("no pre-login cookie")
        if not in_response_to:
            raise LoginExpired("response without InResponseTo (unsolicited)")
        if relay_state is not None and len(relay_state.encode()) > RELAY_STATE_MAX:
            raise LoginExpired("RelayState longer than 80 bytes")
        blob = await self._store.take(login_key(prelogin_cookie, in_response_to))
        if blob is None:
            raise LoginExpired("no pending login for this browser and InResponseTo")
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
        # The key already binds the request ID; comparing again guards against a
        # hash collision or a key written by something else.
        if not hmac.compare_digest(pending.request_id, in_response_to):
            raise LoginExpired("InResponseTo does not match the pending request")
        if relay_state is not None and not hmac.compare_digest(relay_state, pending.relay_state):
            raise LoginExpired("RelayState does not match the pending login")
        return pending
