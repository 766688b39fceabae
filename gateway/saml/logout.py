"""SP-initiated single logout: our signed LogoutRequest out, the broker's LogoutResponse back.

Both travel by the HTTP-Redirect binding with a query-string signature. The
LogoutRequest names the user exactly as the broker did in the verified outer
assertion (NameID with its Format, NameQualifier and SPNameQualifier, and the
AuthnStatement's SessionIndex; ``gateway.saml.verify`` puts them in the
``Identity``), is signed RSA-SHA256 with our signing key and is valid only
briefly (``NotOnOrAfter``).

The LogoutResponse is checked strictly, in this order: the query signature
over the raw, still-encoded octets as received (RSA-SHA256 only, keys only
from the broker metadata), then the decoded message with the hardened parser:
a ``LogoutResponse`` from the broker, ``InResponseTo`` = the pending request
of *this* browser, ``Destination`` = our SingleLogoutService, not issued in the
future, status Success. Every failure is ``SamlInvalid`` with its own reason
(for the audit log). The local session is gone before any of this happens, so
a failed check only means the broker may still hold its session.

IdP-initiated logout (a LogoutRequest from the broker) is not supported.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import zlib
from dataclasses import dataclass
from urllib.parse import unquote_plus

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import SamlInvalid
from gateway.identity import Identity
from gateway.saml.authn_request import new_id, signed_redirect_url
from gateway.saml.keys import KeyPair
from gateway.saml.metadata import BINDING_REDIRECT, BrokerMetadata
from gateway.saml.settings import SIG_RSA_SHA256, SamlSettings
from gateway.saml.verify import STATUS, saml_guard
from gateway.saml.xml import (
    NS,
    check_unique_ids,
    instant,
    only_child,
    parse_instant,
    parse_xml,
    q,
    strict_text,
)

LOGOUT_REQUEST_LIFETIME = dt.timedelta(minutes=2)
"""``NotOnOrAfter`` of our LogoutRequest: the browser goes straight to the broker."""
REASON_USER = "urn:oasis:names:tc:SAML:2.0:logout:user"


@dataclass(frozen=True)
class LogoutRequestHttp:
    """A signed LogoutRequest: answer with a redirect to ``url``."""

    request_id: str
    url: str


@dataclass(frozen=True)
class LogoutExpectation:
    """What the LogoutResponse must match: this browser's pending LogoutRequest."""

    request_id: str
    slo_url: str
    """Our SingleLogoutService URL (the response's Destination)."""
    now: dt.datetime | None = None


def broker_slo_url(metadata: BrokerMetadata) -> str | None:
    """The broker's HTTP-Redirect SingleLogoutService, if its metadata has one."""
    return metadata.slo_urls.get(BINDING_REDIRECT) or None


def slo_skip_reason(
    settings: SamlSettings, metadata: BrokerMetadata, identity: Identity
) -> str | None:
    """Why no LogoutRequest can be sent for this login (``None``: it can)."""
    if not settings.single_logout:
        return "single_logout_disabled"
    if broker_slo_url(metadata) is None:
        return "broker_has_no_single_logout_service"
    if identity.name_id is None:
        # Sessions from before single logout existed, or an EncryptedID subject.
        return "name_id_unknown"
    return None


def logout_request_xml(
    settings: SamlSettings,
    identity: Identity,
    destination: str,
    request_id: str,
    now: dt.datetime,
) -> etree._Element:
    """The unsigned LogoutRequest element (the Redirect binding signs the query)."""
    if identity.name_id is None:
        raise ValueError("a LogoutRequest needs the NameID of the login")
    req = etree.Element(
        q("samlp", "LogoutRequest"),
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]},
        ID=request_id,
        Version="2.0",
        IssueInstant=instant(now),
        Destination=destination,
        NotOnOrAfter=instant(now + LOGOUT_REQUEST_LIFETIME),
        Reason=REASON_USER,
    )
    etree.SubElement(req, q("saml", "Issuer")).text = settings.entity_id
    # The NameID exactly as the broker sent it: it matches its session by all of these.
    name_id = etree.SubElement(req, q("saml", "NameID"))
    for attribute, value in (
        ("Format", identity.name_id_format),
        ("NameQualifier", identity.name_id_qualifier),
        ("SPNameQualifier", identity.name_id_sp_qualifier),
    ):
        if value is not None:
            name_id.set(attribute, value)
    name_id.text = identity.name_id
    if identity.session_index is not None:
        etree.SubElement(req, q("samlp", "SessionIndex")).text = identity.session_index
    return req


def build_logout_request(
    settings: SamlSettings,
    metadata: BrokerMetadata,
    signing: KeyPair,
    identity: Identity,
    relay_state: str | None,
    *,
    now: dt.datetime | None = None,
) -> LogoutRequestHttp:
    """A signed LogoutRequest by Redirect; ``ValueError`` if ``slo_skip_reason`` says no."""
    reason = slo_skip_reason(settings, metadata, identity)
    if reason is not None:
        raise ValueError(f"no single logout: {reason}")
    destination = broker_slo_url(metadata)
    assert destination is not None
    request_id = new_id()
    req = logout_request_xml(
        settings, identity, destination, request_id, now or dt.datetime.now(dt.UTC)
    )
    url = signed_redirect_url(destination, "SAMLRequest", req, relay_state, signing)
    return LogoutRequestHttp(request_id=request_id, url=url)


def verify_logout_response(
    raw_query: str,
    expected: LogoutExpectation,
    settings: SamlSettings,
    metadata: BrokerMetadata,
) -> None:
    """Check a Redirect-binding LogoutResponse (the raw query string); ``SamlInvalid`` if bad."""
    with saml_guard():
        _verify(raw_query, expected, settings, metadata)


def _verify(
    raw_query: str, expected: LogoutExpectation, settings: SamlSettings, metadata: BrokerMetadata
) -> None:
    if len(raw_query) > settings.max_message_bytes:
        raise SamlInvalid("message_too_large")
    raw = _raw_parameters(raw_query)
    encoded = raw.get("SAMLResponse")
    if not encoded:
        raise SamlInvalid("logout_response_missing")
    _check_query_signature(raw, metadata)
    root = parse_xml(
        _inflate(unquote_plus(encoded), settings.max_message_bytes),
        max_bytes=settings.max_message_bytes,
    )
    check_unique_ids(root)

    now = expected.now or dt.datetime.now(dt.UTC)
    skew = dt.timedelta(seconds=settings.clock_skew_seconds)
    if root.tag != q("samlp", "LogoutResponse"):
        raise SamlInvalid("not_a_logout_response")
    if root.get("Version") != "2.0":
        raise SamlInvalid("logout_response_version")
    issuer = only_child(root, q("saml", "Issuer"), "logout_response_issuer")
    if strict_text(issuer, "logout_response_issuer") != metadata.entity_id:
        raise SamlInvalid("logout_response_issuer_mismatch")
    if root.get("InResponseTo") != expected.request_id:
        raise SamlInvalid("logout_response_in_response_to_mismatch")
    # Required for signed messages (SAML bindings 3.4.5.2): the URL it was sent to.
    if root.get("Destination") != expected.slo_url:
        raise SamlInvalid("logout_response_destination_mismatch")
    issued = parse_instant(root.get("IssueInstant"), "logout_response_issue_instant")
    if issued > now + skew:
        raise SamlInvalid("logout_response_issued_in_future")
    status = only_child(root, q("samlp", "Status"), "logout_response_status")
    top = only_child(status, q("samlp", "StatusCode"), "logout_response_status_code")
    top_value = top.get("Value", "")
    if top_value != STATUS + "Success":
        sub = top.find(q("samlp", "StatusCode"))
        sub_value = sub.get("Value", "") if sub is not None else ""
        raise SamlInvalid(
            f"logout_status:{top_value.removeprefix(STATUS)}/{sub_value.removeprefix(STATUS)}"
        )


def _raw_parameters(raw_query: str) -> dict[str, str]:
    """Query parameters still URL-encoded, exactly as received; duplicates refused."""
    raw: dict[str, str] = {}
    for pair in raw_query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if name in raw:
            raise SamlInvalid("logout_response_parameter_duplicated")
        raw[name] = value
    return raw


def _check_query_signature(raw: dict[str, str], metadata: BrokerMetadata) -> None:
    """RSA-SHA256 over ``SAMLResponse=..&RelayState=..&SigAlg=..`` as the broker encoded it.

    The octets are taken as received, never re-encoded (SAML bindings 3.4.4.1): a
    re-encoding could make different bytes verify. Only RSA-SHA256 is accepted.
    """
    if "Signature" not in raw or "SigAlg" not in raw:
        raise SamlInvalid("logout_response_signature_missing")
    if unquote_plus(raw["SigAlg"]) != SIG_RSA_SHA256:
        raise SamlInvalid("logout_response_signature_algorithm_not_allowed")
    names = (
        ["SAMLResponse", "RelayState", "SigAlg"]
        if "RelayState" in raw
        else ["SAMLResponse", "SigAlg"]
    )
    signed = "&".join(f"{name}={raw[name]}" for name in names).encode("utf-8")
    try:
        signature = base64.b64decode(unquote_plus(raw["Signature"]), validate=True)
    except (binascii.Error, ValueError):
        raise SamlInvalid("logout_response_signature_malformed") from None
    for cert_pem in metadata.signing_certs:
        public = x509.load_pem_x509_certificate(cert_pem).public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            continue
        try:
            public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return
    raise SamlInvalid("logout_response_signature_invalid")


def _inflate(value: str, max_bytes: int) -> bytes:
    """base64 + raw DEFLATE, bounded (no decompression bombs)."""
    try:
        compressed = base64.b64decode("".join(value.split()), validate=True)
        inflater = zlib.decompressobj(-15)
        data = inflater.decompress(compressed, max_bytes + 1)
    except (binascii.Error, ValueError, zlib.error):
        raise SamlInvalid("logout_response_encoding_malformed") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise SamlInvalid("message_too_large")
    return data


__all__ = [
    "LOGOUT_REQUEST_LIFETIME",
    "LogoutExpectation",
    "LogoutRequestHttp",
    "broker_slo_url",
    "build_logout_request",
    "logout_request_xml",
    "slo_skip_reason",
    "verify_logout_response",
]
