"""Rolling restart of three gateway processes under steady authenticated traffic."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.replicas.replica_load import LoadGenerator
from tests.replicas.replica_world import ReplicaWorld

pytestmark = pytest.mark.slow

SESSIONS = 4


def _judge(status: int, headers: dict[str, str], body: bytes) -> str:
    """A request succeeded if the portal answered for a logged-in user; bucket: the replica."""
    assert status == 200, headers.get("location", "")
    echo = json.loads(body)
    seen = {k.lower(): v for k, v in echo["headers"]}
    assert echo["path"] == "/dashboard"
    assert "x-gateway-identity" in seen, "no identity token: the session was not used"
    return str(seen["x-replica"])


async def test_rolling_restart_fails_no_request_and_loses_no_session(world: ReplicaWorld) -> None:
    """Replicas stopped with SIGTERM and restarted one at a time: no failed request or session."""
    browsers = [world.browser() for _ in range(SESSIONS)]
    for browser in browsers:
        await world.login(browser, "direct", "/dashboard")
    load = LoadGenerator(
        "127.0.0.1",
        world.splitter.port,
        "/dashboard",
        [world.session_cookie(b) for b in browsers],
        _judge,
        workers_per_cookie=2,
        pause=0.02,  # steady, but leaves CPU for the restarting replica on a small machine
        max_seconds=60,
    )
    timings: list[str] = []
    running = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(1)  # steady traffic on all three first
        exit_codes = []
        for index in range(len(world.replicas)):
            started = time.monotonic()
            exit_codes.append(await world.stop(index))  # SIGTERM, drain, exit
            stopped = time.monotonic()
            world.launch(index)
            await world.wait_ready(index)  # readiness before the next one goes
            timings.append(
                f"r{index} stopped in {stopped - started:.1f} s, "
                f"ready again {time.monotonic() - stopped:.1f} s later"
            )
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
    finally:
        load.stop()
        result = await running
    print()
    print("rolling restart:", result.summary())
    print("restarts:", "; ".join(timings))
    print("connections routed by the splitter per replica:", world.splitter.routed)
    assert exit_codes == [0, 0, 0]
    assert result.failures == []
    assert result.succeeded == result.sent > 0
    assert set(result.per_bucket) == {"r0", "r1", "r2"}
    for index, replica in enumerate(world.replicas):
        assert len(replica.events("gateway_draining")) == 1, index
        assert len(replica.events("gateway_started")) == 2, index

    # No session was lost: each one still works on every (restarted) replica.
    for browser in browsers:
        for index in range(len(world.replicas)):
            async with browser.get(world.on(index, "/dashboard"), allow_redirects=False) as resp:
                assert resp.status == 200
