"""What the fund registers with the broker: our SP metadata and the dienstcatalogus.

Both are signed with our signing key. The metadata follows the eHerkenning
shape (``AuthnRequestsSigned``/``WantAssertionsSigned``, an Artifact ACS with
an index, one AttributeConsumingService per service whose RequestedAttribute
is the ServiceID, KeyDescriptors for the current and the next certificates,
a Redirect SingleLogoutService only when ``single_logout`` is on, and
deliberately no NameIDFormat, which brokers reject).
"""

from __future__ import annotations

import datetime as dt
import re

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.saml.authn_request import new_id
from gateway.saml.keys import KeyPair, SpKeys
from gateway.saml.metadata import BINDING_ARTIFACT, BINDING_REDIRECT
from gateway.saml.settings import SamlSettings
from gateway.saml.signature import sign_enveloped
from gateway.saml.xml import NS, instant, q

XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# The catalogue schema version the broker expects; confirm with your broker.
CATALOGUE_VERSION = "urn:etoegang:1.13:53"
ENTITY_CONCERNED = "urn:etoegang:1.9:EntityConcernedID:"


def _key_descriptor(parent: etree._Element, pair: KeyPair, use: str) -> etree._Element:
    kd = etree.SubElement(parent, q("md", "KeyDescriptor"), use=use)
    ki = etree.SubElement(kd, q("ds", "KeyInfo"))
    etree.SubElement(ki, q("ds", "KeyName")).text = pair.key_name
    x509 = etree.SubElement(ki, q("ds", "X509Data"))
    etree.SubElement(x509, q("ds", "X509Certificate")).text = pair.cert_b64
    return kd


def sp_metadata_xml(
    settings: SamlSettings, keys: SpKeys, *, now: dt.datetime | None = None
) -> bytes:
    """Our signed EntityDescriptor."""
    now = now or dt.datetime.now(dt.UTC)
    ed = etree.Element(
        q("md", "EntityDescriptor"),
        entityID=settings.entity_id,
        ID=new_id(),
        nsmap={"md": NS["md"], "ds": NS["ds"]},
    )
    sp = etree.SubElement(
        ed,
        q("md", "SPSSODescriptor"),
        AuthnRequestsSigned="true",
        WantAssertionsSigned="true",
        protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol",
    )
    _key_descriptor(sp, keys.signing, "signing")
    if keys.signing_next is not None:
        _key_descriptor(sp, keys.signing_next, "signing")
    _key_descriptor(sp, keys.encryption, "encryption")
    if keys.encryption_next is not None:
        _key_descriptor(sp, keys.encryption_next, "encryption")
    if settings.single_logout:
        # Schema order: SingleLogoutService comes before the AssertionConsumerServices.
        etree.SubElement(
            sp,
            q("md", "SingleLogoutService"),
            Binding=BINDING_REDIRECT,
            Location=settings.single_logout_url,
        )
    etree.SubElement(
        sp,
        q("md", "AssertionConsumerService"),
        Binding=BINDING_ARTIFACT,
        Location=settings.acs_url,
        index=str(settings.acs_index),
        isDefault="true",
    )
    for service in settings.services:
        acs = etree.SubElement(
            sp,
            q("md", "AttributeConsumingService"),
            index=str(service.index),
            isDefault="true" if service.default else "false",
        )
        etree.SubElement(acs, q("md", "ServiceName"), {XML_LANG: "nl"}).text = service.name
        etree.SubElement(
            acs, q("md", "ServiceDescription"), {XML_LANG: "nl"}
        ).text = service.description
        etree.SubElement(acs, q("md", "RequestedAttribute"), Name=service.service_id)
    org = etree.SubElement(ed, q("md", "Organization"))
    for tag in ("OrganizationName", "OrganizationDisplayName"):
        etree.SubElement(org, q("md", tag), {XML_LANG: "nl"}).text = settings.organisation_name
    base = re.match(r"^https?://[^/]+", settings.acs_url)
    etree.SubElement(org, q("md", "OrganizationURL"), {XML_LANG: "nl"}).text = (
        base.group(0) if base else settings.acs_url
    )
    sign_enveloped(ed, keys.signing.key_pem, keys.signing.cert_pem, insert_at=0)
    return bytes(etree.tostring(ed, xml_declaration=True, encoding="UTF-8"))


def _localised(parent: etree._Element, tag: str, nl: str, en: str | None) -> None:
    etree.SubElement(parent, tag, {XML_LANG: "nl"}).text = nl
    if en:
        etree.SubElement(parent, tag, {XML_LANG: "en"}).text = en


def service_catalogue_xml(
    settings: SamlSettings, keys: SpKeys, *, now: dt.datetime | None = None
) -> bytes:
    """The signed dienstcatalogus: ServiceDefinition + ServiceInstance per service.

    Element order follows the eHerkenning 1.13 service-catalogue schema
    (``urn:etoegang:1.13:service-catalog``); the test suite validates the
    output against it.
    """
    now = now or dt.datetime.now(dt.UTC)
    broker_oin = settings.herkenningsmakelaar_id
    if broker_oin is None:  # the settings validator refuses this already
        raise ValueError("HerkenningsmakelaarId unknown: set saml.broker_oin")
    esc = NS["esc"]
    nsmap = {"esc": esc, "ds": NS["ds"], "saml": NS["saml"], "md": NS["md"]}
    root = etree.Element(
        q("esc", "ServiceCatalogue"),
        {
            "ID": new_id(),
            f"{{{esc}}}IssueInstant": instant(now),
            f"{{{esc}}}Version": CATALOGUE_VERSION,
        },
        nsmap=nsmap,
    )
    provider = etree.SubElement(root, q("esc", "ServiceProvider"), {f"{{{esc}}}IsPublic": "true"})
    etree.SubElement(provider, q("esc", "ServiceProviderID")).text = settings.our_oin
    etree.SubElement(
        provider, q("esc", "OrganizationDisplayName"), {XML_LANG: "nl"}
    ).text = settings.organisation_name
    for service in settings.services:
        sd = etree.SubElement(
            provider, q("esc", "ServiceDefinition"), {f"{{{esc}}}IsPublic": "true"}
        )
        etree.SubElement(sd, q("esc", "ServiceUUID")).text = str(service.service_uuid)
        _localised(sd, q("esc", "ServiceName"), service.name, service.name_en)
        _localised(sd, q("esc", "ServiceDescription"), service.description, service.description_en)
        etree.SubElement(sd, q("saml", "AuthnContextClassRef")).text = service.loa.value
        etree.SubElement(sd, q("esc", "HerkenningsmakelaarId")).text = broker_oin
        for kind in service.identifier_types:
            etree.SubElement(sd, q("esc", "EntityConcernedTypesAllowed")).text = (
                ENTITY_CONCERNED + kind
            )
        for restriction in service.service_restrictions_allowed:
            etree.SubElement(sd, q("esc", "ServiceRestrictionsAllowed")).text = restriction
        for attribute in service.requested_attributes:
            requested = etree.SubElement(
                sd,
                q("esc", "RequestedAttribute"),
                Name=attribute.name,
                isRequired="true" if attribute.required else "false",
            )
            _localised(
                requested, q("esc", "PurposeStatement"), attribute.purpose.nl, attribute.purpose.en
            )
    for service in settings.services:
        si = etree.SubElement(provider, q("esc", "ServiceInstance"), {f"{{{esc}}}IsPublic": "true"})
        etree.SubElement(si, q("esc", "ServiceID")).text = service.service_id
        etree.SubElement(si, q("esc", "ServiceUUID")).text = str(service.instance_uuid)
        etree.SubElement(si, q("esc", "InstanceOfService")).text = str(service.service_uuid)
        if service.service_url:
            etree.SubElement(
                si, q("esc", "ServiceURL"), {XML_LANG: "nl"}
            ).text = service.service_url
        if service.privacy_policy_url:
            etree.SubElement(
                si, q("esc", "PrivacyPolicyURL"), {XML_LANG: "nl"}
            ).text = service.privacy_policy_url
        etree.SubElement(si, q("esc", "HerkenningsmakelaarId")).text = broker_oin
        etree.SubElement(si, q("esc", "SSOSupport")).text = "false"
        for pair in (keys.encryption, keys.encryption_next):
            if pair is not None:
                cert = etree.SubElement(si, q("esc", "ServiceCertificate"))
                _key_descriptor(cert, pair, "encryption")
    sign_enveloped(root, keys.signing.key_pem, keys.signing.cert_pem, insert_at=0)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
