"""The token key set: current (signs), next and previous (published), and the JWKS.

Keys are read from PEM files once and kept as loaded ``cryptography`` objects:
handing pyjwt a PEM string makes it re-parse (and for RSA re-check) the key on
every signature, which costs more than the signature itself.

``KeySet.reload()`` re-reads the files for rotation without a restart (the
application calls it on SIGHUP). It swaps one immutable snapshot, so a request always sees a
consistent (signing key, kid, JWKS) triple, and a failed reload keeps the old one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.tokens.settings import Algorithm, KidMethod, TokenKeyFiles, TokenSettings

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

#: Headers for the JWKS response. Short public caching: backends and CDNs may keep
#: it ``max-age`` seconds, which is why a next key is published that long before it signs.
JWKS_CONTENT_TYPE = "application/jwk-set+json"

_log = structlog.get_logger("gateway.tokens")


class KeyFileError(ValueError):
    """A key file is missing, unreadable, or does not fit the configured algorithm."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(n: int) -> bytes:
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7517 members that identify a public key (exactly the RFC 7638 thumbprint input)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        nums = key.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64url(nums.x.to_bytes(32, "big")),
            "y": _b64url(nums.y.to_bytes(32, "big")),
        }
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    nums_rsa = key.public_numbers()
    return {
        "e": _b64url(_int_bytes(nums_rsa.e)),
        "kty": "RSA",
        "n": _b64url(_int_bytes(nums_rsa.n)),
    }


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 over the required members, sorted, no whitespace."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def derive_kid(key: PublicKey, method: KidMethod) -> str:
    """The ``kid`` for a public key; it changes whenever the key changes."""
    thumb = jwk_thumbprint(key)
    return thumb[:16] if method == "rfc7638-short" else thumb


def check_algorithm(key: PublicKey, algorithm: Algorithm) -> None:
    """Refuse a key that does not fit the algorithm (fail at load, not at first sign)."""
    if algorithm == "ES256":
        if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
            raise KeyFileError("ES256 needs a P-256 (secp256r1) EC key")
    elif algorithm == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise KeyFileError("EdDSA needs an Ed25519 key")
    elif algorithm == "RS256":
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
            raise KeyFileError("RS256 needs an RSA key of at least 2048 bits")
    else:  # pragma: no cover - Literal keeps this unreachable
        raise KeyFileError(f"unsupported algorithm {algorithm!r}")


def algorithm_for_key(key: PrivateKey | PublicKey) -> Algorithm:
    """The token algorithm a key file belongs to (used by rotation to make a like key)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    return "RS256"


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key of a supported type."""
    try:
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        # The message names the file and the kind of failure, never key bytes.
        raise KeyFileError(f"{path}: cannot load private key ({type(exc).__name__})") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def load_public_key(path: Path) -> PublicKey:
    """Load a PEM key file for publication: a private key (its public half) or a public key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({type(exc).__name__})") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot load public key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")
    return key


@dataclass(frozen=True)
class PublishedKey:
    """One public key in the JWKS, with its role."""

    role: str  # "current" | "next" | "previous"
    kid: str
    key: PublicKey


@dataclass(frozen=True)
class KeySnapshot:
    """One consistent state of the key set; replaced as a whole on reload."""

    algorithm: Algorithm
    signing_key: PrivateKey
    kid: str
    published: tuple[PublishedKey, ...]
    jwks: Mapping[str, Any]
    jwks_bytes: bytes

    def verification_key(self, kid: str) -> PublicKey | None:
        """The published public key with this kid, if any (the gateway checking its own tokens)."""
        for pk in self.published:
            if pk.kid == kid:
                return pk.key
        return None


def _load_snapshot(
    files: TokenKeyFiles, algorithm: Algorithm, kid_method: KidMethod
) -> KeySnapshot:
    signing = load_private_key(files.current)
    published: list[PublishedKey] = []
    for role, path in (
        ("current", files.current),
        ("next", files.next),
        ("previous", files.previous),
    ):
        if path is None:
            continue
        if role != "current" and not path.exists():
            # An absent optional file means "not published": that is how ops retire
            # the previous key, and a fresh deployment starts without one.
            continue
        public = signing.public_key() if role == "current" else load_public_key(path)
        try:
            check_algorithm(public, algorithm)
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        kid = derive_kid(public, kid_method)
        if any(p.kid == kid for p in published):
            # The same key under two roles (e.g. a half-finished manual rotation) is
            # harmless for verification; publish it once.
            continue
        published.append(PublishedKey(role=role, kid=kid, key=public))
    jwks = {
        "keys": [
            {**public_jwk(p.key), "use": "sig", "alg": algorithm, "kid": p.kid} for p in published
        ]
    }
    return KeySnapshot(
        algorithm=algorithm,
        signing_key=signing,
        kid=published[0].kid,
        published=tuple(published),
        jwks=jwks,
        jwks_bytes=json.dumps(jwks, separators=(",", ":")).encode("ascii"),
    )


class KeySet:
    """The loaded keys of one gateway process; cheap to read on every request."""

    def __init__(
        self, files: TokenKeyFiles, algorithm: Algorithm, kid_method: KidMethod = "rfc7638"
    ):
        self._files = files
        self._algorithm: Algorithm = algorithm
        self._kid_method: KidMethod = kid_method
        self._snapshot = _load_snapshot(files, algorithm, kid_method)
        _log.info("token_keys_loaded", kids=self.kids, algorithm=algorithm)

    @classmethod
    def from_settings(cls, settings: TokenSettings) -> KeySet:
        """Load the key files named in the settings; ``KeyFileError`` if unusable."""
        return cls(settings.keys, settings.algorithm, settings.kid)

    @property
    def snapshot(self) -> KeySnapshot:
        """The current consistent state; read once per operation."""
        return self._snapshot

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @property
    def signing_key(self) -> PrivateKey:
        return self._snapshot.signing_key

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that signs now."""
        return self._snapshot.kid

    @property
    def kids(self) -> dict[str, str]:
        """Role → kid of every published key (``gateway keys tokens show`` reads the files)."""
        return {p.role: p.kid for p in self._snapshot.published}

    def reload(self) -> bool:
        """Re-read the key files; returns whether the published set changed.

        On any error the old keys stay in use and the error propagates, so a broken
        rotation never leaves the gateway without a signing key.
        """
        try:
            fresh = _load_snapshot(self._files, self._algorithm, self._kid_method)
        except KeyFileError as exc:
            _log.error("token_keys_reload_failed", reason=str(exc), kids=self.kids)
            raise
        changed = fresh.jwks != self._snapshot.jwks
        self._snapshot = fresh
        _log.info("token_keys_reloaded", kids=self.kids, changed=changed)
        return changed

    def jwks_document(self) -> Mapping[str, Any]:
        """The public JWKS (current, next, previous) as served at ``/.well-known/jwks.json``."""
        return self._snapshot.jwks

    def jwks_bytes(self) -> bytes:
        """The JWKS, already serialised (the handler can send it without re-encoding)."""
        return self._snapshot.jwks_bytes


def jwks_headers(max_age: int) -> dict[str, str]:
    """Response headers for the JWKS: public, short-lived caching."""
    return {
        "Content-Type": JWKS_CONTENT_TYPE,
        "Cache-Control": f"public, max-age={max_age}",
        "X-Content-Type-Options": "nosniff",
    }
