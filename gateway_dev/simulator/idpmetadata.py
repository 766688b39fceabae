"""The broker's own (signed) IdP metadata, built from the current base URL."""

from __future__ import annotations

import base64
import datetime as dt

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway_dev.simulator.xmlcrypto import Signer, cert_der
from gateway_dev.simulator.xmlutil import (
    BINDING_POST,
    BINDING_REDIRECT,
    BINDING_SOAP,
    DS,
    MD,
    new_id,
    q,
)

PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"

SSO_PATH = "/saml/sso"
ARS_PATH = "/saml/ars"
SLO_PATH = "/saml/slo"
METADATA_PATH = "/saml/metadata"
LOGIN_PATH = "/saml/login"


def idp_metadata(
    entity_id: str,
    base_url: str,
    signer: Signer,
    *,
    slo: bool,
    valid_until: dt.datetime | None = None,
) -> bytes:
    """EntityDescriptor with SSO (Redirect, POST), ARS (SOAP), optional SLO and the signing key."""
    base = base_url.rstrip("/")
    attributes = {"entityID": entity_id, "ID": new_id()}
    if valid_until is not None:
        attributes["validUntil"] = valid_until.strftime("%Y-%m-%dT%H:%M:%SZ")
    root = etree.Element(q(MD, "EntityDescriptor"), attributes, nsmap={"md": MD, "ds": DS})
    idp = etree.SubElement(
        root,
        q(MD, "IDPSSODescriptor"),
        {"protocolSupportEnumeration": PROTOCOL, "WantAuthnRequestsSigned": "true"},
    )
    kd = etree.SubElement(idp, q(MD, "KeyDescriptor"), {"use": "signing"})
    x509 = etree.SubElement(etree.SubElement(kd, q(DS, "KeyInfo")), q(DS, "X509Data"))
    etree.SubElement(x509, q(DS, "X509Certificate")).text = base64.b64encode(
        cert_der(signer.cert_pem)
    ).decode()
    etree.SubElement(
        idp,
        q(MD, "ArtifactResolutionService"),
        {"Binding": BINDING_SOAP, "Location": base + ARS_PATH, "index": "0", "isDefault": "true"},
    )
    if slo:
        etree.SubElement(
            idp,
            q(MD, "SingleLogoutService"),
            {"Binding": BINDING_REDIRECT, "Location": base + SLO_PATH},
        )
    for binding in (BINDING_REDIRECT, BINDING_POST):
        etree.SubElement(
            idp, q(MD, "SingleSignOnService"), {"Binding": binding, "Location": base + SSO_PATH}
        )
    # Metadata signature goes first in EntityDescriptor (schema order).
    signer.sign(root, after=None)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
