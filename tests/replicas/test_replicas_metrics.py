"""Metrics of a gateway with two worker processes: every scrape shows the sum of both.

One ``gateway serve`` with ``workers: 2`` on Redis, behind the splitter, with
the metrics on their own listener (as the Kubernetes configuration runs it)
and a bearer token. Requests go out on fresh connections, so the kernel spreads
them over both workers; each scrape is answered by either worker and must show
the same aggregated figures: counters added up, and each gauge once (no
per-process series), combined as its family says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.replicas.replica_world import ReplicaWorld, replica_world
from tests.support.processes import free_port
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TOKEN = "scrape-token-0123456789abcdef"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaWorld]:
    directory = tmp_path_factory.mktemp("metrics-workers")
    token_file = directory / "metrics.token"
    token_file.write_text(TOKEN)
    port = free_port()
    with RedisServer() as redis:
        async with replica_world(
            directory,
            redis,
            count=1,
            workers=2,
            metrics={"host": "127.0.0.1", "port": port, "token_file": str(token_file)},
        ) as w:
            w.metrics_port = port  # type: ignore[attr-defined]
            yield w


def _parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


async def _scrape(world: ReplicaWorld, *, token: str | None = TOKEN) -> tuple[int, str]:
    url = f"http://127.0.0.1:{world.metrics_port}/_gateway/metrics"  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.get(url, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


def _worker_pids(world: ReplicaWorld) -> set[int]:
    """Pids of the worker processes that started listening."""
    return {int(e["pid"]) for e in world.replicas[0].events("gateway_started")}


async def test_figures_add_up_over_both_workers(world: ReplicaWorld) -> None:
    """Logins, requests and tokens counted by either worker appear summed in every scrape."""
    loop = asyncio.get_running_loop()
    started = loop.time() + 30  # the second worker may log its start after the port answers
    while len(_worker_pids(world)) < 2 and loop.time() < started:
        await asyncio.sleep(0.1)
    assert len(_worker_pids(world)) == 2
    browser = world.browser()
    await world.login(browser, "direct", "/dashboard")
    cookie = world.session_cookie(browser)
    requests = 20
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(requests):
            async with http.get(world.on(0, "/dashboard"), headers={"Cookie": cookie}) as resp:
                assert resp.status == 200
    expected_portal = requests + 1  # the login ended on /dashboard too
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # each worker moves its figures into the shared files a few times a second
        status, text = await _scrape(world)
        assert status == 200
        samples = _parse(text)
        portal = sum(
            v
            for (name, labels), v in samples.items()
            if name == "gateway_requests_total" and ("route", "portal") in labels
        )
        signed = samples.get(("gateway_tokens_signed_total", frozenset()), 0)
        hits = samples.get(("gateway_token_cache_hits_total", frozenset()), 0)
        if (portal, signed + hits) == (expected_portal, expected_portal):
            break
        assert asyncio.get_running_loop().time() < deadline, (portal, signed, hits)
        await asyncio.sleep(0.2)
    logins = ("gateway_logins_total", frozenset({("outcome", "succeeded"), ("reason", "none")}))
    assert samples[logins] == 1
    # Tokens are cached per worker: at most one signature per worker for one session.
    assert 1 <= signed <= 2
    assert 1 <= samples[("gateway_sessions_active", frozenset())] <= 2


async def test_state_gauges_appear_once_whichever_worker_answers(world: ReplicaWorld) -> None:
    """Expiry, breaker and session gauges are one series each, not one per process."""
    seen: list[Samples] = []
    for _ in range(6):
        status, text = await _scrape(world)
        assert status == 200
        seen.append(_parse(text))
    for samples in seen:
        names = {name for name, _ in samples}
        for family in (
            "gateway_certificate_expiry_seconds",
            "gateway_broker_metadata_expiry_seconds",
            "gateway_mandate_breaker_state",
            "gateway_requests_in_flight",
        ):
            assert family in names, family
        certs = [labels for name, labels in samples if name == "gateway_certificate_expiry_seconds"]
        assert all("pid" not in dict(labels) for labels in certs)
        assert len(certs) == len({dict(labels)["certificate"] for labels in certs})
        signing = (
            "gateway_certificate_expiry_seconds",
            frozenset({("certificate", "saml_signing")}),
        )
        assert samples[signing] > 300 * 86400  # the dev certificate is valid for a year


async def test_metrics_listener_needs_the_token_and_main_port_has_none(
    world: ReplicaWorld,
) -> None:
    """No token: 401; the main listener does not serve the metrics at all."""
    status, text = await _scrape(world, token=None)
    assert status == 401 and "gateway_" not in text
    async with (
        aiohttp.ClientSession() as http,
        http.get(world.on(0, "/_gateway/metrics")) as resp,
    ):
        assert resp.status == 404
