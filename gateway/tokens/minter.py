"""Minting and caching identity tokens, and checking the gateway's own tokens.

A token is signed once per (session, identity/allowed-set fingerprint, audience,
signing kid) and reused until less than ``reuse_margin`` of its lifetime is left.
Signing costs about 40-70 µs (ES256, ``gateway.tokens.jws``); a cache hit about 1-2 µs,
so the cache is what keeps an authenticated route close to the bare proxy's speed.
The cache is a bounded LRU: it never grows past ``cache_size`` entries.

Signing is CPU-only and short, so it runs on the event loop.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import structlog

from gateway.errors import NotAuthenticated
from gateway.tokens.claims import (
    TokenSubject,
    build_claims,
    employers_document,
    employers_response,
    set_summary,
)
from gateway.tokens.jws import CompactSigner
from gateway.tokens.keys import KeySet, KeySnapshot
from gateway.tokens.settings import TokenSettings

_log = structlog.get_logger("gateway.tokens")

# Claims every token carries; ``verify_own`` refuses a token without them.
_REQUIRED = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "sid"]

# Leeway for the gateway checking its own tokens (replicas share NTP time); the
# same value docs/backends.md recommends to backends.
VERIFY_LEEWAY_SECONDS = 30

# A typical employer entry takes 27+ base64url characters (``{"kvk":"12345678"},``
# is 20 bytes). Sets bigger than the budget allows at 24 per entry go straight to
# the substitute without a wasted first signature; erring that way is harmless,
# because the substitute is always correct.
_MIN_ENTRY_CHARS = 24

# Set summaries are tiny; serialised employer documents can be ~1 MB each.
_SUMMARY_CACHE_SIZE = 4096
_DOCUMENT_CACHE_SIZE = 16


class TokenMinter:
    """Signs identity tokens for backends and reuses them while they are fresh."""

    def __init__(
        self,
        settings: TokenSettings,
        keys: KeySet,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keys.algorithm != settings.algorithm:
            raise ValueError("key set and settings name different algorithms")
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._budget = settings.token_budget
        self._reuse_for = settings.lifetime_seconds * (1.0 - settings.reuse_margin)
        # (session ref, fingerprint, audience, kid) -> (token, reuse until, its exp)
        self._cache: OrderedDict[tuple[str, str, str, str], tuple[str, float, int]] = OrderedDict()
        # Large sets: (count, digest) per session version, so renewals and other audiences
        # do not re-hash 10,000 employers; and the serialised employers document.
        self._summaries: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()
        self._documents: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._signer: CompactSigner | None = None
        self.hits = 0
        """Tokens served from the cache (for metrics)."""
        self.signs = 0
        """Tokens signed (for metrics)."""
        self.substitutes = 0
        """Tokens that carry the large-set substitute instead of the list (for metrics)."""

    @property
    def settings(self) -> TokenSettings:
        return self._settings

    @property
    def keys(self) -> KeySet:
        return self._keys

    def __len__(self) -> int:
        """Number of cached tokens (bounded by ``cache_size``)."""
        return len(self._cache)

    def active_sessions(self, since: float) -> int:
        """Sessions with a token signed at or after ``since`` (epoch seconds): for metrics.

        A session that keeps making requests gets a fresh token at least every
        ``lifetime * (1 - reuse_margin)`` seconds, so this counts the sessions
        active in roughly the last ``now - since`` seconds, at no cost per request.
        It walks the cache (at most ``cache_size`` entries); call it seldom.
        """
        threshold = since + self._reuse_for  # the cache keeps "reuse until" = signed + reuse_for
        return len({key[0] for key, (_, until, _) in self._cache.items() if until >= threshold})

    def mint(self, subject: TokenSubject, audience: str) -> str:
        """The compact JWS for this session and audience (see ``mint_expiring``)."""
        return self.mint_expiring(subject, audience)[0]

    def mint_expiring(self, subject: TokenSubject, audience: str) -> tuple[str, int]:
        """The compact JWS for this session and audience, and its ``exp`` (epoch seconds):
        cached if still fresh, else newly signed.

        Raises ``EmployerNotAllowed`` when the session's active employer is not in its
        allowed set (never signed), ``ValueError`` for registry values that cannot be
        represented (see ``claims``).
        """
        snapshot = self._keys.snapshot
        key = (subject.session_ref, subject.fingerprint, audience, snapshot.kid)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached[1]:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached[0], cached[2]
        issued_at = int(now)
        token = self._sign(subject, audience, issued_at, snapshot)
        expires = issued_at + self._settings.lifetime_seconds
        self._cache[key] = (token, issued_at + self._reuse_for, expires)
        self._cache.move_to_end(key)
        _bound(self._cache, self._settings.cache_size)
        return token, expires

    def _sign(self, subject: TokenSubject, audience: str, now: int, snap: KeySnapshot) -> str:
        settings = self._settings
        large = len(subject.allowed) * _MIN_ENTRY_CHARS > self._budget
        summary = self._summary(subject) if large else None
        claims = build_claims(
            subject, audience, now, settings=settings, large_set=large, summary=summary
        )
        token = self._encode(claims, snap)
        if not large and len(token) > self._budget:
            large = True
            claims = build_claims(
                subject,
                audience,
                now,
                settings=settings,
                jti=claims["jti"],
                large_set=True,
                summary=self._summary(subject),
            )
            token = self._encode(claims, snap)
        if large:
            self.substitutes += 1
        if len(token) > self._budget:
            # Only a pathological organisation name could get here; refusing is safer
            # than sending a header the backend's server drops or truncates.
            _log.error("token_size_limit_exceeded", length=len(token), budget=self._budget)
            raise ValueError("identity token exceeds the header size limit")
        return token

    def _encode(self, claims: dict[str, Any], snap: KeySnapshot) -> str:
        self.signs += 1
        signer = self._signer
        if signer is None or signer.key is not snap.signing_key:
            # Once per signing key (a key reload brings a new snapshot and key).
            signer = self._signer = CompactSigner(snap.algorithm, snap.signing_key, snap.kid)
        return signer.encode(claims)

    def _summary(self, subject: TokenSubject) -> tuple[int, str]:
        key = (subject.session_ref, subject.fingerprint)
        summary = self._summaries.get(key)
        if summary is None:
            summary = set_summary(subject.allowed, self._settings.employer_ids)
            self._summaries[key] = summary
            _bound(self._summaries, _SUMMARY_CACHE_SIZE)
        return summary

    def clear(self) -> None:
        """Drop every cached token and set summary (e.g. in tests, or after an incident)."""
        self._cache.clear()
        self._summaries.clear()
        self._documents.clear()

    def verify_own(self, token: str) -> dict[str, Any]:
        """Check a token this gateway issued (any audience); raises ``NotAuthenticated``.

        Used by the employers endpoint, which backends call with the token they
        received. Only the configured algorithm and the published keys are accepted.
        """
        snap = self._keys.snapshot
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = snap.verification_key(kid) if isinstance(kid, str) else None
            if key is None:
                raise jwt.InvalidTokenError("unknown kid")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[snap.algorithm],
                issuer=self._settings.issuer,
                leeway=VERIFY_LEEWAY_SECONDS,
                options={"verify_aud": False, "require": _REQUIRED},
            )
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(f"identity token rejected: {type(exc).__name__}") from None
        if not isinstance(claims.get("aud"), str) or not isinstance(claims.get("sid"), str):
            raise NotAuthenticated("identity token rejected: malformed aud or sid")
        return claims

    def token_from_headers(self, headers: Mapping[str, str]) -> str | None:
        """The token a backend sent to the employers endpoint, if any.

        Documented: ``Authorization: Bearer <token>``, or the default identity header.
        The endpoint reads it *before* header hygiene strips identity headers.
        """
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and auth[7:].strip():
            return auth[7:].strip()
        return headers.get(self._settings.header_name) or None

    def employers_response(
        self, claims: dict[str, Any], subject: TokenSubject | None
    ) -> tuple[int, dict[str, Any]]:
        """``claims.employers_response`` bound to these settings (status, JSON body)."""
        return employers_response(claims, subject, settings=self._settings)

    def employers_json(
        self, claims: dict[str, Any], subject: TokenSubject | None
    ) -> tuple[int, bytes]:
        """The employers endpoint's answer, serialised and cached per session version.

        Same decisions as ``employers_response``; for a large set the JSON (hundreds
        of kilobytes at 10,000 employers) is built once, not on every backend call.
        Serve with ``Content-Type: application/json`` and ``Cache-Control: no-store``.
        """
        if subject is None or claims.get("sid") != subject.session_ref:
            status, body = self.employers_response(claims, subject)
            return status, json.dumps(body).encode()
        expected = claims.get("employers_digest")
        if expected is not None and expected != self._summary(subject)[1]:
            return 409, b'{"error":"employers_changed"}'
        key = (subject.session_ref, subject.fingerprint)
        document = self._documents.get(key)
        if document is None:
            body = employers_document(subject, settings=self._settings)
            document = json.dumps(body, separators=(",", ":")).encode()
            self._documents[key] = document
            _bound(self._documents, _DOCUMENT_CACHE_SIZE)
        else:
            self._documents.move_to_end(key)
        return 200, document


def _bound(cache: OrderedDict[Any, Any], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
