"""Reading and checking the SP's AuthnRequest (HTTP-Redirect and HTTP-POST).

Order matters: decode, parse (hardened), learn the issuer, and only trust
anything else in the request (ACS URL, binding) after its signature verified
against the SP metadata. A request that fails after the issuer is known gets
a SAML error Response sent to the ACS *from metadata*, never to a URL taken
from the unverified request.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass

from gateway_dev.simulator.spmetadata import Endpoint, SpMetadata
from gateway_dev.simulator.xmlcrypto import SignatureInvalid, verify_enveloped, verify_redirect
from gateway_dev.simulator.xmlutil import (
    BINDING_ARTIFACT,
    BINDING_POST,
    MAX_XML_BYTES,
    SAML,
    SAMLP,
    XmlRejected,
    parse_xml,
    q,
)


class RequestUnreadable(ValueError):
    """Not an AuthnRequest we can attribute to an SP: answered with an error page."""


class RequestRefused(ValueError):
    """A known SP's request that fails a check: answered with a SAML error status."""

    def __init__(self, message: str, second_level: str) -> None:
        super().__init__(message)
        self.second_level = second_level


STATUS_REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
STATUS_UNSUPPORTED_BINDING = "urn:oasis:names:tc:SAML:2.0:status:UnsupportedBinding"


@dataclass(frozen=True)
class AuthnRequest:
    """The parts of a verified AuthnRequest the simulator acts on."""

    id: str
    issuer: str
    acs: Endpoint
    binding: str
    """How the Response travels: HTTP-Artifact (eHerkenning) or HTTP-POST."""
    service_index: int | None
    requested_loa: str | None
    force_authn: bool


@dataclass(frozen=True)
class Unverified:
    """What we may know about a request before it is trusted."""

    id: str
    issuer: str
    xml: bytes


def decode_redirect(value: str) -> bytes:
    """base64 + raw DEFLATE, with a bound on the inflated size (no zip bombs)."""
    try:
        compressed = base64.b64decode(value, validate=False)
        inflater = zlib.decompressobj(-15)
        data = inflater.decompress(compressed, MAX_XML_BYTES + 1)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise RequestUnreadable("SAMLRequest is not base64+DEFLATE") from exc
    if len(data) > MAX_XML_BYTES or inflater.unconsumed_tail:
        raise RequestUnreadable("SAMLRequest too large")
    return data


def decode_post(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise RequestUnreadable("SAMLRequest is not base64") from exc


def peek(xml: bytes) -> Unverified:
    """Parse and read ID and Issuer, nothing else yet."""
    try:
        root = parse_xml(xml)
    except XmlRejected as exc:
        raise RequestUnreadable(str(exc)) from exc
    if root.tag != q(SAMLP, "AuthnRequest"):
        raise RequestUnreadable("not an AuthnRequest")
    issuer = root.find(q(SAML, "Issuer"))
    request_id = root.get("ID")
    if issuer is None or not (issuer.text or "").strip() or not request_id:
        raise RequestUnreadable("AuthnRequest without ID or Issuer")
    return Unverified(id=request_id, issuer=(issuer.text or "").strip(), xml=xml)


def verify(
    unverified: Unverified,
    sp: SpMetadata,
    *,
    sso_url: str,
    raw_query: str | None,
    require_signature: bool,
    allow_post_binding: bool,
) -> AuthnRequest:
    """Check signature, destination, ACS and binding; return what to act on.

    ``raw_query`` is the undecoded query string for the Redirect binding and
    ``None`` for POST (whose signature is enveloped in the XML).
    """
    root = parse_xml(unverified.xml)
    if require_signature:
        try:
            if raw_query is not None:
                verify_redirect(raw_query, sp.signing_certs, message="SAMLRequest")
            else:
                verify_enveloped(root, sp.signing_certs)
        except SignatureInvalid as exc:
            raise RequestRefused(f"AuthnRequest signature: {exc}", STATUS_REQUEST_DENIED) from exc
    destination = root.get("Destination")
    if destination is not None and destination != sso_url:
        raise RequestRefused("AuthnRequest Destination is not this SSO URL", STATUS_REQUEST_DENIED)

    binding = root.get("ProtocolBinding") or BINDING_ARTIFACT
    if binding not in (BINDING_ARTIFACT, BINDING_POST) or (
        binding == BINDING_POST and not allow_post_binding
    ):
        raise RequestRefused(f"ProtocolBinding {binding} not offered", STATUS_UNSUPPORTED_BINDING)
    acs = _acs(
        root.get("AssertionConsumerServiceURL"),
        root.get("AssertionConsumerServiceIndex"),
        binding,
        sp,
    )

    service_index_text = root.get("AttributeConsumingServiceIndex")
    service_index = int(service_index_text) if service_index_text is not None else None
    if service_index_text is not None and not service_index_text.isdigit():
        raise RequestRefused("bad AttributeConsumingServiceIndex", STATUS_REQUEST_DENIED)
    if sp.services and sp.service(service_index) is None:
        raise RequestRefused("unknown AttributeConsumingServiceIndex", STATUS_REQUEST_DENIED)

    loa = root.find(f"{q(SAMLP, 'RequestedAuthnContext')}/{q(SAML, 'AuthnContextClassRef')}")
    return AuthnRequest(
        id=unverified.id,
        issuer=unverified.issuer,
        acs=acs,
        binding=binding,
        service_index=service_index,
        requested_loa=(loa.text or "").strip() if loa is not None else None,
        force_authn=root.get("ForceAuthn") in ("true", "1"),
    )


def _acs(url: str | None, index: str | None, binding: str, sp: SpMetadata) -> Endpoint:
    """The ACS must be one the SP registered: an open redirect is not an option."""
    candidates = [e for e in sp.acs if e.binding == binding]
    if url is not None:
        for e in candidates:
            if e.location == url:
                return e
        raise RequestRefused(
            "AssertionConsumerServiceURL not in SP metadata", STATUS_REQUEST_DENIED
        )
    if index is not None:
        for e in candidates:
            if str(e.index) == index:
                return e
        raise RequestRefused(
            "AssertionConsumerServiceIndex not in SP metadata", STATUS_REQUEST_DENIED
        )
    default = sp.default_acs(binding)
    if default is None:
        raise RequestRefused(f"SP metadata has no ACS for {binding}", STATUS_UNSUPPORTED_BINDING)
    return default
