"""Stray assertions: only the verified assertion (and its own signed Advice) may be in a message.

Each test takes a genuine, broker-signed login and adds an unsigned forged
assertion (or an EncryptedAssertion) somewhere else in the document: in
``samlp:Extensions`` (XSW variant 7), as a second sibling, inside
``Status/StatusDetail``, inside the Advice of an unsigned wrapper. The
signature of the genuine assertion still verifies in every case, so only the
rule "nothing but the verified assertion" refuses them. Each position is run
through ``verify_response`` (the POST path, Response unsigned and signed by the
broker) and through a real ArtifactResolutionService on loopback (the
Artifact path, the whole ArtifactResponse signed by the broker).
"""

from __future__ import annotations

import base64
import datetime as dt
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from structlog.testing import capture_logs

from gateway.errors import SamlInvalid
from gateway.saml import ServiceProvider
from gateway.saml.authn_request import authn_request_xml
from gateway.saml.metadata import BINDING_POST
from gateway.saml.signature import sign_enveloped
from gateway.saml.sp_metadata import sp_metadata_xml
from gateway.saml.verify import VerifyContext, verify_response
from gateway.saml.xml import q
from gateway.store.memory import MemoryStore
from tests.saml.conftest import expect
from tests.support import saml as forge
from tests.support.login_world import LoginWorld, login_world, parse_auto_post
from tests.support.saml import STRAY_ASSERTIONS, ResponseSpec, SamlWorld, to_bytes

Mutator = Callable[[etree._Element], None]

# The rule each position is stopped by. A second direct-child assertion was
# already refused by the count check before the document-wide rule existed.
REASONS = {
    "extensions": "assertion_unexpected",
    "extensions-encrypted": "assertion_unexpected",
    "second-sibling": "assertion_count_2",
    "second-sibling-encrypted": "encrypted_assertion_unsupported",
    "status-detail": "assertion_unexpected",
    "unsigned-advice": "assertion_unexpected",
    "unsigned-wrapper-advice": "assertion_unexpected",
}


def _signed_response(world: SamlWorld, spec: ResponseSpec, mutate: Mutator) -> etree._Element:
    """A Response with the stray added, then signed by the broker as a whole."""
    response = world.response(spec)
    mutate(response)
    forge.sign(response, world.broker, after=response.find(q("saml", "Issuer")))
    return response


def test_genuine_response_with_advice_is_accepted(world: SamlWorld, ctx: VerifyContext) -> None:
    """The verified assertion's own Advice assertions are allowed (the baseline for the table)."""
    spec = ResponseSpec(advice_kvk="87654321")
    login = verify_response(to_bytes(world.response(spec)), expect(spec), ctx)
    assert login.identity.legal_subject_kvk == "12345678"


@pytest.mark.parametrize("sign_response", [False, True], ids=["unsigned", "signed-response"])
@pytest.mark.parametrize("position", sorted(STRAY_ASSERTIONS))
def test_stray_assertion_in_post_response_is_refused(
    world: SamlWorld, ctx: VerifyContext, position: str, sign_response: bool
) -> None:
    """A POST-binding Response carrying a stray assertion is refused, broker-signed or not."""
    spec = ResponseSpec()
    mutate = STRAY_ASSERTIONS[position]
    if sign_response:
        response = _signed_response(world, spec, mutate)
    else:
        response = world.response(spec)
        mutate(response)
    with pytest.raises(SamlInvalid) as info:
        verify_response(to_bytes(response), expect(spec), ctx)
    assert info.value.detail == REASONS[position]


def test_assertion_nested_in_verified_advice_assertion_is_allowed(
    world: SamlWorld, ctx: VerifyContext
) -> None:
    """Assertions nested deeper inside the verified assertion's signed Advice stay allowed."""
    spec = ResponseSpec(sign_assertion=False)
    response = world.response(spec)
    assertion = response.find(q("saml", "Assertion"))
    inner = assertion.find(f"{q('saml', 'Advice')}/{q('saml', 'Assertion')}")
    nested = etree.SubElement(inner, q("saml", "Advice"))
    nested.append(forge.forged_encrypted_assertion())
    forge.sign(assertion, world.broker, after=assertion.find(q("saml", "Issuer")))
    login = verify_response(to_bytes(response), expect(spec), ctx)
    assert login.identity.legal_subject_kvk == "12345678"


# -- the Artifact path: a real ArtifactResolutionService on loopback -------------


class StrayArs:
    """An ARS that answers with a broker-signed ArtifactResponse around a tampered Response."""

    def __init__(self, world: SamlWorld) -> None:
        self.world = world
        self.spec = ResponseSpec()
        self.mutate: Mutator | None = None
        self.outer: etree._Element | None = None
        """Added outside the Response, at ``self.outer_at``."""
        self.outer_at = "status_detail"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        resolve = etree.fromstring(body).find(f".//{q('samlp', 'ArtifactResolve')}")
        inner = self.world.response(self.spec)
        if self.mutate is not None:
            self.mutate(inner)
        answer = self.world.artifact_response(
            resolve.get("ID"), inner, **{self.outer_at: self.outer}
        )
        return web.Response(body=answer, content_type="text/xml")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def artifact_sp(world: SamlWorld) -> AsyncIterator[tuple[StrayArs, ServiceProvider]]:
    ars = StrayArs(world)
    app = web.Application()
    app.router.add_post("/ars", ars.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    md = Path(world.directory) / "broker-stray.xml"
    md.write_bytes(world.broker_metadata(ars_url=str(server.make_url("/ars"))))
    sp = ServiceProvider(world.settings(broker_metadata=str(md), verify_pool="thread"))
    await sp.start()
    try:
        yield ars, sp
    finally:
        await sp.close()
        await server.close()


async def _consume(world: SamlWorld, sp: ServiceProvider, spec: ResponseSpec):  # type: ignore[no-untyped-def]
    return await sp.consume_artifact(world.artifact(), sp.expectation(spec.request_id, spec.now))


@pytest.mark.asyncio(loop_scope="module")
async def test_artifact_baseline_is_accepted(
    world: SamlWorld, artifact_sp: tuple[StrayArs, ServiceProvider]
) -> None:
    """Without a stray, the same ARS answer logs in (so each refusal below is the stray's)."""
    ars, sp = artifact_sp
    ars.spec, ars.mutate, ars.outer, ars.outer_at = ResponseSpec(), None, None, "status_detail"
    login = await _consume(world, sp, ars.spec)
    assert login.identity.legal_subject_kvk == "12345678"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("position", sorted(STRAY_ASSERTIONS))
async def test_stray_assertion_in_artifact_response_is_refused(
    world: SamlWorld, artifact_sp: tuple[StrayArs, ServiceProvider], position: str
) -> None:
    """A broker-signed ArtifactResponse whose Response carries a stray assertion is refused."""
    ars, sp = artifact_sp
    ars.spec, ars.mutate, ars.outer = ResponseSpec(), STRAY_ASSERTIONS[position], None
    ars.outer_at = "status_detail"
    with pytest.raises(SamlInvalid) as info:
        await _consume(world, sp, ars.spec)
    assert info.value.detail == REASONS[position]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("where", ["status_detail", "soap_header"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["assertion", "encrypted"])
async def test_stray_assertion_outside_the_response_is_refused(
    world: SamlWorld, artifact_sp: tuple[StrayArs, ServiceProvider], encrypted: bool, where: str
) -> None:
    """An assertion beside the Response (ArtifactResponse StatusDetail, SOAP Header) is refused."""
    ars, sp = artifact_sp
    ars.spec, ars.mutate, ars.outer_at = ResponseSpec(), None, where
    genuine = world.response(ars.spec)
    ars.outer = forge.forged_encrypted_assertion() if encrypted else forge.forged_assertion(genuine)
    with pytest.raises(SamlInvalid) as info:
        await _consume(world, sp, ars.spec)
    assert info.value.detail == "assertion_unexpected"


# -- through the whole gateway: a 4xx page, an audit event, no state ------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoginWorld]:
    """One login world (simulator, gateway, portal) that accepts both response bindings."""
    async with login_world(
        tmp_path_factory.mktemp("stray"),
        saml={"accept_post_response": True},
        simulator={"allow_post_binding": True},
    ) as world:
        yield world


async def _post_binding_login(world: LoginWorld, browser: aiohttp.ClientSession) -> tuple[int, str]:
    """Start a login, have the broker answer by HTTP-POST, post it to the ACS; (status, page).

    Our SP asks for the Artifact binding, so the test signs an otherwise identical
    AuthnRequest asking for HTTP-POST with the SP's own key (as in the binding tests).
    """
    async with browser.get(world.url("/_gateway/login?next=/"), allow_redirects=False) as resp:
        assert resp.status == 303
        query = parse_qs(urlsplit(resp.headers["Location"]).query)
    request_id = etree.fromstring(
        zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    ).get("ID")
    sp = world.services.sp
    destination = sp.metadata.sso_urls[BINDING_POST]
    request = authn_request_xml(sp.settings, destination, request_id, dt.datetime.now(dt.UTC))
    request.set("ProtocolBinding", BINDING_POST)
    sign_enveloped(request, sp.keys.signing.key_pem, sp.keys.signing.cert_pem, insert_at=1)
    world.sim.use_scenario("chain", request_id=request_id)
    async with browser.post(
        destination,
        data={
            "SAMLRequest": base64.b64encode(etree.tostring(request)).decode(),
            "RelayState": query["RelayState"][0],
        },
        allow_redirects=False,
    ) as resp:
        assert resp.status == 200, await resp.text()
        form = parse_auto_post(await resp.text())
    assert set(form.fields) == {"SAMLResponse", "RelayState"}
    resp, _ = await world.submit(browser, form)
    return resp.status, await resp.text()


def _register_post_acs(world: LoginWorld) -> None:
    """Our SP metadata plus an HTTP-POST ACS, so the simulator may answer by POST."""
    assert world.config.saml is not None
    root = etree.fromstring(sp_metadata_xml(world.config.saml, world.services.sp.keys))
    artifact_acs = root.find(f"{q('md', 'SPSSODescriptor')}/{q('md', 'AssertionConsumerService')}")
    artifact_acs.addnext(
        etree.Element(
            q("md", "AssertionConsumerService"),
            Binding=BINDING_POST,
            Location=world.config.saml.acs_url,
            index="1",
        )
    )
    world.sim.set_sp_metadata(etree.tostring(root))


def _state_keys(store: MemoryStore) -> set[str]:
    return {
        k
        for k in store._data  # the test reads the in-memory store's keys directly
        if not k.startswith("loginrate:") and not k.endswith(":pending")
    }


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("binding", ["artifact", "post"])
@pytest.mark.parametrize("position", sorted(STRAY_ASSERTIONS))
async def test_stray_assertion_through_the_gateway_is_a_4xx_page_with_audit_and_no_state(
    gateway: LoginWorld, position: str, binding: str
) -> None:
    """A stray assertion at the ACS: 400 page, ``login_refused`` audit, no session, no state."""
    world = gateway
    store = getattr(world.services.store, "inner", world.services.store)  # past the timing
    assert isinstance(store, MemoryStore)
    _register_post_acs(world)
    browser = world.browser()
    before = _state_keys(store)
    world.sim.rewrite_next_response(STRAY_ASSERTIONS[position])
    with capture_logs() as logs:
        if binding == "artifact":
            resp, _ = await world.login(browser, "chain")
            status, page = resp.status, await resp.text()
        else:
            status, page = await _post_binding_login(world, browser)
    assert status == 400, page
    assert "Traceback" not in page
    refused = [e for e in logs if e["event"] == "login_refused"]
    assert [(e["reason"], e["detail"]) for e in refused] == [("saml_invalid", REASONS[position])]
    assert not [e for e in logs if e["event"] == "login_succeeded"]
    assert world.session_cookie(browser) is None
    # The pending login was taken, no session or replay entry was written (the
    # login-start rate buckets and the browser's pending-login list are the
    # start's own bookkeeping, not state the refused answer left).
    assert _state_keys(store) == before
    assert world.sim.take_rewrite() is None  # the rewrite was used by this login
