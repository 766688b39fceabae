"""Key rotation without downtime: a full walk with backends verifying, and the file tooling.

Backends use pyjwt's ``PyJWKClient`` as docs/backends.md says; its clock (JWKS cache
lifetime and refresh cooldown) is a fake the test advances, so the walk needs no
sleeping. The gateway side is real: key files, ``rotate``, ``KeySet.reload``, the
JWKS over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest

from gateway.tokens import (
    KeyFileError,
    KeySet,
    TokenKeyFiles,
    TokenSettings,
    TokenSubject,
    generate_key,
    min_rotation_interval,
    retire_previous,
    rotate,
)
from tests.support.tokens import IdentityVerifier

if TYPE_CHECKING:
    from tests.tokens.conftest import FakeMonotonic, TokenGateway

StartGateway = Callable[..., Awaitable["TokenGateway"]]
SubjectFactory = Callable[..., TokenSubject]


async def test_full_rotation_walk_never_fails_a_backend(
    token_gateway: StartGateway, make_subject: SubjectFactory, jwks_clock: FakeMonotonic
) -> None:
    """Publish next, promote, keep previous, retire it, rotate again: no verification fails."""
    gw = await token_gateway()
    keys_dir = gw.settings.keys.current.parent
    interval = min_rotation_interval(gw.settings)
    # A backend configured as documented, and one that caches the JWKS far longer
    # than our Cache-Control says (it relies on the refresh-on-unknown-kid rule).
    backends = [gw.verifier(), gw.verifier(jwks_lifespan=86_400)]
    failures: list[str] = []
    verified: set[str] = set()
    held: list[str] = []  # tokens already handed to backends, still within their lifetime

    async def check(step: str) -> None:
        subject = make_subject(3, session_ref=f"session-{step}")
        fresh = gw.mint(subject)
        held.append(fresh)
        for backend in backends:
            for token in held[-3:]:
                try:
                    await asyncio.to_thread(backend.verify, token)
                except jwt.PyJWTError as exc:
                    failures.append(f"{step}: {type(exc).__name__}")
                else:
                    verified.add(jwt.get_unverified_header(token)["kid"])

    # 0. Only the current key A exists; both backends fetch {A}.
    (keys_dir / "next.pem").unlink()
    gw.keys.reload()
    a = gw.keys.kid
    await check("start")
    a_token = held[-1]

    # 1. Generate the next key B and publish it (reload); B does not sign yet.
    generate_key(keys_dir / "next.pem", "ES256")
    gw.keys.reload()
    b = gw.keys.kids["next"]
    assert gw.keys.kid == a
    await check("next-published")
    # Wait at least the rotation interval (JWKS max-age, twice): the documented
    # backend's JWKS cache expires and it learns B before B signs.
    jwks_clock.advance(interval)
    await check("next-known")

    # 2. Promote: B signs, A stays published as previous, C is the new next.
    rotate(keys_dir, min_next_age=0)
    assert gw.keys.reload() is True
    assert (gw.keys.kid, gw.keys.kids["previous"]) == (b, a)
    c = gw.keys.kids["next"]
    await check("promoted")  # tokens signed by A (held) and by B both verify

    # 3. One token lifetime later: retire A.
    jwks_clock.advance(gw.settings.lifetime_seconds + 30)
    held.clear()
    assert retire_previous(keys_dir) is True
    gw.keys.reload()
    assert set(gw.keys.kids) == {"current", "next"}
    await check("retired")
    # A backend that starts now no longer accepts A's signatures.
    with pytest.raises(jwt.PyJWKClientError):
        await asyncio.to_thread(gw.verifier().verify, a_token)

    # 4. A second rotation after the interval: C signs; the long-caching backend
    #    has never seen C and refreshes once on the unknown kid.
    jwks_clock.advance(interval)
    rotate(keys_dir, min_next_age=0)
    gw.keys.reload()
    assert gw.keys.kid == c
    await check("second-rotation")

    assert failures == []
    assert {a, b, c} <= verified


async def test_unknown_kid_refresh_is_rate_limited(
    token_gateway: StartGateway, make_subject: SubjectFactory, jwks_clock: FakeMonotonic
) -> None:
    """Unknown kids make a backend re-fetch the JWKS at most once per cooldown."""
    gw = await token_gateway()
    backend = gw.verifier()
    await asyncio.to_thread(backend.verify, gw.mint(make_subject(2)))
    fetched = gw.jwks_requests
    bogus = jwt.encode({"x": 1}, "k" * 32, algorithm="HS256", headers={"kid": "unknown"})
    for _ in range(5):
        with pytest.raises(jwt.PyJWKClientError):
            await asyncio.to_thread(backend.verify, bogus)
    assert gw.jwks_requests == fetched
    jwks_clock.advance(31)
    for _ in range(5):
        with pytest.raises(jwt.PyJWKClientError):
            await asyncio.to_thread(backend.verify, bogus)
    assert gw.jwks_requests == fetched + 1


def test_rotate_moves_files_and_keeps_them_private(keys_dir: Callable[[str], Path]) -> None:
    """Rotation makes next current, current previous, writes a new next; all mode 0600."""
    d = keys_dir("EdDSA")
    before = {name: (d / name).read_bytes() for name in ("current.pem", "next.pem")}
    rotate(d, min_next_age=0)
    assert (d / "current.pem").read_bytes() == before["next.pem"]
    assert (d / "previous.pem").read_bytes() == before["current.pem"]
    assert (d / "next.pem").read_bytes() not in before.values()
    for name in ("current.pem", "next.pem", "previous.pem"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in d.iterdir()) == ["current.pem", "next.pem", "previous.pem"]
    keys = KeySet(TokenKeyFiles.in_dir(d), "EdDSA")  # the new next is the same algorithm
    assert set(keys.kids) == {"current", "next", "previous"}


def test_rotate_refuses_a_next_key_published_too_recently(keys_dir: Callable[[str], Path]) -> None:
    """A next key younger than the minimum age is not promoted (backends may lack it)."""
    d = keys_dir("ES256")
    before = (d / "current.pem").read_bytes()
    with pytest.raises(KeyFileError, match="published at least"):
        rotate(d)
    assert (d / "current.pem").read_bytes() == before
    old = (d / "next.pem").stat().st_mtime - 3600
    os.utime(d / "next.pem", (old, old))
    rotate(d)
    assert (d / "previous.pem").read_bytes() == before


def test_rotate_refuses_without_a_next_key(keys_dir: Callable[[str], Path]) -> None:
    """Without a published next key there is nothing safe to promote."""
    d = keys_dir("ES256")
    (d / "next.pem").unlink()
    with pytest.raises(KeyFileError, match="next"):
        rotate(d, min_next_age=0)


def test_rotate_refuses_a_broken_next_key(keys_dir: Callable[[str], Path]) -> None:
    """A next key that does not load never becomes the signing key."""
    d = keys_dir("ES256")
    (d / "next.pem").write_text("garbage")
    before = (d / "current.pem").read_bytes()
    with pytest.raises(KeyFileError):
        rotate(d, min_next_age=0)
    assert (d / "current.pem").read_bytes() == before
    assert not (d / "previous.pem").exists()


def test_rotation_interval_covers_jwks_cache_and_token_lifetime(
    keys_dir: Callable[[str], Path], make_settings: Callable[..., TokenSettings]
) -> None:
    """The minimum interval is twice the JWKS max-age, or lifetime plus leeway if longer."""
    d = keys_dir("ES256")
    assert min_rotation_interval(make_settings(d)) == 600
    short = make_settings(d, jwks_max_age_seconds=30, lifetime_seconds=300)
    assert min_rotation_interval(short) == 330


def test_verifier_is_documented_pyjwt() -> None:
    """The reference verifier is plain pyjwt with the documented defaults."""
    v = IdentityVerifier("https://gw.example/.well-known/jwks.json", issuer="i", audience="a")
    assert isinstance(v.jwks, jwt.PyJWKClient)
    assert (v.algorithms, v.leeway, v.jwks.cooldown_duration) == (["ES256"], 30, 30)
