"""The fund's registry (HTTP source) down at login and during a session, then back.

A real registry server on loopback (``tests/support/registry.py``) is stopped
and started. The gateway's session time is a fake clock the tests move (a 0.3 s
re-check interval and 1 s of tolerated staleness for running sessions); the
registry client's timeouts and circuit breaker run on real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from tests.support.clock import FakeClock
from tests.support.login_world import ADMIN, CLIENT_WITH_MANDATE, LoginWorld, login_world
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTERVAL = 0.3  # sessions.mandate_recheck_interval
STALENESS = 1.0  # sessions.mandate_max_staleness
TRY_AGAIN = "Probeer het over enkele minuten opnieuw"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry() -> AsyncIterator[RegistryServer]:
    async with RegistryServer() as server:
        server.add(
            ADMIN,
            employer_kvk=CLIENT_WITH_MANDATE,
            employer_name="Bakkerij Brood B.V.",
            fund_employer_number="100234",
            scopes=["declarations"],
        )
        server.add(ADMIN, employer_kvk="30000002", employer_name="Installatiebedrijf Van Dam")
        yield server


@pytest.fixture(scope="module")
def session_clock() -> FakeClock:
    """The gateway's session and mandate time: re-checks fall due when a test moves it."""
    return FakeClock(time.time())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, session_clock: FakeClock
) -> AsyncIterator[LoginWorld]:
    source = {
        "kind": "http",
        "url_template": registry.url_template,
        "allow_plain_http": True,
        "connect_timeout": 0.5,
        "read_timeout": 1.0,
        "total_timeout": 1.5,
        "max_attempts": 1,
        "breaker_cooldown": 0.1,
    }
    async with login_world(
        tmp_path_factory.mktemp("registry"),
        sessions={"mandate_recheck_interval": INTERVAL, "mandate_max_staleness": STALENESS},
        # One freshness rule: answers are used for INTERVAL, sessions go on for STALENESS.
        mandate_settings={"source": source, "failure_hold": 0, "lock_ttl": 3},
        clock=session_clock.now,
    ) as w:
        yield w


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _registry_up(registry: RegistryServer, world: LoginWorld) -> AsyncIterator[None]:
    """Each test starts with the registry answering and no cached answer."""
    await _up(registry)
    await world.services.mandates.invalidate(ADMIN)
    yield
    await _up(registry)


async def _down(registry: RegistryServer) -> None:
    """The registry is gone: new connections are refused, kept-alive ones reset.

    ``stop()`` alone only closes the listening socket; the gateway's pooled
    keep-alive connection would still be served.
    """
    await registry.stop()
    registry.always("reset")


async def _up(registry: RegistryServer) -> None:
    registry.recover()
    await registry.start()


async def test_registry_down_at_login_refuses_with_try_again_later(
    world: LoginWorld, registry: RegistryServer
) -> None:
    """No registry at login: a 503 'try again later' page and a login_refused audit event."""
    await _down(registry)
    browser = world.browser()
    with capture_logs() as logs:
        resp, _ = await world.login(browser, "direct")
    assert resp.status == 503
    assert TRY_AGAIN in await resp.text()
    refused = [e for e in logs if e["event"] == "login_refused"]
    assert len(refused) == 1
    assert refused[0]["reason"] == "registry_unavailable"
    assert refused[0]["mode"] == "direct" and refused[0]["administrator_kvk"] == ADMIN
    assert world.session_cookie(browser) is None

    await _up(registry)
    resp, hops = await world.login(browser, "direct")
    assert resp.status == 200
    assert hops[-1].endswith("/_gateway/employers")


async def test_registry_down_during_a_session_uses_last_set_until_stale(
    world: LoginWorld, registry: RegistryServer, session_clock: FakeClock
) -> None:
    """A running session keeps its last set while the registry is down, then fails closed."""
    browser = world.browser()
    resp, _ = await world.login(browser, "chain", "/dashboard")
    assert resp.status == 200
    await _down(registry)

    session_clock.advance(INTERVAL + 0.05)  # a re-check is due; the registry does not answer
    async with browser.get(world.url("/dashboard"), allow_redirects=False) as resp:
        assert resp.status == 200
    session_clock.advance(STALENESS)  # now the last confirmed set is too old
    for _ in range(3):  # every request, not only the one that attempted the re-check
        seen = len(world.upstream_log.requests)
        async with browser.get(world.url("/dashboard"), allow_redirects=False) as resp:
            assert resp.status == 503
            assert TRY_AGAIN in await resp.text()
        assert len(world.upstream_log.requests) == seen
    async with browser.get(
        world.url("/api/x"), headers={"Accept": "application/json"}, allow_redirects=False
    ) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "registry_unavailable"

    await _up(registry)
    # The same session resumes by itself once the circuit breaker's short
    # cooldown (0.1 s here) lets a trial request through.
    for _ in range(100):
        async with browser.get(world.url("/dashboard"), allow_redirects=False) as resp:
            if resp.status == 200:
                break
            assert resp.status == 503
        await asyncio.sleep(0.05)
    assert resp.status == 200
    claims = await world.verify(world.upstream_headers()["x-gateway-identity"][0], "portal")
    assert [e["kvk"] for e in claims["employers"]] == [CLIENT_WITH_MANDATE]


async def test_registry_errors_count_as_down_for_a_login(
    world: LoginWorld, registry: RegistryServer
) -> None:
    """A registry answering 503 refuses the login the same way as one that is gone."""
    registry.always("503")
    resp, _ = await world.login(world.browser(), "direct")
    assert resp.status == 503
    assert TRY_AGAIN in await resp.text()
