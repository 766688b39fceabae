"""Checking a SAML Response and turning it into a ``VerifiedLogin``.

The checks run in a fixed order and each failure has its own reason (kept in
``SamlInvalid.detail`` for the audit log, never shown to users):

1. parse with the hardened parser (no DOCTYPE, no entities), unique IDs;
2. Response: version, Issuer = broker, InResponseTo = the pending request of
   *this* browser, Destination = our ACS URL, a signature on it (if any)
   verifies;
3. Status: non-Success maps to ``LoginCancelled`` / ``LoginNotAuthorised`` /
   ``LevelTooLow`` / ``SamlInvalid``;
4. exactly one Assertion as a direct child, signed by a broker key from the
   metadata, the Reference pointing at that very assertion; and no other
   Assertion or EncryptedAssertion anywhere in the document (Extensions,
   StatusDetail, a second sibling, the SOAP/ArtifactResponse around it),
   except those inside the verified assertion's own, signed, Advice;
5. from then on only that element is read: Issuer, Subject with a bearer
   SubjectConfirmation (Recipient, InResponseTo, NotBefore/NotOnOrAfter with
   skew), Conditions (times, AudienceRestriction containing our entityID),
   AuthnStatement (level ≥ minimum), own AttributeStatement (never Advice);
6. EncryptedIDs are decrypted and the ``Identity`` is built, with the outer
   assertion's Subject NameID and SessionIndex for a later LogoutRequest.

Anything unexpected inside becomes ``SamlInvalid`` with the exception type as
reason, so a malformed message can only ever produce a 4xx page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import (
    GatewayError,
    LevelTooLow,
    LoginCancelled,
    LoginNotAuthorised,
    SamlInvalid,
)
from gateway.identity import Identity, Loa
from gateway.saml.attributes import build_identity
from gateway.saml.encryption import Decrypter
from gateway.saml.metadata import BrokerMetadata
from gateway.saml.settings import SamlSettings
from gateway.saml.signature import has_signature, verify_enveloped
from gateway.saml.xml import (
    check_unique_ids,
    only_child,
    optional_child,
    parse_instant,
    parse_xml,
    q,
    strict_text,
)

STATUS = "urn:oasis:names:tc:SAML:2.0:status:"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
_CANCEL_WORDS = ("cancel", "annule", "afgebroken")


@dataclass(frozen=True)
class Expectation:
    """What the response must match: the pending request of *this* browser."""

    request_id: str
    acs_url: str
    sp_entity_id: str
    now: dt.datetime | None = None
    """Verification time; ``None`` means the clock at verification."""


@dataclass(frozen=True)
class VerifiedLogin:
    """A login that passed every check."""

    identity: Identity
    assertion_id: str
    """Keep in the replay cache until ``not_on_or_after``."""
    not_on_or_after: dt.datetime
    """After this instant (skew included) the assertion is refused anyway."""
    in_response_to: str
    issuer: str
    session_not_on_or_after: dt.datetime | None = None


@dataclass(frozen=True)
class VerifyContext:
    """Everything verification needs besides the message: a consistent snapshot."""

    settings: SamlSettings
    metadata: BrokerMetadata
    decrypter: Decrypter


@contextmanager
def saml_guard() -> Iterator[None]:
    """Turn any non-gateway exception into ``SamlInvalid`` (reason kept for the audit)."""
    try:
        yield
    except GatewayError:
        raise
    except Exception as exc:  # the whole point: nothing else escapes
        raise SamlInvalid(f"unexpected_error:{type(exc).__name__}") from exc


def verify_response(
    response: bytes | etree._Element, expected: Expectation, ctx: VerifyContext
) -> VerifiedLogin:
    """Check a samlp:Response (bytes, or an element of an already verified document)."""
    with saml_guard():
        return _verify(response, expected, ctx)


def _verify(
    response: bytes | etree._Element, expected: Expectation, ctx: VerifyContext
) -> VerifiedLogin:
    settings, metadata = ctx.settings, ctx.metadata
    if isinstance(response, bytes):
        root = parse_xml(response, max_bytes=settings.max_message_bytes)
        check_unique_ids(root)
    else:
        root = response
        check_unique_ids(root.getroottree().getroot())
    now = expected.now or dt.datetime.now(dt.UTC)
    skew = dt.timedelta(seconds=settings.clock_skew_seconds)
    algs = {
        "signature_algorithms": settings.signature_algorithms,
        "digest_algorithms": settings.digest_algorithms,
    }

    # 2. The Response envelope.
    if root.tag != q("samlp", "Response"):
        raise SamlInvalid("not_a_response")
    if root.get("Version") != "2.0":
        raise SamlInvalid("response_version")
    issuer = optional_child(root, q("saml", "Issuer"), "response_issuer")
    if issuer is not None and strict_text(issuer, "response_issuer") != metadata.entity_id:
        raise SamlInvalid("response_issuer_mismatch")
    if root.get("InResponseTo") != expected.request_id:
        raise SamlInvalid("response_in_response_to_mismatch")
    if root.get("Destination") != expected.acs_url:
        raise SamlInvalid("response_destination_mismatch")
    if has_signature(root):
        verify_enveloped(root, metadata.signing_certs, what="response", **algs)

    # 3. Status.
    _check_status(root)

    # 4. Exactly one signed assertion, a direct child.
    if root.findall(q("saml", "EncryptedAssertion")):
        raise SamlInvalid("encrypted_assertion_unsupported")
    assertion = only_child(root, q("saml", "Assertion"), "assertion")
    verify_enveloped(assertion, metadata.signing_certs, what="assertion", **algs)
    _refuse_stray_assertions(root.getroottree().getroot(), assertion)

    # 5. From here on, read only the verified assertion.
    if assertion.get("Version") != "2.0":
        raise SamlInvalid("assertion_version")
    assertion_id = assertion.get("ID", "")
    a_issuer = only_child(assertion, q("saml", "Issuer"), "assertion_issuer")
    if strict_text(a_issuer, "assertion_issuer") != metadata.entity_id:
        raise SamlInvalid("assertion_issuer_mismatch")
    issue_instant = parse_instant(assertion.get("IssueInstant"), "assertion_issue_instant")
    if issue_instant > now + skew:
        raise SamlInvalid("assertion_issued_in_future")

    scd_not_on_or_after = _check_subject(assertion, expected, now, skew)
    cond_not_on_or_after = _check_conditions(assertion, expected, now, skew)

    authn = only_child(assertion, q("saml", "AuthnStatement"), "authn_statement")
    login_time = parse_instant(authn.get("AuthnInstant"), "authn_instant")
    session_end = authn.get("SessionNotOnOrAfter")
    context = only_child(authn, q("saml", "AuthnContext"), "authn_context")
    class_ref = only_child(context, q("saml", "AuthnContextClassRef"), "authn_context_class_ref")
    try:
        loa = Loa.parse(strict_text(class_ref, "authn_context_class_ref"))
    except ValueError:
        raise SamlInvalid("loa_unknown") from None
    authorities = [
        strict_text(a, "authenticating_authority")
        for a in context.findall(q("saml", "AuthenticatingAuthority"))
    ]
    identity = build_identity(
        assertion,
        ctx.decrypter,
        settings,
        loa=loa,
        login_time=login_time,
        authenticating_authority=authorities[0] if authorities else None,
    )
    # For a later SAML LogoutRequest: the NameID and SessionIndex of *this* verified
    # assertion (never of an Advice assertion, whose Subject names another party).
    name_id, name_format, qualifier, sp_qualifier = _subject_name_id(assertion)
    identity = replace(
        identity,
        name_id=name_id,
        name_id_format=name_format,
        name_id_qualifier=qualifier,
        name_id_sp_qualifier=sp_qualifier,
        session_index=_bounded(authn.get("SessionIndex"), "session_index"),
    )
    service = next(s for s in settings.services if s.service_id == identity.service_id)
    required = max(settings.minimum_loa, service.loa, key=lambda lvl: lvl.rank)
    if loa < required:
        raise LevelTooLow(f"loa_too_low: reached {loa.short}, required {required.short}")

    return VerifiedLogin(
        identity=identity,
        assertion_id=assertion_id,
        not_on_or_after=min(scd_not_on_or_after, cond_not_on_or_after) + skew,
        in_response_to=expected.request_id,
        issuer=metadata.entity_id,
        session_not_on_or_after=(
            parse_instant(session_end, "session_not_on_or_after") if session_end else None
        ),
    )


_ASSERTION_TAGS = frozenset({q("saml", "Assertion"), q("saml", "EncryptedAssertion")})


def _refuse_stray_assertions(document: etree._Element, verified: etree._Element) -> None:
    """Refuse any assertion in the document but ``verified`` and those in its own Advice.

    We only ever read the verified assertion, but a message that also carries
    an unsigned assertion (XSW variant 7 hides one in ``samlp:Extensions``) is
    an attack on whichever consumer reads the other one: a log pipeline, a
    later code change, a library that searches by descendant. Refusing the
    whole message keeps "what we accepted" equal to "what was signed".
    """
    advice = verified.find(q("saml", "Advice"))
    for el in document.iter(*_ASSERTION_TAGS):
        if el is verified:
            continue
        # Assertions in the verified assertion's Advice are covered by its signature.
        if advice is not None and any(a is advice for a in el.iterancestors(q("saml", "Advice"))):
            continue
        raise SamlInvalid("assertion_unexpected")


_MAX_LOGOUT_ID = 1024


def _bounded(value: str | None, what: str) -> str | None:
    """An identifier we echo back in a LogoutRequest: bounded and printable."""
    if value is None or value == "":
        return None
    if len(value) > _MAX_LOGOUT_ID or not value.isprintable():
        raise SamlInvalid(f"{what}_malformed")
    return value


def _subject_name_id(
    assertion: etree._Element,
) -> tuple[str | None, str | None, str | None, str | None]:
    """The outer assertion's Subject NameID: (value, Format, NameQualifier, SPNameQualifier).

    An EncryptedID subject (or none) yields nothing: single logout is then not
    possible for this session and logout stays local.
    """
    subject = only_child(assertion, q("saml", "Subject"), "subject")
    name_id = optional_child(subject, q("saml", "NameID"), "subject_name_id")
    if name_id is None:
        return None, None, None, None
    value = _bounded(strict_text(name_id, "subject_name_id"), "subject_name_id")
    if value is None:
        return None, None, None, None
    return (
        value,
        name_id.get("Format"),
        name_id.get("NameQualifier"),
        name_id.get("SPNameQualifier"),
    )


def _check_status(root: etree._Element) -> None:
    status = only_child(root, q("samlp", "Status"), "status")
    top = only_child(status, q("samlp", "StatusCode"), "status_code")
    top_value = top.get("Value", "")
    if top_value == STATUS + "Success":
        return
    sub = top.find(q("samlp", "StatusCode"))
    sub_value = sub.get("Value", "") if sub is not None else ""
    deeper = sub.find(q("samlp", "StatusCode")) if sub is not None else None
    deeper_value = deeper.get("Value", "") if deeper is not None else ""
    message_el = status.find(q("samlp", "StatusMessage"))
    message = "".join(message_el.itertext()) if message_el is not None else ""
    reason = f"status:{top_value.removeprefix(STATUS)}/{sub_value.removeprefix(STATUS)}"
    cancel_hint = (message + " " + deeper_value).lower()
    if sub_value == STATUS + "AuthnFailed" and any(w in cancel_hint for w in _CANCEL_WORDS):
        raise LoginCancelled(reason)
    if sub_value == STATUS + "RequestDenied":
        raise LoginNotAuthorised(reason)
    if sub_value == STATUS + "NoAuthnContext":
        # The broker could not reach the requested level for this user.
        raise LevelTooLow(reason)
    raise SamlInvalid(reason)


def _check_subject(
    assertion: etree._Element, expected: Expectation, now: dt.datetime, skew: dt.timedelta
) -> dt.datetime:
    subject = optional_child(assertion, q("saml", "Subject"), "subject")
    if subject is None:
        raise SamlInvalid("subject_missing")
    confirmations = [
        sc for sc in subject.findall(q("saml", "SubjectConfirmation")) if sc.get("Method") == BEARER
    ]
    if not confirmations:
        raise SamlInvalid("subject_confirmation_bearer_missing")
    first_error: SamlInvalid | None = None
    # SAML: at least one bearer confirmation must satisfy every condition.
    for sc in confirmations:
        try:
            return _check_confirmation(sc, expected, now, skew)
        except SamlInvalid as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def _check_confirmation(
    sc: etree._Element, expected: Expectation, now: dt.datetime, skew: dt.timedelta
) -> dt.datetime:
    data = only_child(sc, q("saml", "SubjectConfirmationData"), "subject_confirmation_data")
    if data.get("Recipient") != expected.acs_url:
        raise SamlInvalid("recipient_mismatch")
    if data.get("InResponseTo") != expected.request_id:
        raise SamlInvalid("subject_in_response_to_mismatch")
    not_on_or_after = parse_instant(data.get("NotOnOrAfter"), "subject_not_on_or_after")
    if now >= not_on_or_after + skew:
        raise SamlInvalid("subject_expired")
    not_before = data.get("NotBefore")
    if not_before and now + skew < parse_instant(not_before, "subject_not_before"):
        raise SamlInvalid("subject_not_yet_valid")
    return not_on_or_after


def _check_conditions(
    assertion: etree._Element, expected: Expectation, now: dt.datetime, skew: dt.timedelta
) -> dt.datetime:
    conditions = optional_child(assertion, q("saml", "Conditions"), "conditions")
    if conditions is None:
        raise SamlInvalid("conditions_missing")
    not_before = conditions.get("NotBefore")
    if not_before and now + skew < parse_instant(not_before, "conditions_not_before"):
        raise SamlInvalid("assertion_not_yet_valid")
    not_on_or_after = parse_instant(conditions.get("NotOnOrAfter"), "conditions_not_on_or_after")
    if now >= not_on_or_after + skew:
        raise SamlInvalid("assertion_expired")
    restrictions = conditions.findall(q("saml", "AudienceRestriction"))
    if not restrictions:
        raise SamlInvalid("audience_restriction_missing")
    # Every AudienceRestriction must name us (they are ANDed, SAML core 2.5.1.4).
    for restriction in restrictions:
        audiences = [strict_text(a, "audience") for a in restriction.findall(q("saml", "Audience"))]
        if expected.sp_entity_id not in audiences:
            raise SamlInvalid("audience_mismatch")
    return not_on_or_after


__all__ = [
    "Expectation",
    "VerifiedLogin",
    "VerifyContext",
    "saml_guard",
    "verify_response",
]
