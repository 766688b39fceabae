"""Backends verify tokens against the JWKS over real HTTP, the way docs/backends.md says.

Every check goes through ``tests/support/tokens.IdentityVerifier`` (pyjwt with its
``PyJWKClient``), which runs in a thread because it blocks, like a sync backend.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.tokens import (
    KeySet,
    TokenKeyFiles,
    TokenMinter,
    TokenSubject,
    build_claims,
    generate_key,
)
from gateway.tokens.settings import Algorithm
from tests.support.tokens import IdentityVerifier

if TYPE_CHECKING:
    from tests.tokens.conftest import TokenGateway

StartGateway = Callable[..., Awaitable["TokenGateway"]]
SubjectFactory = Callable[..., TokenSubject]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


async def _verify(verifier: IdentityVerifier, token: str) -> dict[str, Any]:
    return await asyncio.to_thread(verifier.verify, token)


async def _rejected(verifier: IdentityVerifier, token: str) -> type[Exception]:
    with pytest.raises(jwt.PyJWTError) as caught:
        await _verify(verifier, token)
    return caught.type


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
async def test_tokens_verify_against_served_jwks(
    token_gateway: StartGateway, make_subject: SubjectFactory, algorithm: Algorithm
) -> None:
    """A token of each algorithm verifies with pyjwt's JWKS client against the served JWKS."""
    gw = await token_gateway(algorithm)
    subject = make_subject(3, active="10000001")
    claims = await _verify(gw.verifier(), gw.mint(subject))
    assert claims["sub"] == "pseudo-abc123"
    assert claims["iss"] == gw.url
    assert [e["kvk"] for e in claims["employers"]] == ["10000000", "10000001", "10000002"]
    assert claims["act_employer"]["kvk"] == "10000001"


async def test_jwks_is_served_with_cache_headers(token_gateway: StartGateway) -> None:
    """The JWKS response says public, short caching and is a JWK set."""
    gw = await token_gateway()
    async with aiohttp.ClientSession() as http, http.get(gw.jwks_url) as response:
        assert response.headers["Cache-Control"] == "public, max-age=300"
        body = await response.json(content_type="application/jwk-set+json")
    assert [k["kid"] for k in body["keys"]] == list(gw.keys.kids.values())


async def test_audiences_are_kept_apart(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """A backend accepts its own audience's token and rejects another route's token."""
    gw = await token_gateway()
    subject = make_subject(2)
    portal_token, reports_token = gw.mint(subject, "portal"), gw.mint(subject, "reports")
    portal, reports = gw.verifier("portal"), gw.verifier("reports")
    assert (await _verify(portal, portal_token))["aud"] == "portal"
    assert (await _verify(reports, reports_token))["aud"] == "reports"
    assert await _rejected(portal, reports_token) is jwt.InvalidAudienceError


async def test_tampered_token_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """Changing a claim without re-signing breaks the signature."""
    gw = await token_gateway()
    header, payload, signature = gw.mint(make_subject(2)).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["employers"].append({"kvk": "66666666"})
    forged = f"{header}.{_b64json(claims)}.{signature}"
    assert await _rejected(gw.verifier(), forged) is jwt.InvalidSignatureError


async def test_expired_token_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """A token past ``exp`` plus the leeway is rejected."""
    gw = await token_gateway()
    old = TokenMinter(gw.settings, gw.keys, clock=lambda: time.time() - 120)
    assert await _rejected(gw.verifier(), old.mint(make_subject(2), "portal")) is (
        jwt.ExpiredSignatureError
    )


async def test_wrong_issuer_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """A token naming another issuer is rejected even with a valid signature."""
    gw = await token_gateway()
    other = gw.settings.model_copy(update={"issuer": "https://evil.example"})
    token = TokenMinter(other, gw.keys).mint(make_subject(2), "portal")
    assert await _rejected(gw.verifier(), token) is jwt.InvalidIssuerError


async def test_alg_none_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """An unsigned token (``alg: none``) is rejected even with a known kid."""
    gw = await token_gateway()
    claims = build_claims(make_subject(2), "portal", int(time.time()), settings=gw.settings)
    unsigned = f"{_b64json({'alg': 'none', 'kid': gw.keys.kid, 'typ': 'JWT'})}.{_b64json(claims)}."
    assert issubclass(await _rejected(gw.verifier(), unsigned), jwt.InvalidTokenError)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_hmac_with_public_key_confusion_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory, algorithm: Algorithm
) -> None:
    """HS256 'signed' with the published public key (PEM or JWK) is rejected by the allow-list."""
    gw = await token_gateway(algorithm)
    claims = build_claims(make_subject(2), "portal", int(time.time()), settings=gw.settings)
    public_pem = gw.keys.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_jwk = json.dumps(gw.keys.jwks_document()["keys"][0]).encode()
    signing_input = f"{_b64json({'alg': 'HS256', 'kid': gw.keys.kid})}.{_b64json(claims)}"
    for secret in (public_pem, public_jwk):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        forged = f"{signing_input}.{_b64(mac)}"
        assert await _rejected(gw.verifier(), forged) is jwt.InvalidAlgorithmError


async def test_wrong_key_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """A token signed by another key is rejected, whether it claims our kid or its own."""
    gw = await token_gateway()
    claims = build_claims(make_subject(2), "portal", int(time.time()), settings=gw.settings)
    attacker = ec.generate_private_key(ec.SECP256R1())
    with_our_kid = jwt.encode(claims, attacker, algorithm="ES256", headers={"kid": gw.keys.kid})
    assert await _rejected(gw.verifier(), with_our_kid) is jwt.InvalidSignatureError
    with_own_kid = jwt.encode(claims, attacker, algorithm="ES256", headers={"kid": "attacker"})
    assert await _rejected(gw.verifier(), with_own_kid) is jwt.PyJWKClientError


async def test_missing_required_claim_is_rejected(
    token_gateway: StartGateway, make_subject: SubjectFactory
) -> None:
    """A correctly signed token without a required claim (here ``sid``) is rejected."""
    gw = await token_gateway()
    claims = build_claims(make_subject(2), "portal", int(time.time()), settings=gw.settings)
    del claims["sid"]
    token = jwt.encode(claims, gw.keys.signing_key, algorithm="ES256", headers={"kid": gw.keys.kid})
    assert await _rejected(gw.verifier(), token) is jwt.MissingRequiredClaimError


async def test_other_gateway_keys_do_not_verify(
    token_gateway: StartGateway, make_subject: SubjectFactory, tmp_path: Path
) -> None:
    """A token from a second gateway (own keys, same issuer) is not accepted."""
    gw = await token_gateway()
    stranger = KeySet(TokenKeyFiles(current=generate_key(tmp_path / "stranger.pem")), "ES256")
    token = TokenMinter(gw.settings, stranger).mint(make_subject(2), "portal")
    assert await _rejected(gw.verifier(), token) is jwt.PyJWKClientError
