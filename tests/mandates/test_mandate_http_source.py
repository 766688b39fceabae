"""The HTTP registry source against a real loopback server that is slow, fails and recovers."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import http_settings
from structlog.testing import capture_logs

from gateway.errors import RegistryUnavailable
from gateway.mandates import MandateStatus
from gateway.mandates.http_source import HttpMandateSource
from gateway_dev.devkeys import rsa_keypair
from tests.support.clock import FakeClock
from tests.support.registry import RegistryServer

ADMIN = "11111111"


@pytest.fixture
async def source(registry: RegistryServer) -> AsyncIterator[HttpMandateSource]:
    s = HttpMandateSource(http_settings(registry))
    yield s
    await s.close()


async def test_fetches_and_validates_mandates(
    registry: RegistryServer, source: HttpMandateSource
) -> None:
    """A 200 answer becomes Mandate values for the administrator, statuses and scopes intact."""
    ms = await source.mandates_for(ADMIN)
    assert [(m.employer_kvk, m.status, m.scopes) for m in ms] == [
        ("30000001", MandateStatus.ACTIVE, frozenset({"a"})),
        ("30000002", MandateStatus.REVOKED, frozenset()),
    ]
    assert ms[0].administrator_kvk == ADMIN
    assert ms[0].valid_from == dt.date(2020, 1, 1)
    assert registry.last_headers["Accept"] == "application/json"


async def test_unknown_administrator_is_an_empty_list(
    registry: RegistryServer, source: HttpMandateSource
) -> None:
    """404 for an unknown administrator means "no mandates", not an error."""
    assert await source.mandates_for("99999999") == []
    assert source.breaker.state == "closed"


@pytest.mark.parametrize("status", ["502", "503", "504"])
async def test_transient_statuses_are_retried(
    registry: RegistryServer, source: HttpMandateSource, status: str
) -> None:
    """502/503/504 are retried with back-off and the lookup succeeds once the registry does."""
    registry.fail_next(status, times=2)
    assert len(await source.mandates_for(ADMIN)) == 2
    assert registry.requests == 3


@pytest.mark.parametrize("status", ["500", "401", "403"])
async def test_other_errors_are_not_retried(
    registry: RegistryServer, source: HttpMandateSource, status: str
) -> None:
    """4xx (and a plain 500) are deterministic answers: one request, then RegistryUnavailable."""
    registry.fail_next(status, times=3)
    with pytest.raises(RegistryUnavailable, match=f"status {status}"):
        await source.mandates_for(ADMIN)
    assert registry.requests == 1


async def test_retries_are_bounded(registry: RegistryServer, source: HttpMandateSource) -> None:
    """A registry that keeps failing gets max_attempts requests, then the lookup fails."""
    registry.always("503")
    with pytest.raises(RegistryUnavailable, match="after 3 attempt"):
        await source.mandates_for(ADMIN)
    assert registry.requests == 3


@pytest.mark.parametrize("behaviour", ["hang", "stall_body", "reset"])
async def test_timeouts_and_resets_are_retried(
    registry: RegistryServer, source: HttpMandateSource, behaviour: str
) -> None:
    """A read timeout (before or during the body) or a connection reset is retried."""
    registry.fail_next(behaviour)
    assert len(await source.mandates_for(ADMIN)) == 2
    assert registry.requests == 2


async def test_slow_registry_fails_closed(registry: RegistryServer) -> None:
    """A registry slower than the read timeout on every attempt yields RegistryUnavailable."""
    registry.delay = 2.0
    source = HttpMandateSource(http_settings(registry, max_attempts=2))
    try:
        with pytest.raises(RegistryUnavailable, match="TimeoutError"):
            await source.mandates_for(ADMIN)
    finally:
        await source.close()
    assert registry.requests == 2


@pytest.mark.parametrize("behaviour", ["malformed", "wrong_schema", "other_admin"])
async def test_bad_bodies_fail_with_a_log_event(
    registry: RegistryServer, source: HttpMandateSource, behaviour: str
) -> None:
    """Broken JSON, a contract violation or another administrator's data: logged, not retried."""
    registry.fail_next(behaviour)
    with capture_logs() as logs, pytest.raises(RegistryUnavailable):
        await source.mandates_for(ADMIN)
    assert registry.requests == 1
    invalid = [e for e in logs if e["event"] == "registry_response_invalid"]
    assert len(invalid) == 1
    assert invalid[0]["administrator_kvk"] == ADMIN
    assert invalid[0]["problem_count"] >= 1


async def test_oversized_response_is_refused(registry: RegistryServer) -> None:
    """A body beyond max_response_bytes is refused instead of read into memory."""
    for i in range(40):
        registry.add(ADMIN, employer_kvk=f"{40000000 + i}", employer_name="x" * 50)
    source = HttpMandateSource(http_settings(registry, max_response_bytes=1024))
    try:
        with pytest.raises(RegistryUnavailable, match="too large"):
            await source.mandates_for(ADMIN)
    finally:
        await source.close()


async def test_malformed_kvk_never_reaches_the_network(
    registry: RegistryServer, source: HttpMandateSource
) -> None:
    """A KvK that is not 8 digits is refused before any URL is built."""
    with pytest.raises(RegistryUnavailable):
        await source.mandates_for("../admin")
    assert registry.requests == 0


async def test_breaker_opens_fails_fast_and_recovers(registry: RegistryServer) -> None:
    """Connection refused opens the circuit; then no network calls until half-open recovers it."""
    clock = FakeClock(1000.0)
    source = HttpMandateSource(
        http_settings(registry, max_attempts=1, breaker_failure_threshold=2, breaker_cooldown=10),
        clock=clock.time,
    )
    try:
        await registry.stop()
        with capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(RegistryUnavailable):
                    await source.mandates_for(ADMIN)
        assert source.breaker.state == "open"
        assert "registry_circuit_opened" in [e["event"] for e in logs]
        sent = source.network_attempts
        with pytest.raises(RegistryUnavailable, match="circuit open"):
            await source.mandates_for(ADMIN)
        assert source.network_attempts == sent  # failed fast, no request

        await registry.start()
        clock.advance(10)
        assert source.breaker.state == "half_open"
        assert len(await source.mandates_for(ADMIN)) == 2
        assert source.breaker.state == "closed"
    finally:
        await source.close()


async def test_failed_trial_reopens_the_circuit(registry: RegistryServer) -> None:
    """When the half-open trial fails the circuit opens again for another cooldown."""
    clock = FakeClock(1000.0)
    source = HttpMandateSource(
        http_settings(registry, max_attempts=3, breaker_failure_threshold=1, breaker_cooldown=10),
        clock=clock.time,
    )
    try:
        registry.always("503")
        with pytest.raises(RegistryUnavailable):
            await source.mandates_for(ADMIN)
        assert registry.requests == 1  # the open circuit stopped the retries
        clock.advance(10)
        with pytest.raises(RegistryUnavailable):
            await source.mandates_for(ADMIN)
        assert registry.requests == 2  # exactly one trial
        assert source.breaker.state == "open"
    finally:
        await source.close()


async def test_bearer_token_is_sent_and_reread_on_change(tmp_path: Path) -> None:
    """The token comes from its file and a rotated file is used from the next request on."""
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    async with RegistryServer(token="first-token") as registry:
        registry.add(ADMIN, employer_kvk="30000001", employer_name="A")
        source = HttpMandateSource(http_settings(registry, bearer_token_file=token_file))
        try:
            assert len(await source.mandates_for(ADMIN)) == 1
            registry.token = "second-token"
            token_file.write_text("second-token-and-longer\n")
            with pytest.raises(RegistryUnavailable, match="status 401"):
                await source.mandates_for(ADMIN)
            registry.token = "second-token-and-longer"
            assert len(await source.mandates_for(ADMIN)) == 1
        finally:
            await source.close()


async def test_unreadable_token_file_fails_without_leaking(
    tmp_path: Path, registry: RegistryServer
) -> None:
    """A missing token file fails the lookup and the log names the file, never a token."""
    source = HttpMandateSource(http_settings(registry, bearer_token_file=tmp_path / "absent"))
    try:
        with capture_logs() as logs, pytest.raises(RegistryUnavailable):
            await source.mandates_for(ADMIN)
    finally:
        await source.close()
    assert registry.requests == 0
    assert [e["event"] for e in logs if e["event"].startswith("registry_token")] == [
        "registry_token_unreadable"
    ]


async def test_mutual_tls_with_client_certificate(tmp_path: Path) -> None:
    """Over HTTPS the source verifies the registry with the CA file and presents its certificate."""
    server_keys, client_keys = rsa_keypair("localhost"), rsa_keypair("gateway-client")
    server_keys.write(tmp_path / "server.key", tmp_path / "server.pem")
    client_keys.write(tmp_path / "client.key", tmp_path / "client.pem")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(tmp_path / "client.pem")
    async with RegistryServer(ssl_context=ctx) as registry:
        registry.add(ADMIN, employer_kvk="30000001", employer_name="A")
        base = {"allow_plain_http": False, "ca_file": tmp_path / "server.pem", "max_attempts": 1}
        with_cert = HttpMandateSource(
            http_settings(
                registry,
                **base,
                client_cert_file=tmp_path / "client.pem",
                client_key_file=tmp_path / "client.key",
            )
        )
        without_cert = HttpMandateSource(http_settings(registry, **base))
        try:
            assert len(await with_cert.mandates_for(ADMIN)) == 1
            with pytest.raises(RegistryUnavailable):
                await without_cert.mandates_for(ADMIN)
        finally:
            await with_cert.close()
            await without_cert.close()


async def test_unreadable_client_certificate_fails_closed(tmp_path: Path) -> None:
    """A missing certificate file makes lookups fail with RegistryUnavailable, not a crash."""
    source = HttpMandateSource(
        http_settings(
            RegistryServer(),
            url_template="https://localhost:1/{kvk}",
            allow_plain_http=False,
            client_cert_file=tmp_path / "absent.pem",
            client_key_file=tmp_path / "absent.key",
        )
    )
    with capture_logs() as logs, pytest.raises(RegistryUnavailable, match="setup"):
        await source.mandates_for(ADMIN)
    await source.close()
    assert "registry_client_setup_failed" in [e["event"] for e in logs]
