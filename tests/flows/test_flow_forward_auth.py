"""Forward-auth answers for each proxy's way of asking, against a real login world.

The real nginx journey is in tests/deploy/test_nginx_forward_auth.py; here the
endpoint is asked directly the way ingress-nginx, Traefik and Envoy ask, and
the answers are checked: the same routes, scope and token as proxy mode.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from structlog.testing import capture_logs

from gateway.forward_auth import cacheable_for
from tests.conftest import make_config
from tests.support.login_world import CLIENT_WITH_MANDATE, LoginWorld, login_world

pytestmark = pytest.mark.asyncio(loop_scope="module")

FOREIGN = "99999999"
AUTH = "/_gateway/auth"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path_factory.mktemp("fa"),
        server={"trusted_proxies": ["127.0.0.1/32"]},
        forward_auth={"enabled": True, "cache_seconds": 3},
    ) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(world: LoginWorld) -> aiohttp.ClientSession:
    session = world.browser()
    resp, _ = await world.login(session, "direct")
    assert resp.status == 200
    return session


async def _ask(
    session: aiohttp.ClientSession,
    world: LoginWorld,
    path: str = AUTH,
    method: str = "GET",
    **headers: str,
) -> tuple[int, dict[str, str]]:
    async with session.request(
        method, world.url(path), headers=headers, allow_redirects=False
    ) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


@pytest.mark.parametrize(
    "how",
    [
        {"X-Original-URI": f"/werkgevers/{CLIENT_WITH_MANDATE}/x", "X-Original-Method": "GET"},
        {"X-Forwarded-Uri": f"/werkgevers/{CLIENT_WITH_MANDATE}/x", "X-Forwarded-Method": "GET"},
        {"X-Original-URL": f"https://portaal.example/werkgevers/{CLIENT_WITH_MANDATE}/x?a=1"},
    ],
    ids=["nginx", "traefik", "ingress-nginx"],
)
async def test_each_proxy_style_gets_the_token_for_an_allowed_request(
    world: LoginWorld, browser: aiohttp.ClientSession, how: dict[str, str]
) -> None:
    """200 with a verifiable identity header, the route's name and a bounded cache lifetime."""
    status, headers = await _ask(browser, world, **how)
    assert status == 200
    assert headers["X-Gateway-Route"] == "employer-pages"
    assert headers["X-Accel-Expires"] == "3"
    assert "max-age=3" in headers["Cache-Control"]
    claims = await world.verify(headers["X-Gateway-Identity"], "employer-pages")
    assert CLIENT_WITH_MANDATE in {e["kvk"] for e in claims["employers"]}


async def test_envoy_path_prefix_style(world: LoginWorld, browser: aiohttp.ClientSession) -> None:
    """Envoy appends the original path to the auth path: that path is what is decided on."""
    ok, _ = await _ask(browser, world, f"{AUTH}/werkgevers/{CLIENT_WITH_MANDATE}/x")
    assert ok == 200
    denied, _ = await _ask(browser, world, f"{AUTH}/werkgevers/{FOREIGN}/x")
    assert denied == 403


async def test_foreign_employer_and_refused_shapes_are_403(
    world: LoginWorld, browser: aiohttp.ClientSession
) -> None:
    """The same scope check and target rules as proxy mode; a proxy only understands 401/403."""
    for target in (
        f"/werkgevers/{FOREIGN}/x",
        f"/Werkgevers/{FOREIGN}",
        f"/werkgevers;x=1/{FOREIGN}/x",
        f"/a/../werkgevers/{FOREIGN}",
        "http://evil/werkgevers/1",
        "/_gateway/employers",
    ):
        status, headers = await _ask(browser, world, **{"X-Original-URI": target})
        assert status == 403, target
        assert "X-Gateway-Identity" not in headers


async def test_public_route_is_allowed_without_identity(
    world: LoginWorld, browser: aiohttp.ClientSession
) -> None:
    """A public route: 200 and no identity header (the proxy then sends none)."""
    status, headers = await _ask(browser, world, **{"X-Original-URI": "/openbaar/x"})
    assert status == 200
    assert "X-Gateway-Identity" not in headers


async def test_no_session_is_401_with_the_login_location(world: LoginWorld) -> None:
    """Browsers and API clients without a session: 401, Location and X-Auth-Redirect."""
    anonymous = world.browser()
    for accept in ("text/html", "application/json"):
        status, headers = await _ask(
            anonymous, world, **{"X-Original-URI": "/werkgevers/1/x?b=2", "Accept": accept}
        )
        assert status == 401
        assert headers["X-Auth-Redirect"].startswith("/_gateway/login?next=/werkgevers/1/x")
        assert headers["Location"] == headers["X-Auth-Redirect"]
        assert headers["Cache-Control"] == "no-store"


async def test_form_scope_cannot_be_checked_without_the_body(
    world: LoginWorld, browser: aiohttp.ClientSession
) -> None:
    """A POST to a route with a form employer scope is refused; a GET there is decided."""
    status, _ = await _ask(
        browser, world, **{"X-Original-URI": "/formulieren", "X-Original-Method": "POST"}
    )
    assert status == 403
    status, _ = await _ask(
        browser, world, **{"X-Original-URI": "/formulieren", "X-Original-Method": "GET"}
    )
    assert status == 200


async def test_a_request_without_the_original_target_is_refused(
    world: LoginWorld, browser: aiohttp.ClientSession
) -> None:
    """No X-Original-URI (or equivalent): nothing to decide on, so 403."""
    status, _ = await _ask(browser, world)
    assert status == 403


async def test_untrusted_peers_may_not_ask(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Without the peer in trusted_proxies, every question is refused and audited."""
    async with login_world(
        tmp_path_factory.mktemp("fa-untrusted"), forward_auth={"enabled": True}
    ) as other:
        session = other.browser()
        resp, _ = await other.login(session, "direct")
        assert resp.status == 200
        with capture_logs() as logs:
            status, headers = await _ask(
                session, other, **{"X-Original-URI": f"/werkgevers/{CLIENT_WITH_MANDATE}/x"}
            )
        assert status == 403
        assert "X-Gateway-Identity" not in headers
        assert any(e.get("event") == "forward_auth_refused" for e in logs)


async def test_browser_status_303_redirects_browsers_itself(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """For Traefik and Envoy (which pass the answer on), browsers can get the 303 directly."""
    async with login_world(
        tmp_path_factory.mktemp("fa-303"),
        server={"trusted_proxies": ["127.0.0.1/32"]},
        forward_auth={"enabled": True, "browser_status": 303},
    ) as other:
        anonymous = other.browser()
        status, headers = await _ask(
            anonymous, other, **{"X-Original-URI": "/werkgevers/1/x", "Accept": "text/html"}
        )
        assert status == 303
        assert headers["Location"].startswith("/_gateway/login?next=/werkgevers/1/x")


async def test_the_documented_configuration_snippet_is_valid() -> None:
    """The YAML block in docs/forward-auth.md loads into a valid gateway configuration."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "forward-auth.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    snippet = yaml.safe_load(block.group(1))
    route = {"name": "all", "match": {"path": "/"}, "upstream": "http://u", "policy": "public"}
    config = make_config({**snippet, "routes": [route]})
    assert config.forward_auth.enabled is True
    assert config.forward_auth.cache_seconds == 60
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8"]


async def test_forward_auth_and_proxy_mode_decide_alike(
    world: LoginWorld, browser: aiohttp.ClientSession
) -> None:
    """One policy for both modes: the same requests are allowed and refused, and an allowed
    one carries the very token proxy mode forwards (one session, one audience, one token)."""
    for target, allowed in (
        (f"/werkgevers/{CLIENT_WITH_MANDATE}/x", True),
        (f"/WERKGEVERS/{CLIENT_WITH_MANDATE}", True),
        (f"/werkgevers/{FOREIGN}/x", False),
        (f"/Werkgevers/{FOREIGN}", False),
        ("/openbaar/x", True),
    ):
        async with browser.get(world.url(target), allow_redirects=False) as resp:
            await resp.read()
            proxied = resp.status
        status, headers = await _ask(browser, world, **{"X-Original-URI": target})
        assert (proxied, status) == ((200, 200) if allowed else (403, 403)), target
        if allowed and "X-Gateway-Identity" in headers:
            forwarded = world.upstream_headers()["x-gateway-identity"][0]
            assert headers["X-Gateway-Identity"] == forwarded, target


@pytest.mark.parametrize(
    ("limit", "mandates_in", "token_in", "expected"),
    [
        (30, 3600.0, 60, 30),  # the configured limit
        (60, 3600.0, 60, 59),  # the defaults: never past the token it carries
        (60, 60.0, 60, 59),  # ... and its mandates (re-check interval: 60 s)
        (30, 7.9, 60, 7),  # the mandates must be asked again sooner: whole seconds, down
        (30, 3600.0, 12, 11),  # the token expires sooner: a second of margin
        (30, 0.5, 60, 0),  # due within the second: not cached
        (30, -4.0, 60, 0),  # already due (the re-check is running): not cached
        (0, 3600.0, 60, 0),  # caching off
    ],
)
async def test_an_answer_is_cacheable_until_its_mandates_or_its_token_run_out(
    limit: int, mandates_in: float, token_in: int, expected: int
) -> None:
    now = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
    seconds = cacheable_for(
        limit,
        now=now,
        mandates_due=now + dt.timedelta(seconds=mandates_in),
        token_expires=int(now.timestamp()) + token_in,
    )
    assert seconds == expected
