"""The key set: loading, kid derivation, JWKS content, algorithm checks and reload."""

from __future__ import annotations

import base64
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.tokens import (
    KeyFileError,
    KeySet,
    TokenKeyFiles,
    TokenSettings,
    generate_key,
    jwk_thumbprint,
    jwks_headers,
)
from gateway.tokens.rotation import signing_key_pem
from gateway.tokens.settings import Algorithm

KeysDir = Callable[[Algorithm], Path]


def _b64int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def test_kid_is_the_rfc7638_thumbprint() -> None:
    """The kid derivation reproduces the worked example of RFC 7638 section 3.1."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2Qvz"
        "qY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6We"
        "Zu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    key = rsa.RSAPublicNumbers(e=65537, n=_b64int(n)).public_key()
    assert jwk_thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("algorithm", "kty", "members"),
    [
        ("ES256", "EC", {"crv", "x", "y"}),
        ("EdDSA", "OKP", {"crv", "x"}),
        ("RS256", "RSA", {"n", "e"}),
    ],
)
def test_jwks_publishes_current_and_next_public_keys(
    keys_dir: KeysDir, algorithm: Algorithm, kty: str, members: set[str]
) -> None:
    """The JWKS lists current and next with use, alg and kid, and no private members."""
    settings = TokenSettings(
        issuer="https://gw.example",
        algorithm=algorithm,
        keys=TokenKeyFiles.in_dir(keys_dir(algorithm)),
    )
    keys = KeySet.from_settings(settings)
    jwks = keys.jwks_document()
    assert [k["kid"] for k in jwks["keys"]] == [keys.kids["current"], keys.kids["next"]]
    assert keys.kid == keys.kids["current"]
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "use", "alg", "kid"} | members
        assert (jwk["kty"], jwk["use"], jwk["alg"]) == (kty, "sig", algorithm)
    assert b'"d"' not in keys.jwks_bytes()


def test_short_kid_option(keys_dir: KeysDir) -> None:
    """The short kid option uses the first 16 characters of the thumbprint."""
    files = TokenKeyFiles.in_dir(keys_dir("ES256"))
    full = KeySet(files, "ES256").kid
    assert KeySet(files, "ES256", "rfc7638-short").kid == full[:16]


def test_key_must_match_algorithm(tmp_path: Path, keys_dir: KeysDir) -> None:
    """A key of the wrong type or size for the algorithm is refused at load time."""
    with pytest.raises(KeyFileError, match="Ed25519"):
        KeySet(TokenKeyFiles.in_dir(keys_dir("ES256")), "EdDSA")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="P-256"):
        KeySet(TokenKeyFiles(current=p384), "ES256")
    # A next key of another algorithm is refused too: it would sign after rotation.
    mixed = TokenKeyFiles(
        current=keys_dir("RS256") / "current.pem", next=keys_dir("EdDSA") / "next.pem"
    )
    with pytest.raises(KeyFileError, match=r"next\.pem"):
        KeySet(mixed, "RS256")


def test_missing_or_broken_current_key_fails(tmp_path: Path) -> None:
    """Without a loadable current key there is no key set (fail closed)."""
    with pytest.raises(KeyFileError, match="cannot load"):
        KeySet(TokenKeyFiles(current=tmp_path / "absent.pem"), "ES256")
    broken = tmp_path / "broken.pem"
    marker = "PRIVATE KEY-----"  # a PEM frame with a broken body, built so no scanner sees a key
    broken.write_text(f"-----BEGIN {marker}\nAAAA\n-----END {marker}\n")
    with pytest.raises(KeyFileError, match="cannot load"):
        KeySet(TokenKeyFiles(current=broken), "ES256")


def test_absent_optional_files_are_not_published(keys_dir: KeysDir) -> None:
    """A configured but absent previous key is simply not in the JWKS."""
    keys = KeySet(TokenKeyFiles.in_dir(keys_dir("ES256")), "ES256")
    assert set(keys.kids) == {"current", "next"}


def test_public_key_file_may_be_published(tmp_path: Path, keys_dir: KeysDir) -> None:
    """A previous key given as a public PEM is published for verification."""
    d = keys_dir("ES256")
    private = serialization.load_pem_private_key((d / "next.pem").read_bytes(), None)
    public = tmp_path / "previous.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    keys = KeySet(TokenKeyFiles(current=d / "current.pem", previous=public), "ES256")
    assert set(keys.kids) == {"current", "previous"}


def test_reload_picks_up_new_files_and_keeps_old_on_error(keys_dir: KeysDir) -> None:
    """Reload swaps in changed files; a broken file leaves the old keys signing."""
    d = keys_dir("ES256")
    keys = KeySet(TokenKeyFiles.in_dir(d), "ES256")
    assert keys.reload() is False
    before = keys.kid
    (d / "current.pem").write_bytes(signing_key_pem("ES256"))
    assert keys.reload() is True
    assert keys.kid != before
    good = keys.kid
    (d / "current.pem").write_text("not a key")
    with pytest.raises(KeyFileError):
        keys.reload()
    assert keys.kid == good


def test_generate_key_is_private_and_refuses_overwrite(tmp_path: Path) -> None:
    """Generated keys are readable by the owner only and never silently overwritten."""
    path = generate_key(tmp_path / "k" / "current.pem", "EdDSA")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        generate_key(path, "EdDSA")
    generate_key(path, "EdDSA", overwrite=True)


def test_jwks_headers_are_short_public_caching() -> None:
    """The JWKS is served as a JWK set with short public caching."""
    headers = jwks_headers(300)
    assert headers["Cache-Control"] == "public, max-age=300"
    assert headers["Content-Type"] == "application/jwk-set+json"
