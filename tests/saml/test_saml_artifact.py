"""Artifact binding: checks before the network, SOAP errors, ArtifactResponse verification.

A small fake ArtifactResolutionService (a real aiohttp server on loopback)
answers with messages built by ``tests.support.saml``, so each test can hand
back exactly the broken answer it is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree

from gateway.errors import BrokerUnavailable, SamlInvalid
from gateway.saml import ServiceProvider
from gateway.saml.artifact import parse_artifact
from gateway.saml.signature import verify_enveloped
from gateway.saml.xml import q
from tests.support.saml import BROKER_ID, ResponseSpec, SamlWorld

Answer = Callable[[etree._Element, "FakeArs"], Awaitable[web.Response]]


@dataclass
class FakeArs:
    """Records what the SP sent and answers with ``answer``."""

    world: SamlWorld
    answer: Answer | None = None
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    spec: ResponseSpec = field(default_factory=ResponseSpec)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        resolve = etree.fromstring(body).find(f".//{q('samlp', 'ArtifactResolve')}")
        assert self.answer is not None
        return await self.answer(resolve, self)


async def good_answer(resolve: etree._Element, ars: FakeArs) -> web.Response:
    inner = ars.world.response(ars.spec)
    body = ars.world.artifact_response(resolve.get("ID"), inner)
    return web.Response(body=body, content_type="text/xml")


# One fake ARS and SP for the module (loading RSA keys is slow); ``ars`` resets it per test.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_ars(world: SamlWorld) -> AsyncIterator[tuple[FakeArs, ServiceProvider]]:
    fake = FakeArs(world=world, answer=good_answer)
    app = web.Application()
    app.router.add_post("/ars", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    md = Path(world.directory) / "broker-ars.xml"
    md.write_bytes(world.broker_metadata(ars_url=str(server.make_url("/ars"))))
    sp = ServiceProvider(world.settings(broker_metadata=str(md), artifact_read_timeout_seconds=0.5))
    await sp.start()
    try:
        yield fake, sp
    finally:
        await sp.close()
        await server.close()


@pytest.fixture
def ars(shared_ars: tuple[FakeArs, ServiceProvider]) -> tuple[FakeArs, ServiceProvider]:
    fake, sp = shared_ars
    fake.answer = good_answer
    fake.requests.clear()
    fake.spec = ResponseSpec()
    return fake, sp


async def consume(world: SamlWorld, sp: ServiceProvider, spec: ResponseSpec, **art: object):  # type: ignore[no-untyped-def]
    return await sp.consume_artifact(
        world.artifact(**art),  # type: ignore[arg-type]
        sp.expectation(spec.request_id, spec.now),
    )


async def test_resolution_sends_a_signed_soap_artifact_resolve(
    world: SamlWorld, ars: tuple[FakeArs, ServiceProvider]
) -> None:
    """The ArtifactResolve is SOAP, text/xml, with SOAPAction, signed by our key, to the ARS."""
    fake, sp = ars
    login = await consume(world, sp, fake.spec)
    assert login.identity.legal_subject_kvk == "12345678"
    headers, body = fake.requests[0]
    assert headers["Content-Type"].startswith("text/xml")
    assert "SOAPAction" in headers
    resolve = etree.fromstring(body).find(f".//{q('samlp', 'ArtifactResolve')}")
    assert resolve.get("Destination").endswith("/ars")
    verify_enveloped(
        resolve,
        [world.sp_signing.cert_pem],
        signature_algorithms=sp.settings.signature_algorithms,
        digest_algorithms=sp.settings.digest_algorithms,
        what="resolve",
    )


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        ({"type_code": 3}, "artifact_type_unsupported"),
        ({"source": "urn:etoegang:HM:00000000000000000000:entities:1"}, "artifact_source_unknown"),
        ({"index": 7}, "artifact_endpoint_index_unknown"),
    ],
)
async def test_foreign_artifacts_are_refused_before_any_network_call(
    world: SamlWorld,
    ars: tuple[FakeArs, ServiceProvider],
    artifact: dict[str, object],
    reason: str,
) -> None:
    """Wrong type, SourceID or endpoint index: refused, and the broker is never called."""
    fake, sp = ars
    with pytest.raises(SamlInvalid) as info:
        await consume(world, sp, fake.spec, **artifact)
    assert info.value.detail == reason
    assert fake.requests == []


@pytest.mark.parametrize("value", ["", "%%%", "AAAA", "A" * 300])
async def test_malformed_artifacts_are_saml_invalid(value: str) -> None:
    """Garbage in SAMLart is SamlInvalid."""
    with pytest.raises(SamlInvalid):
        parse_artifact(value, BROKER_ID)


async def test_artifact_response_signed_by_a_foreign_key_is_refused(
    world: SamlWorld, ars: tuple[FakeArs, ServiceProvider]
) -> None:
    """An ArtifactResponse signed by anyone but the broker is refused."""
    fake, sp = ars

    async def forged(resolve: etree._Element, ars: FakeArs) -> web.Response:
        body = world.artifact_response(
            resolve.get("ID"), world.response(ars.spec), signer=world.attacker
        )
        return web.Response(body=body, content_type="text/xml")

    fake.answer = forged
    with pytest.raises(SamlInvalid) as info:
        await consume(world, sp, fake.spec)
    assert info.value.detail == "artifact_response_signature_invalid"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"sign_it": False}, "artifact_response_signature_missing"),
        ({"issuer": "urn:evil"}, "artifact_response_issuer_mismatch"),
        (
            {"status": "urn:oasis:names:tc:SAML:2.0:status:Requester"},
            "artifact_response_status_not_success",
        ),
        ({"in_response_to": "_not_ours"}, "artifact_response_in_response_to_mismatch"),
        ({"inner": None}, "artifact_response_without_response"),
    ],
)
async def test_artifact_response_checks(
    world: SamlWorld,
    ars: tuple[FakeArs, ServiceProvider],
    kwargs: dict[str, object],
    reason: str,
) -> None:
    """Unsigned, wrong issuer, non-Success, wrong InResponseTo, empty: each refused."""
    fake, sp = ars

    async def answer(resolve: etree._Element, ars: FakeArs) -> web.Response:
        args = dict(kwargs)
        irt = str(args.pop("in_response_to", resolve.get("ID")))
        inner = args.pop("inner", world.response(ars.spec))
        body = world.artifact_response(irt, inner, **args)  # type: ignore[arg-type]
        return web.Response(body=body, content_type="text/xml")

    fake.answer = answer
    with pytest.raises(SamlInvalid) as info:
        await consume(world, sp, fake.spec)
    assert info.value.detail == reason


async def test_tampered_artifact_response_bytes_are_refused(
    world: SamlWorld, ars: tuple[FakeArs, ServiceProvider]
) -> None:
    """Changing the signed ArtifactResponse after signing breaks the signature check."""
    fake, sp = ars

    async def tampered(resolve: etree._Element, ars: FakeArs) -> web.Response:
        body = world.artifact_response(resolve.get("ID"), world.response(ars.spec))
        body = body.replace(b'Version="2.0" IssueInstant', b'Version="2.0"  IssueInstant', 1)
        body = body.replace(b"Werkgever B.V.", b"Werkgever X.V.")
        return web.Response(body=body, content_type="text/xml")

    fake.answer = tampered
    with pytest.raises(SamlInvalid) as info:
        await consume(world, sp, fake.spec)
    assert info.value.detail == "artifact_response_signature_invalid"


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, BrokerUnavailable), (503, BrokerUnavailable), (404, SamlInvalid)],
)
async def test_http_errors_from_the_broker(
    world: SamlWorld, ars: tuple[FakeArs, ServiceProvider], status: int, error: type[Exception]
) -> None:
    """5xx from the ARS is BrokerUnavailable; other non-200 answers are SamlInvalid."""
    fake, sp = ars

    async def failing(resolve: etree._Element, ars: FakeArs) -> web.Response:
        return web.Response(status=status, text="nope")

    fake.answer = failing
    with pytest.raises(error):
        await consume(world, sp, fake.spec)


async def test_broker_timeout_is_broker_unavailable(
    world: SamlWorld, ars: tuple[FakeArs, ServiceProvider]
) -> None:
    """An ARS slower than the read timeout gives BrokerUnavailable."""
    fake, sp = ars

    async def slow(resolve: etree._Element, ars: FakeArs) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    fake.answer = slow
    with pytest.raises(BrokerUnavailable) as info:
        await consume(world, sp, fake.spec)
    assert "Timeout" in info.value.detail


async def test_garbage_answers_are_saml_invalid(
    world: SamlWorld, ars: tuple[FakeArs, ServiceProvider]
) -> None:
    """Non-XML, a SOAP fault, or a DOCTYPE from the broker end as SamlInvalid."""
    fake, sp = ars
    bodies = [
        b"garbage",
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        b"<s:Fault><faultcode>s:Server</faultcode></s:Fault></s:Body></s:Envelope>",
        b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
    ]
    for body in bodies:

        async def answer(resolve: etree._Element, ars: FakeArs, body: bytes = body) -> web.Response:
            return web.Response(body=body, content_type="text/xml")

        fake.answer = answer
        with pytest.raises(SamlInvalid):
            await consume(world, sp, fake.spec)
