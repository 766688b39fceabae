"""The simulator reads XML exactly as the gateway does: one hardened parser for both."""

from __future__ import annotations

import pytest
from lxml import etree

from gateway.errors import SamlInvalid
from gateway.saml.xml import parse_xml as gateway_parse
from gateway_dev.simulator.xmlutil import MAX_XML_BYTES, XmlRejected
from gateway_dev.simulator.xmlutil import parse_xml as simulator_parse

_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"

DOCUMENTS = {
    "plain": f'<samlp:ArtifactResolve xmlns:samlp="{_SAMLP}" ID="_a"/>'.encode(),
    # A processing instruction is part of what a signature's digest covers
    # (exclusive c14n keeps it): dropping it changes what the bytes mean.
    "processing-instruction": f'<r xmlns="{_SAMLP}"><?keep me?><a>1</a></r>'.encode(),
    "comment-in-text": b"<r><NameID>123<!---->45</NameID></r>",
    "doctype": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "y">]><r>&x;</r>',
    "doctype-lower-case": b"<!doctype r><r/>",
    "external-entity": b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    "malformed": b"<r><a></r>",
    "too-large": b"<r>" + b"x" * MAX_XML_BYTES + b"</r>",
}


def _outcome(parse: object, data: bytes) -> bytes | str:
    """The canonical bytes of what was parsed, or ``"refused"``."""
    assert callable(parse)
    try:
        root = parse(data)
    except (SamlInvalid, XmlRejected):
        return "refused"
    return bytes(etree.tostring(root, method="c14n"))


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_simulator_and_gateway_parse_every_document_alike(name: str) -> None:
    """Each document is refused by both parsers, or read by both into the same tree."""
    data = DOCUMENTS[name]
    gateway = _outcome(lambda d: gateway_parse(d, max_bytes=MAX_XML_BYTES), data)
    assert _outcome(simulator_parse, data) == gateway


def test_refusals_are_the_simulators_own_error_naming_the_reason() -> None:
    """A refused document raises XmlRejected, which says why (for the SOAP fault or page)."""
    with pytest.raises(XmlRejected, match="doctype_forbidden"):
        simulator_parse(DOCUMENTS["doctype"])
    with pytest.raises(XmlRejected, match="message_too_large"):
        simulator_parse(DOCUMENTS["too-large"])
