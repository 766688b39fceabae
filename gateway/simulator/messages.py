"""Building the broker's SAML messages: Response, Assertion (with Advice), errors, SOAP.

Shape follows real eHerkenning brokers: the outer assertion is signed by the
broker (HM) and holds its own AttributeStatement; identifier attributes are
EncryptedIDs; ``Advice`` carries assertions signed by the authentication
service (AD) and the mandate register (MR) whose attributes deliberately
differ from the outer ones (another KvK, an IntermediateEntityID even in a
direct login), so a consumer that reads Advice, or decrypts every
EncryptedID in the document, gets caught.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.simulator.authnrequest import AuthnRequest
from gateway.simulator.scenarios import (
    QUALIFIER_KVK,
    QUALIFIER_PSEUDO,
    QUALIFIER_RSIN,
    STATUS_SUCCESS,
    Scenario,
)
from gateway.simulator.settings import SimulatorSettings
from gateway.simulator.spmetadata import SpMetadata
from gateway.simulator.xmlcrypto import Recipient, Signer, cert_der, encrypt_id
from gateway.simulator.xmlutil import SAML, SAMLP, SOAP, XS, XSI, instant, new_id, q

ATTR_SERVICE_ID = "urn:etoegang:core:ServiceID"
ATTR_SERVICE_UUID = "urn:etoegang:core:ServiceUUID"
ATTR_LEGAL_SUBJECT = "urn:etoegang:core:LegalSubjectID"
ATTR_ACTING_SUBJECT = "urn:etoegang:core:ActingSubjectID"
ATTR_INTERMEDIARY = "urn:etoegang:1.9:IntermediateEntityID:KvKnr"
ATTR_INTERMEDIATE_NAME = "urn:etoegang:1.13:attribute-intermediate:CompanyName"
ATTR_REPRESENTED_NAME = "urn:etoegang:1.11:attribute-represented:CompanyName"
ATTR_BRANCH = "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

Status = tuple[str, str | None, str | None]
"""(top-level code, second-level code, message)."""
SUCCESS: Status = (STATUS_SUCCESS, None, None)


@dataclass(frozen=True)
class Keys:
    """The broker's key and the keys of the services whose assertions go into Advice."""

    broker: Signer
    authentication_service: Signer
    mandate_service: Signer


@dataclass(frozen=True)
class Login:
    """Everything needed to answer one AuthnRequest."""

    settings: SimulatorSettings
    sp: SpMetadata
    request: AuthnRequest
    scenario: Scenario
    now: dt.datetime
    subject_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    """The outer assertion's transient Subject NameID (what a LogoutRequest names)."""
    session_index: str = field(default_factory=new_id)
    """``AuthnStatement/@SessionIndex``: the broker session this login belongs to."""


def service_id(sp: SpMetadata, request: AuthnRequest) -> str:
    """ServiceID from the chosen AttributeConsumingService, else derived from the entityID."""
    service = sp.service(request.service_index)
    if service and service.service_ids:
        return service.service_ids[0]
    derived = re.sub(r":entities:[^:]+$", "", sp.entity_id)
    return f"{derived}:services:{request.service_index or 0}"


def service_uuid(settings: SimulatorSettings, sid: str) -> str:
    return settings.service_uuids.get(sid) or str(uuid.uuid5(uuid.NAMESPACE_URL, sid))


Rewrite = Callable[[etree._Element], None]
"""Edits a Response in place after its assertion is signed (tests of hostile brokers)."""


def response(
    login: Login, keys: Keys, *, sign_response: bool = False, rewrite: Rewrite | None = None
) -> etree._Element:
    """A Success Response with the scenario's signed assertion.

    ``rewrite`` runs after the assertion is signed and before the Response
    itself is signed (POST binding) or stored for resolution (Artifact), so
    the result is what a broker holding the real keys would send.
    """
    s = login.settings
    root = _response_shell(s.entity_id, login.request.id, login.request.acs.location, login.now)
    _status(root, SUCCESS)
    root.append(_assertion(login, keys))
    if rewrite is not None:
        rewrite(root)
    if sign_response:
        keys.broker.sign(root, after=root[0])
    return root


def error_response(
    settings: SimulatorSettings,
    in_response_to: str,
    destination: str,
    status: Status,
    now: dt.datetime,
    *,
    signer: Signer | None = None,
) -> etree._Element:
    """A Response carrying only a non-Success status (no assertion)."""
    root = _response_shell(settings.entity_id, in_response_to, destination, now)
    _status(root, status)
    if signer is not None:
        signer.sign(root, after=root[0])
    return root


def artifact_response_envelope(
    entity_id: str,
    in_response_to: str | None,
    inner: etree._Element | None,
    status: Status,
    signer: Signer,
    now: dt.datetime,
) -> bytes:
    """A SOAP 1.1 envelope with a signed ArtifactResponse (with or without a message)."""
    env = etree.Element(q(SOAP, "Envelope"), nsmap={"SOAP-ENV": SOAP})
    body = etree.SubElement(env, q(SOAP, "Body"))
    ar = etree.SubElement(
        body,
        q(SAMLP, "ArtifactResponse"),
        {"ID": new_id(), "Version": "2.0", "IssueInstant": instant(now)},
        nsmap={"samlp": SAMLP, "saml": SAML},
    )
    if in_response_to:
        ar.set("InResponseTo", in_response_to)
    issuer = etree.SubElement(ar, q(SAML, "Issuer"))
    issuer.text = entity_id
    _status(ar, status)
    if inner is not None:
        ar.append(inner)
    signer.sign(ar, after=issuer)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def soap_fault(message: str) -> bytes:
    """A SOAP 1.1 Client fault for input that is not a SOAP message at all."""
    env = etree.Element(q(SOAP, "Envelope"), nsmap={"SOAP-ENV": SOAP})
    fault = etree.SubElement(etree.SubElement(env, q(SOAP, "Body")), q(SOAP, "Fault"))
    etree.SubElement(fault, "faultcode").text = "SOAP-ENV:Client"
    etree.SubElement(fault, "faultstring").text = message
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def _response_shell(
    issuer: str, in_response_to: str, destination: str, now: dt.datetime
) -> etree._Element:
    root = etree.Element(
        q(SAMLP, "Response"),
        {
            "ID": new_id(),
            "Version": "2.0",
            "IssueInstant": instant(now),
            "Destination": destination,
            "InResponseTo": in_response_to,
        },
        nsmap={"samlp": SAMLP, "saml": SAML},
    )
    etree.SubElement(root, q(SAML, "Issuer")).text = issuer
    return root


def _status(parent: etree._Element, status: Status) -> None:
    top, second, message = status
    st = etree.SubElement(parent, q(SAMLP, "Status"))
    code = etree.SubElement(st, q(SAMLP, "StatusCode"), {"Value": top})
    if second:
        etree.SubElement(code, q(SAMLP, "StatusCode"), {"Value": second})
    if message:
        etree.SubElement(st, q(SAMLP, "StatusMessage")).text = message


def _assertion(login: Login, keys: Keys) -> etree._Element:
    s, sc, req = login.settings, login.scenario, login.request
    a, issuer = _assertion_shell(s.entity_id, login.now)
    _subject(
        a,
        s.authentication_service_id,
        login.subject_id,
        req,
        login.now,
        s.assertion_lifetime_seconds,
    )
    _conditions(a, login.sp.entity_id, login.now, s.assertion_lifetime_seconds)
    if s.advice:
        advice = etree.SubElement(a, q(SAML, "Advice"))
        # The authentication service names the person by its own transient ID, so
        # a consumer that takes the NameID from Advice sends a LogoutRequest for
        # nobody (the simulator's SLO matches the outer NameID only).
        advice.append(_advice_authentication(login, keys, str(uuid.uuid4())))
        advice.append(_advice_mandate(login, keys))
    authn = etree.SubElement(
        a,
        q(SAML, "AuthnStatement"),
        {"AuthnInstant": instant(login.now), "SessionIndex": login.session_index},
    )
    ctx = etree.SubElement(authn, q(SAML, "AuthnContext"))
    etree.SubElement(ctx, q(SAML, "AuthnContextClassRef")).text = sc.level.value
    etree.SubElement(ctx, q(SAML, "AuthenticatingAuthority")).text = s.authentication_service_id

    stmt = etree.SubElement(a, q(SAML, "AttributeStatement"))
    sid = service_id(login.sp, req)
    _plain(stmt, ATTR_SERVICE_ID, sid)
    _plain(stmt, ATTR_SERVICE_UUID, service_uuid(s, sid))
    legal = sc.legal_subject
    assert legal is not None
    values = []
    if legal.kvk:
        values.append(_encrypted(login, keys, QUALIFIER_KVK, legal.kvk))
    if legal.rsin:
        values.append(_encrypted(login, keys, QUALIFIER_RSIN, legal.rsin))
    _attribute(stmt, ATTR_LEGAL_SUBJECT, values)
    pseudo = sc.pseudonym_for(login.sp.entity_id)
    _attribute(stmt, ATTR_ACTING_SUBJECT, [_encrypted(login, keys, QUALIFIER_PSEUDO, pseudo)])
    if sc.intermediary is not None:
        if sc.intermediary.encrypted:
            _attribute(
                stmt,
                ATTR_INTERMEDIARY,
                [_encrypted(login, keys, QUALIFIER_KVK, sc.intermediary.kvk)],
            )
        else:
            _plain(stmt, ATTR_INTERMEDIARY, sc.intermediary.kvk)
        if sc.intermediary.name:
            _plain(stmt, ATTR_INTERMEDIATE_NAME, sc.intermediary.name)
    if legal.name:
        _plain(stmt, ATTR_REPRESENTED_NAME, legal.name)
    if sc.branch:
        _plain(stmt, ATTR_BRANCH, sc.branch)
    keys.broker.sign(a, after=issuer)
    return a


def _advice_authentication(login: Login, keys: Keys, subject_id: str) -> etree._Element:
    """The authentication service's assertion: the person, at its own pseudonym."""
    s = login.settings
    a, issuer = _assertion_shell(s.authentication_service_id, login.now)
    subj = etree.SubElement(a, q(SAML, "Subject"))
    etree.SubElement(
        subj, q(SAML, "NameID"), {"Format": TRANSIENT, "NameQualifier": s.authentication_service_id}
    ).text = subject_id
    _conditions(a, s.entity_id, login.now, s.assertion_lifetime_seconds)
    authn = etree.SubElement(a, q(SAML, "AuthnStatement"), {"AuthnInstant": instant(login.now)})
    ctx = etree.SubElement(authn, q(SAML, "AuthnContext"))
    etree.SubElement(ctx, q(SAML, "AuthnContextClassRef")).text = login.scenario.level.value
    stmt = etree.SubElement(a, q(SAML, "AttributeStatement"))
    decoy = "advice-" + login.scenario.pseudonym_for(s.authentication_service_id)[:32]
    _attribute(stmt, ATTR_ACTING_SUBJECT, [_encrypted(login, keys, QUALIFIER_PSEUDO, decoy)])
    keys.authentication_service.sign(a, after=issuer)
    return a


def _advice_mandate(login: Login, keys: Keys) -> etree._Element:
    """The mandate register's assertion, with a different company on purpose."""
    s, sc = login.settings, login.scenario
    a, issuer = _assertion_shell(s.mandate_service_id, login.now)
    _conditions(a, s.entity_id, login.now, s.assertion_lifetime_seconds)
    stmt = etree.SubElement(a, q(SAML, "AttributeStatement"))
    _plain(stmt, ATTR_SERVICE_ID, service_id(login.sp, login.request))
    _attribute(stmt, ATTR_LEGAL_SUBJECT, [_encrypted(login, keys, QUALIFIER_KVK, sc.advice_kvk)])
    _plain(stmt, ATTR_INTERMEDIARY, sc.advice_intermediary_kvk)
    _plain(stmt, ATTR_REPRESENTED_NAME, "Advies B.V. (niet gebruiken)")
    keys.mandate_service.sign(a, after=issuer)
    return a


def _assertion_shell(issuer_id: str, now: dt.datetime) -> tuple[etree._Element, etree._Element]:
    # xs/xsi declared on every assertion so it stays schema-valid when a
    # consumer lifts it out of the Response or the Advice.
    a = etree.Element(
        q(SAML, "Assertion"),
        {"ID": new_id(), "Version": "2.0", "IssueInstant": instant(now)},
        nsmap={"saml": SAML, "xs": XS, "xsi": XSI},
    )
    issuer = etree.SubElement(a, q(SAML, "Issuer"))
    issuer.text = issuer_id
    return a, issuer


def _subject(
    a: etree._Element,
    qualifier: str,
    subject_id: str,
    req: AuthnRequest,
    now: dt.datetime,
    life: int,
) -> None:
    subj = etree.SubElement(a, q(SAML, "Subject"))
    etree.SubElement(
        subj, q(SAML, "NameID"), {"Format": TRANSIENT, "NameQualifier": qualifier}
    ).text = subject_id
    conf = etree.SubElement(subj, q(SAML, "SubjectConfirmation"), {"Method": BEARER})
    etree.SubElement(
        conf,
        q(SAML, "SubjectConfirmationData"),
        {
            "InResponseTo": req.id,
            "NotOnOrAfter": instant(now + dt.timedelta(seconds=life)),
            "Recipient": req.acs.location,
        },
    )


def _conditions(a: etree._Element, audience: str, now: dt.datetime, life: int) -> None:
    cond = etree.SubElement(
        a,
        q(SAML, "Conditions"),
        {"NotBefore": instant(now), "NotOnOrAfter": instant(now + dt.timedelta(seconds=life))},
    )
    restriction = etree.SubElement(cond, q(SAML, "AudienceRestriction"))
    etree.SubElement(restriction, q(SAML, "Audience")).text = audience


def _plain(stmt: etree._Element, name: str, value: str) -> None:
    attr = etree.SubElement(stmt, q(SAML, "Attribute"), {"Name": name})
    v = etree.SubElement(attr, q(SAML, "AttributeValue"), {q(XSI, "type"): "xs:string"})
    v.text = value


def _attribute(stmt: etree._Element, name: str, encrypted: list[etree._Element]) -> None:
    attr = etree.SubElement(stmt, q(SAML, "Attribute"), {"Name": name})
    for enc in encrypted:
        etree.SubElement(attr, q(SAML, "AttributeValue")).append(enc)


def _encrypted(login: Login, keys: Keys, qualifier: str, value: str) -> etree._Element:
    name_id = etree.Element(q(SAML, "NameID"), {"NameQualifier": qualifier}, nsmap={"saml": SAML})
    name_id.text = value
    recipients = []
    if login.settings.extra_encrypted_key:
        recipients.append(Recipient(login.settings.entity_id, cert_der(keys.broker.cert_pem)))
    recipients.append(Recipient(login.sp.entity_id, login.sp.encryption_certs[0]))
    return encrypt_id(
        name_id,
        recipients,
        block_cipher=login.settings.block_cipher,
        key_transport=login.settings.key_transport,
    )
