"""A 50,000-hit login flood from one address against two replicas on a capped Redis.

Real processes: one ``redis-server`` with the settings docs/state.md tells ops
to use (read from its snippet: ``maxmemory-policy noeviction``; ``maxmemory``
lowered to 8 MB, far below what an unbounded flood takes), two
``gateway serve`` replicas sharing it, the broker simulator. Signed-in users
each come from their own loopback address (127.0.0.x); the flood comes from
127.0.0.1, spread over both replicas as a load balancer would spread it, with
a different forged ``X-Forwarded-For`` on every hit (the replicas trust no
proxy, so the header must not split the flood into many "clients").

Pinned: the flood leaves a bounded number of keys (admitted logins follow the
per-address token bucket, shared by both replicas through Redis), refusals are
the bilingual 429 page with ``Retry-After``, and every signed-in user keeps
working throughout, including requests that write to Redis (``touch_interval``
is 1 s here, so each check writes ``last_seen``). It prints keys and bytes per
hit and the replicas' CPU.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from gateway.sessions.settings import SessionSettings
from tests.replicas.replica_world import ReplicaWorld, replica_world
from tests.support.flood import flood
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HITS = 50_000
USERS = 24
MAXMEMORY = "8mb"  # far below what 50,000 unbounded pending logins would take
LONG_NEXT = "/werkgevers/" + "x" * 2036  # a 2 KB ``next``: the costliest pending login


def documented_redis_conf() -> str:
    """The Redis settings docs/state.md tells ops to use, with this test's smaller cap."""
    text = (Path(__file__).parents[2] / "docs" / "state.md").read_text()
    snippet = text.split("### Redis settings", 1)[1].split("```conf\n", 1)[1].split("```", 1)[0]
    assert "maxmemory-policy noeviction" in snippet
    return re.sub(r"^maxmemory \S+$", f"maxmemory {MAXMEMORY}", snippet, flags=re.M)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaWorld]:
    with RedisServer(config_text=documented_redis_conf()) as redis:
        policy = redis.cli("CONFIG", "GET", "maxmemory*").split()
        assert policy[policy.index("maxmemory-policy") + 1] == "noeviction"
        assert policy[policy.index("maxmemory") + 1] == str(8 * 1024 * 1024)
        async with replica_world(
            tmp_path_factory.mktemp("flood"),
            redis,
            count=2,
            overrides={"sessions": {"touch_interval": 1, "cache_seconds": 0}},
        ) as w:
            yield w


def _browser_from(address: str) -> aiohttp.ClientSession:
    """A browser whose connections come from ``address`` (a loopback address of its own)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=20),
    )


async def _login_direct(world: ReplicaWorld, browser: aiohttp.ClientSession, index: int) -> None:
    """A whole login started at replica ``index`` itself, so it sees the browser's address.

    (The test splitter is an L4 proxy: behind it every browser would be 127.0.0.1.)
    """
    world.sim.use_scenario("direct")
    resp, hops = await world.follow(browser, world.on(index, "/_gateway/login?next=/dashboard"))
    assert resp.status == 200, (resp.status, hops)
    assert hops[-1] == world.url("/dashboard"), hops


def _memory(redis: RedisServer) -> tuple[int, int]:
    """(keys, used_memory bytes) of the Redis server."""
    keys = int(redis.cli("DBSIZE").strip())
    used = re.search(r"^used_memory:(\d+)", redis.cli("INFO", "memory"), re.M)
    assert used is not None
    return keys, int(used.group(1))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _keep_using(
    world: ReplicaWorld, users: list[aiohttp.ClientSession], stop: asyncio.Event
) -> list[int]:
    """Signed-in users keep requesting pages on both replicas until ``stop``; their statuses."""
    statuses: list[int] = []

    async def one(browser: aiohttp.ClientSession, n: int) -> None:
        while not stop.is_set():
            url = world.on(n % len(world.replicas), "/dashboard")
            n += 1
            try:
                async with browser.get(url, allow_redirects=False) as resp:
                    statuses.append(resp.status)
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)
            await asyncio.sleep(0.5)

    await asyncio.gather(*(one(b, i) for i, b in enumerate(users)))
    return statuses


async def test_login_flood_from_one_address_is_bounded_and_spares_signed_in_users(
    world: ReplicaWorld,
) -> None:
    """50,000 login hits from one address: bounded keys, 429 pages, every user keeps working."""
    users = [_browser_from(f"127.0.0.{10 + i}") for i in range(USERS)]
    world.browsers.extend(users)
    for i, browser in enumerate(users):
        await _login_direct(world, browser, i % len(world.replicas))
    keys_before, memory_before = _memory(world.redis)
    pids = [r.process.proc.pid for r in world.replicas if r.process is not None]
    cpu_before = sum(_cpu_seconds(pid) for pid in pids)

    targets = [("127.0.0.1", r.port) for r in world.replicas]

    def hit(i: int) -> bytes:
        return (
            f"GET /_gateway/login?next={LONG_NEXT} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-Forwarded-For: 198.51.{i // 250 % 250}.{i % 250}\r\n"
            "Accept: text/html\r\n\r\n"
        ).encode()

    stop = asyncio.Event()
    using = asyncio.create_task(_keep_using(world, users, stop))
    try:
        result = await flood(targets, hit, HITS, deadline=time.monotonic() + 240)
    finally:
        stop.set()
        during = await using
    cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_before
    keys_after, memory_after = _memory(world.redis)
    login_keys = len(world.redis.cli("--scan", "--pattern", "gw:login:*").split())

    print()
    print(
        f"login flood: {result.answered} of {HITS} hits answered in {result.seconds:.1f} s "
        f"({result.answered / result.seconds:.0f}/s), statuses {dict(result.statuses)}, "
        f"{len(result.errors)} connection errors"
    )
    print(
        f"  Redis keys {keys_before} -> {keys_after} (+{keys_after - keys_before}; "
        f"{login_keys} pending-login keys), used_memory {memory_before / 1e6:.2f} MB -> "
        f"{memory_after / 1e6:.2f} MB; per hit: "
        f"{(keys_after - keys_before) / max(result.answered, 1):.5f} keys, "
        f"{(memory_after - memory_before) / max(result.answered, 1):.2f} bytes"
    )
    print(
        f"  replicas' CPU: {cpu:.1f} s over {result.seconds:.1f} s = "
        f"{cpu / result.seconds:.2f} cores, {cpu / max(result.answered, 1) * 1e6:.0f} us per hit"
    )
    print(
        f"  signed-in users during the flood: {len(during)} requests, "
        f"{sum(1 for s in during if s == 200)} answered 200"
    )

    assert not result.errors, result.errors[:3]
    assert result.answered == HITS
    # Every signed-in user kept working during the flood, writes to Redis included.
    assert during and all(s == 200 for s in during), sorted(set(during))
    for browser in users:
        for index in range(len(world.replicas)):
            async with browser.get(world.on(index, "/dashboard"), allow_redirects=False) as resp:
                assert resp.status == 200, index
    # Someone else can still log in (a pending login is a write).
    newcomer = _browser_from("127.0.0.200")
    world.browsers.append(newcomer)
    await _login_direct(world, newcomer, 0)

    # The flood itself: admitted at the per-address rate, refused with the 429 page.
    limits = SessionSettings().login_limits
    admitted = result.statuses[303] + result.statuses[200]
    allowed = limits.per_address_burst + limits.per_address_per_minute * result.seconds / 60
    assert set(result.statuses) <= {303, 200, 429}, result.statuses
    assert 0 < admitted <= allowed + 1, (admitted, allowed)
    headers, body = result.samples[429]
    page = body.decode()
    assert "Te veel inlogpogingen" in page and "Too many login attempts" in page
    assert int(headers["retry-after"]) >= 1
    # Each admitted hit leaves at most its pending login and its browser's index.
    assert login_keys <= 2 * (admitted + USERS + 1), login_keys
    # Audited: one event per replica and interval (10 s), the refusals summed up.
    deadline = time.monotonic() + 20
    while True:
        refusals = [e for r in world.replicas for e in r.events("login_rate_limited")]
        counted = sum(e["refused"] for e in refusals)
        if counted >= result.statuses[429] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    print(f"  audit: {len(refusals)} login_rate_limited events for {counted} refusals")
    assert all(e["client_address"] == "127.0.0.1" and e["scope"] == "address" for e in refusals)
    assert counted == result.statuses[429]
