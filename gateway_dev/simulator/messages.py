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

from gateway_dev.simulator.authnrequest import AuthnRequest
from gateway_dev.simulator.catalogue import ServiceCatalogue
from gateway_dev.simulator.scenarios import (
    QUALIFIER_KVK,
    QUALIFIER_PSEUDO,
    QUALIFIER_RSIN,
    STATUS_REQUEST_DENIED,
    STATUS_REQUESTER,
    STATUS_RESPONDER,
    STATUS_SUCCESS,
    Scenario,
)
from gateway_dev.simulator.settings import SimulatorSettings
from gateway_dev.simulator.spmetadata import SpMetadata
from gateway_dev.simulator.xmlcrypto import Recipient, Signer, cert_der, encrypt_id
from gateway_dev.simulator.xmlutil import SAML, SAMLP, SOAP, XS, XSI, instant, new_id, q

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
class Shape:
    """How a message is shaped: production-like by default, stress options opt-in."""

    extra_encrypted_key: bool = False
    send_unrequested_attributes: bool = False
    real_broker_shape: bool = False

    @classmethod
    def of(cls, settings: SimulatorSettings, scenario: Scenario | None) -> Shape:
        """The simulator's settings, overridden by the scenario's own options."""

        def pick(own: bool | None, default: bool) -> bool:
            return default if own is None else own

        sc = scenario
        return cls(
            extra_encrypted_key=pick(
                sc.extra_encrypted_key if sc else None, settings.extra_encrypted_key
            ),
            send_unrequested_attributes=pick(
                sc.send_unrequested_attributes if sc else None,
                settings.send_unrequested_attributes,
            ),
            real_broker_shape=pick(
                sc.real_broker_shape if sc else None, settings.real_broker_shape
            ),
        )

    def instant(self, when: dt.datetime) -> str:
        """xs:dateTime in UTC; with milliseconds in the real-broker shape."""
        if self.real_broker_shape:
            return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return instant(when)


@dataclass(frozen=True)
class Login:
    """Everything needed to answer one AuthnRequest."""

    settings: SimulatorSettings
    sp: SpMetadata
    request: AuthnRequest
    scenario: Scenario
    now: dt.datetime
    catalogue: ServiceCatalogue | None = None
    """The SP's dienstcatalogus, when the simulator has one."""
    shape: Shape = field(default_factory=Shape)
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


def service_uuid(
    settings: SimulatorSettings, sid: str, catalogue: ServiceCatalogue | None = None
) -> str:
    """From the catalogue (as brokers do); else ``service_uuids``; else a stable UUIDv5."""
    entry = catalogue.service(sid) if catalogue is not None else None
    if entry is not None:
        return entry.service_uuid
    return settings.service_uuids.get(sid) or str(uuid.uuid5(uuid.NAMESPACE_URL, sid))


def refusal(login: Login) -> Status | None:
    """Why a broker would refuse this login for this service, if it would.

    With a catalogue, the ServiceID must be in it; a login restricted to a
    branch needs the service to allow that restriction (else the user has no
    authorisation that fits). Without a catalogue nothing is declared.
    """
    sid = service_id(login.sp, login.request)
    entry = login.catalogue.service(sid) if login.catalogue is not None else None
    if login.catalogue is not None and entry is None:
        return (STATUS_REQUESTER, STATUS_REQUEST_DENIED, f"service {sid} is not in the catalogue")
    allowed = entry.restrictions_allowed if entry is not None else frozenset()
    if (
        login.scenario.branch
        and ATTR_BRANCH not in allowed
        and not login.shape.send_unrequested_attributes
    ):
        return (
            STATUS_RESPONDER,
            STATUS_REQUEST_DENIED,
            "authorisation restricted to a branch; the service allows no ServiceRestriction",
        )
    return None


def _requested(login: Login, attribute: str) -> bool:
    """Whether an optional attribute goes out: requested in the catalogue (or stress)."""
    if login.shape.send_unrequested_attributes:
        return True
    entry = (
        login.catalogue.service(service_id(login.sp, login.request)) if login.catalogue else None
    )
    return entry is not None and attribute in entry.requested_attributes


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
    root = _response_shell(
        s.entity_id,
        login.request.id,
        login.request.acs.location,
        login.now,
        stamp=login.shape.instant,
        default_saml=login.shape.real_broker_shape,
    )
    _status(root, SUCCESS)
    root.append(_assertion(login, keys))
    if rewrite is not None:
        rewrite(root)
    if sign_response:
        keys.broker.sign(root, after=root[0], real_broker_shape=login.shape.real_broker_shape)
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
    *,
    real_broker_shape: bool = False,
) -> bytes:
    """A SOAP 1.1 envelope with a signed ArtifactResponse (with or without a message)."""
    env = etree.Element(q(SOAP, "Envelope"), nsmap={"SOAP-ENV": SOAP})
    body = etree.SubElement(env, q(SOAP, "Body"))
    ar = etree.SubElement(
        body,
        q(SAMLP, "ArtifactResponse"),
        {"ID": new_id(), "Version": "2.0", "IssueInstant": instant(now)},
        nsmap=(
            {"samlp": SAMLP, None: SAML} if real_broker_shape else {"samlp": SAMLP, "saml": SAML}
        ),
    )
    if in_response_to:
        ar.set("InResponseTo", in_response_to)
    issuer = etree.SubElement(ar, q(SAML, "Issuer"))
    issuer.text = entity_id
    _status(ar, status)
    if inner is not None:
        ar.append(inner)
    signer.sign(ar, after=issuer, real_broker_shape=real_broker_shape)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def soap_fault(message: str) -> bytes:
    """A SOAP 1.1 Client fault for input that is not a SOAP message at all."""
    env = etree.Element(q(SOAP, "Envelope"), nsmap={"SOAP-ENV": SOAP})
    fault = etree.SubElement(etree.SubElement(env, q(SOAP, "Body")), q(SOAP, "Fault"))
    etree.SubElement(fault, "faultcode").text = "SOAP-ENV:Client"
    etree.SubElement(fault, "faultstring").text = message
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def _response_shell(
    issuer: str,
    in_response_to: str,
    destination: str,
    now: dt.datetime,
    *,
    stamp: Callable[[dt.datetime], str] = instant,
    default_saml: bool = False,
) -> etree._Element:
    # lxml drops a child's namespace declaration when the parent declares the same
    # URI under another prefix, re-prefixing signed content (and breaking its
    # signature): with a default-namespace assertion, the parents use it too.
    root = etree.Element(
        q(SAMLP, "Response"),
        {
            "ID": new_id(),
            "Version": "2.0",
            "IssueInstant": stamp(now),
            "Destination": destination,
            "InResponseTo": in_response_to,
        },
        nsmap={"samlp": SAMLP, None: SAML} if default_saml else {"samlp": SAMLP, "saml": SAML},
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
    shape = login.shape
    a, issuer = _assertion_shell(
        s.entity_id, login.now, stamp=shape.instant, default_ns=shape.real_broker_shape
    )
    _subject(
        a,
        s.authentication_service_id,
        login.subject_id,
        req,
        login.now,
        s.assertion_lifetime_seconds,
        stamp=shape.instant,
    )
    _conditions(a, login.sp.entity_id, login.now, s.assertion_lifetime_seconds, stamp=shape.instant)
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
        {"AuthnInstant": shape.instant(login.now), "SessionIndex": login.session_index},
    )
    ctx = etree.SubElement(authn, q(SAML, "AuthnContext"))
    etree.SubElement(ctx, q(SAML, "AuthnContextClassRef")).text = sc.level.value
    etree.SubElement(ctx, q(SAML, "AuthenticatingAuthority")).text = s.authentication_service_id

    stmt = etree.SubElement(a, q(SAML, "AttributeStatement"))
    sid = service_id(login.sp, req)
    _plain(stmt, ATTR_SERVICE_ID, sid)
    _plain(stmt, ATTR_SERVICE_UUID, service_uuid(s, sid, login.catalogue))
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
        # Optional attributes: only when the catalogue requests them (as brokers do).
        if sc.intermediary.name and _requested(login, ATTR_INTERMEDIATE_NAME):
            _plain(stmt, ATTR_INTERMEDIATE_NAME, sc.intermediary.name)
    if legal.name and _requested(login, ATTR_REPRESENTED_NAME):
        _plain(stmt, ATTR_REPRESENTED_NAME, legal.name)
    if sc.branch:  # refused before building when the service allows no restriction
        _plain(stmt, ATTR_BRANCH, sc.branch)
    keys.broker.sign(a, after=issuer, real_broker_shape=shape.real_broker_shape)
    return a


def _advice_authentication(login: Login, keys: Keys, subject_id: str) -> etree._Element:
    """The authentication service's assertion: the person, at its own pseudonym."""
    s, stamp = login.settings, login.shape.instant
    a, issuer = _assertion_shell(s.authentication_service_id, login.now, stamp=stamp)
    subj = etree.SubElement(a, q(SAML, "Subject"))
    etree.SubElement(
        subj, q(SAML, "NameID"), {"Format": TRANSIENT, "NameQualifier": s.authentication_service_id}
    ).text = subject_id
    _conditions(a, s.entity_id, login.now, s.assertion_lifetime_seconds, stamp=stamp)
    authn = etree.SubElement(a, q(SAML, "AuthnStatement"), {"AuthnInstant": stamp(login.now)})
    ctx = etree.SubElement(authn, q(SAML, "AuthnContext"))
    etree.SubElement(ctx, q(SAML, "AuthnContextClassRef")).text = login.scenario.level.value
    stmt = etree.SubElement(a, q(SAML, "AttributeStatement"))
    decoy = "advice-" + login.scenario.pseudonym_for(s.authentication_service_id)[:32]
    _attribute(stmt, ATTR_ACTING_SUBJECT, [_encrypted(login, keys, QUALIFIER_PSEUDO, decoy)])
    keys.authentication_service.sign(a, after=issuer)
    return a


def _advice_mandate(login: Login, keys: Keys) -> etree._Element:
    """The mandate register's assertion, with a different company on purpose."""
    s, sc, stamp = login.settings, login.scenario, login.shape.instant
    a, issuer = _assertion_shell(s.mandate_service_id, login.now, stamp=stamp)
    _conditions(a, s.entity_id, login.now, s.assertion_lifetime_seconds, stamp=stamp)
    stmt = etree.SubElement(a, q(SAML, "AttributeStatement"))
    _plain(stmt, ATTR_SERVICE_ID, service_id(login.sp, login.request))
    _attribute(stmt, ATTR_LEGAL_SUBJECT, [_encrypted(login, keys, QUALIFIER_KVK, sc.advice_kvk)])
    _plain(stmt, ATTR_INTERMEDIARY, sc.advice_intermediary_kvk)
    _plain(stmt, ATTR_REPRESENTED_NAME, "Advies B.V. (niet gebruiken)")
    keys.mandate_service.sign(a, after=issuer)
    return a


def _assertion_shell(
    issuer_id: str,
    now: dt.datetime,
    *,
    stamp: Callable[[dt.datetime], str] = instant,
    default_ns: bool = False,
) -> tuple[etree._Element, etree._Element]:
    # xs/xsi declared on every assertion so it stays schema-valid when a
    # consumer lifts it out of the Response or the Advice. ``default_ns``: the
    # SAML namespace as the default namespace (no prefix), as some brokers send.
    a = etree.Element(
        q(SAML, "Assertion"),
        {"ID": new_id(), "Version": "2.0", "IssueInstant": stamp(now)},
        nsmap={None: SAML, "xs": XS, "xsi": XSI}
        if default_ns
        else {"saml": SAML, "xs": XS, "xsi": XSI},
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
    *,
    stamp: Callable[[dt.datetime], str] = instant,
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
            "NotOnOrAfter": stamp(now + dt.timedelta(seconds=life)),
            "Recipient": req.acs.location,
        },
    )


def _conditions(
    a: etree._Element,
    audience: str,
    now: dt.datetime,
    life: int,
    *,
    stamp: Callable[[dt.datetime], str] = instant,
) -> None:
    cond = etree.SubElement(
        a,
        q(SAML, "Conditions"),
        {"NotBefore": stamp(now), "NotOnOrAfter": stamp(now + dt.timedelta(seconds=life))},
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
    if login.shape.extra_encrypted_key:
        # Stress: a key for the broker itself, listed first (spec-legal, rare in practice).
        recipients.append(Recipient(login.settings.entity_id, cert_der(keys.broker.cert_pem)))
    recipients.append(Recipient(login.sp.entity_id, login.sp.encryption_certs[0]))
    return encrypt_id(
        name_id,
        recipients,
        block_cipher=login.settings.block_cipher,
        key_transport=login.settings.key_transport,
        key_name_digest="sha1" if login.shape.real_broker_shape else "sha256",
    )
