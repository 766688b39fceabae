"""`gateway demo` from a clean state folder: it starts, serves a login, and stops on Ctrl-C.

Browser-less (aiohttp follows the redirects and submits the broker's form), so
this pins the demo's own wiring: generated keys, simulator, portal token check,
and the Redis + two-replica variant behind the splitter.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support.browser import ROOT, DemoStack
from tests.support.redis import RedisServer


@pytest.fixture
def stacks() -> Iterator[list[DemoStack]]:
    started: list[DemoStack] = []
    yield started
    for stack in started:
        stack.cleanup()


async def _follow(browser: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """GET ``url`` and follow redirects by hand, sending each URL byte for byte."""
    resp = await browser.get(URL(url, encoded=True), allow_redirects=False)
    for _ in range(10):
        if resp.status not in (302, 303):
            break
        location = resp.headers["Location"]
        if location.startswith("/"):
            location = str(resp.url.origin()) + location
        await resp.release()
        resp = await browser.get(URL(location, encoded=True), allow_redirects=False)
    await resp.read()
    return resp


async def _login(browser: aiohttp.ClientSession, start: str, scenario: str) -> str:
    """Open a protected page, pick ``scenario`` on the broker's form; the final page's HTML."""
    resp = await _follow(browser, start)
    page = await resp.text()
    assert "Kies hoe u inlogt" in page, page
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page)[1])  # type: ignore[index]
    token = html.unescape(re.search(r'name="login" value="([^"]+)"', page)[1])  # type: ignore[index]
    form = {"login": token, "scenario": scenario, "action": "login"}
    post = await browser.post(str(resp.url.join(URL(action))), data=form, allow_redirects=False)
    assert post.status in (302, 303), await post.text()
    location = post.headers["Location"]
    await post.release()
    final = await _follow(browser, location)
    return await final.text()


def _browser(**connector: bool) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(**connector),
    )


async def test_demo_starts_from_empty_state_and_serves_a_login(
    tmp_path: Path, stacks: list[DemoStack]
) -> None:
    """From an empty state folder a login reaches the token-checking portal; Ctrl-C exits 0."""
    state = tmp_path / "state"
    stack = DemoStack(state)
    stacks.append(stack)
    stack.wait_ready()
    for name in ("sp-signing.key", "sp-encryption.crt", "token-current.pem", "admin.token"):
        assert (state / "keys" / name).is_file()
    assert f"Open http://localhost:{stack.port}/ in your browser." in stack.output()
    async with _browser() as browser:
        overview = await _login(browser, stack.url + "/", "direct")
        assert "352 klanten" in overview  # a direct login lands on the employer overview
        page = await (await _follow(browser, stack.url + "/")).text()
    assert 'data-status="ok"' in page  # the portal verified the token
    assert 'id="administrator-kvk">12345678<' in page
    assert 'id="employer-count">352<' in page  # large set fetched and digest-checked
    async with _browser() as direct:  # straight to the portal, around the gateway
        portal = f"http://127.0.0.1:{stack.portal_port}/"
        async with direct.get(portal) as resp:
            assert resp.status == 401 and 'data-status="missing"' in await resp.text()
        forged = {"X-Gateway-Identity": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."}
        async with direct.get(portal, headers=forged) as resp:
            assert resp.status == 401 and 'data-status="invalid"' in await resp.text()
    assert stack.stop() == 0
    assert "Traceback" not in stack.output()


def test_replicas_without_redis_is_a_usage_error() -> None:
    """--replicas 2 without --redis exits 2 and says that replicas need Redis."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--replicas", "2", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--redis" in done.stderr


async def test_two_replicas_share_sessions_through_redis(
    tmp_path: Path, stacks: list[DemoStack]
) -> None:
    """With --redis and --replicas 2, one login is valid on both replicas behind the splitter."""
    with RedisServer() as redis:
        stack = DemoStack(tmp_path / "state", extra_args=["--redis", redis.url, "--replicas", "2"])
        stacks.append(stack)
        stack.wait_ready(timeout=90)
        # force_close: a new connection per request, so the splitter alternates replicas.
        async with _browser(force_close=True) as browser:
            await _login(browser, stack.url + "/", "direct-small")
            seen = set()
            for _ in range(4):
                resp = await _follow(browser, stack.url + "/")
                page = await resp.text()
                assert resp.status == 200 and 'id="administrator-kvk">45678901<' in page
                seen.add(re.search(r'id="replica">(\d)<', page)[1])  # type: ignore[index]
        assert seen == {"1", "2"}
        assert stack.stop() == 0
        assert "Traceback" not in stack.output()
        assert "gateway demo stopped" in stack.output()
