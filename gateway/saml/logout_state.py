"""Pending single logouts: our LogoutRequest ID, bound to one browser, used once.

The same pattern as pending logins (``gateway.sessions.login_state``): when
the gateway sends a LogoutRequest it stores ``{request ID, session reference,
who}`` under ``logout:{h(browser cookie)}:h(relay state)`` for the pre-login
TTL. The browser cookie is the pre-login cookie (the session cookie is gone by
then: the local session ends first). When the LogoutResponse comes back, the
entry is *taken* by what the browser brings (cookie + RelayState) before the
message is looked at, and the response must answer exactly that request ID.
A replayed, unsolicited or other browser's LogoutResponse therefore finds
nothing. The state is in the store, so a logout started on replica A
completes on B. Keys hold only hashes of the cookie and RelayState.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from gateway.errors import SamlInvalid
from gateway.sessions.keys import digest
from gateway.store.base import Store

_COOKIE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_RELAY_STATE_MAX = 80


@dataclass(frozen=True)
class PendingLogout:
    """One sent LogoutRequest and whose session it ended (for the audit on return)."""

    request_id: str
    session_ref: str
    administrator_kvk: str | None = None
    acting_subject: str | None = None


def logout_key(browser_cookie: str, relay_state: str) -> str:
    return f"logout:{{{digest(browser_cookie)}}}:{digest(relay_state)}"


def browser_cookie_value(existing: str | None) -> str:
    """Reuse the browser's pre-login cookie value when well-formed, else a fresh one."""
    if existing and _COOKIE_RE.match(existing):
        return existing
    return secrets.token_urlsafe(32)


class PendingLogouts:
    """Pending LogoutRequests on top of any ``Store``."""

    def __init__(self, store: Store, ttl_seconds: float) -> None:
        self._store = store
        self._ttl = ttl_seconds

    async def begin(self, browser_cookie: str, relay_state: str, pending: PendingLogout) -> None:
        """Remember ``pending`` for this browser and RelayState until the TTL ends."""
        if not _COOKIE_RE.match(browser_cookie) or len(relay_state.encode()) > _RELAY_STATE_MAX:
            raise ValueError("malformed browser cookie or RelayState")
        record = {
            "rid": pending.request_id,
            "ref": pending.session_ref,
            "adm": pending.administrator_kvk,
            "as": pending.acting_subject,
            "rs": relay_state,
        }
        blob = json.dumps(record, separators=(",", ":")).encode()
        await self._store.set(logout_key(browser_cookie, relay_state), blob, self._ttl)

    async def take(self, browser_cookie: str | None, relay_state: str | None) -> PendingLogout:
        """This browser's pending logout for ``relay_state``, once; else ``SamlInvalid``."""
        if not browser_cookie or not _COOKIE_RE.match(browser_cookie):
            raise SamlInvalid("logout_browser_cookie_missing")
        if not relay_state or len(relay_state.encode()) > _RELAY_STATE_MAX:
            raise SamlInvalid("logout_relay_state_missing")
        blob = await self._store.take(logout_key(browser_cookie, relay_state))
        if blob is None:
            # Replayed, expired, unsolicited, or another browser's response.
            raise SamlInvalid("logout_not_pending")
        try:
            record = json.loads(blob)
            if record["rs"] != relay_state:
                raise SamlInvalid("logout_relay_state_mismatch")
            return PendingLogout(
                request_id=record["rid"],
                session_ref=record["ref"],
                administrator_kvk=record.get("adm"),
                acting_subject=record.get("as"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SamlInvalid("logout_state_corrupt") from exc
