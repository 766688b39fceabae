"""Pure claim building: what the identity token says, and the large-set substitute.

Nothing here signs, reads files or talks to a store: values in, values out. The
claim names and the exact digest rule are a contract with backend teams and are
documented in ``docs/backends.md``; change them only together with that file.

The employer digest (``employers_digest``) is defined so a backend in any
language can recompute it: for every employer entry one line
``<kvk>\\t<fund_number>\\t<scopes sorted, joined by ",">\\n`` (absent fields are
empty), the lines sorted, concatenated, UTF-8 encoded (it is ASCII: identifiers
and scopes are restricted to printable ASCII without space and comma), SHA-256,
base64url without padding. Names are display text and not covered.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from gateway.errors import EmployerNotAllowed
from gateway.identity import Employer, Identity
from gateway.tokens.settings import EmployerIds, TokenSettings

# Printable ASCII without space and comma: keeps the digest lines unambiguous and
# makes sorting identical in Python, Java and .NET (no UTF-16 surprises).
_ATOM = re.compile(r"[!-+\--~]+")


@dataclass(frozen=True)
class TokenSubject:
    """What the token needs from a session; built by the session code, read here.

    Keep one instance per session version (e.g. next to the cached session): its
    ``fingerprint`` is computed once per instance and is part of the token cache key.
    """

    identity: Identity
    allowed: tuple[Employer, ...]
    """The allowed employer set (mode 1: all mandated clients; mode 2: the one employer)."""
    session_ref: str
    """A keyed hash of the session id computed by the sessions module; never the cookie."""
    active_employer: str | None = None
    """KvK number of the selected employer, if any; must be in ``allowed``."""
    login_time: dt.datetime | None = None
    """When the user authenticated; defaults to ``identity.login_time``."""
    version: int | None = None
    """The session's content version, if every content change bumps it (``Session.version``
    does). Then the fingerprint is the version and costs nothing; without it the
    fingerprint hashes the content, which at 10,000 employers takes milliseconds."""

    @cached_property
    def fingerprint(self) -> str:
        """Identifies everything that can appear in a token except time and audience.

        Identity (level, login time, organisation), active employer and the whole
        allowed set: any change yields a new fingerprint and so a new token. With a
        ``version`` it is that version (unique per session together with
        ``session_ref``). Cached on the (frozen) instance: ``cached_property`` writes
        to ``__dict__`` directly, so it works despite ``frozen=True``.
        """
        if self.version is not None:
            return f"v{self.version}"
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.identity, self.active_employer, self.login_time)).encode("utf-8"))
        for e in self.allowed:
            h.update(b"\x1e")
            h.update(
                "\x1f".join(
                    (e.kvk, e.fund_number or "", e.name, ",".join(sorted(e.scopes)))
                ).encode("utf-8")
            )
        return h.hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _atom(value: str, what: str) -> str:
    if not _ATOM.fullmatch(value):
        # Fail closed: a value we cannot put into the digest unambiguously must not
        # silently change meaning for the backend.
        raise ValueError(f"{what} must be printable ASCII without space or comma")
    return value


def employer_entry(employer: Employer, ids: EmployerIds, names: bool) -> dict[str, Any] | None:
    """One employer as it appears in the token, or ``None`` when it lacks the configured identifier.

    An employer the backend cannot address (e.g. no fund number when only fund numbers
    are configured) is left out: that narrows access, it never widens it.
    """
    entry: dict[str, Any] = {}
    if ids in ("kvk", "both"):
        entry["kvk"] = _atom(employer.kvk, "KvK number")
    if ids in ("fund_number", "both") and employer.fund_number:
        entry["fund_number"] = _atom(employer.fund_number, "fund number")
    if ids == "fund_number" and "fund_number" not in entry:
        return None
    if names:
        entry["name"] = employer.name
    if employer.scopes:
        entry["scopes"] = list(_scope_list(employer.scopes))
    return entry


@functools.lru_cache(maxsize=1024)
def _scope_list(scopes: frozenset[str]) -> tuple[str, ...]:
    # Thousands of employers share a handful of scope sets: validate and sort each once.
    return tuple(sorted(_atom(s, "scope") for s in scopes))


def employer_entries(
    allowed: Iterable[Employer], ids: EmployerIds, names: bool
) -> list[dict[str, Any]]:
    """The allowed set in token form, in the session's order."""
    entries = (employer_entry(e, ids, names) for e in allowed)
    return [e for e in entries if e is not None]


def set_summary(allowed: Iterable[Employer], ids: EmployerIds) -> tuple[int, str]:
    """``(employers_count, employers_digest)`` of an allowed set under the configured ids.

    Equal to ``employers_digest(employer_entries(allowed, ids, False))`` (a test pins
    that) but builds the digest lines directly: at 10,000 employers building the
    entry dictionaries first costs several times more.
    """
    want_kvk, want_fund = ids != "fund_number", ids != "kvk"
    lines: list[str] = []
    for e in allowed:
        kvk = _atom(e.kvk, "KvK number") if want_kvk else ""
        fund = e.fund_number if want_fund and e.fund_number else ""
        if fund:
            _atom(fund, "fund number")
        elif not want_kvk:
            continue  # not addressable by fund number: left out, as in employer_entry
        lines.append(f"{kvk}\t{fund}\t{_scope_text(e.scopes)}\n")
    lines.sort()
    return len(lines), _b64url(hashlib.sha256("".join(lines).encode("utf-8")).digest())


@functools.lru_cache(maxsize=1024)
def _scope_text(scopes: frozenset[str]) -> str:
    return ",".join(_scope_list(scopes))


def employers_digest(entries: Iterable[Mapping[str, Any]]) -> str:
    """The documented digest of an employer list (see the module docstring)."""
    lines = sorted(
        f"{e.get('kvk', '')}\t{e.get('fund_number', '')}\t{','.join(sorted(e.get('scopes', ())))}\n"
        for e in entries
    )
    return _b64url(hashlib.sha256("".join(lines).encode("utf-8")).digest())


def _active_entry(subject: TokenSubject, ids: EmployerIds, names: bool) -> dict[str, Any] | None:
    if subject.active_employer is None:
        return None
    for e in subject.allowed:
        if e.kvk == subject.active_employer:
            entry = employer_entry(e, ids, names)
            if entry is not None:
                return entry
            break
    # The session says an employer is active that is not (addressably) allowed: never
    # sign that. The request is refused rather than sent without the restriction.
    raise EmployerNotAllowed("active employer is not in the allowed set")


def _epoch(t: dt.datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp())


def build_claims(
    subject: TokenSubject,
    audience: str,
    now: int,
    *,
    settings: TokenSettings,
    jti: str | None = None,
    large_set: bool = False,
    summary: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """The token payload for one (session, audience) at ``now`` (epoch seconds).

    With ``large_set`` the employer list is replaced by ``employers_count``,
    ``employers_digest`` and ``employers_uri`` (the minter decides when it does not
    fit); ``summary`` is a precomputed ``set_summary`` of the subject's set.
    """
    if not audience:
        raise ValueError("audience must not be empty")
    identity = subject.identity
    ids, names = settings.employer_ids, settings.employer_names
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": identity.acting_subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + settings.lifetime_seconds,
        "jti": jti or secrets.token_urlsafe(16),
        "sid": subject.session_ref,
        "auth_time": _epoch(subject.login_time or identity.login_time),
        "loa": identity.loa.short,
        "mode": identity.mode,
    }
    org: dict[str, str] = {}
    if identity.administrator_kvk:
        org["kvk"] = identity.administrator_kvk
    if identity.administrator_name:
        org["name"] = identity.administrator_name
    claims["org"] = org
    if large_set:
        count, digest = summary or set_summary(subject.allowed, ids)
        claims["employers_count"] = count
        claims["employers_digest"] = digest
        claims["employers_uri"] = settings.employers_uri
    else:
        claims["employers"] = employer_entries(subject.allowed, ids, names)
    active = _active_entry(subject, ids, names)
    if active is not None:
        claims["act_employer"] = active
    return claims


def employers_document(subject: TokenSubject, *, settings: TokenSettings) -> dict[str, Any]:
    """The body of the employers endpoint: the full set, its count and digest.

    Entries have the token's shape plus ``name`` (names are display text and not
    covered by the digest).
    """
    entries = employer_entries(subject.allowed, settings.employer_ids, True)
    return {
        "sid": subject.session_ref,
        "count": len(entries),
        "digest": employers_digest(entries),
        "employers": entries,
    }


def employers_response(
    claims: Mapping[str, Any], subject: TokenSubject | None, *, settings: TokenSettings
) -> tuple[int, dict[str, Any]]:
    """Decide the employers endpoint's answer for a verified token and its session.

    ``claims`` must come from ``TokenMinter.verify_own``; ``subject`` is the session
    that ``claims["sid"]`` refers to (``None`` when it has ended). Serve the body as
    JSON with ``Cache-Control: no-store``.
    """
    if subject is None:
        return 401, {"error": "session_ended"}
    if not secrets.compare_digest(str(claims.get("sid", "")), subject.session_ref):
        return 403, {"error": "session_mismatch"}
    document = employers_document(subject, settings=settings)
    expected = claims.get("employers_digest")
    if expected is not None and expected != document["digest"]:
        # The set changed after this token was signed; the backend's next request
        # carries a fresh token. Never hand out a set the token does not vouch for.
        return 409, {"error": "employers_changed"}
    return 200, document
