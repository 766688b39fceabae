"""Compact JWS signing (gateway.tokens.jws) against an outside implementation: pyjwt.

pyjwt verifies every signature, and its own encoding of the same claims has the
same protected header and the same claims; ES256 signatures are the 64-byte
JWA form (RFC 7518, 3.4), which a DER signature would not be.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.tokens.jws import CompactSigner
from gateway.tokens.keys import PrivateKey
from gateway.tokens.settings import Algorithm

CLAIMS: dict[str, Any] = {
    "iss": "https://gateway.example",
    "sub": "pseudonym-1",
    "aud": "employer-pages",
    "iat": 1_796_625_203,
    "nbf": 1_796_625_203,
    "exp": 1_796_625_263,
    "jti": "u1coQb_jaDhtLrn6djMsYg",
    "org": {"kvk": "12345678", "name": 'Administratiekantoor Één & Zoon B.V. "Ü" \u2028'},
    "employers": [{"kvk": f"3{i:07d}"} for i in range(25)],
}


def _key(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _segment(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
def test_pyjwt_verifies_what_we_sign_and_reads_the_same_claims(algorithm: Algorithm) -> None:
    key = _key(algorithm)
    token = CompactSigner(algorithm, key, "kid-1").encode(CLAIMS)
    claims = jwt.decode(
        token,
        key.public_key(),
        algorithms=[algorithm],
        audience="employer-pages",
        options={"verify_exp": False},
    )
    assert claims == CLAIMS
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": "kid-1", "typ": "JWT"}


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
def test_same_header_and_claims_as_pyjwt_encodes(algorithm: Algorithm) -> None:
    key = _key(algorithm)
    ours = CompactSigner(algorithm, key, "kid-1").encode(CLAIMS).split(".")
    theirs = jwt.encode(CLAIMS, key, algorithm=algorithm, headers={"kid": "kid-1"}).split(".")
    assert ours[0] == theirs[0]  # the same bytes: sorted keys, compact
    assert json.loads(_segment(ours[1])) == json.loads(_segment(theirs[1]))
    assert "=" not in "".join(ours)  # base64url without padding (RFC 7515, 2)


def test_es256_signature_is_r_and_s_not_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signatures = {
        len(
            _segment(
                CompactSigner("ES256", key, "k").encode({**CLAIMS, "jti": str(i)}).split(".")[2]
            )
        )
        for i in range(50)
    }
    assert signatures == {64}  # DER would vary around 70-72 bytes


def test_tampered_tokens_do_not_verify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    head, body, sig = CompactSigner("ES256", key, "k").encode(CLAIMS).split(".")
    other = base64.urlsafe_b64encode(json.dumps({**CLAIMS, "sub": "x"}).encode()).rstrip(b"=")
    for token in (f"{head}.{other.decode()}.{sig}", f"{head}.{body}.{sig[:-4]}AAAA"):
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, key.public_key(), algorithms=["ES256"], options={"verify_aud": False})


@pytest.mark.parametrize(
    ("algorithm", "key"),
    [
        ("ES256", ed25519.Ed25519PrivateKey.generate()),
        ("ES256", ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", ec.generate_private_key(ec.SECP256R1())),
        ("RS256", ed25519.Ed25519PrivateKey.generate()),
    ],
)
def test_a_key_of_another_kind_is_refused(algorithm: Algorithm, key: PrivateKey) -> None:
    with pytest.raises(ValueError, match=algorithm):
        CompactSigner(algorithm, key, "k")
