"""AuthnRequest intake: signatures checked against SP metadata, bindings, login page."""

from __future__ import annotations

import base64
import re
from html import unescape

import aiohttp
from lxml import etree

from gateway_dev.devkeys import rsa_keypair
from tests.support.simulator import (
    NS,
    RSA_SHA1,
    MiniSp,
    acs_params,
    artifact_response,
    start_simulator,
    status_codes,
    verify_signed,
)

REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"


async def _resolve_status(s: aiohttp.ClientSession, sim, sp: MiniSp, url: str) -> list[str]:
    async with s.get(url, allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    assert location.startswith(sp.acs_url)
    _, body = await sp.resolve(s, sim, acs_params(location)["SAMLart"])
    return status_codes(artifact_response(body).find("samlp:Response", NS))


async def test_unsigned_authn_request_is_refused_with_a_saml_error() -> None:
    """An unsigned Redirect AuthnRequest is answered with Requester/RequestDenied, no login."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        sim.use_scenario("direct")
        _, url = sp.redirect_url(sim.sso_url, sign=False)
        assert await _resolve_status(s, sim, sp, url) == [REQUESTER, DENIED]


async def test_sha1_and_foreign_key_signatures_are_refused() -> None:
    """RSA-SHA1 and a key outside the SP metadata are both refused."""
    sp = MiniSp()
    other = rsa_keypair("intruder")
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        _, sha1 = sp.redirect_url(sim.sso_url, sigalg=RSA_SHA1)
        _, foreign = sp.redirect_url(sim.sso_url, key_pem=other.key_pem)
        assert await _resolve_status(s, sim, sp, sha1) == [REQUESTER, DENIED]
        assert await _resolve_status(s, sim, sp, foreign) == [REQUESTER, DENIED]


async def test_acs_url_outside_metadata_is_never_used() -> None:
    """A signed request naming an unregistered ACS is refused; the error goes to the SP's ACS."""
    sp = MiniSp()
    evil = MiniSp(acs_url="https://evil.example/acs", key_pem=sp.key_pem, cert_pem=sp.cert_pem)
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        sim.use_scenario("direct")
        _, xml = evil.authn_request(sim.sso_url)
        _, url = sp.redirect_url(sim.sso_url, xml=xml)
        assert await _resolve_status(s, sim, sp, url) == [REQUESTER, DENIED]


async def test_signed_post_authn_request_is_accepted() -> None:
    """An AuthnRequest by HTTP-POST with an enveloped signature leads to a successful login."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        rid, xml = sp.authn_request(sim.sso_url)
        signed = etree.tostring(sp.sign(etree.fromstring(xml)))
        sim.use_scenario("direct", request_id=rid)
        form = {"SAMLRequest": base64.b64encode(signed).decode(), "RelayState": "r"}
        async with s.post(sim.sso_url, data=form, allow_redirects=False) as resp:
            assert resp.status == 303
            artifact = acs_params(resp.headers["Location"])["SAMLart"]
        _, body = await sp.resolve(s, sim, artifact)
    assert status_codes(artifact_response(body).find("samlp:Response", NS)) == [SUCCESS]


async def test_post_response_binding_when_enabled() -> None:
    """With allow_post_binding, ProtocolBinding=HTTP-POST gets a signed Response in a form."""
    sp = MiniSp()
    async with (
        start_simulator(sp_metadata=sp.metadata(), allow_post_binding=True) as sim,
        aiohttp.ClientSession() as s,
    ):
        _, xml = sp.authn_request(
            sim.sso_url, binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
        )
        _, url = sp.redirect_url(sim.sso_url, xml=xml)
        sim.use_scenario("direct")
        async with s.get(url) as resp:
            page = await resp.text()
    value = unescape(re.search(r'name="SAMLResponse" value="([^"]+)"', page).group(1))
    response = etree.fromstring(base64.b64decode(value))
    verify_signed(response, sim.keys.broker.cert_pem)
    verify_signed(response.find("saml:Assertion", NS), sim.keys.broker.cert_pem)


async def test_doctype_and_unknown_sp_get_an_error_page() -> None:
    """A DOCTYPE-bearing request or an unknown issuer gets a 400 page, never a SAML message."""
    sp = MiniSp()
    stranger = MiniSp(entity_id="urn:etoegang:DV:999:entities:1")
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        _, evil_xml = sp.authn_request(sim.sso_url)
        evil_xml = b'<!DOCTYPE x [<!ENTITY e "boom">]>' + evil_xml
        _, evil = sp.redirect_url(sim.sso_url, xml=evil_xml)
        _, unknown = stranger.redirect_url(sim.sso_url)
        for url in (evil, unknown, sim.sso_url):
            async with s.get(url, allow_redirects=False) as resp:
                assert resp.status == 400
                assert "SAMLart" not in resp.headers.get("Location", "")


async def test_login_page_lists_scenarios_and_login_works() -> None:
    """Without a queued scenario the SSO shows a Dutch form; choosing one redirects with SAMLart."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        _, url = sp.redirect_url(sim.sso_url)
        async with s.get(url) as resp:
            page = await resp.text()
        assert resp.status == 200
        assert 'lang="nl"' in page
        assert "Annuleren" in page
        assert 'value="chain"' in page
        token = re.search(r'name="login" value="([^"]+)"', page).group(1)
        form = {"login": token, "scenario": "chain", "action": "login"}
        async with s.post(sim.base_url() + "/saml/login", data=form, allow_redirects=False) as r:
            assert r.status == 303
            params = acs_params(r.headers["Location"])
        _, body = await sp.resolve(s, sim, params["SAMLart"])
        # the token is single use
        async with s.post(sim.base_url() + "/saml/login", data=form, allow_redirects=False) as r2:
            assert r2.status == 400
    assert params["RelayState"] == "state-1"
    assert status_codes(artifact_response(body).find("samlp:Response", NS)) == [SUCCESS]
    assert sim.issued[-1].scenario_id == "chain"


async def test_cancel_button_answers_with_the_cancel_status() -> None:
    """The Cancel button sends Responder/AuthnFailed with a cancel StatusMessage."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        _, url = sp.redirect_url(sim.sso_url)
        async with s.get(url) as resp:
            token = re.search(r'name="login" value="([^"]+)"', await resp.text()).group(1)
        form = {"login": token, "action": "cancel"}
        async with s.post(sim.base_url() + "/saml/login", data=form, allow_redirects=False) as r:
            artifact = acs_params(r.headers["Location"])["SAMLart"]
        _, body = await sp.resolve(s, sim, artifact)
    response = artifact_response(body).find("samlp:Response", NS)
    assert status_codes(response) == [
        "urn:oasis:names:tc:SAML:2.0:status:Responder",
        "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed",
    ]
    assert "cancel" in response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)


async def test_metadata_names_the_bound_endpoints() -> None:
    """IdP metadata is signed and lists SSO (Redirect, POST) and the SOAP ARS at the bound URL."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        async with s.get(sim.metadata_url) as resp:
            md = etree.fromstring(await resp.read())
    verify_signed(md, sim.keys.broker.cert_pem)
    sso = md.findall("md:IDPSSODescriptor/md:SingleSignOnService", NS)
    assert {e.get("Location") for e in sso} == {sim.sso_url}
    ars = md.find("md:IDPSSODescriptor/md:ArtifactResolutionService", NS)
    assert ars.get("Location") == sim.ars_url
