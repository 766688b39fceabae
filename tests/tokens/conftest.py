"""Fixtures for the token tests: key directories, subjects, and a tiny token gateway on loopback.

The tiny gateway serves exactly the two endpoints backends use (the JWKS and the
employers endpoint) with the real ``gateway.tokens`` code behind them, so the
reference verifier in ``tests/support/tokens.py`` talks to it over real HTTP.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt.api_jwk
import jwt.jwk_set_cache
import jwt.jwks_client
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from gateway.errors import NotAuthenticated
from gateway.identity import Employer, Identity, Loa
from gateway.tokens import (
    KeySet,
    TokenKeyFiles,
    TokenMinter,
    TokenSettings,
    TokenSubject,
    init_keys_dir,
    jwks_headers,
)
from gateway.tokens.settings import Algorithm
from tests.support.clock import FakeClock
from tests.support.tokens import IdentityVerifier

LOGIN_TIME = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)


def _employers(
    n: int, *, scopes: frozenset[str] = frozenset({"contributions"})
) -> tuple[Employer, ...]:
    """``n`` distinct employers with 8-digit KvK numbers and fund numbers."""
    return tuple(
        Employer(
            kvk=f"{10000000 + i:08d}",
            name=f"Werkgever {i} B.V.",
            fund_number=f"F{i:06d}",
            scopes=scopes,
        )
        for i in range(n)
    )


def _subject(
    employers: tuple[Employer, ...] | int = 3,
    *,
    active: str | None = None,
    chain: bool = False,
    session_ref: str = "sess-ref-1",
    loa: Loa = Loa.EH3,
) -> TokenSubject:
    """A logged-in administrator (direct mode, or chain mode acting for one employer)."""
    allowed = _employers(employers) if isinstance(employers, int) else employers
    identity = Identity(
        acting_subject="pseudo-abc123",
        legal_subject_kvk=allowed[0].kvk if chain else "87654321",
        legal_subject_name=allowed[0].name if chain else "Administratiekantoor Jansen",
        intermediary_kvk="87654321" if chain else None,
        intermediary_name="Administratiekantoor Jansen" if chain else None,
        loa=loa,
        service_id="urn:etoegang:DV:00000001234567890000:services:1",
        login_time=LOGIN_TIME,
    )
    return TokenSubject(
        identity=identity, allowed=allowed, session_ref=session_ref, active_employer=active
    )


@pytest.fixture
def make_employers() -> Callable[..., tuple[Employer, ...]]:
    """Build ``n`` distinct employers."""
    return _employers


@pytest.fixture
def make_subject() -> Callable[..., TokenSubject]:
    """Build a token subject (see ``_subject`` for the knobs)."""
    return _subject


@pytest.fixture
def make_settings() -> Callable[..., TokenSettings]:
    """Build token settings for a keys directory."""
    return _settings


@pytest.fixture
def keys_dir(tmp_path: Path) -> Callable[[Algorithm], Path]:
    """Make a keys directory with a current and a next key for an algorithm."""

    counter = itertools.count()

    def make(algorithm: Algorithm = "ES256") -> Path:
        path = tmp_path / f"keys-{algorithm}-{next(counter)}"
        init_keys_dir(path, algorithm)
        return path

    return make


def _settings(keys: Path, issuer: str = "https://gw.example", **overrides: Any) -> TokenSettings:
    """Token settings using the standard layout of ``keys``."""
    return TokenSettings(issuer=issuer, keys=TokenKeyFiles.in_dir(keys), **overrides)


@pytest.fixture
def jwks_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the monotonic clock of pyjwt's JWKS cache and refresh cooldown (only there)."""
    clock = FakeClock(1000.0)
    fake_time = types.SimpleNamespace(monotonic=clock.time, time=time.time)
    for module in (jwt.jwks_client, jwt.jwk_set_cache, jwt.api_jwk):
        monkeypatch.setattr(module, "time", fake_time)
    return clock


@dataclass
class TokenGateway:
    """A running tiny gateway: its keys, minter, sessions (sid → subject) and URLs."""

    settings: TokenSettings
    keys: KeySet
    minter: TokenMinter
    url: str
    subjects: dict[str, TokenSubject] = field(default_factory=dict)
    jwks_requests: int = 0

    @property
    def jwks_url(self) -> str:
        return self.url + "/.well-known/jwks.json"

    def verifier(self, audience: str = "portal", **kw: Any) -> IdentityVerifier:
        """A backend verifier configured the documented way for this gateway."""
        return IdentityVerifier(
            self.jwks_url,
            issuer=self.settings.issuer,
            audience=audience,
            algorithms=[self.settings.algorithm],
            header_name=self.settings.header_name,
            **kw,
        )

    def mint(self, subject: TokenSubject, audience: str = "portal") -> str:
        """Mint for a subject and remember its session, as the real gateway would."""
        self.subjects[subject.session_ref] = subject
        return self.minter.mint(subject, audience)


_STATE = web.AppKey("token_gateway", dict)


async def _jwks(request: web.Request) -> web.Response:
    gw: TokenGateway = request.app[_STATE]["gw"]
    gw.jwks_requests += 1
    return web.Response(
        body=gw.keys.jwks_bytes(), headers=jwks_headers(gw.settings.jwks_max_age_seconds)
    )


async def _employers_handler(request: web.Request) -> web.Response:
    gw: TokenGateway = request.app[_STATE]["gw"]
    token = gw.minter.token_from_headers(request.headers) or ""
    try:
        claims = gw.minter.verify_own(token)
    except NotAuthenticated:
        return web.json_response({"error": "token_invalid"}, status=401)
    status, body = gw.minter.employers_json(claims, gw.subjects.get(claims["sid"]))
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@pytest.fixture
def token_gateway(
    aiohttp_server: AiohttpServer, keys_dir: Callable[[Algorithm], Path]
) -> Callable[..., Awaitable[TokenGateway]]:
    """Start a tiny gateway on loopback for an algorithm (settings overrides allowed)."""

    async def start(algorithm: Algorithm = "ES256", **overrides: Any) -> TokenGateway:
        app = web.Application()
        holder: dict[str, TokenGateway] = {}
        app[_STATE] = holder
        app.router.add_get("/.well-known/jwks.json", _jwks)
        app.router.add_get("/_gateway/api/employers", _employers_handler)
        server = await aiohttp_server(app)
        url = f"http://127.0.0.1:{server.port}"
        settings = _settings(keys_dir(algorithm), url, algorithm=algorithm, **overrides)
        keys = KeySet.from_settings(settings)
        holder["gw"] = TokenGateway(settings, keys, TokenMinter(settings, keys), url)
        return holder["gw"]

    return start
