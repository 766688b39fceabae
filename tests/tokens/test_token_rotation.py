"""Key rotation without downtime: a full walk with backends verifying, and the file tooling.

Backends use pyjwt's ``PyJWKClient`` as docs/backends.md says; its clock (JWKS cache
lifetime and refresh cooldown) is a fake the test advances, so the walk needs no
sleeping. The gateway side is real: key files, ``rotate``, ``KeySet.reload``, the
JWKS over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from gateway.cli import main
from gateway.tokens import (
    KeyFileError,
    KeySet,
    TokenKeyFiles,
    TokenSettings,
    TokenSubject,
    generate_key,
    init_keys_dir,
    min_rotation_interval,
    retire_previous,
    rotate,
)
from tests.support.clock import FakeClock
from tests.support.tokens import IdentityVerifier

if TYPE_CHECKING:
    from tests.tokens.conftest import TokenGateway

StartGateway = Callable[..., Awaitable["TokenGateway"]]
SubjectFactory = Callable[..., TokenSubject]


async def test_full_rotation_walk_never_fails_a_backend(
    token_gateway: StartGateway, make_subject: SubjectFactory, jwks_clock: FakeClock
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
    token_gateway: StartGateway, make_subject: SubjectFactory, jwks_clock: FakeClock
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
    before = KeySet(TokenKeyFiles.in_dir(d), "EdDSA").kids
    rotate(d, min_next_age=0)
    keys = KeySet(TokenKeyFiles.in_dir(d), "EdDSA")  # the new next is the same algorithm
    assert keys.kids["current"] == before["next"]
    assert keys.kids["previous"] == before["current"]
    assert keys.kids["next"] not in before.values()
    for name in ("current.pem", "next.pem", "previous.pem"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in d.iterdir()) == ["current.pem", "next.pem", "previous.pem"]


def test_rotate_refuses_a_next_key_published_too_recently(keys_dir: Callable[[str], Path]) -> None:
    """A next key younger than the minimum age is not promoted (backends may lack it)."""
    d = keys_dir("ES256")
    before = (d / "current.pem").read_bytes()
    with pytest.raises(KeyFileError, match="published at least"):
        rotate(d)
    assert (d / "current.pem").read_bytes() == before
    rotate(d, now=time.time() + 601)
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


def test_rotate_a_copied_key_set_judges_next_by_when_it_was_published(
    keys_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """A key set copied out of a Kubernetes Secret an hour later rotates: file times are not age."""
    made = keys_dir("ES256")
    later = time.time() + 3600
    copy = tmp_path / "copied-from-secret"
    copy.mkdir()
    for name in ("current.pem", "next.pem"):
        shutil.copyfile(made / name, copy / name)  # written now, as kubectl or kubelet would
        os.utime(copy / name, (later, later))
    rotate(copy, now=later)
    keys = KeySet(TokenKeyFiles.in_dir(copy), "ES256")
    before = KeySet(TokenKeyFiles.in_dir(made), "ES256")
    assert keys.kids["current"] == before.kids["next"]
    assert keys.kids["previous"] == before.kids["current"]


def _kubelet_mount(source: Path, mount: Path) -> None:
    """Lay ``source``'s files out as the kubelet mounts a Secret: all written now, read-only.

    A timestamped directory holds the files (mode 0440), ``..data`` points at it,
    and each key name is a symlink through ``..data``.
    """
    data_dir = mount / "..2026_01_01_00_00_00.000000001"
    data_dir.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        shutil.copyfile(f, data_dir / f.name)
        (data_dir / f.name).chmod(0o440)
        (mount / f.name).symlink_to(f"..data/{f.name}")
    (mount / "..data").symlink_to(data_dir.name)
    data_dir.chmod(0o555)
    mount.chmod(0o555)


def test_rotate_from_a_freshly_mounted_secret_into_a_new_directory(tmp_path: Path) -> None:
    """A Secret mounted a moment ago rotates (by stamps, not file times); the mount is untouched."""
    made = tmp_path / "made"
    init_keys_dir(made, now=time.time() - 3600)  # the set the Secret was created from
    mount = tmp_path / "secret"
    _kubelet_mount(made, mount)
    before = {p.name: p.read_bytes() for p in mount.iterdir() if p.name.endswith(".pem")}
    rotate(mount, out=tmp_path / "rotated")
    assert {p.name: p.read_bytes() for p in mount.iterdir() if p.name.endswith(".pem")} == before
    old = KeySet(TokenKeyFiles.in_dir(mount), "ES256").kids
    new = KeySet(TokenKeyFiles.in_dir(tmp_path / "rotated"), "ES256").kids
    assert (new["current"], new["previous"]) == (old["next"], old["current"])
    assert new["next"] not in old.values()
    for name in ("current.pem", "next.pem", "previous.pem"):
        assert stat.S_IMODE((tmp_path / "rotated" / name).stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="not empty"):
        rotate(mount, out=tmp_path / "rotated")


def _doc_commands(doc: str, section: str) -> list[list[str]]:
    """The ``gateway ...`` command lines (continuations joined) of a section's shell block."""
    text = (Path(__file__).parents[2] / "docs" / doc).read_text(encoding="utf-8")
    block = text.split(section, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.startswith("gateway ")]


async def test_kubernetes_rotation_procedure_in_deploy_docs(
    tmp_path: Path,
    aiohttp_server: AiohttpServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The documented commands rotate keys copied out of the Secret, checked with the live JWKS."""
    deployed = tmp_path / "deployed"  # what the Secret holds and the pods publish
    init_keys_dir(deployed, now=time.time() - 3600)
    published = KeySet(TokenKeyFiles.in_dir(deployed), "ES256")
    app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.Response(body=published.jwks_bytes())

    app.router.add_get("/.well-known/jwks.json", jwks)
    server = await aiohttp_server(app)
    jwks_url = f"http://127.0.0.1:{server.port}/.well-known/jwks.json"
    work = tmp_path / "workstation"
    (work / "tokens").mkdir(parents=True)
    monkeypatch.chdir(work)
    for key in ("current", "next"):  # what `kubectl get secret ... | base64 -d` writes, now
        shutil.copyfile(deployed / f"{key}.pem", work / "tokens" / f"{key}.pem")
    commands = _doc_commands("deploy.md", "### Rotating the token signing key")
    assert [c[:3] for c in commands] == [["keys", "tokens", "show"], ["keys", "tokens", "rotate"]]
    for command in commands:
        argv = [jwks_url if a.endswith("/.well-known/jwks.json") else a for a in command]
        assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
    shown = capsys.readouterr().out
    assert f"next     kid={published.kids['next']}" in shown and "by its stamp" in shown
    rotated = KeySet(TokenKeyFiles.in_dir(work / "tokens-rotated"), "ES256").kids
    assert rotated["current"] == published.kids["next"]

    # A next key the pods do not publish yet (never rolled out) is not promoted.
    shutil.rmtree(work / "tokens-rotated")
    (work / "tokens" / "next.pem").unlink()
    generate_key(work / "tokens" / "next.pem", now=time.time() - 3600)
    argv = [jwks_url if a.endswith("/.well-known/jwks.json") else a for a in commands[1]]
    assert await asyncio.to_thread(main, argv) == 1
    assert "is not in the published JWKS" in capsys.readouterr().err
