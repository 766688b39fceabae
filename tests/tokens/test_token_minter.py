"""The token minter: signing, reuse until close to expiry, renewal on change, bounded cache."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.errors import EmployerNotAllowed, NotAuthenticated
from gateway.tokens import KeySet, TokenMinter, TokenSettings, TokenSubject
from gateway.tokens.rotation import signing_key_pem
from gateway.tokens.settings import Algorithm
from tests.support.clock import FakeClock

SubjectFactory = Callable[..., TokenSubject]


@pytest.fixture
def setup(
    keys_dir: Callable[[Algorithm], Path],
    make_settings: Callable[..., TokenSettings],
    clock: FakeClock,
) -> Callable[..., tuple[TokenMinter, Path]]:
    def make(**overrides: Any) -> tuple[TokenMinter, Path]:
        d = keys_dir(overrides.get("algorithm", "ES256"))
        settings = make_settings(d, **overrides)
        return TokenMinter(settings, KeySet.from_settings(settings), clock=clock.time), d

    return make


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_token_is_reused_while_fresh(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory, clock: FakeClock
) -> None:
    """The same session and audience get the same token until 80% of its lifetime has passed."""
    minter, _ = setup()
    subject = make_subject(3)
    first = minter.mint(subject, "portal")
    clock.advance(47)
    assert minter.mint(subject, "portal") == first
    # An equal subject built again (e.g. from the store on another request) also hits.
    assert minter.mint(make_subject(3), "portal") == first
    assert (minter.signs, minter.hits) == (1, 2)


def test_token_is_renewed_near_expiry(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory, clock: FakeClock
) -> None:
    """Once less than the reuse margin of its lifetime is left, a new token is signed."""
    minter, _ = setup()
    subject = make_subject(3)
    first = minter.mint(subject, "portal")
    clock.advance(48)
    second = minter.mint(subject, "portal")
    assert second != first
    assert _claims(second)["iat"] == _claims(first)["iat"] + 48
    assert _claims(second)["jti"] != _claims(first)["jti"]


def test_audiences_get_different_tokens(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """Each audience gets its own token naming only that audience."""
    minter, _ = setup()
    subject = make_subject(3)
    portal, reports = minter.mint(subject, "portal"), minter.mint(subject, "reports")
    assert portal != reports
    assert (_claims(portal)["aud"], _claims(reports)["aud"]) == ("portal", "reports")


def test_session_changes_yield_a_new_token(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """Switching the active employer or changing the allowed set signs a new token at once."""
    minter, _ = setup()
    plain = minter.mint(make_subject(3), "portal")
    switched = minter.mint(make_subject(3, active="10000002"), "portal")
    grown = minter.mint(make_subject(4), "portal")
    assert len({plain, switched, grown}) == 3
    assert _claims(switched)["act_employer"]["kvk"] == "10000002"
    assert len(_claims(grown)["employers"]) == 4


def test_sessions_never_share_tokens(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """Two sessions with identical content get different tokens with their own sid."""
    minter, _ = setup()
    a = minter.mint(make_subject(3, session_ref="a"), "portal")
    b = minter.mint(make_subject(3, session_ref="b"), "portal")
    assert (_claims(a)["sid"], _claims(b)["sid"]) == ("a", "b")


def test_cache_is_bounded(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """The cache keeps at most ``cache_size`` tokens and evicts the least recently used."""
    minter, _ = setup(cache_size=3)
    subjects = [make_subject(1, session_ref=f"s{i}") for i in range(5)]
    tokens = [minter.mint(s, "portal") for s in subjects]
    assert len(minter) == 3
    assert minter.mint(subjects[4], "portal") == tokens[4]
    signs = minter.signs
    minter.mint(subjects[0], "portal")  # evicted earlier: signed again
    assert minter.signs == signs + 1


def test_new_signing_key_yields_new_tokens(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """After a key reload tokens are signed with the new kid, not served from the cache."""
    minter, d = setup()
    subject = make_subject(2)
    old = minter.mint(subject, "portal")
    (d / "current.pem").write_bytes(signing_key_pem("ES256"))
    minter.keys.reload()
    new = minter.mint(subject, "portal")
    assert jwt.get_unverified_header(new)["kid"] == minter.keys.kid
    assert jwt.get_unverified_header(old)["kid"] != minter.keys.kid


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
def test_header_names_algorithm_and_kid(
    setup: Callable[..., tuple[TokenMinter, Path]],
    make_subject: SubjectFactory,
    algorithm: Algorithm,
) -> None:
    """The JWS header names the configured algorithm and the current kid."""
    minter, _ = setup(algorithm=algorithm)
    header = jwt.get_unverified_header(minter.mint(make_subject(1), "portal"))
    assert header == {"alg": algorithm, "kid": minter.keys.kid, "typ": "JWT"}


def test_invalid_active_employer_is_not_signed_or_cached(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """A session whose active employer is not allowed gets no token."""
    minter, _ = setup()
    with pytest.raises(EmployerNotAllowed):
        minter.mint(make_subject(2, active="99999999"), "portal")
    assert len(minter) == 0


def test_verify_own_accepts_own_tokens_only(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """The gateway accepts its own tokens for any audience and refuses another gateway's."""
    minter, _ = setup()
    real = TokenMinter(minter.settings, minter.keys)  # real clock: exp is checked
    claims = real.verify_own(real.mint(make_subject(2), "reports"))
    assert (claims["aud"], claims["sid"]) == ("reports", "sess-ref-1")
    stranger, _ = setup()
    with pytest.raises(NotAuthenticated):
        real.verify_own(TokenMinter(stranger.settings, stranger.keys).mint(make_subject(2), "x"))
    with pytest.raises(NotAuthenticated):
        real.verify_own("not-a-token")
    expired = TokenMinter(minter.settings, minter.keys, clock=lambda: time.time() - 3600)
    with pytest.raises(NotAuthenticated):
        real.verify_own(expired.mint(make_subject(2), "portal"))


def test_employers_json_matches_the_pure_decision(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """The cached, serialised employers answer equals the pure decision in every case."""
    minter, _ = setup()
    real = TokenMinter(minter.settings, minter.keys)
    subject = make_subject(500)
    claims = real.verify_own(real.mint(subject, "portal"))
    cases = [subject, subject, None, make_subject(500, session_ref="x"), make_subject(501)]
    for case in cases:
        status, body = real.employers_json(claims, case)
        assert (status, json.loads(body)) == real.employers_response(claims, case)


def test_employers_endpoint_reads_bearer_or_default_header(
    setup: Callable[..., tuple[TokenMinter, Path]],
) -> None:
    """The employers endpoint reads ``Authorization: Bearer`` or the default identity header."""
    minter, _ = setup()
    assert minter.token_from_headers({"Authorization": "Bearer abc.def.ghi"}) == "abc.def.ghi"
    assert minter.token_from_headers({"Authorization": "bearer  abc "}) == "abc"
    assert minter.token_from_headers({"X-Gateway-Identity": "t"}) == "t"
    assert minter.token_from_headers({"Authorization": "Basic eA=="}) is None
    assert minter.token_from_headers({"Authorization": "Bearer "}) is None


def test_session_version_is_the_cheap_fingerprint(
    setup: Callable[..., tuple[TokenMinter, Path]], make_subject: SubjectFactory
) -> None:
    """With a session version, a new version yields a new token and sessions never mix sets."""
    minter, _ = setup()
    v1 = dataclasses.replace(make_subject(300), version=1)
    v2 = dataclasses.replace(make_subject(301), version=2)
    assert v1.fingerprint == "v1"
    first = minter.mint(v1, "portal")
    assert minter.mint(dataclasses.replace(v1), "portal") == first
    assert minter.mint(v2, "portal") != first
    # Another session at the same version number gets its own set's digest.
    other = dataclasses.replace(make_subject(500, session_ref="other"), version=1)
    digests = {_claims(minter.mint(s, "portal"))["employers_digest"] for s in (v1, v2, other)}
    assert len(digests) == 3
