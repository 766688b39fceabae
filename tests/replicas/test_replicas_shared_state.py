"""Three gateway processes, one Redis: logins, sessions, replays and revocations cross replicas."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest
from yarl import URL

from tests.replicas.replica_world import ReplicaWorld
from tests.support.login_world import ADMIN, CLIENT_WITH_MANDATE, DEFAULT_MANDATES
from tests.support.tokens import IdentityVerifier

# One set of processes for the whole module (see conftest.py); tests use fresh browsers.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SECOND_EMPLOYER = "30000002"  # Installatiebedrijf Van Dam, a direct login's second employer


async def _portal(browser: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET a portal page; the upstream's echo of what it received, headers lower-cased."""
    async with browser.get(url, allow_redirects=False) as resp:
        assert resp.status == 200, (url, resp.status, resp.headers.get("Location"))
        echo = await resp.json()
    return {"path": echo["path"], "headers": {k.lower(): v for k, v in echo["headers"]}}


def _claims(echo: dict[str, Any]) -> dict[str, Any]:
    # Signatures are checked against the JWKS in the first test; here we read claims only.
    token = echo["headers"]["x-gateway-identity"]
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _employers(echo: dict[str, Any]) -> list[str]:
    return sorted(e["kvk"] for e in _claims(echo)["employers"])


async def _status(browser: aiohttp.ClientSession, url: str) -> int:
    async with browser.get(URL(url, encoded=True), allow_redirects=False) as resp:
        return resp.status


def _count(world: ReplicaWorld, event: str) -> list[int]:
    return [len(r.events(event)) for r in world.replicas]


async def test_login_started_on_one_replica_completes_on_another(
    shared_world: ReplicaWorld,
) -> None:
    """A login begun at replica 0 finishes at replica 1; its session then works on all three."""
    world = shared_world
    before = _count(world, "login_succeeded")
    browser = world.browser()
    acs = await world.start_login(browser, "direct", on=0, next_path="/dashboard")
    resp, hops = await world.follow(browser, world.on(1, acs))
    assert resp.status == 200, hops
    assert hops[-1] == world.on(1, "/dashboard")
    after = _count(world, "login_succeeded")
    assert [a - b for a, b in zip(after, before, strict=True)] == [0, 1, 0]

    echoes = [await _portal(browser, world.on(i, "/dashboard")) for i in range(3)]
    assert [e["headers"]["x-replica"] for e in echoes] == ["r0", "r1", "r2"]
    assert all(_employers(e) == [CLIENT_WITH_MANDATE, SECOND_EMPLOYER] for e in echoes)
    assert len({_claims(e)["sid"] for e in echoes}) == 1  # one session, three replicas
    # A token minted by replica 2 verifies against the JWKS served by replica 0.
    verifier = IdentityVerifier(
        jwks_url=world.on(0, "/.well-known/jwks.json"), issuer=world.public_url, audience="portal"
    )
    claims = await asyncio.to_thread(verifier.verify, echoes[2]["headers"]["x-gateway-identity"])
    assert claims["org"]["kvk"] == ADMIN


async def test_replayed_acs_url_is_refused_on_every_replica(shared_world: ReplicaWorld) -> None:
    """A used ACS URL is refused by all three replicas, and a double delivery wins only once."""
    world = shared_world
    browser = world.browser()
    acs = await world.start_login(browser, "direct", on=2, next_path="/dashboard")
    resp, _ = await world.follow(browser, world.on(0, acs))
    assert resp.status == 200
    for index in range(3):
        resp, _ = await world.follow(browser, world.on(index, acs))
        assert resp.status == 400, index
        refusals = world.replicas[index].events("login_refused")
        assert refusals[-1]["reason"] == "login_expired", refusals

    # The same ACS URL delivered to the three replicas at once: exactly one login.
    before = sum(_count(world, "login_succeeded"))
    racer = world.browser()
    acs = await world.start_login(racer, "direct", on=1, next_path="/dashboard")
    statuses = await asyncio.gather(*(_status(racer, world.on(i, acs)) for i in range(3)))
    assert sorted(statuses) == [303, 400, 400], statuses
    assert sum(_count(world, "login_succeeded")) == before + 1


async def test_revocation_pushed_to_one_replica_reaches_all(shared_world: ReplicaWorld) -> None:
    """One invalidation POST to replica 1 removes the revoked employer on every replica."""
    world = shared_world
    browser = world.browser()
    await world.login(browser, "direct", "/dashboard")
    for index in range(3):
        assert SECOND_EMPLOYER in _employers(await _portal(browser, world.on(index, "/dashboard")))

    revoked = [
        {**m, "status": "revoked"} if m["employer_kvk"] == SECOND_EMPLOYER else m
        for m in DEFAULT_MANDATES
    ]
    world.write_mandates(revoked)
    try:
        # The file registry is stat'ed at most every 0.2 s; wait so a lookup sees the change.
        await asyncio.sleep(0.5)
        echo = await _portal(browser, world.on(0, "/dashboard"))
        assert SECOND_EMPLOYER in _employers(echo)  # nothing re-checks before the push

        async with browser.post(
            world.on(1, "/_gateway/admin/mandates/invalidate"),
            json={"administrator_kvk": ADMIN, "employer_kvk": SECOND_EMPLOYER},
            headers={"Authorization": f"Bearer {world.admin_token}"},
        ) as resp:
            assert resp.status == 202, await resp.text()

        attempts = []
        for index in range(3):
            # Pub/sub delivery is asynchronous: allow it a moment, and count the requests.
            deadline = time.monotonic() + 5
            tries = 0
            while True:
                tries += 1
                echo = await _portal(browser, world.on(index, "/dashboard"))
                if SECOND_EMPLOYER not in _employers(echo) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert _employers(echo) == [CLIENT_WITH_MANDATE], index
            assert echo["headers"]["x-replica"] == f"r{index}"
            attempts.append(tries)
        print(f"requests until the revocation showed, per replica: {attempts}")
        assert sum(_count(world, "mandate_revoked_during_session")) >= 1
    finally:
        world.write_mandates(DEFAULT_MANDATES)
