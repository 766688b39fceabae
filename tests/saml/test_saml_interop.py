"""Interop with SAML code we did not write: python3-saml (Maykin's fork, 1.16).

python3-saml is the library django-digid-eherkenning builds its eHerkenning
login on. Both directions run here, for both login modes (direct, and a
chain authorisation through an intermediary):

* python3-saml as a service provider logs in against our broker simulator:
  its signed AuthnRequest by Redirect, our Artifact binding, its own SOAP
  ArtifactResolve (``requests``, in a thread), its own checks and decryption.
  It is configured the way django-digid-eherkenning configures it for
  eHerkenning (``disableSignatureWrappingProtection`` because of the Advice).
* responses built with python3-saml's own helpers (``add_sign`` for the
  signatures, ``generate_name_id`` for the EncryptedIDs, the way it encrypts:
  AES-128-CBC with an RSA-OAEP EncryptedKey inside ``KeyInfo``), signed by a
  test IdP key, are accepted by our gateway by HTTP-POST and through a real
  ArtifactResolutionService on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import xmlsec
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.metadata import OneLogin_Saml2_Metadata
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from yarl import URL

from gateway.errors import SamlInvalid
from gateway.saml import ServiceProvider
from gateway_dev.devkeys import KeyPair, rsa_keypair
from gateway_dev.simulator import Simulator
from tests.support.saml import ACS_URL, BROKER_ID, SERVICE_ID, SERVICE_UUID, SP_ID, SamlWorld
from tests.support.simulator import MiniSp, start_simulator

PY_SP_ID = "urn:etoegang:DV:00000001234567890000:entities:7"
PY_SERVICE_ID = "urn:etoegang:DV:00000001234567890000:services:7"
PY_ACS = "https://python3-saml.example.nl/acs"
LEGAL = "urn:etoegang:core:LegalSubjectID"
ACTING = "urn:etoegang:core:ActingSubjectID"
INTERMEDIARY = "urn:etoegang:1.9:IntermediateEntityID:KvKnr"
REPRESENTED_NAME = "urn:etoegang:1.11:attribute-represented:CompanyName"
Q_KVK = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
Q_PSEUDO = "urn:etoegang:1.9:EntityConcernedID:Pseudo"

MODES = [
    # scenario, legal subject KvK, intermediary KvK
    ("direct", "12345678", None),
    ("chain", "23456789", "12345678"),
]


# -- python3-saml as a service provider, against our simulator -------------------


def _python3_saml_settings(sp: KeyPair, sim: Simulator) -> OneLogin_Saml2_Settings:
    """python3-saml settings as django-digid-eherkenning writes them for eHerkenning."""
    sim_cert = sim.keys.broker.cert_pem.decode()
    data: dict[str, Any] = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": PY_SP_ID,
            "assertionConsumerService": {"url": PY_ACS, "binding": C.BINDING_HTTP_ARTIFACT},
            "attributeConsumingService": {
                "index": "1",
                "serviceName": "Werkgeversportaal",
                "serviceDescription": "Pensioenzaken regelen voor werkgevers",
                "requestedAttributes": [{"name": PY_SERVICE_ID, "isRequired": False}],
            },
            "x509cert": sp.cert_pem.decode(),
            "privateKey": sp.key_pem.decode(),
        },
        "idp": {
            "entityId": sim.settings.entity_id,
            "singleSignOnService": {"url": sim.sso_url, "binding": C.BINDING_HTTP_REDIRECT},
            "artifactResolutionService": [
                {"url": sim.ars_url, "binding": C.BINDING_SOAP, "index": "0"}
            ],
            "x509cert": sim_cert,
            "resolveArtifactBindingContentType": C.SOAP_XML,
        },
        "security": {
            "authnRequestsSigned": True,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": False,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "requestedAuthnContext": ["urn:etoegang:core:assurance-class:loa3"],
            "requestedAuthnContextComparison": "minimum",
            # eHerkenning Advice carries more signed assertions: django-digid-eherkenning
            # turns python3-saml's "exactly one assertion" rule off for it.
            "disableSignatureWrappingProtection": True,
            "soapClientKey": None,
            "soapClientCert": None,
        },
    }
    return OneLogin_Saml2_Settings(data, sp_validation_only=False)


def _python3_saml_metadata(settings: OneLogin_Saml2_Settings) -> bytes:
    """python3-saml's own SP metadata, with the encryption KeyDescriptor eHerkenning needs.

    ``get_sp_metadata()`` adds it only when the SP wants encrypted NameIDs or
    assertions; eHerkenning encrypts attribute values instead, so the metadata is
    built with python3-saml's builder and ``add_encryption=True``.
    """
    md = OneLogin_Saml2_Metadata.builder(
        settings.get_sp_data(), True, True, None, None, settings.get_contacts(), None
    )
    out = OneLogin_Saml2_Metadata.add_x509_key_descriptors(
        md, settings.get_sp_cert(), add_encryption=True
    )
    return out if isinstance(out, bytes) else str(out).encode()


def _request_data(query: dict[str, str] | None = None) -> dict[str, Any]:
    """The request as python3-saml sees it: the ACS URL, https, the query."""
    return {
        "https": "on",
        "http_host": urlsplit(PY_ACS).hostname,
        "script_name": urlsplit(PY_ACS).path,
        "get_data": query or {},
        "post_data": {},
    }


def _python3_saml_catalogue() -> bytes:
    """The catalogue the python3-saml SP registered (ServiceUUID, requested names)."""
    return MiniSp(entity_id=PY_SP_ID, service_id=PY_SERVICE_ID).catalogue()


async def _python3_saml_login(
    sim: Simulator, settings: OneLogin_Saml2_Settings, scenario: str
) -> OneLogin_Saml2_Auth:
    """One login: python3-saml builds the request, our simulator answers, it resolves."""
    auth = OneLogin_Saml2_Auth(_request_data(), settings)
    url = auth.login(return_to="state-1", force_authn=True, set_nameid_policy=False)
    request_id = auth.get_last_request_id()
    sim.use_scenario(scenario, request_id=request_id)
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(URL(url, encoded=True), allow_redirects=False) as resp,
    ):
        assert resp.status == 303, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(PY_ACS + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["RelayState"] == "state-1"
    acs = OneLogin_Saml2_Auth(_request_data(query), settings)
    # python3-saml resolves with the blocking ``requests`` library: keep the loop free.
    response = await asyncio.wait_for(
        asyncio.to_thread(acs.artifact_resolve, query["SAMLart"]), timeout=30
    )
    acs.store_valid_response(response)
    assert response.get_in_response_to() == request_id
    return acs


def _identifiers(auth: OneLogin_Saml2_Auth, name: str) -> list[tuple[str, str]]:
    """(NameQualifier, value) of each EncryptedID python3-saml decrypted for ``name``."""
    return [
        (v["NameID"]["NameQualifier"], v["NameID"]["value"])
        for v in auth.get_attribute(name) or []
        if isinstance(v, dict)
    ]


@pytest.fixture(scope="module")
def py_sp_keys() -> KeyPair:
    return rsa_keypair("python3-saml-sp")


@pytest.mark.parametrize(("scenario", "kvk", "intermediary"), MODES)
async def test_python3_saml_sp_logs_in_against_the_simulator(
    py_sp_keys: KeyPair, scenario: str, kvk: str, intermediary: str | None
) -> None:
    """python3-saml verifies and decrypts our simulator's answer for a direct and a chain login."""
    async with start_simulator(catalogue=_python3_saml_catalogue()) as sim:
        settings = _python3_saml_settings(py_sp_keys, sim)
        sim.set_sp_metadata(_python3_saml_metadata(settings))
        auth = await _python3_saml_login(sim, settings, scenario)
    assert auth.is_authenticated()
    assert auth.get_errors() == []
    assert _identifiers(auth, LEGAL)[0] == (Q_KVK, kvk)
    record = sim.issued[-1]
    assert _identifiers(auth, ACTING) == [(Q_PSEUDO, record.pseudonym)]
    assert auth.get_attribute("urn:etoegang:core:ServiceID") == [PY_SERVICE_ID]
    assert auth.get_attribute("urn:etoegang:core:ServiceUUID") == [MiniSp.service_uuid]
    assert auth.get_attribute(REPRESENTED_NAME)  # requested in the catalogue, so sent
    if intermediary is None:
        assert auth.get_attribute(INTERMEDIARY) is None
    else:
        assert auth.get_attribute(INTERMEDIARY) == [intermediary]
    assert auth.get_last_authn_contexts() == ["urn:etoegang:core:assurance-class:loa3"]


async def test_python3_saml_sp_logs_in_against_the_real_broker_shape(py_sp_keys: KeyPair) -> None:
    """The real-broker shape (KeyName-only signatures, default namespace, ms times) works too."""
    async with start_simulator(catalogue=_python3_saml_catalogue(), real_broker_shape=True) as sim:
        settings = _python3_saml_settings(py_sp_keys, sim)
        sim.set_sp_metadata(_python3_saml_metadata(settings))
        auth = await _python3_saml_login(sim, settings, "chain")
    assert _identifiers(auth, LEGAL)[0] == (Q_KVK, "23456789")


async def test_python3_saml_cannot_decrypt_the_extra_key_stress_shape(py_sp_keys: KeyPair) -> None:
    """With the opt-in extra EncryptedKey listed first, python3-saml fails: why it is opt-in."""
    async with start_simulator(
        catalogue=_python3_saml_catalogue(), extra_encrypted_key=True
    ) as sim:
        settings = _python3_saml_settings(py_sp_keys, sim)
        sim.set_sp_metadata(_python3_saml_metadata(settings))
        with pytest.raises(xmlsec.Error, match="failed to decrypt"):
            await _python3_saml_login(sim, settings, "direct")


# -- responses built with python3-saml, accepted by our gateway ------------------


def _instant(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _encrypted_id(qualifier: str, value: str, sp_encryption_cert: bytes) -> str:
    """An EncryptedID exactly as python3-saml makes one (AES-128-CBC, RSA-OAEP in KeyInfo)."""
    return str(
        OneLogin_Saml2_Utils.generate_name_id(
            value, None, None, sp_encryption_cert.decode(), nq=qualifier
        )
    )


def _plain(name: str, value: str) -> str:
    return (
        f'<saml:Attribute Name="{name}"><saml:AttributeValue xsi:type="xs:string">'
        f"{value}</saml:AttributeValue></saml:Attribute>"
    )


def _python3_saml_assertion(
    idp: KeyPair, sp_encryption_cert: bytes, request_id: str, kvk: str, intermediary: str | None
) -> str:
    """A broker assertion in the eHerkenning shape, signed by python3-saml's ``add_sign``."""
    now = dt.datetime.now(dt.UTC)
    later = _instant(now + dt.timedelta(minutes=5))
    chain = (
        _plain(INTERMEDIARY, intermediary)
        + _plain("urn:etoegang:1.13:attribute-intermediate:CompanyName", "Kantoor B.V.")
        if intermediary
        else ""
    )
    xml = f"""<saml:Assertion xmlns:saml="{C.NS_SAML}" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ID="_{uuid.uuid4().hex}" Version="2.0"
 IssueInstant="{_instant(now)}"><saml:Issuer>{BROKER_ID}</saml:Issuer>
 <saml:Subject><saml:NameID Format="{C.NAMEID_TRANSIENT}">{uuid.uuid4()}</saml:NameID>
  <saml:SubjectConfirmation Method="{C.CM_BEARER}"><saml:SubjectConfirmationData
   InResponseTo="{request_id}" NotOnOrAfter="{later}" Recipient="{ACS_URL}"/>
  </saml:SubjectConfirmation></saml:Subject>
 <saml:Conditions NotBefore="{_instant(now)}" NotOnOrAfter="{later}">
  <saml:AudienceRestriction><saml:Audience>{SP_ID}</saml:Audience></saml:AudienceRestriction>
 </saml:Conditions>
 <saml:AuthnStatement AuthnInstant="{_instant(now)}" SessionIndex="_{uuid.uuid4().hex}">
  <saml:AuthnContext><saml:AuthnContextClassRef>urn:etoegang:core:assurance-class:loa3
  </saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>
 <saml:AttributeStatement>
  {_plain("urn:etoegang:core:ServiceID", SERVICE_ID)}
  {_plain("urn:etoegang:core:ServiceUUID", SERVICE_UUID)}
  <saml:Attribute Name="{LEGAL}"><saml:AttributeValue
   >{_encrypted_id(Q_KVK, kvk, sp_encryption_cert)}</saml:AttributeValue></saml:Attribute>
  <saml:Attribute Name="{ACTING}"><saml:AttributeValue
   >{_encrypted_id(Q_PSEUDO, "p3-pseudonym-" + kvk, sp_encryption_cert)}</saml:AttributeValue>
  </saml:Attribute>
  {chain}{_plain(REPRESENTED_NAME, "Werkgever " + kvk)}
 </saml:AttributeStatement></saml:Assertion>"""
    return _sign(xml, idp)


def _sign(xml: str, idp: KeyPair) -> str:
    signed = OneLogin_Saml2_Utils.add_sign(
        xml,
        idp.key_pem.decode(),
        idp.cert_pem.decode(),
        sign_algorithm=C.RSA_SHA256,
        digest_algorithm=C.SHA256,
    )
    return signed.decode() if isinstance(signed, bytes) else str(signed)


def _python3_saml_response(
    idp: KeyPair,
    sp_encryption_cert: bytes,
    request_id: str,
    kvk: str,
    intermediary: str | None,
    *,
    sign_response: bool,
) -> str:
    """A samlp:Response around the signed assertion (the Response signed too, for POST)."""
    assertion = _python3_saml_assertion(idp, sp_encryption_cert, request_id, kvk, intermediary)
    xml = f"""<samlp:Response xmlns:samlp="{C.NS_SAMLP}" xmlns:saml="{C.NS_SAML}"
 ID="_{uuid.uuid4().hex}" Version="2.0" IssueInstant="{_instant(dt.datetime.now(dt.UTC))}"
 Destination="{ACS_URL}" InResponseTo="{request_id}"><saml:Issuer>{BROKER_ID}</saml:Issuer>
 <samlp:Status><samlp:StatusCode Value="{C.STATUS_SUCCESS}"/></samlp:Status>{assertion}
</samlp:Response>"""
    return _sign(xml, idp) if sign_response else xml


@pytest.fixture(scope="module")
def idp_world(tmp_path_factory: pytest.TempPathFactory) -> SamlWorld:
    """Our SP's keys and settings, trusting a test IdP key that python3-saml signs with."""
    return SamlWorld(
        directory=Path(tmp_path_factory.mktemp("python3-saml-idp")),
        broker=rsa_keypair("python3-saml-idp"),
    )


@pytest.mark.parametrize(("scenario", "kvk", "intermediary"), MODES)
async def test_gateway_accepts_a_python3_saml_post_response(
    idp_world: SamlWorld, scenario: str, kvk: str, intermediary: str | None
) -> None:
    """A python3-saml-signed POST Response with python3-saml EncryptedIDs gives the identity."""
    sp = ServiceProvider(idp_world.settings(accept_post_response=True, verify_pool="thread"))
    await sp.start()
    try:
        request_id = "_" + uuid.uuid4().hex
        xml = _python3_saml_response(
            idp_world.broker,
            idp_world.sp_encryption.cert_pem,
            request_id,
            kvk,
            intermediary,
            sign_response=True,
        )
        b64 = base64.b64encode(xml.encode()).decode()
        login = await sp.consume_post_response(b64, sp.expectation(request_id))
    finally:
        await sp.close()
    ident = login.identity
    assert ident.mode == scenario
    assert ident.legal_subject_kvk == kvk
    assert ident.intermediary_kvk == intermediary
    assert ident.acting_subject == "p3-pseudonym-" + kvk
    assert ident.legal_subject_name == "Werkgever " + kvk


class Python3SamlArs:
    """An ArtifactResolutionService whose ArtifactResponse python3-saml built and signed."""

    def __init__(self, world: SamlWorld) -> None:
        self.world = world
        self.kvk = "12345678"
        self.intermediary: str | None = None
        self.request_id = ""

    async def handle(self, request: web.Request) -> web.Response:
        resolve = etree.fromstring(await request.read()).find(f".//{{{C.NS_SAMLP}}}ArtifactResolve")
        inner = _python3_saml_response(
            self.world.broker,
            self.world.sp_encryption.cert_pem,
            self.request_id,
            self.kvk,
            self.intermediary,
            sign_response=False,
        )
        ar = f"""<samlp:ArtifactResponse xmlns:samlp="{C.NS_SAMLP}" xmlns:saml="{C.NS_SAML}"
 ID="_{uuid.uuid4().hex}" Version="2.0" IssueInstant="{_instant(dt.datetime.now(dt.UTC))}"
 InResponseTo="{resolve.get("ID")}"><saml:Issuer>{BROKER_ID}</saml:Issuer>
 <samlp:Status><samlp:StatusCode Value="{C.STATUS_SUCCESS}"/></samlp:Status>{inner}
</samlp:ArtifactResponse>"""
        body = (
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            + _sign(ar, self.world.broker)
            + "</soap:Body></soap:Envelope>"
        )
        return web.Response(body=body.encode(), content_type="text/xml")


@pytest.fixture
async def python3_saml_ars(
    idp_world: SamlWorld,
) -> AsyncIterator[tuple[Python3SamlArs, TestServer]]:
    ars = Python3SamlArs(idp_world)
    app = web.Application()
    app.router.add_post("/ars", ars.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield ars, server
    finally:
        await server.close()


@pytest.mark.parametrize(("scenario", "kvk", "intermediary"), MODES)
async def test_gateway_accepts_a_python3_saml_artifact_response(
    idp_world: SamlWorld,
    python3_saml_ars: tuple[Python3SamlArs, TestServer],
    scenario: str,
    kvk: str,
    intermediary: str | None,
) -> None:
    """Through a real ARS, a python3-saml-signed ArtifactResponse gives the identity."""
    ars, server = python3_saml_ars
    md = idp_world.directory / f"python3-saml-broker-{scenario}.xml"
    md.write_bytes(idp_world.broker_metadata(ars_url=str(server.make_url("/ars"))))
    sp = ServiceProvider(idp_world.settings(broker_metadata=str(md), verify_pool="thread"))
    await sp.start()
    try:
        ars.request_id, ars.kvk, ars.intermediary = "_" + uuid.uuid4().hex, kvk, intermediary
        login = await sp.consume_artifact(idp_world.artifact(), sp.expectation(ars.request_id))
    finally:
        await sp.close()
    assert login.identity.mode == scenario
    assert login.identity.legal_subject_kvk == kvk
    assert login.identity.intermediary_kvk == intermediary


async def test_python3_saml_response_signed_by_another_key_is_refused(
    idp_world: SamlWorld,
) -> None:
    """The same python3-saml response signed by a key not in our metadata is refused."""
    sp = ServiceProvider(idp_world.settings(accept_post_response=True, verify_pool="thread"))
    await sp.start()
    try:
        request_id = "_" + uuid.uuid4().hex
        xml = _python3_saml_response(
            rsa_keypair("not-the-broker"),
            idp_world.sp_encryption.cert_pem,
            request_id,
            "12345678",
            None,
            sign_response=False,
        )
        with pytest.raises(SamlInvalid) as info:
            await sp.consume_post_response(
                base64.b64encode(xml.encode()).decode(), sp.expectation(request_id)
            )
    finally:
        await sp.close()
    assert info.value.detail == "assertion_signature_invalid"
