"""Broker metadata: parsing, signature requirement, refresh that keeps the last good copy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from structlog.testing import capture_logs

from gateway.errors import BrokerUnavailable, SamlInvalid
from gateway.saml.metadata import (
    BINDING_REDIRECT,
    BrokerMetadataSource,
    parse_broker_metadata,
)
from tests.support.saml import BROKER_ID, SamlWorld, sign


def test_metadata_exposes_endpoints_and_keys(world: SamlWorld) -> None:
    """entityID, signing certificate, SSO per binding and ARS per index are read."""
    md = parse_broker_metadata(world.broker_metadata())
    assert md.entity_id == BROKER_ID
    assert md.sso_urls[BINDING_REDIRECT] == world.sso_url
    assert md.ars_urls == {0: world.ars_url}
    assert md.signing_certs == (world.broker.cert_pem,)


def test_signed_metadata_is_required_when_a_cert_is_configured(world: SamlWorld) -> None:
    """With a metadata-signing cert, unsigned or wrongly signed metadata is refused."""
    with pytest.raises(SamlInvalid, match="metadata_signature_missing"):
        parse_broker_metadata(world.broker_metadata(), signing_cert_pem=world.broker.cert_pem)
    root = etree.fromstring(world.broker_metadata())
    sign(root, world.attacker, after=None)
    with pytest.raises(SamlInvalid):
        parse_broker_metadata(etree.tostring(root), signing_cert_pem=world.broker.cert_pem)
    good = etree.fromstring(world.broker_metadata())
    sign(good, world.broker, after=None)
    md = parse_broker_metadata(etree.tostring(good), signing_cert_pem=world.broker.cert_pem)
    assert md.entity_id == BROKER_ID


def test_expired_metadata_is_refused(world: SamlWorld) -> None:
    """Metadata past its validUntil is refused."""
    root = etree.fromstring(world.broker_metadata())
    root.set("validUntil", "2001-01-01T00:00:00Z")
    with pytest.raises(SamlInvalid, match="metadata_expired"):
        parse_broker_metadata(etree.tostring(root))


@pytest.fixture
async def md_server(world: SamlWorld) -> AsyncIterator[tuple[TestServer, dict[str, bytes]]]:
    served = {"body": world.broker_metadata()}

    async def handler(request: web.Request) -> web.Response:
        if not served["body"]:
            return web.Response(status=500)
        return web.Response(body=served["body"], content_type="application/xml")

    app = web.Application()
    app.router.add_get("/md", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, served
    await server.close()


async def _fetch_with(url: str) -> bytes:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url) as r:
        if r.status != 200:
            raise OSError(f"HTTP {r.status}")
        return await r.read()


async def test_refresh_failure_keeps_last_good_metadata_and_logs(
    md_server: tuple[TestServer, dict[str, bytes]],
) -> None:
    """A broken refresh (HTTP 500, then garbage) keeps the last good metadata and logs an error."""
    server, served = md_server
    source = BrokerMetadataSource(str(server.make_url("/md")), fetch_url=_fetch_with)
    assert await source.refresh()
    first = source.current
    served["body"] = b""
    with capture_logs() as logs:
        assert not await source.refresh()
        served["body"] = b"<not-metadata/>"
        assert not await source.refresh()
    assert source.current is first
    assert [e["event"] for e in logs] == ["broker_metadata_refresh_failed"] * 2
    assert all(e["log_level"] == "error" and e["keeping_last_good"] for e in logs)


async def test_no_metadata_yet_is_broker_unavailable(tmp_path: Path) -> None:
    """Before any good load, asking for metadata fails closed with BrokerUnavailable."""
    source = BrokerMetadataSource(str(tmp_path / "missing.xml"), fetch_url=_fetch_with)
    with capture_logs():
        await source.start()
    try:
        with pytest.raises(BrokerUnavailable):
            _ = source.current
    finally:
        await source.close()
