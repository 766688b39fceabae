"""The SP's dienstcatalogus as the broker learns it: ServiceUUIDs, requested attributes.

A real broker knows a service from the catalogue the service provider
registered: which ServiceUUID to send for a ServiceID, which optional
attributes (company names) the service asked for, and which restrictions
(a branch) an authorisation may carry. The simulator reads the same
catalogue the gateway prints (``gateway service-catalogue``), so a gateway set
up from its own configuration gets exactly the values it expects. Like the SP
metadata, the catalogue's signature is not checked (brokers receive it
through the eHerkenning network registration).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_dev.simulator.spmetadata import MetadataUnavailable
from gateway_dev.simulator.xmlutil import XmlRejected, parse_xml

ESC = "urn:etoegang:1.13:service-catalog"
_NS = {"esc": ESC}


@dataclass(frozen=True)
class CatalogueService:
    """One ServiceInstance with what its ServiceDefinition declares."""

    service_id: str
    service_uuid: str
    """The ServiceDefinition's UUID (``InstanceOfService``): what ``ServiceUUID`` carries."""
    requested_attributes: frozenset[str]
    """Attribute names of the definition's ``RequestedAttribute``s."""
    restrictions_allowed: frozenset[str]
    """``ServiceRestrictionsAllowed`` values."""


@dataclass(frozen=True)
class ServiceCatalogue:
    services: dict[str, CatalogueService]
    """By ServiceID."""

    def service(self, service_id: str) -> CatalogueService | None:
        return self.services.get(service_id)


def parse_service_catalogue(data: bytes) -> ServiceCatalogue:
    """Read every ServiceInstance with its ServiceDefinition; ``MetadataUnavailable`` if bad."""
    try:
        root = parse_xml(data)
    except XmlRejected as exc:
        raise MetadataUnavailable(f"service catalogue: {exc}") from exc
    if root.tag != f"{{{ESC}}}ServiceCatalogue":
        raise MetadataUnavailable("service catalogue: not an esc:ServiceCatalogue")
    definitions = {}
    for sd in root.iterfind(".//esc:ServiceDefinition", _NS):
        uuid = (sd.findtext("esc:ServiceUUID", "", _NS) or "").strip()
        definitions[uuid] = (
            frozenset(
                r.get("Name", "")
                for r in sd.iterfind("esc:RequestedAttribute", _NS)
                if r.get("Name")
            ),
            frozenset(
                (r.text or "").strip() for r in sd.iterfind("esc:ServiceRestrictionsAllowed", _NS)
            ),
        )
    services: dict[str, CatalogueService] = {}
    for si in root.iterfind(".//esc:ServiceInstance", _NS):
        sid = (si.findtext("esc:ServiceID", "", _NS) or "").strip()
        of = (si.findtext("esc:InstanceOfService", "", _NS) or "").strip()
        if not sid or of not in definitions:
            raise MetadataUnavailable(
                f"service catalogue: ServiceInstance {sid or '?'} has no ServiceDefinition"
            )
        requested, restrictions = definitions[of]
        services[sid] = CatalogueService(sid, of, requested, restrictions)
    if not services:
        raise MetadataUnavailable("service catalogue: no ServiceInstance")
    return ServiceCatalogue(services)
