"""Test support: an in-process eHerkenning broker simulator and a tiny independent SP.

Other test areas start the simulator with :func:`start_simulator` (free port
on loopback, base URL bound) and hand it their SP metadata; this area's tests
also use :class:`MiniSp`, a small service provider written directly on
python-xmlsec and ``cryptography`` (deliberately *not* on the simulator's own
helpers, so a bug there cannot hide itself).

    async with start_simulator(sp_metadata=gateway_metadata_xml) as sim:
        sim.use_scenario("chain")          # next login answers at once
        ...browser GET to the gateway's login; it redirects to sim.sso_url...
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import secrets
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import aiohttp
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

from gateway_dev.devkeys import rsa_keypair
from gateway_dev.simulator import Simulator, SimulatorSettings, running_simulator

EXAMPLE_SCENARIOS = Path(__file__).resolve().parents[2] / "config" / "scenarios.example.yaml"

NS = {
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
    "soap": "http://schemas.xmlsoap.org/soap/envelope/",
}
ARTIFACT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
REPRESENTED_NAME = "urn:etoegang:1.11:attribute-represented:CompanyName"
INTERMEDIATE_NAME = "urn:etoegang:1.13:attribute-intermediate:CompanyName"
BRANCH = "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"


@contextlib.asynccontextmanager
async def start_simulator(
    *,
    sp_metadata: bytes | None = None,
    catalogue: bytes | None = None,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> AsyncIterator[Simulator]:
    """Run a simulator on 127.0.0.1 (free port) with the example scenarios.

    ``sp_metadata`` are the SP's metadata bytes (or pass ``sp_metadata="path or URL"``
    in ``overrides``), ``catalogue`` the SP's dienstcatalogus bytes (or
    ``service_catalogue="path or URL"``); any :class:`SimulatorSettings` field can be
    overridden.
    """
    overrides.setdefault("scenarios_file", EXAMPLE_SCENARIOS)
    settings = SimulatorSettings(**overrides)
    async with running_simulator(settings, "127.0.0.1", 0, clock=clock) as sim:
        if sp_metadata is not None:
            sim.set_sp_metadata(sp_metadata)
        if catalogue is not None:
            sim.set_service_catalogue(catalogue)
        yield sim


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class MiniSp:
    """A minimal eHerkenning-style SP: metadata, signed requests, resolution, decryption."""

    entity_id: str = "urn:etoegang:DV:00000001234567890000:entities:0001"
    acs_url: str = "https://sp.example/saml/acs"
    service_id: str = "urn:etoegang:DV:00000001234567890000:services:1"
    key_pem: bytes = b""
    cert_pem: bytes = b""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key_pem:
            pair = rsa_keypair("mini-sp")
            self.key_pem, self.cert_pem = pair.key_pem, pair.cert_pem

    @property
    def cert_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(
            serialization.Encoding.DER
        )

    def metadata(self) -> bytes:
        cert = _b64(self.cert_der)
        ki = f"<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate>"
        ki += "</ds:X509Data></ds:KeyInfo>"
        return f"""<md:EntityDescriptor xmlns:md="{NS["md"]}" xmlns:ds="{NS["ds"]}"
  entityID="{self.entity_id}">
 <md:SPSSODescriptor AuthnRequestsSigned="true" WantAssertionsSigned="true"
   protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
  <md:KeyDescriptor use="signing">{ki}</md:KeyDescriptor>
  <md:KeyDescriptor use="encryption">{ki}</md:KeyDescriptor>
  <md:AssertionConsumerService Binding="{ARTIFACT}" Location="{self.acs_url}" index="0"
    isDefault="true"/>
  <md:AssertionConsumerService Binding="{POST}" Location="{self.acs_url}" index="1"/>
  <md:AttributeConsumingService index="1" isDefault="true">
   <md:ServiceName xml:lang="nl">Werkgeversportaal</md:ServiceName>
   <md:RequestedAttribute Name="{self.service_id}"/>
  </md:AttributeConsumingService>
 </md:SPSSODescriptor>
</md:EntityDescriptor>""".encode()

    service_uuid: str = "3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a"
    instance_uuid: str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

    def catalogue(
        self,
        *,
        requested: tuple[str, ...] = (REPRESENTED_NAME, INTERMEDIATE_NAME),
        restrictions: tuple[str, ...] = (BRANCH,),
        service_id: str | None = None,
    ) -> bytes:
        """A minimal dienstcatalogus (unsigned: the simulator trusts it as given)."""
        esc = "urn:etoegang:1.13:service-catalog"
        attrs = "".join(
            f'<esc:RequestedAttribute Name="{name}" isRequired="false">'
            '<esc:PurposeStatement xml:lang="nl">Tonen</esc:PurposeStatement>'
            "</esc:RequestedAttribute>"
            for name in requested
        )
        allowed = "".join(
            f"<esc:ServiceRestrictionsAllowed>{r}</esc:ServiceRestrictionsAllowed>"
            for r in restrictions
        )
        return f"""<esc:ServiceCatalogue xmlns:esc="{esc}" xmlns:saml="{NS["saml"]}"
 esc:IssueInstant="2026-01-01T00:00:00Z" esc:Version="urn:etoegang:1.13:53">
 <esc:ServiceProvider esc:IsPublic="true">
  <esc:ServiceProviderID>00000001234567890000</esc:ServiceProviderID>
  <esc:ServiceDefinition esc:IsPublic="true">
   <esc:ServiceUUID>{self.service_uuid}</esc:ServiceUUID>
   {allowed}{attrs}</esc:ServiceDefinition>
  <esc:ServiceInstance esc:IsPublic="true">
   <esc:ServiceID>{service_id or self.service_id}</esc:ServiceID>
   <esc:ServiceUUID>{self.instance_uuid}</esc:ServiceUUID>
   <esc:InstanceOfService>{self.service_uuid}</esc:InstanceOfService></esc:ServiceInstance>
 </esc:ServiceProvider></esc:ServiceCatalogue>""".encode()

    def authn_request(
        self, destination: str, *, request_id: str | None = None, binding: str = ARTIFACT
    ) -> tuple[str, bytes]:
        rid = request_id or "_" + secrets.token_hex(16)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        xml = f"""<samlp:AuthnRequest xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}"
 ID="{rid}" Version="2.0" IssueInstant="{now}" Destination="{destination}" ForceAuthn="true"
 ProtocolBinding="{binding}" AssertionConsumerServiceURL="{self.acs_url}"
 AttributeConsumingServiceIndex="1"><saml:Issuer>{self.entity_id}</saml:Issuer>
 <samlp:RequestedAuthnContext Comparison="minimum"><saml:AuthnContextClassRef
 >urn:etoegang:core:assurance-class:loa3</saml:AuthnContextClassRef></samlp:RequestedAuthnContext>
</samlp:AuthnRequest>""".encode()
        return rid, xml

    def redirect_url(
        self,
        sso_url: str,
        *,
        xml: bytes | None = None,
        relay_state: str | None = "state-1",
        sign: bool = True,
        sigalg: str = RSA_SHA256,
        key_pem: bytes | None = None,
    ) -> tuple[str, str]:
        """(request ID, URL) for an HTTP-Redirect AuthnRequest signed over the query."""
        rid, body = self.authn_request(sso_url) if xml is None else ("", xml)
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        encoded = _b64(deflater.compress(body) + deflater.flush())
        query = "SAMLRequest=" + quote_plus(encoded)
        if relay_state is not None:
            query += "&RelayState=" + quote_plus(relay_state)
        if sign:
            query += "&SigAlg=" + quote_plus(sigalg)
            # SHA-1 only so tests can prove the simulator refuses it
            digest = hashes.SHA256() if sigalg == RSA_SHA256 else hashes.SHA1()  # noqa: S303
            key = self._rsa(key_pem)
            signature = key.sign(query.encode(), padding.PKCS1v15(), digest)
            query += "&Signature=" + quote_plus(_b64(signature))
        return rid, f"{sso_url}?{query}"

    def sign(self, root: etree._Element, *, key_pem: bytes | None = None) -> etree._Element:
        """Enveloped RSA-SHA256 signature after the Issuer (python-xmlsec, done here)."""
        sig = xmlsec.template.create(
            root, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256
        )
        root.find("saml:Issuer", NS).addnext(sig)
        ref = xmlsec.template.add_reference(
            sig, xmlsec.constants.TransformSha256, uri="#" + root.get("ID")
        )
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
        xmlsec.tree.add_ids(root, ["ID"])
        ctx = xmlsec.SignatureContext()
        ctx.key = xmlsec.Key.from_memory(key_pem or self.key_pem, xmlsec.constants.KeyDataFormatPem)
        ctx.sign(sig)
        return root

    def artifact_resolve(
        self, artifact: str, destination: str, *, sign: bool = True, key_pem: bytes | None = None
    ) -> bytes:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        resolve = etree.fromstring(
            f"""<samlp:ArtifactResolve xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}"
 ID="_{secrets.token_hex(16)}" Version="2.0" IssueInstant="{now}" Destination="{destination}"
 ><saml:Issuer>{self.entity_id}</saml:Issuer><samlp:Artifact>{artifact}</samlp:Artifact>
</samlp:ArtifactResolve>""".encode()
        )
        if sign:
            self.sign(resolve, key_pem=key_pem)
        env = etree.Element(f"{{{NS['soap']}}}Envelope", nsmap={"soap": NS["soap"]})
        etree.SubElement(env, f"{{{NS['soap']}}}Body").append(resolve)
        return bytes(etree.tostring(env))

    async def resolve(
        self, session: aiohttp.ClientSession, sim: Simulator, artifact: str, **kw: Any
    ) -> tuple[int, bytes]:
        """POST a signed ArtifactResolve; returns (HTTP status, body bytes)."""
        body = kw.pop("body", None) or self.artifact_resolve(artifact, sim.ars_url)
        async with session.post(
            sim.ars_url,
            data=body,
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": ""},
            **kw,
        ) as resp:
            return resp.status, await resp.read()

    def decrypt_id(self, encrypted_id: etree._Element) -> tuple[str, str]:
        """(NameQualifier, value) of an EncryptedID, picking our key by Recipient."""
        data = encrypted_id.find("xenc:EncryptedData", NS)
        key_name = data.findtext("ds:KeyInfo/ds:KeyName", namespaces=NS)
        ours = [
            ek
            for ek in encrypted_id.findall("xenc:EncryptedKey", NS)
            if ek.get("Recipient") == self.entity_id
            and ek.findtext("xenc:CarriedKeyName", namespaces=NS) == key_name
        ]
        assert len(ours) == 1, "exactly one EncryptedKey for us"
        ek = ours[0]
        method = ek.find("xenc:EncryptionMethod", NS).get("Algorithm")
        oaep11 = method.endswith("xmlenc11#rsa-oaep")
        digest = hashes.SHA256() if oaep11 else hashes.SHA1()  # noqa: S303 - OAEP, not signing
        wrapped = base64.b64decode(ek.findtext("xenc:CipherData/xenc:CipherValue", namespaces=NS))
        aes_key = self._rsa(None).decrypt(wrapped, padding.OAEP(padding.MGF1(digest), digest, None))
        algorithm = data.find("xenc:EncryptionMethod", NS).get("Algorithm")
        blob = base64.b64decode(data.findtext("xenc:CipherData/xenc:CipherValue", namespaces=NS))
        if algorithm.endswith("gcm"):
            plain = AESGCM(aes_key).decrypt(blob[:12], blob[12:], None)
        else:
            dec = Cipher(algorithms.AES(aes_key), modes.CBC(blob[:16])).decryptor()
            padded = dec.update(blob[16:]) + dec.finalize()
            plain = padded[: -padded[-1]]
        name_id = etree.fromstring(plain)
        assert name_id.tag == f"{{{NS['saml']}}}NameID"
        return name_id.get("NameQualifier"), name_id.text

    def outer_attributes(self, assertion: etree._Element) -> dict[str, list[Any]]:
        """The assertion's OWN attributes (never Advice), EncryptedIDs decrypted."""
        out: dict[str, list[Any]] = {}
        for attr in assertion.findall("saml:AttributeStatement/saml:Attribute", NS):
            values: list[Any] = []
            for v in attr.findall("saml:AttributeValue", NS):
                enc = v.find("saml:EncryptedID", NS)
                values.append(self.decrypt_id(enc) if enc is not None else v.text)
            out[attr.get("Name")] = values
        return out

    def _rsa(self, key_pem: bytes | None) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(key_pem or self.key_pem, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key


def verify_signed(el: etree._Element, cert_pem: bytes) -> None:
    """Verify ``el``'s own enveloped signature with ``cert_pem`` (raises xmlsec.Error)."""
    sig = el.find("ds:Signature", NS)
    assert sig is not None, "element is not signed"
    assert sig.find("ds:SignedInfo/ds:Reference", NS).get("URI") == "#" + el.get("ID")
    xmlsec.tree.add_ids(el.getroottree().getroot(), ["ID"])
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_memory(cert_pem, xmlsec.constants.KeyDataFormatCertPem)
    ctx.verify(sig)


def acs_params(location: str) -> dict[str, str]:
    """Query parameters of a redirect to the ACS (``SAMLart``, ``RelayState``)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def artifact_response(body: bytes) -> etree._Element:
    """The ArtifactResponse element inside a SOAP envelope."""
    env = etree.fromstring(body)
    ar = env.find("soap:Body/samlp:ArtifactResponse", NS)
    assert ar is not None, "no ArtifactResponse in SOAP body"
    return ar


def status_codes(el: etree._Element) -> list[str]:
    """Status codes of a Response/ArtifactResponse, outermost first."""
    return [
        c.get("Value") for c in el.find("samlp:Status", NS).iter(f"{{{NS['samlp']}}}StatusCode")
    ]


async def login_once(
    session: aiohttp.ClientSession, sim: Simulator, sp: MiniSp, scenario: str
) -> etree._Element:
    """Drive a whole login for ``scenario``; returns the resolved inner samlp:Response."""
    rid, url = sp.redirect_url(sim.sso_url)
    sim.use_scenario(scenario, request_id=rid)
    async with session.get(url, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        artifact = acs_params(resp.headers["Location"])["SAMLart"]
    status, body = await sp.resolve(session, sim, artifact)
    assert status == 200
    response = artifact_response(body).find("samlp:Response", NS)
    assert response is not None
    return response
