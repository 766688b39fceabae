"""Every store key and channel the session layer uses, in one place.

All keys are derived from hashes, never from a raw secret: a dump of Redis (or a
``MONITOR`` session) shows no usable session cookie, pre-login cookie or
attacker-chosen assertion ID. Each key's variable part is a hash tag (``{...}``)
so keys that belong together share a Redis Cluster slot.

===========================================  ==========================  ==================
key                                          what                        TTL
===========================================  ==========================  ==================
``sess:{<h(session id)>}``                   the session record          min(idle, absolute left)
``sess:{<h(session id)>}:refresh``           mandate re-check lock       ``refresh_lock_seconds``
``sref:{<session ref>}``                     ref → h(session id) index   as the session
``login:{<h(prelogin cookie)>}:<h(relay)>``  a pending login             ``prelogin_ttl``
``login:{<h(prelogin cookie)>}:pending``     the browser's pending        ``prelogin_ttl``
                                             logins, newest first (list
                                             of h(relay), at most
                                             ``pending_per_browser``)
``loginrate:{<h(client address)>}``          login-start token bucket     until full again
``loginrate:total``                          the deployment's bucket      until full again
``logout:{<h(prelogin cookie)>}:<h(relay)>`` a pending single logout     ``prelogin_ttl``
``replay:{<h(issuer, assertion id)>}``       a seen assertion ID         NotOnOrAfter + skew
channel ``sess:invalidate``                  "drop your cached copy"     (pub/sub)
===========================================  ==========================  ==================

``h`` is SHA-256, hex, truncated to 128 bits (32 hex characters). The store adds
the deployment prefix (``gw:`` by default) in front of all of these.
"""

from __future__ import annotations

import hashlib

INVALIDATE_CHANNEL = "sess:invalidate"


def digest(*parts: str) -> str:
    """128-bit hex SHA-256 of the parts (NUL-separated so parts cannot run together)."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]


def session_key(session_hash: str) -> str:
    return f"sess:{{{session_hash}}}"


def refresh_lock_key(session_hash: str) -> str:
    return f"sess:{{{session_hash}}}:refresh"


def ref_key(session_ref: str) -> str:
    return f"sref:{{{session_ref}}}"


def pending_key(kind: str, prelogin_cookie: str, relay_hash: str) -> str:
    """A pending login or logout (``kind``) from the RelayState's hash, as a browser's list
    holds it (``gateway.sessions.pending``)."""
    return f"{kind}:{{{digest(prelogin_cookie)}}}:{relay_hash}"


def pending_list_key(kind: str, prelogin_cookie: str) -> str:
    """The list of one browser's pending logins (same slot as the logins themselves)."""
    return f"{kind}:{{{digest(prelogin_cookie)}}}:pending"


def login_key(prelogin_cookie: str, relay_state: str) -> str:
    return pending_key("login", prelogin_cookie, digest(relay_state))


def pending_logins_key(prelogin_cookie: str) -> str:
    return pending_list_key("login", prelogin_cookie)


def logout_key(prelogin_cookie: str, relay_state: str) -> str:
    return pending_key("logout", prelogin_cookie, digest(relay_state))


def login_rate_key(client: str) -> str:
    return f"loginrate:{{{digest(client)}}}"


def login_rate_total_key() -> str:
    return "loginrate:total"


def replay_key(issuer: str, assertion_id: str) -> str:
    return f"replay:{{{digest(issuer, assertion_id)}}}"
