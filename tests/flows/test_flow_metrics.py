"""The metrics ops alert on, produced by real traffic through a whole login world.

The world runs on a real ``redis-server`` with an HTTP mandate registry on
loopback, stamped token keys and a metrics bearer token. Every scrape is parsed
with prometheus-client's own text parser (what Prometheus reads), and every
expected figure is derived from the thing it describes: certificate dates from
the certificate files, the broker's ``validUntil`` from the metadata the
simulator serves, the key's due date from its stamp.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from gateway.tokens import init_keys_dir
from gateway.tokens.rotation import read_stamps
from tests.support.login_world import ADMIN, CLIENT_WITH_MANDATE, LoginWorld, login_world
from tests.support.redis import RedisServer
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

METRICS_TOKEN = "scrape-token-0123456789abcdef"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) → value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry() -> AsyncIterator[RegistryServer]:
    async with RegistryServer() as server:
        server.add(ADMIN, employer_kvk=CLIENT_WITH_MANDATE, employer_name="Bakkerij Brood B.V.")
        server.add(ADMIN, employer_kvk="30000002", employer_name="Installatiebedrijf Van Dam")
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, registry: RegistryServer
) -> AsyncIterator[LoginWorld]:
    directory = tmp_path_factory.mktemp("metrics")
    keys = directory / "token-keys"
    init_keys_dir(keys)
    token_file = directory / "metrics.token"
    token_file.write_text(METRICS_TOKEN + "\n")
    source = {
        "kind": "http",
        "url_template": registry.url_template,
        "allow_plain_http": True,
        "connect_timeout": 0.5,
        "read_timeout": 1.0,
        "total_timeout": 1.5,
        "max_attempts": 1,
        "breaker_failure_threshold": 2,
        "breaker_cooldown": 3.0,
    }
    async with login_world(
        directory,
        store={"url": redis.url},
        mandate_settings={"source": source, "failure_hold": 0},
        tokens={
            "keys": {
                "current": str(keys / "current.pem"),
                "next": str(keys / "next.pem"),
                "previous": str(keys / "previous.pem"),
            },
        },
        metrics={"token_file": str(token_file)},
    ) as w:
        yield w


async def scrape(world: LoginWorld) -> Samples:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            world.url("/_gateway/metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ) as resp,
    ):
        assert resp.status == 200
        return parse(await resp.text())


async def test_logins_are_counted_by_outcome_and_reason(world: LoginWorld) -> None:
    """A successful, a refused (no mandate) and a cancelled login each count under their reason."""
    before = await scrape(world)
    for scenario, status in (("direct", 200), ("chain-no-mandate", 403), ("cancel", 400)):
        resp, _ = await world.login(world.browser(), scenario)
        assert resp.status == status, scenario
    after = await scrape(world)
    name = "gateway_logins_total"
    for outcome, reason in (
        ("succeeded", "none"),
        ("refused", "mandate_missing"),
        ("refused", "login_cancelled"),
    ):
        got = value(after, name, outcome=outcome, reason=reason)
        assert got - value(before, name, outcome=outcome, reason=reason) == 1, reason


async def test_tokens_signed_cache_hits_and_active_sessions(world: LoginWorld) -> None:
    """Three requests of one session: one signature, two cache hits, one more active session."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    assert resp.status == 200
    before = await scrape(world)
    for _ in range(3):
        async with browser.get(world.url("/dashboard")) as r:
            assert r.status == 200
    after = await scrape(world)
    assert (
        value(after, "gateway_tokens_signed_total") - value(before, "gateway_tokens_signed_total")
        == 1
    )
    assert (
        value(after, "gateway_token_cache_hits_total")
        - value(before, "gateway_token_cache_hits_total")
        == 2
    )
    assert value(after, "gateway_sessions_active") == value(before, "gateway_sessions_active") + 1


async def test_store_operations_are_timed(world: LoginWorld) -> None:
    """Redis round trips of a login and a session load show up per operation."""
    before = await scrape(world)
    browser = world.browser()
    await world.login(browser, "direct")
    async with browser.get(world.url("/dashboard")) as r:
        assert r.status == 200
    after = await scrape(world)
    name = "gateway_store_operation_duration_seconds_count"
    for operation in ("get", "set", "take"):
        assert value(after, name, operation=operation) > value(before, name, operation=operation)


async def test_registry_failures_open_the_breaker_and_are_counted(
    world: LoginWorld, registry: RegistryServer
) -> None:
    """Registry 500s count as errors and open the breaker (state 2); it closes again after."""
    before = await scrape(world)
    registry.always("500")
    for _ in range(2):  # the threshold: two failures in a row open the breaker
        await world.services.mandates.invalidate(ADMIN)
        resp, _ = await world.login(world.browser(), "direct")
        assert resp.status == 503
    opened = await scrape(world)
    assert value(opened, "gateway_mandate_breaker_state") == 2
    resp, _ = await world.login(world.browser(), "direct")  # refused without asking
    assert resp.status == 503
    during = await scrape(world)
    errors = "gateway_mandate_lookup_errors_total"
    for reason, count in (("unusable", 2), ("circuit_open", 1)):
        got = value(during, errors, source="http", reason=reason)
        assert got - value(before, errors, source="http", reason=reason) == count, reason
    lookups = "gateway_mandate_lookup_duration_seconds_count"
    assert value(during, lookups, source="http") - value(before, lookups, source="http") == 3
    refused = "gateway_logins_total"
    got = value(during, refused, outcome="refused", reason="registry_unavailable")
    assert got - value(before, refused, outcome="refused", reason="registry_unavailable") == 3

    registry.recover()
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # after the cooldown (3 s) the next lookup is the breaker's trial
        await world.services.mandates.invalidate(ADMIN)
        resp, _ = await world.login(world.browser(), "direct")
        if resp.status == 200 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert resp.status == 200
    assert value(await scrape(world), "gateway_mandate_breaker_state") == 0


def _not_after(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


async def test_expiry_of_certificates_keys_and_broker_metadata(world: LoginWorld) -> None:
    """Seconds-until-expiry match the certificate files, the key stamp and the metadata."""
    samples = await scrape(world)
    now = dt.datetime.now(dt.UTC)
    saml = world.config.saml
    assert saml is not None

    def close_to(got: float, when: dt.datetime) -> None:
        assert abs(got - (when - now).total_seconds()) < 60

    name = "gateway_certificate_expiry_seconds"
    close_to(value(samples, name, certificate="saml_signing"), _not_after(saml.signing.cert_file))
    close_to(
        value(samples, name, certificate="saml_encryption"),
        _not_after(saml.encryption.cert_file),
    )
    async with aiohttp.ClientSession() as http, http.get(world.sim.metadata_url) as resp:
        metadata = etree.fromstring(await resp.read())
    valid_until = dt.datetime.strptime(metadata.get("validUntil"), "%Y-%m-%dT%H:%M:%SZ")
    close_to(
        value(
            samples,
            "gateway_broker_metadata_expiry_seconds",
            entity_id=world.sim.settings.entity_id,
        ),
        valid_until.replace(tzinfo=dt.UTC),
    )
    cert = metadata.find(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate")
    broker = x509.load_der_x509_certificate(base64.b64decode(cert.text))
    close_to(value(samples, name, certificate="broker_signing"), broker.not_valid_after_utc)
    tokens = world.config.tokens
    assert tokens is not None
    since = read_stamps(tokens.keys.current).signing_since
    assert since is not None
    kid = world.services.keys.kid
    close_to(
        value(samples, "gateway_token_key_expiry_seconds", kid=kid),
        since + dt.timedelta(days=tokens.key_lifetime_days),
    )


async def test_scrapes_need_the_bearer_token(world: LoginWorld) -> None:
    """Without the token, or with another one, the metrics answer 401 and reveal nothing."""
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer not-the-token-at-all-000"}):
            async with http.get(world.url("/_gateway/metrics"), headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
                assert "gateway_" not in await resp.text()


async def test_store_outage_is_counted_per_operation(world: LoginWorld, redis: RedisServer) -> None:
    """With Redis stopped, a session load fails (503) and counts as a store error."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    assert resp.status == 200
    before = await scrape(world)
    redis.stop()
    try:
        async with browser.get(world.url("/dashboard")) as r:
            assert r.status == 503
        during = await scrape(world)
    finally:
        redis.start()
    name = "gateway_store_errors_total"
    assert value(during, name, operation="get") - value(before, name, operation="get") >= 1
