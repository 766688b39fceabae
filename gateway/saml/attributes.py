"""From the verified assertion's own AttributeStatement to an ``Identity``.

Only direct-child AttributeStatements of the outer (verified) assertion are
read: the nested assertions in ``Advice`` are the broker's evidence from its
authentication and mandate services and are never a source of attributes.
Identifier values arrive as EncryptedIDs and are decrypted here; every value
is checked against the format its type requires.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import SamlInvalid
from gateway.identity import Identity, Loa
from gateway.saml.encryption import Decrypter, NameId, read_name_id
from gateway.saml.settings import SamlSettings, ServiceSettings
from gateway.saml.xml import q, strict_text

ATTR_SERVICE_ID = "urn:etoegang:core:ServiceID"
ATTR_SERVICE_UUID = "urn:etoegang:core:ServiceUUID"
ATTR_LEGAL_SUBJECT = "urn:etoegang:core:LegalSubjectID"
ATTR_ACTING_SUBJECT = "urn:etoegang:core:ActingSubjectID"
ATTR_INTERMEDIARY = "urn:etoegang:1.9:IntermediateEntityID:KvKnr"
ATTR_INTERMEDIARY_NAME = "urn:etoegang:1.13:attribute-intermediate:CompanyName"
ATTR_LEGAL_SUBJECT_NAME = "urn:etoegang:1.11:attribute-represented:CompanyName"
ATTR_BRANCH = "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"

_ENTITY_CONCERNED = re.compile(r"^urn:etoegang:1\.\d+:EntityConcernedID:(KvKnr|RSIN|Pseudo)$")
_INTERMEDIARY_QUALIFIER = re.compile(
    r"^urn:etoegang:1\.\d+:(EntityConcernedID|IntermediateEntityID):KvKnr$"
)
_FORMATS = {
    "KvKnr": re.compile(r"^\d{8}$"),
    "RSIN": re.compile(r"^\d{9}$"),
    # Pseudonyms are opaque; bound them to printable ASCII without spaces.
    "Pseudo": re.compile(r"^[\x21-\x7e]{1,512}$"),
}
_BRANCH = re.compile(r"^\d{12}$")
_MAX_NAME = 512

Values = list[etree._Element]


def read_attributes(assertion: etree._Element) -> dict[str, Values]:
    """Attribute name → AttributeValue elements, from the assertion's own statements only."""
    out: dict[str, Values] = {}
    for statement in assertion.findall(q("saml", "AttributeStatement")):
        for attr in statement:
            if not isinstance(attr.tag, str):
                continue
            if attr.tag == q("saml", "EncryptedAttribute"):
                raise SamlInvalid("encrypted_attribute_unsupported")
            if attr.tag != q("saml", "Attribute"):
                raise SamlInvalid("attribute_statement_unexpected_element")
            name = attr.get("Name", "")
            if not name:
                raise SamlInvalid("attribute_name_missing")
            if name in out:
                raise SamlInvalid("attribute_duplicated")
            out[name] = [v for v in attr if v.tag == q("saml", "AttributeValue")]
    return out


def _plain(values: Values, name: str, *, required: bool = False) -> str | None:
    if not values:
        if required:
            raise SamlInvalid(f"attribute_missing:{name}")
        return None
    if len(values) != 1:
        raise SamlInvalid(f"attribute_multivalued:{name}")
    text = strict_text(values[0], "attribute_value")
    if not text or len(text) > _MAX_NAME:
        raise SamlInvalid(f"attribute_value_malformed:{name}")
    return text


def _name_ids(
    values: Values, decrypter: Decrypter, name: str, *, allow_plain: bool
) -> list[NameId]:
    out: list[NameId] = []
    for value in values:
        children = list(value)
        if (value.text or "").strip() and not children and allow_plain:
            # Some brokers send the intermediary's KvK number as a plain string.
            out.append(NameId(strict_text(value, "attribute_value"), ""))
            continue
        if len(children) != 1 or (value.text or "").strip() or (children[0].tail or "").strip():
            raise SamlInvalid(f"attribute_value_unexpected_content:{name}")
        child = children[0]
        if child.tag == q("saml", "EncryptedID"):
            out.append(decrypter.decrypt_name_id(child))
        elif child.tag == q("saml", "NameID") and allow_plain:
            out.append(read_name_id(child))
        else:
            raise SamlInvalid(f"attribute_value_not_encrypted:{name}")
    return out


def _typed(name_id: NameId, pattern: re.Pattern[str], what: str) -> str:
    m = pattern.match(name_id.name_qualifier)
    if not m:
        raise SamlInvalid(f"{what}_qualifier_unexpected")
    kind = m.group(1)
    if not _FORMATS[kind].match(name_id.value):
        raise SamlInvalid(f"{what}_format_invalid")
    return kind


def _service(settings: SamlSettings, service_id: str) -> ServiceSettings:
    for service in settings.services:
        if service.service_id == service_id:
            return service
    raise SamlInvalid("service_id_unknown")


def build_identity(
    assertion: etree._Element,
    decrypter: Decrypter,
    settings: SamlSettings,
    *,
    loa: Loa,
    login_time: dt.datetime,
    authenticating_authority: str | None,
) -> Identity:
    """Decrypt, validate and assemble the identity; ``SamlInvalid`` on any doubt."""
    attrs = read_attributes(assertion)
    service_id = _plain(attrs.get(ATTR_SERVICE_ID, []), "ServiceID", required=True)
    assert service_id is not None
    service = _service(settings, service_id)
    service_uuid = _plain(attrs.get(ATTR_SERVICE_UUID, []), "ServiceUUID")
    if service_uuid is not None and service_uuid.lower() not in (
        str(service.service_uuid),
        str(service.instance_uuid),
    ):
        raise SamlInvalid("service_uuid_mismatch")

    acting = _name_ids(
        attrs.get(ATTR_ACTING_SUBJECT, []), decrypter, "ActingSubjectID", allow_plain=False
    )
    if len(acting) != 1:
        raise SamlInvalid(f"acting_subject_count_{len(acting)}")
    if _typed(acting[0], _ENTITY_CONCERNED, "acting_subject") != "Pseudo":
        raise SamlInvalid("acting_subject_not_pseudonym")

    legal: dict[str, str] = {}
    for name_id in _name_ids(
        attrs.get(ATTR_LEGAL_SUBJECT, []), decrypter, "LegalSubjectID", allow_plain=False
    ):
        kind = _typed(name_id, _ENTITY_CONCERNED, "legal_subject")
        if kind == "Pseudo" or legal.get(kind, name_id.value) != name_id.value:
            raise SamlInvalid("legal_subject_ambiguous")
        legal[kind] = name_id.value
    if not any(kind in service.identifier_types for kind in legal):
        raise SamlInvalid("legal_subject_type_not_allowed")

    intermediary = _intermediary(attrs.get(ATTR_INTERMEDIARY, []), decrypter)
    branch = _plain(attrs.get(ATTR_BRANCH, []), "Vestigingsnr")
    if branch is not None and not _BRANCH.match(branch):
        raise SamlInvalid("branch_format_invalid")
    return Identity(
        acting_subject=acting[0].value,
        legal_subject_kvk=legal.get("KvKnr"),
        legal_subject_rsin=legal.get("RSIN"),
        intermediary_kvk=intermediary,
        legal_subject_name=_plain(attrs.get(ATTR_LEGAL_SUBJECT_NAME, []), "CompanyName"),
        intermediary_name=_plain(attrs.get(ATTR_INTERMEDIARY_NAME, []), "CompanyName"),
        loa=loa,
        service_id=service.service_id,
        service_uuid=str(service.service_uuid),
        branch=branch,
        authenticating_authority=authenticating_authority,
        login_time=login_time,
    )


def _intermediary(values: Sequence[etree._Element], decrypter: Decrypter) -> str | None:
    if not values:
        return None
    name_ids = _name_ids(list(values), decrypter, "IntermediateEntityID", allow_plain=True)
    if len(name_ids) != 1:
        # A chain authorisation has exactly one intermediary.
        raise SamlInvalid("intermediary_count")
    name_id = name_ids[0]
    if name_id.name_qualifier and not _INTERMEDIARY_QUALIFIER.match(name_id.name_qualifier):
        raise SamlInvalid("intermediary_qualifier_unexpected")
    if not _FORMATS["KvKnr"].match(name_id.value):
        raise SamlInvalid("intermediary_format_invalid")
    return name_id.value
