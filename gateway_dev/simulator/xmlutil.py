"""XML plumbing for the simulator: namespaces, a hardened parser, IDs and instants.

The simulator parses input from the SP (AuthnRequests, ArtifactResolves,
metadata), so every parse goes through :func:`parse_xml`, which refuses DTDs,
entity expansion and network access: a DOCTYPE is rejected outright because
no legitimate SAML message carries one.
"""

from __future__ import annotations

import datetime as dt
import secrets

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
XS = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"

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


def _parser() -> etree.XMLParser:
    # A fresh parser per call: lxml parsers are not thread-safe, and these
    # options are the whole point (no DTD loading, no entities, no network).
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=True,
        collect_ids=False,
    )


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML, refusing DOCTYPEs, entities and oversized input."""
    if len(data) > MAX_XML_BYTES:
        raise XmlRejected("XML message too large")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise XmlRejected(f"malformed XML: {exc}") from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlRejected("DOCTYPE is not allowed in SAML messages")
    return root


def q(ns: str, local: str) -> str:
    """Clark notation ``{ns}local`` for lxml."""
    return f"{{{ns}}}{local}"


def new_id() -> str:
    """A SAML ID: starts with a letter (xs:ID) and carries 160 random bits."""
    return "_" + secrets.token_hex(20)


def instant(when: dt.datetime) -> str:
    """SAML ``dateTime`` in UTC with second precision and a ``Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_bytes(el: etree._Element) -> bytes:
    """Serialise an element as UTF-8 with an XML declaration."""
    return bytes(etree.tostring(el, xml_declaration=True, encoding="UTF-8"))
