"""Ready for a real broker: its metadata, https only, validUntil/cacheDuration, Content-Type,
and a broker restart (new keys) that must not break a running gateway.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from structlog.testing import capture_logs
from yarl import URL

from gateway.cli import main
from gateway.errors import BrokerUnavailable, SamlInvalid
from gateway.saml import ServiceProvider
from gateway.saml.keys import load_sp_keys
from gateway.saml.metadata import (
    BINDING_REDIRECT,
    BrokerMetadataSource,
    parse_broker_metadata,
    parse_duration,
)
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway_dev.devkeys import rsa_keypair
from gateway_dev.simulator import MtlsSettings, SimulatorSettings, running_simulator
from gateway_dev.simulator.control import Simulator
from tests.support.clock import FakeClock
from tests.support.saml import ResponseSpec, SamlWorld
from tests.support.schemas import BROKER_METADATA_IWELCOME
from tests.support.simulator import EXAMPLE_SCENARIOS, acs_params, start_simulator

IWELCOME_ID = "urn:etoegang:HM:00000003520354760000:entities:9632"


def _embedded_signing_cert(data: bytes) -> bytes:
    """The IdP signing certificate published inside the metadata, as PEM."""
    root = etree.fromstring(data)
    text = root.findtext(
        ".//{urn:oasis:names:tc:SAML:2.0:metadata}IDPSSODescriptor//"
        "{http://www.w3.org/2000/09/xmldsig#}X509Certificate"
    )
    der = base64.b64decode("".join(text.split()))
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


# -- a real broker's metadata -----------------------------------------------------


def test_real_broker_metadata_loads_and_its_signature_verifies() -> None:
    """iWelcome's 1.13 metadata: KeyName-only signature with a prefix list verifies; all read."""
    data = BROKER_METADATA_IWELCOME.read_bytes()
    md = parse_broker_metadata(
        data,
        entity_id=IWELCOME_ID,
        signing_cert_pem=_embedded_signing_cert(data),
        require_https=True,
    )
    assert md.entity_id == IWELCOME_ID
    assert md.ars_urls == {
        0: "https://eh02.staging.iwelcome.nl/broker/ars/1.13",
        1: "https://eh02.staging.iwelcome.nl/broker/ars/1.13",
    }
    assert md.sso_urls[BINDING_REDIRECT] == "https://eh01.staging.iwelcome.nl/broker/sso/1.13"
    assert md.slo_urls[BINDING_REDIRECT] == "https://eh01.staging.iwelcome.nl/broker/slo/1.13"
    assert len(md.signing_certs) == 1
    assert md.cache_duration == dt.timedelta(days=7)
    assert md.valid_until is None


def test_real_broker_metadata_with_one_changed_byte_is_refused() -> None:
    """A single changed character in the signed metadata breaks its signature."""
    data = BROKER_METADATA_IWELCOME.read_bytes()
    cert = _embedded_signing_cert(data)
    tampered = data.replace(
        b"eh02.staging.iwelcome.nl/broker/ars", b"eh02.staging.iwelcome.nl/broker/arz", 1
    )
    with pytest.raises(SamlInvalid, match="metadata_signature_invalid"):
        parse_broker_metadata(tampered, signing_cert_pem=cert, entity_id=IWELCOME_ID)


async def test_gateway_starts_on_the_real_broker_metadata_file(tmp_path: Path) -> None:
    """As configured by ops (file + broker_metadata_cert + broker_entity_id), the SP loads it."""
    data = BROKER_METADATA_IWELCOME.read_bytes()
    cert = tmp_path / "broker-metadata.crt"
    cert.write_bytes(_embedded_signing_cert(data))
    world = SamlWorld(directory=tmp_path)
    sp = ServiceProvider(
        world.settings(
            broker_metadata=str(BROKER_METADATA_IWELCOME),
            broker_metadata_cert=cert,
            broker_entity_id=IWELCOME_ID,
            insecure_dev_http=False,
            verify_pool="thread",
        )
    )
    await sp.start()
    try:
        assert sp.metadata.entity_id == IWELCOME_ID
        request_id, http = sp.build_authn_request("rs")
        assert http.url.startswith("https://eh01.staging.iwelcome.nl/broker/sso/1.13?")
        assert request_id
        # cacheDuration P7D is shorter than nothing here, but bounds the refresh period.
        assert sp.broker.next_refresh_seconds() == 3600
    finally:
        await sp.close()
    assert sp.settings.herkenningsmakelaar_id == "00000003520354760000"


# -- https outside development ----------------------------------------------------


def _config_with(tmp_path: Path, **saml: object) -> Path:
    from tests.support.login_world import gateway_config

    mandates = tmp_path / "mandates.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(tmp_path, 8080, "http://127.0.0.1:9", "x", mandates)
    data["saml"].pop("insecure_dev_http")  # the login world's loopback default
    data["saml"].update(saml)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("saml", "ok"),
    [
        ({"broker_metadata": "http://broker.example.nl/md"}, False),
        ({"broker_metadata": "http://127.0.0.1:8081/md", "insecure_dev_http": True}, True),
        ({"broker_metadata": "https://broker.example.nl/md"}, True),
        ({"broker_metadata": "/etc/gateway/broker-metadata.xml"}, True),
        ({"broker_metadata": "ftp://broker.example.nl/md"}, False),
    ],
    ids=["http", "http-in-development", "https", "file", "ftp"],
)
def test_check_config_refuses_plain_http_broker_metadata_outside_development(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], saml: dict[str, object], ok: bool
) -> None:
    """check-config exits 2 for http(/other) metadata URLs unless insecure_dev_http is set."""
    path = _config_with(tmp_path, **saml)
    # The scheme rule alone: the example file paths in the config do not exist here.
    assert main(["check-config", "--skip-files", str(path)]) == (0 if ok else 2)
    err = capsys.readouterr().err
    if not ok:
        assert "gateway.yaml: saml" in err and "broker_metadata" in err


def test_metadata_with_plain_http_artifact_resolution_is_refused(world: SamlWorld) -> None:
    """Outside development an ArtifactResolutionService on http:// makes the metadata unusable."""
    data = world.broker_metadata(ars_url="http://broker.example.nl/ars")
    with pytest.raises(SamlInvalid, match="metadata_ars_not_https"):
        parse_broker_metadata(data, require_https=True)
    assert parse_broker_metadata(data, require_https=False).ars_urls == {
        0: "http://broker.example.nl/ars"
    }


async def test_https_metadata_and_mutual_tls_artifact_resolution(tmp_path: Path) -> None:
    """Production shape: https metadata and ARS, our CA file, our TLS client cert; login works."""
    server = rsa_keypair("localhost")
    server.write(tmp_path / "server.key", tmp_path / "server.crt")
    world = SamlWorld(directory=tmp_path)
    base = world.settings(insecure_dev_http=False)
    keys = load_sp_keys(base)
    mtls = MtlsSettings(cert_file=tmp_path / "server.crt", key_file=tmp_path / "server.key")
    async with start_simulator(
        sp_metadata=sp_metadata_xml(base, keys),
        catalogue=service_catalogue_xml(base, keys),
        mtls=mtls,
    ) as sim:
        assert sim.metadata_url.startswith("https://")
        settings = world.settings(
            broker_metadata=sim.metadata_url,
            broker_entity_id=sim.settings.entity_id,
            insecure_dev_http=False,
            tls_ca_file=tmp_path / "server.crt",
            # The client certificate the broker knows from our registered metadata.
            tls_client=base.signing,
            verify_pool="thread",
        )
        sp = ServiceProvider(settings)
        await sp.start()
        try:
            login = await _login(sp, sim, "chain", ssl_ca=tmp_path / "server.crt")
        finally:
            await sp.close()
    assert login.identity.legal_subject_kvk == "23456789"


async def test_https_metadata_from_an_untrusted_server_is_refused(tmp_path: Path) -> None:
    """Without the broker's CA configured, the https metadata is not loaded: fail closed."""
    server = rsa_keypair("localhost")
    server.write(tmp_path / "server.key", tmp_path / "server.crt")
    world = SamlWorld(directory=tmp_path)
    mtls = MtlsSettings(cert_file=tmp_path / "server.crt", key_file=tmp_path / "server.key")
    async with start_simulator(mtls=mtls) as sim:
        sp = ServiceProvider(
            world.settings(
                broker_metadata=sim.metadata_url,
                broker_entity_id=sim.settings.entity_id,
                insecure_dev_http=False,
                verify_pool="thread",
            )
        )
        with capture_logs() as logs:
            await sp.start()
        try:
            with pytest.raises(BrokerUnavailable):
                _ = sp.metadata
        finally:
            await sp.close()
    assert [e["event"] for e in logs if e["event"].startswith("broker_metadata")] == [
        "broker_metadata_refresh_failed"
    ]


async def _login(sp: ServiceProvider, sim: Simulator, scenario: str, ssl_ca: Path | None = None):  # type: ignore[no-untyped-def]
    """Browser part by hand (a redirect to the simulator, back with SAMLart), then resolve."""
    request_id, http = sp.build_authn_request("rs")
    sim.use_scenario(scenario, request_id=request_id)
    context = ssl.create_default_context(cafile=str(ssl_ca)) if ssl_ca else None
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(
            URL(http.url, encoded=True), allow_redirects=False, ssl=context or True
        ) as resp,
    ):
        assert resp.status == 303, await resp.text()
        artifact = acs_params(resp.headers["Location"])["SAMLart"]
    return await sp.consume_artifact(artifact, sp.expectation(request_id))


# -- validUntil and cacheDuration -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("P7D", 7 * 86400), ("PT1H30M", 5400), ("PT3600S", 3600), ("P1DT2H", 93600), ("PT0.5S", 0.5)],
)
def test_cache_duration_is_read_as_xs_duration(text: str, seconds: float) -> None:
    """xs:duration values as brokers write them."""
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["7D", "P", "PT", "P1X", "-P1D"])
def test_malformed_cache_duration_is_refused(text: str) -> None:
    """Anything that is not an xs:duration makes the metadata invalid."""
    with pytest.raises(SamlInvalid, match="metadata_cache_duration_malformed"):
        parse_duration(text)


def _md_file(world: SamlWorld, tmp_path: Path, **attrs: str) -> Path:
    root = etree.fromstring(world.broker_metadata())
    for name, value in attrs.items():
        root.set(name, value)
    path = tmp_path / "md.xml"
    path.write_bytes(etree.tostring(root))
    return path


async def _read(_: str) -> bytes:
    raise AssertionError("file sources are not fetched")


async def test_cache_duration_and_valid_until_shorten_the_refresh(
    world: SamlWorld, tmp_path: Path
) -> None:
    """cacheDuration (PT60S) beats a 3600 s period; a validUntil an hour away halves it."""
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    path = _md_file(world, tmp_path, cacheDuration="PT60S")
    source = BrokerMetadataSource(str(path), fetch_url=_read, wall_clock=lambda: now)
    assert await source.refresh()
    assert source.next_refresh_seconds() == 60
    path = _md_file(world, tmp_path, validUntil="2030-01-01T01:00:00Z")
    assert await source.refresh()
    assert source.next_refresh_seconds() == 1800


async def test_expired_held_metadata_fails_closed_and_expiry_is_alerted(
    world: SamlWorld, tmp_path: Path
) -> None:
    """Near validUntil: broker_metadata_expiring at error level; past it: BrokerUnavailable."""
    clock = FakeClock(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    path = _md_file(world, tmp_path, validUntil="2030-01-02T00:00:00Z")
    source = BrokerMetadataSource(
        str(path),
        fetch_url=_read,
        wall_clock=clock.now,
        expiry_warning_seconds=7 * 86400,
    )
    with capture_logs() as logs:
        assert await source.refresh()
    expiring = [e for e in logs if e["event"] == "broker_metadata_expiring"]
    assert len(expiring) == 1 and expiring[0]["log_level"] == "error"
    assert expiring[0]["seconds_left"] == 86400
    assert source.current.entity_id
    clock.set(dt.datetime(2030, 1, 2, tzinfo=dt.UTC))  # the broker never published anew
    with pytest.raises(BrokerUnavailable, match="broker_metadata_expired"):
        _ = source.current


# -- ArtifactResolve Content-Type -------------------------------------------------


@pytest.fixture
async def recording_ars(world: SamlWorld) -> AsyncIterator[tuple[list[dict[str, str]], TestServer]]:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        resolve = etree.fromstring(await request.read()).find(
            ".//{urn:oasis:names:tc:SAML:2.0:protocol}ArtifactResolve"
        )
        body = world.artifact_response(resolve.get("ID"), world.response())
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/ars", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield seen, server
    await server.close()


@pytest.mark.parametrize(
    ("setting", "content_type", "soap_action"),
    [
        ({}, "text/xml; charset=utf-8", '"http://www.oasis-open.org/committees/security"'),
        (
            {"artifact_resolve_content_type": "application/soap+xml"},
            'application/soap+xml; charset=utf-8; action="http://www.oasis-open.org/committees/security"',
            None,
        ),
    ],
    ids=["text-xml-default", "soap-xml"],
)
async def test_artifact_resolve_content_type_is_configurable(
    world: SamlWorld,
    tmp_path: Path,
    recording_ars: tuple[list[dict[str, str]], TestServer],
    setting: dict[str, str],
    content_type: str,
    soap_action: str | None,
) -> None:
    """text/xml with SOAPAction by default; application/soap+xml with the action parameter."""
    seen, server = recording_ars
    md = tmp_path / "md.xml"
    md.write_bytes(world.broker_metadata(ars_url=str(server.make_url("/ars"))))
    sp = ServiceProvider(world.settings(broker_metadata=str(md), verify_pool="thread", **setting))
    await sp.start()
    try:
        spec = ResponseSpec()
        login = await sp.consume_artifact(world.artifact(), sp.expectation(spec.request_id))
    finally:
        await sp.close()
    assert login.identity.legal_subject_kvk == "12345678"
    assert seen[0]["Content-Type"] == content_type
    assert seen[0].get("SOAPAction") == (soap_action.strip('"') if soap_action else None)


# -- a broker restart (new keys) --------------------------------------------------


async def test_simulator_restart_with_new_keys_does_not_break_a_running_gateway(
    world: SamlWorld,
) -> None:
    """The broker restarts with a new key on the same port: the next login reloads and works."""
    base = world.settings()
    keys = load_sp_keys(base)
    sp_md, catalogue = sp_metadata_xml(base, keys), service_catalogue_xml(base, keys)
    first = SimulatorSettings(scenarios_file=EXAMPLE_SCENARIOS)
    async with running_simulator(first, "127.0.0.1", 0) as sim:
        sim.set_sp_metadata(sp_md)
        sim.set_service_catalogue(catalogue)
        port = int(sim.base_url().rsplit(":", 1)[1])
        settings = world.settings(
            broker_metadata=sim.metadata_url,
            broker_entity_id=sim.settings.entity_id,
            verify_pool="thread",
        )
        sp = ServiceProvider(settings)
        await sp.start()
        old_keys = sp.metadata.signing_certs
        assert (await _login(sp, sim, "direct")).identity.legal_subject_kvk == "12345678"
    try:
        async with running_simulator(first, "127.0.0.1", port) as again:  # ephemeral: a new key
            again.set_sp_metadata(sp_md)
            again.set_service_catalogue(catalogue)
            with capture_logs() as logs:
                login = await _login(sp, again, "chain")
            assert login.identity.legal_subject_kvk == "23456789"
            assert sp.metadata.signing_certs != old_keys
    finally:
        await sp.close()
    triggered = [e for e in logs if e["event"] == "broker_metadata_refresh_triggered"]
    assert [(e["reason"], e["keys_changed"]) for e in triggered] == [("signature_failure", True)]


async def test_signature_failures_reload_metadata_at_most_once_per_interval(
    world: SamlWorld, tmp_path: Path
) -> None:
    """Forged answers do not make us hammer the broker: one metadata fetch per interval."""
    fetches: list[str] = []
    md_body = {"value": b""}

    async def metadata(request: web.Request) -> web.Response:
        fetches.append(request.path)
        return web.Response(body=md_body["value"], content_type="application/xml")

    async def forged(request: web.Request) -> web.Response:
        resolve = etree.fromstring(await request.read()).find(
            ".//{urn:oasis:names:tc:SAML:2.0:protocol}ArtifactResolve"
        )
        body = world.artifact_response(resolve.get("ID"), world.response(), signer=world.attacker)
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/md", metadata)
    app.router.add_post("/ars", forged)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    md_body["value"] = world.broker_metadata(ars_url=str(server.make_url("/ars")))
    sp = ServiceProvider(
        world.settings(broker_metadata=str(server.make_url("/md")), verify_pool="thread")
    )
    await sp.start()
    try:
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(SamlInvalid, match="artifact_response_signature_invalid"):
                    await sp.consume_artifact(world.artifact(), sp.expectation("_r"))
    finally:
        await sp.close()
        await server.close()
    assert len(fetches) == 2  # the start-up load and one reload, not one per failure
    events = [e["event"] for e in logs if e["event"].startswith("broker_metadata_refresh")]
    assert events == [
        "broker_metadata_refresh_triggered",
        "broker_metadata_refresh_skipped",
        "broker_metadata_refresh_skipped",
    ]
