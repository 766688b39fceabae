"""Safe XML handling shared by every SAML step: parsing, strict reads, times.

The parser refuses anything that could make a message mean something other
than what its bytes say: a DOCTYPE (entities, external DTDs) is rejected
outright, network access and huge trees are off. Text is read strictly: an
element whose text is split by a comment or holds child elements is refused,
because ``<NameID>123<!---->45</NameID>`` is read as ``123`` by some libraries
and ``12345`` by others (comment injection).
"""

from __future__ import annotations

import datetime as dt
import re

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import SamlInvalid

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
    "xenc11": "http://www.w3.org/2009/xmlenc11#",
    "soap": "http://schemas.xmlsoap.org/soap/envelope/",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xs": "http://www.w3.org/2001/XMLSchema",
    "esc": "urn:etoegang:1.13:service-catalog",
}


def q(prefix: str, local: str) -> str:
    """Clark notation ``{namespace}local`` for a known prefix."""
    return f"{{{NS[prefix]}}}{local}"


def _parser() -> etree.XMLParser:
    # A fresh parser per call: lxml parsers are not safe to share across threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        remove_comments=False,
        remove_pis=False,
        collect_ids=False,
    )


def parse_xml(data: bytes, *, max_bytes: int) -> etree._Element:
    """Parse untrusted XML; any DOCTYPE, entity or syntax problem is ``SamlInvalid``."""
    if len(data) > max_bytes:
        raise SamlInvalid("message_too_large")
    # Refuse a DOCTYPE before libxml2 sees it, so no entity or DTD handling runs at all.
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise SamlInvalid("doctype_forbidden")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise SamlInvalid(f"xml_malformed: {exc.msg}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SamlInvalid("doctype_forbidden")
    if next(root.iter(etree.Entity), None) is not None:
        raise SamlInvalid("entity_forbidden")
    return root


def check_unique_ids(root: etree._Element) -> None:
    """Refuse any document where two elements carry the same ID (signature wrapping)."""
    seen: set[str] = set()
    for el in root.iter(etree.Element):
        for attr in ("ID", "Id", "id"):
            value = el.get(attr)
            if value is None:
                continue
            if value in seen:
                raise SamlInvalid("duplicate_id")
            seen.add(value)


def strict_text(el: etree._Element, what: str) -> str:
    """The element's text, refusing comments, child elements and processing instructions."""
    if len(el):
        raise SamlInvalid(f"{what}_has_children")
    return (el.text or "").strip()


def only_child(parent: etree._Element, tag: str, what: str) -> etree._Element:
    """Exactly one direct child with this tag."""
    found = parent.findall(tag)
    if len(found) != 1:
        raise SamlInvalid(f"{what}_count_{len(found)}")
    return found[0]


def optional_child(parent: etree._Element, tag: str, what: str) -> etree._Element | None:
    """At most one direct child with this tag."""
    found = parent.findall(tag)
    if len(found) > 1:
        raise SamlInvalid(f"{what}_duplicated")
    return found[0] if found else None


_INSTANT = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def parse_instant(text: str | None, what: str) -> dt.datetime:
    """An xs:dateTime with a timezone (SAML requires UTC); naive times are refused."""
    if not text:
        raise SamlInvalid(f"{what}_missing")
    m = _INSTANT.match(text.strip())
    if not m:
        raise SamlInvalid(f"{what}_malformed")
    # Python wants at most microseconds: cut longer fractions, pad shorter ones.
    frac = m.group(2)[:7].ljust(7, "0") if m.group(2) else ""
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return dt.datetime.fromisoformat(m.group(1) + frac + zone).astimezone(dt.UTC)
    except ValueError:
        raise SamlInvalid(f"{what}_malformed") from None


def instant(value: dt.datetime) -> str:
    """Format a UTC instant the way SAML wants it (``2025-01-01T12:00:00Z``)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
