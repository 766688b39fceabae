"""XML plumbing for the simulator: namespaces, the hardened parser, IDs and instants.

The simulator parses input from the SP (AuthnRequests, ArtifactResolves,
metadata) with the gateway's own hardened parser (``gateway.saml.xml.parse_xml``:
no DOCTYPE, no entities, no network, processing instructions and comments kept
so signatures cover what was signed), so the two ends of every test read XML
alike. Its refusals become :class:`XmlRejected`, which the simulator turns into
SOAP faults and error pages.
"""

from __future__ import annotations

import secrets

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import SamlInvalid
from gateway.saml import xml as saml_xml
from gateway.saml.xml import instant as instant  # SAML dateTime: the gateway's formatter

SAML = saml_xml.NS["saml"]
SAMLP = saml_xml.NS["samlp"]
MD = saml_xml.NS["md"]
DS = saml_xml.NS["ds"]
XENC = saml_xml.NS["xenc"]
XENC11 = saml_xml.NS["xenc11"]
XS = saml_xml.NS["xs"]
XSI = saml_xml.NS["xsi"]
SOAP = saml_xml.NS["soap"]

NS = {
    "saml": SAML,
    "samlp": SAMLP,
    "md": MD,
    "ds": DS,
    "xenc": XENC,
    "xenc11": XENC11,
    "xs": XS,
    "xsi": XSI,
    "soap": SOAP,
}

BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_ARTIFACT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
BINDING_SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"

MAX_XML_BYTES = 256 * 1024
"""Upper bound on any SP message; real AuthnRequests and ArtifactResolves are a few KiB."""


class XmlRejected(ValueError):
    """Input that is not acceptable XML (malformed, too large, or carries a DOCTYPE)."""


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML with the gateway's parser; a refusal is ``XmlRejected(reason)``."""
    try:
        return saml_xml.parse_xml(data, max_bytes=MAX_XML_BYTES)
    except SamlInvalid as exc:
        raise XmlRejected(exc.detail) from None


def q(ns: str, local: str) -> str:
    """Clark notation ``{ns}local`` for lxml."""
    return f"{{{ns}}}{local}"


def new_id() -> str:
    """A SAML ID: starts with a letter (xs:ID) and carries 160 random bits."""
    return "_" + secrets.token_hex(20)


def to_bytes(el: etree._Element) -> bytes:
    """Serialise an element as UTF-8 with an XML declaration."""
    return bytes(etree.tostring(el, xml_declaration=True, encoding="UTF-8"))
