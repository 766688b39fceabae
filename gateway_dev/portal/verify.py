"""The sample portal's token check: exactly what docs/backends.md tells a Python backend to do.

It is also the reference verifier the gateway's tests import (through
``tests/support/tokens.py``). It imports nothing else from ``gateway``, because
a backend has only the token, the JWKS URL, its own configuration and the
documented rules.

``PyJWKClient`` and ``urllib`` block; async code calls ``verify`` and
``employer_set`` through ``asyncio.to_thread`` (or uses ``employer_set_async``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp
import jwt

# Claims a backend requires before it trusts anything in the token.
REQUIRED_CLAIMS = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "sid", "loa", "mode"]


class IdentityVerifier:
    """Verify the gateway's identity token the documented way (docs/backends.md, Python)."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = ("ES256",),
        leeway: int = 30,
        jwks_lifespan: float = 300,
        refresh_cooldown: float = 30,
        header_name: str = "X-Gateway-Identity",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        # The allow-list comes from configuration, never from the token's header.
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self.header_name = header_name
        # One client per process: it caches the JWKS for ``jwks_lifespan`` seconds and
        # re-fetches on an unknown kid at most once per ``refresh_cooldown`` seconds.
        self.jwks = jwt.PyJWKClient(
            jwks_url, lifespan=jwks_lifespan, cooldown_duration=refresh_cooldown, timeout=5
        )

    def token_from(self, headers: Mapping[str, str]) -> str | None:
        """The token from the one header this route uses (no other source is trusted)."""
        return headers.get(self.header_name) or None

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or ``jwt.PyJWTError`` (answer 401; never fall back)."""
        signing_key = self.jwks.get_signing_key_from_jwt(token)  # kid lookup (+ refresh)
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key.key,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options={"require": REQUIRED_CLAIMS},
        )
        return claims

    def employer_set(self, token: str, claims: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The full allowed employer set: from the token, or fetched for the substitute."""
        if "employers" in claims:
            return list(claims["employers"])
        request = urllib.request.Request(  # noqa: S310 - the URL is checked in _employers_url
            _employers_url(claims, self.issuer), headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            document = json.load(response)
        return check_employers_document(document, claims)

    async def employer_set_async(
        self, session: aiohttp.ClientSession, token: str, claims: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """``employer_set`` for aiohttp backends (same checks)."""
        if "employers" in claims:
            return list(claims["employers"])
        url = _employers_url(claims, self.issuer)
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(url, headers=headers) as response:
            response.raise_for_status()
            document = await response.json()
        return check_employers_document(document, claims)


def _employers_url(claims: Mapping[str, Any], issuer: str) -> str:
    url = str(claims["employers_uri"])
    # Only ever send the token back to the gateway that issued it.
    if not url.startswith(issuer + "/"):
        raise ValueError("employers_uri is not on the issuer")
    return url


def check_employers_document(
    document: Mapping[str, Any], claims: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Accept the fetched set only if it is exactly the set the signed token vouches for."""
    employers = list(document["employers"])
    if document.get("sid") != claims["sid"]:
        raise ValueError("employer set belongs to another session")
    if len(employers) != claims["employers_count"]:
        raise ValueError("employer count does not match the token")
    if employers_digest(employers) != claims["employers_digest"]:
        raise ValueError("employer digest does not match the token")
    return employers


def employers_digest(entries: Iterable[Mapping[str, Any]]) -> str:
    """The documented digest: sorted ``kvk TAB fund_number TAB scopes LF`` lines, SHA-256."""
    lines = sorted(
        "{}\t{}\t{}\n".format(
            e.get("kvk", ""), e.get("fund_number", ""), ",".join(sorted(e.get("scopes", [])))
        )
        for e in entries
    )
    digest = hashlib.sha256("".join(lines).encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
