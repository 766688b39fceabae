"""Login-start limits end to end on a real Redis: the 429 and 503 pages, trusted proxies, ``next``.

The gateway trusts 127.0.0.1 as its proxy here (``server.trusted_proxies``), so
a request from 127.0.0.1 with ``X-Forwarded-For`` counts as the forwarded
client, as behind the production ingress; a browser connecting from 127.0.0.2
is not a trusted proxy, so whatever ``X-Forwarded-For`` it sends it counts as
127.0.0.2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.support.login_world import LoginWorld, login_world
from tests.support.redis import RedisServer

LIMITS = {"per_address_burst": 3, "per_address_per_minute": 6}  # then one per 10 s


@pytest.fixture
async def world(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path,
        store={"url": redis_server.url},
        server={"trusted_proxies": ["127.0.0.1/32"]},
        sessions={"login_limits": {**LIMITS, "total_burst": 6, "total_per_second": 0.05}},
    ) as w:
        yield w


async def _start(
    world: LoginWorld,
    *,
    forwarded_for: str | None = None,
    browser: aiohttp.ClientSession | None = None,
    accept: str = "text/html",
) -> tuple[int, dict[str, str], str]:
    headers = {"Accept": accept}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    client = browser or world.browser()
    async with client.get(
        world.url("/_gateway/login?next=/dashboard"), headers=headers, allow_redirects=False
    ) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_too_many_starts_from_one_address_get_the_429_page(
    world: LoginWorld, redis_server: RedisServer
) -> None:
    """After the burst, one address gets a bilingual 429 page with Retry-After; others do not."""
    with capture_logs() as logs:
        statuses = [(await _start(world, forwarded_for="198.51.100.1"))[0] for _ in range(3)]
        status, headers, page = await _start(world, forwarded_for="198.51.100.1")
        json_status, json_headers, body = await _start(
            world, forwarded_for="198.51.100.1", accept="application/json"
        )
        other = await _start(world, forwarded_for="198.51.100.2")
    assert statuses == [303, 303, 303]  # to the broker
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 10
    assert "Te veel inlogpogingen" in page and "Too many login attempts" in page
    wait = headers["Retry-After"]
    assert f"Wacht {wait} seconde" in page and f"wait {wait} second" in page
    assert headers["Cache-Control"] == "no-store"
    assert json_status == 429 and json_headers["Retry-After"]
    assert '"error": "login_rate_limited"' in body
    assert other[0] == 303
    events = [e for e in logs if e["event"] == "login_rate_limited"]
    assert len(events) == 1  # the second refusal is summed into a later event
    assert events[0]["client_address"] == "198.51.100.1"
    assert events[0]["scope"] == "address" and events[0]["audit"] is True
    # Refused starts left nothing in the store: a pending login and its browser's
    # list for each of the four admitted starts (each from a new browser).
    login_keys = redis_server.cli("--scan", "--pattern", "gw:login:*").split()
    assert len(login_keys) == 2 * 4


async def test_forwarded_for_from_an_untrusted_peer_does_not_split_the_client(
    world: LoginWorld,
) -> None:
    """A browser on 127.0.0.2 forging a new X-Forwarded-For each time is still one client."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    ) as forger:
        with capture_logs() as logs:
            statuses = [
                (await _start(world, forwarded_for=f"203.0.113.{i}", browser=forger))[0]
                for i in range(5)
            ]
    assert statuses == [303, 303, 303, 429, 429]
    events = [e for e in logs if e["event"] == "login_rate_limited"]
    assert [e["client_address"] for e in events] == ["127.0.0.2"]


async def test_deployment_limit_answers_503_whoever_asks(world: LoginWorld) -> None:
    """Starts from many addresses together reach the deployment's limit: 503 with Retry-After."""
    results = [await _start(world, forwarded_for=f"192.0.2.{i}") for i in range(8)]
    assert [r[0] for r in results] == [303] * 6 + [503, 503]
    _, headers, page = results[-1]
    assert 1 <= int(headers["Retry-After"]) <= 20
    assert "Tijdelijk te druk" in page and "Temporarily too busy" in page
    assert f"over {headers['Retry-After']} seconde" in page


async def test_overlong_next_is_replaced_by_root_and_logged(world: LoginWorld) -> None:
    """A ``next`` over 1,024 characters does not survive: the login ends on ``/``."""
    browser = world.browser()
    world.sim.use_scenario("chain")
    long_next = "/dashboard?q=" + "x" * 1012
    assert len(long_next) == 1025
    with capture_logs() as logs:
        resp, hops = await world.follow(
            browser,
            world.url(f"/_gateway/login?next={long_next}"),
            headers={"X-Forwarded-For": "198.51.100.50"},
        )
    assert resp.status == 200
    assert hops[-1] == world.url("/")
    dropped = [e for e in logs if e["event"] == "login_next_dropped"]
    assert [(e["reason"], e["length"], e["limit"]) for e in dropped] == [("too_long", 1025, 1024)]
    # At the limit it is kept.
    world.sim.use_scenario("chain")
    kept = long_next[:-1]
    resp, hops = await world.follow(
        world.browser(),
        world.url(f"/_gateway/login?next={kept}"),
        headers={"X-Forwarded-For": "198.51.100.51"},
    )
    assert resp.status == 200 and hops[-1] == world.url(kept)
