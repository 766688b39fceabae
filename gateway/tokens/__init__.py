"""The signed identity token for backends: claims, keys, JWKS, minting, rotation.

The application wires it like this::

    keys = KeySet.from_settings(settings.tokens)          # loads PEM files once
    minter = TokenMinter(settings.tokens, keys)
    token = minter.mint(subject, audience)                 # compact JWS string
    keys.jwks_bytes(), jwks_headers(settings.tokens.jwks_max_age_seconds)
    keys.reload()                                          # on SIGHUP

``docs/backends.md`` is the contract with backend teams.
"""

from gateway.tokens.claims import (
    TokenSubject,
    build_claims,
    employer_entries,
    employers_digest,
    employers_document,
    employers_response,
)
from gateway.tokens.keys import (
    JWKS_CONTENT_TYPE,
    KeyFileError,
    KeySet,
    derive_kid,
    jwk_thumbprint,
    jwks_headers,
    public_jwk,
)
from gateway.tokens.minter import TokenMinter
from gateway.tokens.rotation import (
    generate_key,
    init_keys_dir,
    min_rotation_interval,
    retire_previous,
    rotate,
)
from gateway.tokens.settings import TokenKeyFiles, TokenSettings

__all__ = [
    "JWKS_CONTENT_TYPE",
    "KeyFileError",
    "KeySet",
    "TokenKeyFiles",
    "TokenMinter",
    "TokenSettings",
    "TokenSubject",
    "build_claims",
    "derive_kid",
    "employer_entries",
    "employers_digest",
    "employers_document",
    "employers_response",
    "generate_key",
    "init_keys_dir",
    "jwk_thumbprint",
    "jwks_headers",
    "min_rotation_interval",
    "public_jwk",
    "retire_previous",
    "rotate",
]
