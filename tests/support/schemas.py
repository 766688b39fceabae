"""The vendored XML Schemas (``tests/data``), loaded offline, and a validation helper."""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

DATA = Path(__file__).resolve().parents[1] / "data"
XSD = DATA / "eherkenning-xsd"
BROKER_METADATA_IWELCOME = DATA / "broker-metadata" / "broker-metadata-iwelcome-1.13.xml"


@functools.cache
def schema(name: str) -> etree.XMLSchema:
    """``eherkenning-dc.xml`` or ``saml-schema-metadata-2.0.xsd``; imports by local path only."""
    parser = etree.XMLParser(no_network=True)
    return etree.XMLSchema(etree.parse(str(XSD / name), parser))


def catalogue_schema() -> etree.XMLSchema:
    """The eHerkenning 1.13 service-catalogue schema."""
    return schema("eherkenning-dc.xml")


def metadata_schema() -> etree.XMLSchema:
    """The OASIS SAML 2.0 metadata schema."""
    return schema("saml-schema-metadata-2.0.xsd")


def schema_errors(xsd: etree.XMLSchema, document: bytes) -> list[str]:
    """Every validation error of ``document`` (empty when it is valid)."""
    ok = xsd.validate(etree.fromstring(document))
    return [] if ok else [f"line {e.line}: {e.message}" for e in xsd.error_log]
