"""deploy/nginx/gateway-forward-auth.conf, run by a real nginx in front of a real gateway.

The shipped file is used as it is, with only its three addresses and the cache
folder pointed at this test's processes. Browsers talk to nginx; nginx asks the
gateway (forward-auth mode) with an auth subrequest and carries the bytes to a
recording portal. What must hold: the login redirect, the identity header a
backend verifies, the 403 for a foreign employer, the spoofing cases, and a
revocation taking effect within the documented bound with the auth cache on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio

from tests.support.login_world import (
    ADMIN,
    CLIENT_WITH_MANDATE,
    DEFAULT_MANDATES,
    LoginWorld,
    login_world,
    mandate,
)
from tests.support.nginx import Nginx, free_port, run_nginx_http
from tests.support.raw_http import raw_exchange, statuses

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "gateway-forward-auth.conf"
FOREIGN = "99999999"
RECHECK_SECONDS = 2
CACHE_SECONDS = 30
"""Far longer than the re-check interval: each answer's time is cut to its mandates' freshness."""


def shipped_config(folder: Path, gateway: str, portal: str, port: int) -> str:
    """The shipped file with its addresses replaced (and nothing else)."""
    text = SHIPPED.read_text()
    replacements = {
        "server 127.0.0.1:8080;": f"server {gateway};",
        "server 127.0.0.1:9000;": f"server {portal};",
        "/var/cache/nginx/gateway-auth": str(folder / "auth-cache"),
        "listen 80;": f"listen 127.0.0.1:{port};",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path_factory.mktemp("forward-auth"),
        server={"trusted_proxies": ["127.0.0.1/32"]},
        forward_auth={"enabled": True, "cache_seconds": CACHE_SECONDS},
        sessions={"mandate_recheck_interval": RECHECK_SECONDS},
    ) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nginx(world: LoginWorld) -> AsyncIterator[Nginx]:
    gateway = urlsplit(world.gateway_url).netloc
    portal = urlsplit(str(world.config.routes[0].upstream)).netloc
    port = free_port()
    async with run_nginx_http(lambda f: shipped_config(f, gateway, portal, port), port) as n:
        yield n


def _url(nginx: Nginx, path: str) -> str:
    return f"http://127.0.0.1:{nginx.port}{path}"


@pytest_asyncio.fixture(loop_scope="module")
async def browser(world: LoginWorld) -> aiohttp.ClientSession:
    """A browser logged in with its own eHerkenning; the cookie also goes to nginx (same host)."""
    session = world.browser()
    resp, _ = await world.login(session, "direct")
    assert resp.status == 200
    return session


async def _get(
    session: aiohttp.ClientSession, url: str, **kw: object
) -> tuple[int, dict[str, str], str]:
    async with session.get(url, allow_redirects=False, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, dict(resp.headers), await resp.text()


async def test_no_session_sends_browsers_to_the_login_and_api_clients_401(
    world: LoginWorld, nginx: Nginx
) -> None:
    """nginx turns the gateway's 401 into the login redirect (back to the page) or a plain 401."""
    anonymous = world.browser()
    page = f"/werkgevers/{CLIENT_WITH_MANDATE}/loonaangifte?jaar=2026"
    status, headers, _ = await _get(anonymous, _url(nginx, page), headers={"Accept": "text/html"})
    assert status == 303
    location = urlsplit(headers["Location"])
    assert location.path == "/_gateway/login"
    assert parse_qs(location.query)["next"] == [page]
    status, _, _ = await _get(anonymous, _url(nginx, page), headers={"Accept": "application/json"})
    assert status == 401


async def test_an_allowed_request_reaches_the_portal_with_a_verifiable_token(
    world: LoginWorld, nginx: Nginx, browser: aiohttp.ClientSession
) -> None:
    """The portal gets the raw target and an identity token the documented verifier accepts."""
    seen = len(world.upstream_log.requests)
    page = f"/werkgevers/{CLIENT_WITH_MANDATE}/loonaangifte?q=a+b%26c"
    status, _, _ = await _get(browser, _url(nginx, page))
    assert status == 200
    record = world.upstream_log.requests[seen]
    assert record["path"] == page
    token = world.upstream_headers(seen)["x-gateway-identity"][0]
    claims = await world.verify(token, "employer-pages")
    assert claims["org"]["kvk"] == ADMIN
    assert CLIENT_WITH_MANDATE in {e["kvk"] for e in claims["employers"]}


async def test_a_foreign_employer_is_403_and_never_reaches_the_portal(
    world: LoginWorld, nginx: Nginx, browser: aiohttp.ClientSession
) -> None:
    """Every spelling of another employer's page is refused before the portal."""
    for path in (
        f"/werkgevers/{FOREIGN}/x",
        f"/Werkgevers/{FOREIGN}",
        f"/werkgevers/%39{FOREIGN[1:]}/x",
    ):
        seen = len(world.upstream_log.requests)
        status, _, _ = await _get(browser, _url(nginx, path))
        assert status == 403, path
        assert len(world.upstream_log.requests) == seen, path


async def test_client_sent_identity_and_original_uri_are_ignored(
    world: LoginWorld, nginx: Nginx, browser: aiohttp.ClientSession
) -> None:
    """A forged identity header never arrives; a forged X-Original-URI decides nothing."""
    seen = len(world.upstream_log.requests)
    status, _, _ = await _get(
        browser,
        _url(nginx, "/openbaar/info"),
        headers={"X-Gateway-Identity": "forged", "X-Original-URI": "/openbaar"},
    )
    assert status == 200
    assert "x-gateway-identity" not in world.upstream_headers(seen)
    status, _, _ = await _get(
        browser,
        _url(nginx, f"/werkgevers/{FOREIGN}/x"),
        headers={"X-Original-URI": f"/werkgevers/{CLIENT_WITH_MANDATE}/x"},
    )
    assert status == 403
    status, _, _ = await _get(
        browser,
        _url(nginx, f"/werkgevers/{CLIENT_WITH_MANDATE}/x"),
        headers={"X-Gateway-Identity": "forged"},
    )
    assert status == 200
    assert world.upstream_headers()["x-gateway-identity"] != ["forged"]


async def test_the_auth_endpoint_is_not_reachable_from_outside(
    world: LoginWorld, nginx: Nginx, browser: aiohttp.ClientSession
) -> None:
    """Through nginx the endpoint is 404; asked directly by a non-trusted peer it refuses."""
    for path in ("/_gateway/auth", "/_gateway/auth/werkgevers/1/x"):
        status, _, _ = await _get(
            browser, _url(nginx, path), headers={"X-Original-URI": "/werkgevers/1/x"}
        )
        assert status == 404


def _auth_answers(world: LoginWorld) -> float:
    """Allowed answers the gateway gave for the employer pages so far (its own metric)."""
    metrics = world.services.metrics
    metrics.flush()
    value = metrics.registry.get_sample_value(
        "gateway_requests_total", {"route": "employer-pages", "method": "GET", "status": "200"}
    )
    return value or 0.0


async def test_most_requests_never_reach_the_gateway_with_the_cache_on(
    world: LoginWorld, nginx: Nginx, browser: aiohttp.ClientSession
) -> None:
    """nginx answers repeated requests of one session from its auth cache, on every page
    of the same employer: the gateway is asked once per cached interval."""
    before = _auth_answers(world)
    started = time.monotonic()
    pages = [f"/werkgevers/{CLIENT_WITH_MANDATE}/{name}" for name in ("a", "b", "c", "d")]
    for i in range(20):
        status, _, _ = await _get(browser, _url(nginx, pages[i % 4] + f"?i={i}"))
        assert status == 200
    elapsed = time.monotonic() - started
    asked = _auth_answers(world) - before
    # Once, or once more each time the answer's time ran out (at most the mandates'
    # freshness: RECHECK_SECONDS; whole seconds, so at least every second).
    assert 1 <= asked <= 2 + elapsed, (asked, elapsed)
    assert list((nginx.folder / "auth-cache").rglob("*")), "nginx stored no auth answer"


async def test_a_cached_answer_never_covers_another_employer_s_page(
    world: LoginWorld, nginx: Nginx, browser: aiohttp.ClientSession
) -> None:
    """With the allowed employer's answer cached, paths that start with its segment but
    address another employer (dot segments, escapes, ";", "//", backslashes) are asked
    of the gateway, refused, and never reach the portal."""
    page = f"/werkgevers/{CLIENT_WITH_MANDATE}/overzicht"
    assert (await _get(browser, _url(nginx, page)))[0] == 200  # cached now
    cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar)
    for tail in (
        f"/../{FOREIGN}/overzicht",
        f"/%2e%2e/{FOREIGN}/overzicht",
        f"/..%2f{FOREIGN}/overzicht",
        f"//../{FOREIGN}/overzicht",
        f";x/../{FOREIGN}/overzicht",
        f"/..\\{FOREIGN}/overzicht",
        f"/./../{FOREIGN}/overzicht",
    ):
        target = f"/werkgevers/{CLIENT_WITH_MANDATE}{tail}"
        seen = len(world.upstream_log.requests)
        answer = await raw_exchange(
            nginx.port,
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert statuses(answer) and statuses(answer)[0] != 200, (target, answer[:200])
        assert len(world.upstream_log.requests) == seen, target


async def test_a_revocation_takes_effect_within_the_bound_with_the_cache_on(
    world: LoginWorld, nginx: Nginx
) -> None:
    """After a revocation, requests through nginx are refused within the re-check interval,
    however long the auth cache may keep answers."""
    session = world.browser()
    resp, _ = await world.login(session, "direct")
    assert resp.status == 200
    page = _url(nginx, f"/werkgevers/{CLIENT_WITH_MANDATE}/overzicht")
    for _ in range(3):  # warm the auth cache
        assert (await _get(session, page))[0] == 200
    world.write_mandates(
        [
            m
            for m in DEFAULT_MANDATES
            if m.get("employer") != CLIENT_WITH_MANDATE
            and m.get("employer_kvk") != CLIENT_WITH_MANDATE
        ]
    )
    revoked_at = time.monotonic()
    bound = RECHECK_SECONDS
    status = 200
    while time.monotonic() - revoked_at < bound + 5:
        status = (await _get(session, page))[0]
        if status != 200:
            break
        await asyncio.sleep(0.1)
    delay = time.monotonic() - revoked_at
    print(f"revocation through nginx took effect after {delay:.2f} s (bound {bound} s)")
    assert status in (403, 303)
    # The bound plus the registry file's poll (0.2 s) and scheduling slack.
    assert delay <= bound + 1.5
    world.write_mandates(DEFAULT_MANDATES)


async def test_a_renewed_answer_replaces_the_cached_one(world: LoginWorld, nginx: Nginx) -> None:
    """After its time runs out, nginx forwards the gateway's new answer, not the old one
    (the shipped file keeps cache files open between hits)."""
    session = world.browser()
    resp, _ = await world.login(session, "direct")
    assert resp.status == 200
    page = _url(nginx, f"/werkgevers/{CLIENT_WITH_MANDATE}/overzicht")

    async def employers_seen() -> set[str]:
        seen = len(world.upstream_log.requests)
        assert (await _get(session, page))[0] == 200
        token = world.upstream_headers(seen)["x-gateway-identity"][0]
        claims = await world.verify(token, "employer-pages")
        return {e["kvk"] for e in claims["employers"]}

    # An earlier test's revocation may still be in the registry answer this login
    # reused (it is fresh for RECHECK_SECONDS): wait until the page is allowed.
    deadline = time.monotonic() + RECHECK_SECONDS + 5
    while (await _get(session, page))[0] != 200:
        assert time.monotonic() < deadline, "the page never became allowed"
        await asyncio.sleep(0.2)
    before = await employers_seen()
    assert await employers_seen() == before  # from the cache
    extra = mandate(ADMIN, "45678901", "Nieuwe Werkgever B.V.")
    world.write_mandates([*DEFAULT_MANDATES, extra])
    try:
        deadline = time.monotonic() + RECHECK_SECONDS + 5
        now_seen = before
        while "45678901" not in now_seen and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now_seen = await employers_seen()
        assert now_seen == before | {"45678901"}
    finally:
        world.write_mandates(DEFAULT_MANDATES)


async def test_shipped_file_mentions_every_address_once() -> None:
    """The three addresses a user changes appear once each (the test replaces exactly those)."""
    text = SHIPPED.read_text()
    assert len(re.findall(r"server 127\.0\.0\.1:\d+;", text)) == 2
    assert text.count("listen 80;") == 1
