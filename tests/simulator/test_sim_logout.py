"""The simulator's SingleLogoutService: signed LogoutRequests end the broker session."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import zlib
from urllib.parse import parse_qs, urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from gateway_dev.devkeys import rsa_keypair
from gateway_dev.simulator import Simulator
from tests.support.simulator import NS, RSA_SHA1, MiniSp, login_once, start_simulator

REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
SP_SLO = "https://sp.example/saml/slo"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"


def _sp_with_slo() -> tuple[MiniSp, bytes]:
    """A MiniSp and its metadata with a Redirect SingleLogoutService added."""
    sp = MiniSp()
    slo = f'<md:SingleLogoutService Binding="{REDIRECT}" Location="{SP_SLO}"/>'
    metadata = sp.metadata().replace(
        b"<md:AssertionConsumerService", slo.encode() + b"<md:AssertionConsumerService", 1
    )
    return sp, metadata


def _logout_request(
    sp: MiniSp,
    destination: str,
    name_id: etree._Element,
    session_index: str | None,
    *,
    not_on_or_after: dt.datetime | None = None,
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    deadline = (not_on_or_after or now + dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    root = etree.Element(
        f"{{{NS['samlp']}}}LogoutRequest",
        ID="_" + secrets.token_hex(16),
        Version="2.0",
        IssueInstant=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        Destination=destination,
        NotOnOrAfter=deadline,
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]},
    )
    etree.SubElement(root, f"{{{NS['saml']}}}Issuer").text = sp.entity_id
    root.append(etree.fromstring(etree.tostring(name_id)))
    if session_index is not None:
        etree.SubElement(root, f"{{{NS['samlp']}}}SessionIndex").text = session_index
    return bytes(etree.tostring(root))


async def _login(
    s: aiohttp.ClientSession, sim: Simulator, sp: MiniSp
) -> tuple[etree._Element, str]:
    """Log in once; return the outer assertion's NameID element and SessionIndex."""
    assertion = (await login_once(s, sim, sp, "direct")).find("saml:Assertion", NS)
    name_id = assertion.find("saml:Subject/saml:NameID", NS)
    session_index = assertion.find("saml:AuthnStatement", NS).get("SessionIndex")
    assert name_id is not None and session_index
    return name_id, session_index


async def _logout(s: aiohttp.ClientSession, url: str, broker_cert: bytes) -> etree._Element:
    """Send a LogoutRequest URL; check the signed Redirect answer; return the LogoutResponse."""
    async with s.get(url, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(SP_SLO + "?")
    query = urlsplit(location).query
    raw = dict(p.split("=", 1) for p in query.split("&"))
    signed = (
        f"SAMLResponse={raw['SAMLResponse']}&RelayState={raw['RelayState']}&SigAlg={raw['SigAlg']}"
    )
    params = {k: v[0] for k, v in parse_qs(query).items()}
    assert params["RelayState"] == "state-1"
    assert params["SigAlg"] == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    public = x509.load_pem_x509_certificate(broker_cert).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(
        base64.b64decode(params["Signature"]), signed.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    response = etree.fromstring(zlib.decompress(base64.b64decode(params["SAMLResponse"]), -15))
    assert response.tag == f"{{{NS['samlp']}}}LogoutResponse"
    assert response.get("Destination") == SP_SLO
    return response


def _codes(response: etree._Element) -> list[str]:
    return [c.get("Value") for c in response.iter(f"{{{NS['samlp']}}}StatusCode")]


async def test_valid_logout_request_ends_the_broker_session_with_signed_success() -> None:
    """A LogoutRequest signed by the SP metadata key ends that NameID's broker session and gets
    a broker-signed Success LogoutResponse by Redirect to the SP's SLO URL from metadata."""
    sp, metadata = _sp_with_slo()
    async with start_simulator(sp_metadata=metadata) as sim, aiohttp.ClientSession() as s:
        name_id, session_index = await _login(s, sim, sp)
        assert [b.session_index for b in sim.sessions.values()] == [session_index]
        xml = _logout_request(sp, sim.slo_url, name_id, session_index)
        request_id = etree.fromstring(xml).get("ID")
        _, url = sp.redirect_url(sim.slo_url, xml=xml)
        response = await _logout(s, url, sim.keys.broker.cert_pem)
    assert _codes(response) == [SUCCESS]
    assert response.get("InResponseTo") == request_id
    assert response.findtext("saml:Issuer", namespaces=NS) == sim.settings.entity_id
    assert sim.sessions == {}
    assert [(r.status, len(r.ended)) for r in sim.logouts] == [("success", 1)]


async def test_unsigned_sha1_foreign_and_misaddressed_requests_are_refused() -> None:
    """Unsigned, RSA-SHA1, foreign-key, wrongly addressed or expired LogoutRequests get a
    signed Requester/RequestDenied LogoutResponse and the broker session stays."""
    sp, metadata = _sp_with_slo()
    intruder = rsa_keypair("intruder")
    async with start_simulator(sp_metadata=metadata) as sim, aiohttp.ClientSession() as s:
        name_id, index = await _login(s, sim, sp)
        good = _logout_request(sp, sim.slo_url, name_id, index)
        expired = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        urls = [
            sp.redirect_url(sim.slo_url, xml=good, sign=False)[1],
            sp.redirect_url(sim.slo_url, xml=good, sigalg=RSA_SHA1)[1],
            sp.redirect_url(sim.slo_url, xml=good, key_pem=intruder.key_pem)[1],
            sp.redirect_url(
                sim.slo_url, xml=_logout_request(sp, "https://evil.example/slo", name_id, index)
            )[1],
            sp.redirect_url(
                sim.slo_url,
                xml=_logout_request(sp, sim.slo_url, name_id, index, not_on_or_after=expired),
            )[1],
        ]
        for url in urls:
            response = await _logout(s, url, sim.keys.broker.cert_pem)
            assert _codes(response) == [REQUESTER, DENIED]
        assert len(sim.sessions) == 1
        assert [r.status for r in sim.logouts] == ["refused"] * len(urls)


async def test_outer_name_id_differs_from_advice_and_only_it_logs_out() -> None:
    """The Advice assertion names the person by another transient ID; a LogoutRequest with that
    decoy NameID ends no broker session."""
    sp, metadata = _sp_with_slo()
    async with start_simulator(sp_metadata=metadata) as sim, aiohttp.ClientSession() as s:
        response = await login_once(s, sim, sp, "direct")
        outer = response.find("saml:Assertion/saml:Subject/saml:NameID", NS)
        decoy = response.find(
            "saml:Assertion/saml:Advice/saml:Assertion/saml:Subject/saml:NameID", NS
        )
        assert outer.text != decoy.text
        _, url = sp.redirect_url(sim.slo_url, xml=_logout_request(sp, sim.slo_url, decoy, None))
        assert _codes(await _logout(s, url, sim.keys.broker.cert_pem)) == [SUCCESS]
        assert len(sim.sessions) == 1 and sim.logouts[-1].ended == ()


async def test_metadata_publishes_slo_and_an_sp_without_slo_gets_an_error_page() -> None:
    """The IdP metadata lists a Redirect SingleLogoutService (unless switched off); an SP whose
    metadata has no SingleLogoutService gets a 400 page, never a redirect."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        async with s.get(sim.metadata_url) as resp:
            md = etree.fromstring(await resp.read())
        slo = md.findall("md:IDPSSODescriptor/md:SingleLogoutService", NS)
        assert [(e.get("Binding"), e.get("Location")) for e in slo] == [(REDIRECT, sim.slo_url)]
        name_id = etree.Element(f"{{{NS['saml']}}}NameID")
        name_id.text = "someone"
        _, url = sp.redirect_url(sim.slo_url, xml=_logout_request(sp, sim.slo_url, name_id, None))
        async with s.get(url, allow_redirects=False) as resp:
            assert resp.status == 400
            assert "Location" not in resp.headers
    async with (
        start_simulator(sp_metadata=sp.metadata(), single_logout=False) as sim,
        aiohttp.ClientSession() as s,
    ):
        async with s.get(sim.metadata_url) as resp:
            assert b"SingleLogoutService" not in await resp.read()
        async with s.get(sim.slo_url) as resp:
            assert resp.status == 404
