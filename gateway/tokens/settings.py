"""Settings for the signed identity token: issuer, algorithm, key files, lifetime, size.

``TokenSettings`` is the ``tokens`` section of the configuration. Every field has a
production-safe default except the issuer and the current key file, which a
deployment must name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.http_fields import IdentityHeaderName

Algorithm = Literal["ES256", "EdDSA", "RS256"]
EmployerIds = Literal["kvk", "fund_number", "both"]
KidMethod = Literal["rfc7638", "rfc7638-short"]


class TokenKeyFiles(BaseModel):
    """The PEM key files of the key set (PKCS#8; ``gateway keys tokens init`` writes them).

    Only ``current`` signs. ``next`` is published so backends learn it before it
    signs; ``previous`` stays published so tokens it signed keep verifying until
    they expire. An optional file that is configured but absent on disk is simply
    not published (that is how a retired previous key disappears).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    current: Path
    """The signing key (private). Required; the gateway does not start without it."""
    next: Path | None = None
    """The key that signs after the next rotation (published, never signs yet)."""
    previous: Path | None = None
    """The key that signed before the last rotation (published for verification only)."""

    @classmethod
    def in_dir(cls, keys_dir: Path) -> TokenKeyFiles:
        """The layout ``rotate`` maintains: ``current.pem``, ``next.pem``, ``previous.pem``."""
        return cls(
            current=keys_dir / "current.pem",
            next=keys_dir / "next.pem",
            previous=keys_dir / "previous.pem",
        )


class TokenSettings(BaseModel):
    """How the gateway mints the identity token that backends verify."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    """The gateway's public base URL, e.g. ``https://werkgevers.pme.nl``; the ``iss`` claim.

    A trailing ``/`` is removed so the value backends compare against is unambiguous.
    """
    algorithm: Algorithm = "ES256"
    """``ES256`` (P-256, the default: small and fast), ``EdDSA`` (Ed25519) or ``RS256``."""
    keys: TokenKeyFiles
    kid: KidMethod = "rfc7638"
    """How the ``kid`` is derived from the public key: the RFC 7638 JWK thumbprint
    (SHA-256, base64url, 43 characters) or its first 16 characters (smaller header)."""
    lifetime_seconds: int = Field(default=60, ge=10, le=300)
    """Token lifetime (``exp - iat``). Short, because a token cannot be revoked."""
    reuse_margin: float = Field(default=0.2, gt=0.0, lt=1.0)
    """A cached token is renewed once less than this fraction of its lifetime is left,
    so a backend always receives a token with some life remaining."""
    max_header_bytes: int = Field(default=8192, ge=1024, le=65536)
    """Upper bound for the whole header line (name, ``Bearer``, token, CRLF); above it
    the employer list is replaced by the large-set substitute. 8 KiB is the common
    per-field limit of servers behind us (Apache, nginx)."""
    employer_ids: EmployerIds = "kvk"
    """Which employer identifiers the token carries: KvK number, the fund's number, or both."""
    employer_names: bool = False
    """Also put employer names in the token (display only; costs header space)."""
    header_name: IdentityHeaderName = "X-Gateway-Identity"
    """Default token header; a route may name another or choose ``Authorization: Bearer``."""
    jwks_max_age_seconds: int = Field(default=300, ge=0, le=3600)
    """``Cache-Control: max-age`` of ``/.well-known/jwks.json``; also the minimum time a
    next key must be published before it signs."""
    employers_path: str = "/_gateway/api/employers"
    """Path (under ``issuer``) of the endpoint that serves the full employer set."""
    cache_size: int = Field(default=50_000, ge=1)
    """Maximum number of cached signed tokens (LRU); one per (session, audience)."""
    key_lifetime_days: int = Field(default=90, ge=0, le=3650)
    """How long a signing key should sign before it is rotated. The metric
    ``gateway_token_key_expiry_seconds`` counts down to the current key's
    ``Gateway-Key-Signing-Since`` stamp plus this (0: no such figure); nothing is
    refused when it passes, the shipped alert asks for a rotation."""

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an absolute http(s) URL without query or fragment")
        return value

    @field_validator("employers_path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not re.fullmatch(r"/[A-Za-z0-9._~/\-]*", value):
            raise ValueError("must be an absolute path such as /_gateway/api/employers")
        return value

    @property
    def employers_uri(self) -> str:
        """The absolute URL put in ``employers_uri`` when the large-set substitute is used."""
        return self.issuer + self.employers_path

    @property
    def token_budget(self) -> int:
        """Maximum length of the compact token itself.

        The header line is ``<name>: [Bearer ]<token>\\r\\n``; header names are at most
        100 bytes, so reserving 128 bytes keeps the whole line under ``max_header_bytes``.
        """
        return self.max_header_bytes - 128
