"""A Redis outage behind a readiness-checking load balancer: public routes keep answering.

Three ``gateway serve`` processes share one real ``redis-server`` behind the
test splitter, which health-checks ``/_gateway/readyz`` every 100 ms and sends
new connections only to replicas that passed, as a Kubernetes Service or a
cloud load balancer does. Every request goes out on a new connection
(``Connection: close``), so the balancer decides each one, like an L7 load
balancer that picks a backend per request.

During the outage (Redis frozen with SIGSTOP, or killed), public routes and the
JWKS must answer 200 through the balancer, authenticated routes a 503 page
within the store's short timeouts, and ``/_gateway/dependencies`` plus the
``gateway_dependency_up`` gauge must say that the store is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.replicas.replica_world import ReplicaWorld
from tests.support.redis import RedisServer

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 8.0
REQUEST_TIMEOUT = 5.0  # a request without an answer within this is a hang


@dataclass(frozen=True)
class Outcome:
    kind: str  # public, jwks, authenticated
    status: int | None  # None: no answer (connection refused/closed, timeout)
    during_outage: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Traffic:
    """Requests sent through the balancer while the test runs; each on its own connection."""

    outcomes: list[Outcome] = field(default_factory=list)
    outage: bool = False
    # Per replica, halfway through the outage: (in the balancer, dependencies status,
    # its store entry, the store gauge).
    mid_outage: list[tuple[bool, int, object, str | None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, kind: str, *, during: bool | None = None) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if o.kind == kind and (during is None or o.during_outage == during)
        ]

    def summary(self, kind: str) -> str:
        seen = self.of(kind)
        counts = Counter("no answer" if o.status is None else str(o.status) for o in seen)
        return f"{kind}: {len(seen)} requests, " + ", ".join(
            f"{k}={v}" for k, v in sorted(counts.items())
        )


async def _loop(
    traffic: Traffic,
    kind: str,
    url: str,
    headers: dict[str, str],
    check: Callable[[int, str, dict[str, str]], str],
) -> None:
    """Send GET ``url`` back to back on fresh connections until ``traffic.stop`` is set."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=timeout
    ) as client:
        while not traffic.stop.is_set():
            during = traffic.outage
            started = time.monotonic()
            try:
                async with client.get(url, headers=headers, allow_redirects=False) as resp:
                    body = await resp.text()
                    detail = check(resp.status, body, dict(resp.headers))
                    outcome = Outcome(kind, resp.status, during, detail)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = Outcome(kind, None, during, type(exc).__name__)
            # "During the outage" means sent and answered while Redis was down; a
            # request straddling the recovery may meet a Redis that came back empty.
            traffic.outcomes.append(
                dataclasses.replace(
                    outcome,
                    seconds=time.monotonic() - started,
                    during_outage=during and traffic.outage,
                )
            )
            if outcome.status is None:
                await asyncio.sleep(0.01)  # refused at once: do not spin
            await asyncio.sleep(0.005)


def _public(status: int, body: str, headers: dict[str, str]) -> str:
    return "ok" if status == 200 and json.loads(body)["path"] == "/openbaar" else "bad"


def _jwks(status: int, body: str, headers: dict[str, str]) -> str:
    return "ok" if status == 200 and '"keys"' in body else "bad"


def _authenticated(status: int, body: str, headers: dict[str, str]) -> str:
    if status == 200:
        return "ok"
    if (
        status == 503
        and "Tijdelijk niet beschikbaar" in body
        and "Temporarily unavailable" in body
        and headers.get("Retry-After")
    ):
        return "503 page"
    return "bad"


def _redis_pid(redis: RedisServer) -> int:
    match = re.search(r"process_id:(\d+)", redis.cli("INFO", "server"))
    assert match is not None
    return int(match.group(1))


async def _store_health(world: ReplicaWorld, index: int) -> tuple[int, object, str | None]:
    """Replica ``index``'s dependency endpoint status, its store entry and its store gauge."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    ) as client:
        async with client.get(world.on(index, "/_gateway/dependencies")) as resp:
            status = resp.status
            body = await resp.text()
        async with client.get(world.on(index, "/_gateway/metrics")) as resp:
            metrics = await resp.text()
    store = json.loads(body).get("dependencies", {}).get("store") if status != 404 else None
    gauge = re.search(r'^gateway_dependency_up\{dependency="store"\} (\S+)$', metrics, re.M)
    return status, store, gauge.group(1) if gauge else None


async def _run_outage(
    world: ReplicaWorld, cookies: list[str], outage: Callable[[], None], recover: Callable[[], None]
) -> Traffic:
    traffic = Traffic()
    html = {"Accept": "text/html"}
    loops = [
        *(_loop(traffic, "public", world.url("/openbaar"), html, _public) for _ in range(4)),
        _loop(traffic, "jwks", world.url("/.well-known/jwks.json"), {}, _jwks),
        *(
            _loop(
                traffic,
                "authenticated",
                world.url("/dashboard"),
                {**html, "Cookie": c},
                _authenticated,
            )
            for c in cookies
        ),
    ]
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        await asyncio.sleep(1.5)  # steady traffic first
        outage()
        traffic.outage = True
        started = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS / 2)
        # Mid-outage: what every replica says about the store, and the balancer's view.
        for index in range(len(world.replicas)):
            traffic.mid_outage.append(
                (world.splitter.ready[index], *(await _store_health(world, index)))
            )
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
        traffic.outage = False
        recover()
        await asyncio.sleep(2.0)
    finally:
        traffic.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=REQUEST_TIMEOUT + 5)
    return traffic


def _report(name: str, traffic: Traffic) -> None:
    public = traffic.of("public", during=True) + traffic.of("jwks", during=True)
    ok = sum(1 for o in public if o.detail == "ok")
    share = 100.0 * ok / len(public) if public else 0.0
    print()
    print(
        f"{name}, {OUTAGE_SECONDS:.0f} s: public route and JWKS through the readiness-checking "
        f"balancer during the outage: {ok} of {len(public)} succeeded ({share:.2f} %)"
    )
    for kind in ("public", "jwks", "authenticated"):
        print("  " + traffic.summary(kind))
    pages = [o.seconds for o in traffic.of("authenticated", during=True) if o.status == 503]
    if pages:
        print(f"  authenticated 503 pages during the outage: slowest after {max(pages):.2f} s")


def _assert_outage_contained(traffic: Traffic) -> None:
    for kind in ("public", "jwks"):
        seen = traffic.of(kind)
        failed = [o for o in seen if o.detail != "ok"]
        assert seen and not failed, f"{len(failed)} of {len(seen)} {kind} requests failed"
    authenticated = traffic.of("authenticated", during=True)
    assert authenticated, "no authenticated request during the outage"
    bad = [o for o in authenticated if o.detail not in ("ok", "503 page")]
    assert not bad, f"authenticated answers that were neither 200 nor a 503 page: {bad[:5]}"
    assert any(o.detail == "503 page" for o in authenticated), "the outage was never noticed"
    # Every replica stayed in the balancer and reported the store down, on its
    # dependency endpoint (503) and in its gauge.
    assert len(traffic.mid_outage) == 3
    for index, (in_balancer, status, store, gauge) in enumerate(traffic.mid_outage):
        assert in_balancer, f"r{index} left the balancer during the outage"
        assert status == 503 and isinstance(store, dict) and store["up"] is False, (index, store)
        assert gauge == "0.0", (index, gauge)


async def test_redis_frozen_public_routes_answer_through_the_balancer(
    world: ReplicaWorld,
) -> None:
    """Redis frozen 8 s: all public and JWKS requests succeed, authenticated ones get 503 pages."""
    browsers = [world.browser() for _ in range(2)]
    for browser in browsers:
        await world.login(browser, "direct", "/dashboard")
    pid = _redis_pid(world.redis)
    try:
        traffic = await _run_outage(
            world,
            [world.session_cookie(b) for b in browsers],
            lambda: os.kill(pid, signal.SIGSTOP),
            lambda: os.kill(pid, signal.SIGCONT),
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    _report("Redis frozen (SIGSTOP)", traffic)
    _assert_outage_contained(traffic)
    # Frozen, not lost: after it, every session works again on every replica.
    for browser in browsers:
        for index in range(len(world.replicas)):
            async with browser.get(world.on(index, "/dashboard"), allow_redirects=False) as resp:
                assert resp.status == 200, index
    for index in range(len(world.replicas)):
        status, store, gauge = await _store_health(world, index)
        assert status == 200 and isinstance(store, dict) and store["up"] is True, store
        assert gauge == "1.0"


async def test_redis_killed_public_routes_answer_through_the_balancer(
    world: ReplicaWorld,
) -> None:
    """Redis killed 8 s: public and JWKS all succeed, authenticated get 503 pages; login after."""
    browser = world.browser()
    await world.login(browser, "direct", "/dashboard")
    traffic = await _run_outage(
        world, [world.session_cookie(browser)], world.redis.kill, world.redis.start
    )
    _report("Redis killed", traffic)
    _assert_outage_contained(traffic)
    # Redis came back empty (no persistence): a new login works through the balancer.
    fresh = world.browser()
    await world.login(fresh, "direct", "/dashboard")
