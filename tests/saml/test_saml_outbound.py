"""What we send: AuthnRequests (both bindings), SP metadata and the dienstcatalogus."""

from __future__ import annotations

import base64
import zlib
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from gateway.identity import Loa
from gateway.saml.authn_request import build_authn_request
from gateway.saml.keys import load_sp_keys
from gateway.saml.metadata import parse_broker_metadata
from gateway.saml.settings import SamlSettings
from gateway.saml.signature import verify_enveloped
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway.saml.xml import NS, q
from tests.support.saml import SERVICE_ID, SP_ID, SamlWorld, write_pair

ALGS = {
    "signature_algorithms": frozenset({"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"}),
    "digest_algorithms": frozenset({"http://www.w3.org/2001/04/xmlenc#sha256"}),
}


def test_redirect_request_is_signed_over_the_query(
    world: SamlWorld, settings: SamlSettings
) -> None:
    """Redirect binding: RSA-SHA256 over SAMLRequest&RelayState&SigAlg, eHerkenning fields set."""
    keys = load_sp_keys(settings)
    md = parse_broker_metadata(world.broker_metadata())
    request_id, http = build_authn_request(settings, md, keys.signing, "opaque-key")
    assert http.binding == "redirect"
    split = urlsplit(http.url)
    assert split.geturl().startswith(world.sso_url)
    raw = dict(p.split("=", 1) for p in split.query.split("&"))
    signed = (
        f"SAMLRequest={raw['SAMLRequest']}&RelayState={raw['RelayState']}&SigAlg={raw['SigAlg']}"
    )
    params = {k: v[0] for k, v in parse_qs(split.query).items()}
    keys.signing.cert.public_key().verify(  # type: ignore[call-arg, union-attr]
        base64.b64decode(params["Signature"]),
        signed.encode(),
        padding.PKCS1v15(),  # type: ignore[arg-type]
        hashes.SHA256(),  # type: ignore[arg-type]
    )
    assert raw["SigAlg"] == quote_plus("http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
    req = etree.fromstring(zlib.decompress(base64.b64decode(params["SAMLRequest"]), -15))
    assert req.get("ID") == request_id
    assert req.get("ForceAuthn") == "true"
    assert req.get("ProtocolBinding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
    assert req.get("AttributeConsumingServiceIndex") == "0"
    assert req.get("Destination") == world.sso_url
    assert req.find(q("saml", "Issuer")).text == SP_ID
    assert req.find(q("samlp", "RequestedAuthnContext")) is None


def test_post_request_has_an_enveloped_signature(world: SamlWorld) -> None:
    """POST binding: a verifying XML signature, and RequestedAuthnContext when configured."""
    settings = world.settings(request_binding="post", requested_authn_context="loa3")
    keys = load_sp_keys(settings)
    md = parse_broker_metadata(world.broker_metadata())
    _, http = build_authn_request(settings, md, keys.signing, None)
    assert http.binding == "post" and http.form is not None
    req = etree.fromstring(base64.b64decode(http.form["SAMLRequest"]))
    verify_enveloped(req, [keys.signing.cert_pem], what="authn_request", **ALGS)
    rac = req.find(f"{q('samlp', 'RequestedAuthnContext')}/{q('saml', 'AuthnContextClassRef')}")
    assert rac.text == Loa.EH3.value
    page = http.post_form_html(script_nonce="n0nce")
    assert 'nonce="n0nce"' in page and "SAMLRequest" in page and world.sso_url in page


def test_relay_state_is_at_most_80_bytes(world: SamlWorld, settings: SamlSettings) -> None:
    """A RelayState longer than the binding's 80 bytes is refused."""
    keys = load_sp_keys(settings)
    md = parse_broker_metadata(world.broker_metadata())
    with pytest.raises(ValueError, match="80"):
        build_authn_request(settings, md, keys.signing, "x" * 81)


def test_sp_metadata_has_the_eherkenning_shape(world: SamlWorld) -> None:
    """Signed, both flags true, Artifact ACS with index, ServiceID as RequestedAttribute,
    current and next certificates, and no NameIDFormat."""
    from gateway_dev.devkeys import rsa_keypair

    nxt = write_pair(rsa_keypair("next"), world.directory, "next-enc")
    settings = world.settings(encryption_next=nxt, signing_next=nxt)
    keys = load_sp_keys(settings)
    root = etree.fromstring(sp_metadata_xml(settings, keys))
    verify_enveloped(root, [keys.signing.cert_pem], what="metadata", **ALGS)
    assert root.get("entityID") == SP_ID
    sp = root.find(q("md", "SPSSODescriptor"))
    assert sp.get("AuthnRequestsSigned") == "true" and sp.get("WantAssertionsSigned") == "true"
    acs = sp.find(q("md", "AssertionConsumerService"))
    assert acs.get("Binding").endswith("HTTP-Artifact") and acs.get("index") == "0"
    uses = [kd.get("use") for kd in sp.findall(q("md", "KeyDescriptor"))]
    assert uses == ["signing", "signing", "encryption", "encryption"]
    services = sp.findall(q("md", "AttributeConsumingService"))
    assert [s.get("isDefault") for s in services] == ["true"]
    assert services[0].find(q("md", "RequestedAttribute")).get("Name") == SERVICE_ID
    assert not list(root.iter(q("md", "NameIDFormat")))


def test_service_catalogue_lists_definition_and_instance(
    world: SamlWorld, settings: SamlSettings
) -> None:
    """The dienstcatalogus is signed and has a ServiceDefinition and ServiceInstance per service."""
    keys = load_sp_keys(settings)
    root = etree.fromstring(service_catalogue_xml(settings, keys))
    verify_enveloped(root, [keys.signing.cert_pem], what="catalogue", **ALGS)
    assert root.tag == f"{{{NS['esc']}}}ServiceCatalogue"
    sd = root.find(f".//{{{NS['esc']}}}ServiceDefinition")
    si = root.find(f".//{{{NS['esc']}}}ServiceInstance")
    assert sd.find(q("saml", "AuthnContextClassRef")).text == Loa.EH3.value
    allowed = [e.text for e in sd.findall(f"{{{NS['esc']}}}EntityConcernedTypesAllowed")]
    assert allowed == [
        "urn:etoegang:1.9:EntityConcernedID:KvKnr",
        "urn:etoegang:1.9:EntityConcernedID:RSIN",
    ]
    assert si.find(f"{{{NS['esc']}}}ServiceID").text == SERVICE_ID
    cert = si.find(f".//{q('ds', 'X509Certificate')}").text
    assert x509.load_der_x509_certificate(base64.b64decode(cert)) == keys.encryption.cert


def test_settings_refuse_weak_algorithms(world: SamlWorld) -> None:
    """SHA-1 and RSA-1.5 cannot be put on the allow-lists."""
    with pytest.raises(ValueError, match="not allowed"):
        world.settings(signature_algorithms={"http://www.w3.org/2000/09/xmldsig#rsa-sha1"})
    with pytest.raises(ValueError, match="not allowed"):
        world.settings(key_transport_algorithms={"http://www.w3.org/2001/04/xmlenc#rsa-1_5"})
