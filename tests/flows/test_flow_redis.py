"""Sessions on a real Redis: an outage and recovery, and two replicas sharing one Redis.

``redis-server`` runs without persistence, so a restart loses every session:
after it the user logs in again, and that must simply work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.login_world import (
    ADMIN,
    CLIENT_WITH_MANDATE,
    DEFAULT_MANDATES,
    LoginWorld,
    login_world,
    replica,
)
from tests.support.redis import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

OTHER = "30000002"
ADMIN_TOKEN = "registry-push-secret-0123456789"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer
) -> AsyncIterator[LoginWorld]:
    async with login_world(
        tmp_path_factory.mktemp("redis"),
        store={"url": redis.url},
        # Only a push (or a restart) changes mandates within these tests.
        sessions={"mandate_recheck_interval": 3600, "mandate_max_staleness": 7200},
        mandate_settings={"source": {"kind": "file", "check_interval": 0.01}},
    ) as w:
        yield w


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def second(world: LoginWorld) -> AsyncIterator[LoginWorld]:
    """Replica B: another gateway app on its own port, sharing the Redis of replica A."""
    async with replica(world) as b:
        yield b


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _fresh_registry(world: LoginWorld, redis: RedisServer) -> None:
    if not redis.running:
        redis.start()
    world.write_mandates(DEFAULT_MANDATES)
    await world.services.mandates.invalidate(ADMIN)


async def _get(
    world: LoginWorld, browser: aiohttp.ClientSession, path: str, **kw: object
) -> tuple[int, str, dict[str, str]]:
    async with browser.get(world.url(path), allow_redirects=False, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.text(), dict(resp.headers)


def _documented_dependencies_report() -> dict[str, Any]:
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    block = text.split("`/_gateway/dependencies` answers, for example:", 1)[1]
    example: dict[str, Any] = json.loads(block.split("```json", 1)[1].split("```", 1)[0])
    return example


async def _dependencies_settled(
    world: LoginWorld, browser: aiohttp.ClientSession, expected: int
) -> tuple[int, str]:
    """/_gateway/dependencies once it says ``expected`` (a report is reused for a second)."""
    for _ in range(50):
        status, body, _ = await _get(world, browser, "/_gateway/dependencies")
        if status == expected:
            break
        await asyncio.sleep(0.1)
    return status, body


async def test_sessions_live_in_redis(world: LoginWorld, redis: RedisServer) -> None:
    """A login through the simulator creates a session in Redis that serves later requests."""
    browser = world.browser()
    resp, _ = await world.login(browser, "chain", "/dashboard")
    assert resp.status == 200
    status, _, _ = await _get(world, browser, "/dashboard")
    assert status == 200
    keys = redis.cli("--scan", "--pattern", "gw:*").split()
    assert any(k.startswith("gw:sess") for k in keys), keys
    assert all(world.session_cookie(browser) not in k for k in keys)  # keys hold hashes


async def test_redis_outage_fails_closed_and_recovers_by_itself(
    world: LoginWorld, redis: RedisServer
) -> None:
    """Redis down: 503 on authenticated routes, public and health up; Redis back: log in again."""
    browser = world.browser()
    resp, _ = await world.login(browser, "chain", "/dashboard")
    assert resp.status == 200
    seen = len(world.upstream_log.requests)
    redis.stop()

    status, page, headers = await _get(world, browser, "/dashboard")
    assert status == 503
    assert "Probeer het later opnieuw" in page and "Traceback" not in page
    assert headers["Retry-After"]
    resp, hops = await world.follow(world.browser(), world.url("/dashboard"))  # a new visitor
    assert "/_gateway/login?" in hops[1]
    assert resp.status == 503  # the login itself needs the store: fail closed
    assert len(world.upstream_log.requests) == seen
    status, _, _ = await _get(world, browser, "/openbaar")
    assert status == 200
    assert (await _get(world, browser, "/_gateway/healthz"))[0] == 200
    # This replica can still serve public routes: it stays ready; the store shows as down.
    assert (await _get(world, browser, "/_gateway/readyz"))[0] == 200
    status, body = await _dependencies_settled(world, browser, 503)
    assert status == 503
    # The report has exactly the shape docs/operations.md shows for this outage.
    report, documented = json.loads(body), _documented_dependencies_report()
    assert report.keys() == documented.keys()
    assert report["dependencies"].keys() == documented["dependencies"].keys()
    assert report["status"] == documented["status"] == "degraded"
    assert report["dependencies"]["store"] == documented["dependencies"]["store"]

    redis.start()  # empty: no persistence
    assert (await _dependencies_settled(world, browser, 200))[0] == 200
    resp, hops = await world.follow(browser, world.url("/dashboard"))
    assert "/_gateway/login?" in hops[1]  # the old session did not survive the restart
    resp, hops = await world.login(browser, "chain", "/dashboard")
    assert resp.status == 200 and hops[-1] == world.url("/dashboard")
    assert (await _get(world, browser, "/dashboard"))[0] == 200


async def test_session_from_replica_a_works_on_b_and_logout_on_a_ends_it(
    world: LoginWorld, second: LoginWorld
) -> None:
    """Two replicas, one Redis: a session made on A works on B; a logout on A ends it on B."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    assert resp.status == 200
    status, _, _ = await _get(second, browser, "/dashboard")
    assert status == 200
    claims = await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")
    assert claims["org"]["kvk"] == ADMIN
    assert claims["sid"] == (await world.session_of(browser)).ref

    # Choosing an employer on B rotates the ID there; A follows.
    session = await world.session_of(browser)
    async with browser.post(
        second.url("/_gateway/employers/select"),
        data={"csrf": session.csrf_secret, "kvk": CLIENT_WITH_MANDATE},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303
    assert (await _get(world, browser, f"/werkgevers/{CLIENT_WITH_MANDATE}/x"))[0] == 200

    session = await world.session_of(browser)
    async with browser.post(
        world.url("/_gateway/logout"), data={"csrf": session.csrf_secret}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
    # The cookie was cleared in this browser; replay the old value against B.
    thief = second.browser()
    name = world.config.sessions.effective_cookie_name(world.config.sessions.cookie_name)
    status, _, headers = await _get(
        second, thief, "/dashboard", headers={"Cookie": f"{name}={session.id}"}
    )
    assert status == 303 and headers["Location"].startswith("/_gateway/login?")


async def test_revocation_pushed_to_replica_a_reaches_replica_b(
    world: LoginWorld, second: LoginWorld
) -> None:
    """A push received by A removes the employer from the next tokens on A and on B."""
    browser_a, browser_b = world.browser(), world.browser()
    for browser in (browser_a, browser_b):
        resp, _ = await world.login(browser, "direct")
        assert resp.status == 200

    world.write_mandates([m for m in DEFAULT_MANDATES if m["employer_kvk"] != OTHER])
    async with world.browser().post(
        world.url("/_gateway/admin/mandates/invalidate"),
        json={"administrator_kvk": ADMIN, "employer_kvk": OTHER},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as resp:
        assert resp.status == 202

    # On A, the very next request (no waiting for pub/sub).
    assert (await _get(world, browser_a, "/dashboard"))[0] == 200
    claims = await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")
    assert [e["kvk"] for e in claims["employers"]] == [CLIENT_WITH_MANDATE]

    # On B, as soon as the store's pub/sub message has arrived (an hourly re-check
    # interval rules out any other cause).
    for _ in range(200):
        assert (await _get(second, browser_b, "/dashboard"))[0] == 200
        claims = await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")
        if len(claims["employers"]) == 1:
            break
        await asyncio.sleep(0.02)
    assert [e["kvk"] for e in claims["employers"]] == [CLIENT_WITH_MANDATE]
