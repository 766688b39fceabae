"""verify_response: a valid login passes, and each check stops a message failing only it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from lxml import etree

from gateway.errors import (
    LevelTooLow,
    LoginCancelled,
    LoginNotAuthorised,
    SamlInvalid,
)
from gateway.identity import Loa
from gateway.saml.verify import VerifyContext, verify_response
from gateway.saml.xml import q
from tests.saml.conftest import expect, make_context
from tests.support import saml as forge
from tests.support.saml import RSA_1_5, SP_ID, ResponseSpec, SamlWorld, to_bytes

Mutator = Callable[[etree._Element], None]


def rejected(
    world: SamlWorld,
    ctx: VerifyContext,
    spec: ResponseSpec,
    mutate: Mutator | None = None,
    *,
    error: type[Exception] = SamlInvalid,
) -> str:
    response = world.response(spec)
    if mutate is not None:
        mutate(response)
    with pytest.raises(error) as info:
        verify_response(to_bytes(response), expect(spec), ctx)
    assert type(info.value) is error
    return str(info.value.detail)  # type: ignore[attr-defined]


def test_valid_direct_login_gives_identity(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """A correct mode-1 response yields the outer assertion's identity and replay data."""
    login = verify_response(to_bytes(world.response(spec)), expect(spec), ctx)
    ident = login.identity
    assert ident.legal_subject_kvk == "12345678"
    assert ident.acting_subject == spec.pseudonym
    assert ident.loa is Loa.EH3
    assert ident.mode == "direct"
    assert ident.legal_subject_name == "Werkgever B.V."
    assert ident.service_uuid == forge.SERVICE_UUID
    assert login.in_response_to == spec.request_id
    assert login.assertion_id.startswith("_a")
    assert login.not_on_or_after > spec.now


def test_chain_login_with_rsin_branch_and_plain_intermediary(
    world: SamlWorld, ctx: VerifyContext
) -> None:
    """Mode 2: intermediary KvK (plain), RSIN, branch number and names are all read."""
    spec = ResponseSpec(
        rsin="123456789",
        intermediary_kvk="55554444",
        intermediary_encrypted=False,
        intermediary_name="Administratiekantoor B.V.",
        branch="000012345678",
        loa=Loa.EH4.value,
    )
    ident = verify_response(to_bytes(world.response(spec)), expect(spec), ctx).identity
    assert ident.mode == "chain"
    assert ident.administrator_kvk == "55554444"
    assert ident.legal_subject_rsin == "123456789"
    assert ident.branch == "000012345678"
    assert ident.intermediary_name == "Administratiekantoor B.V."
    assert ident.loa is Loa.EH4


def test_encrypted_intermediary_and_aes_cbc_are_decrypted(
    world: SamlWorld, ctx: VerifyContext
) -> None:
    """An encrypted IntermediateEntityID and AES-CBC data encryption both work."""
    spec = ResponseSpec(intermediary_kvk="55554444", block=forge.AES128_CBC)
    ident = verify_response(to_bytes(world.response(spec)), expect(spec), ctx).identity
    assert ident.intermediary_kvk == "55554444"


def test_attributes_only_in_advice_are_not_used(world: SamlWorld, ctx: VerifyContext) -> None:
    """The Advice assertion's KvK and intermediary never reach the identity."""
    spec = ResponseSpec(advice_kvk="87654321")
    ident = verify_response(to_bytes(world.response(spec)), expect(spec), ctx).identity
    assert ident.legal_subject_kvk == "12345678"
    assert ident.intermediary_kvk is None


def test_legal_subject_only_in_advice_is_refused(world: SamlWorld, ctx: VerifyContext) -> None:
    """When the outer assertion lacks LegalSubjectID, the one in Advice does not stand in."""
    spec = ResponseSpec(kvk=None, advice_kvk="87654321")
    assert rejected(world, ctx, spec) == "legal_subject_type_not_allowed"


def test_skew_within_tolerance_is_accepted(world: SamlWorld, ctx: VerifyContext) -> None:
    """A broker clock 30 s ahead (NotBefore in our future) is within the 60 s skew."""
    spec = ResponseSpec(not_before_offset=30)
    verify_response(to_bytes(world.response(spec)), expect(spec), ctx)
    late = ResponseSpec(not_on_or_after_offset=-30, scd_not_on_or_after_offset=-30)
    verify_response(to_bytes(world.response(late)), expect(late), ctx)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"issuer": "urn:etoegang:HM:00000009999999990000:entities:1"},
            "assertion_issuer_mismatch",
        ),
        ({"response_issuer": "urn:evil"}, "response_issuer_mismatch"),
        ({"audiences": ["urn:etoegang:DV:00000009999999990000:entities:0"]}, "audience_mismatch"),
        ({"audiences": None}, "audience_restriction_missing"),
        ({"destination": "https://evil.example/acs"}, "response_destination_mismatch"),
        ({"destination": None}, "response_destination_mismatch"),
        ({"recipient": "https://evil.example/acs"}, "recipient_mismatch"),
        ({"not_on_or_after_offset": -61, "scd_not_on_or_after_offset": 300}, "assertion_expired"),
        ({"scd_not_on_or_after_offset": -61}, "subject_expired"),
        ({"not_before_offset": 61}, "assertion_not_yet_valid"),
        ({"in_response_to": "_someone_elses_request"}, "response_in_response_to_mismatch"),
        ({"scd_in_response_to": "_someone_elses_request"}, "subject_in_response_to_mismatch"),
        ({"subject": False}, "subject_missing"),
        (
            {"method": "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key"},
            "subject_confirmation_bearer_missing",
        ),
        ({"sign_assertion": False}, "assertion_signature_missing"),
        ({"signature_algorithm": "rsa-sha1"}, "assertion_signature_algorithm_not_allowed"),
        (
            {"signature_algorithm": "rsa-sha256/sha1-digest"},
            "assertion_digest_algorithm_not_allowed",
        ),
        ({"key_transport": RSA_1_5}, "key_transport_algorithm_not_allowed"),
        ({"service_id": "urn:etoegang:DV:00000001234567890000:services:7"}, "service_id_unknown"),
        ({"service_uuid": "00000000-0000-0000-0000-000000000000"}, "service_uuid_mismatch"),
        ({"kvk": "1234"}, "legal_subject_format_invalid"),
        ({"branch": "12"}, "branch_format_invalid"),
        ({"loa": "urn:etoegang:core:assurance-class:loa9"}, "loa_unknown"),
    ],
)
def test_each_check_rejects_a_message_failing_only_it(
    world: SamlWorld, ctx: VerifyContext, changes: dict[str, object], reason: str
) -> None:
    """A message that differs from a valid one in one respect is refused for that reason."""
    assert rejected(world, ctx, ResponseSpec(**changes)) == reason  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [Loa.EH2, Loa.EH2PLUS])
def test_level_below_minimum_is_level_too_low(
    world: SamlWorld, ctx: VerifyContext, level: Loa
) -> None:
    """EH2 / EH2+ against a loa3 minimum is LevelTooLow, naming the level reached."""
    detail = rejected(world, ctx, ResponseSpec(loa=level.value), error=LevelTooLow)
    assert level.short in detail


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (forge.xsw_evil_first_original_in_advice, "assertion_reference_not_enclosing_element"),
        (forge.xsw_original_in_extensions, "duplicate_id"),
        (forge.xsw_original_in_signature_object, "assertion_reference_not_enclosing_element"),
        (forge.xsw_duplicated_assertion, "assertion_count_2"),
        (forge.xsw_signature_moved, "response_reference_not_enclosing_element"),
        (forge.xsw_id_collision, "duplicate_id"),
    ],
)
def test_signature_wrapping_variants_are_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec, mutate: Mutator, reason: str
) -> None:
    """Each XSW rearrangement of a validly signed response is stopped by the rule aimed at it."""
    assert rejected(world, ctx, spec, mutate) == reason


def test_tampered_signed_assertion_fails_signature(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """Changing one byte inside the signed assertion breaks its signature."""

    def tamper(response: etree._Element) -> None:
        assertion = response.find(q("saml", "Assertion"))
        assert assertion is not None
        conditions = assertion.find(q("saml", "Conditions"))
        assert conditions is not None
        conditions.set("NotOnOrAfter", "2999-01-01T00:00:00Z")

    assert rejected(world, ctx, spec, tamper) == "assertion_signature_invalid"


def test_signature_by_foreign_key_with_its_cert_in_keyinfo_is_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """An assertion signed by an attacker key (its cert in KeyInfo) does not verify."""
    spec.sign_assertion = False

    def resign(response: etree._Element) -> None:
        assertion = response.find(q("saml", "Assertion"))
        issuer = assertion.find(q("saml", "Issuer"))
        forge.sign(assertion, world.attacker, after=issuer)

    assert rejected(world, ctx, spec, resign) == "assertion_signature_invalid"


def test_signature_referencing_another_element_is_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """A signature whose Reference is not its enclosing assertion is refused."""

    def point_elsewhere(response: etree._Element) -> None:
        ref = response.find(
            f"{q('saml', 'Assertion')}/{q('ds', 'Signature')}/{q('ds', 'SignedInfo')}/"
            f"{q('ds', 'Reference')}"
        )
        ref.set("URI", "#" + response.get("ID"))

    assert (
        rejected(world, ctx, spec, point_elsewhere) == "assertion_reference_not_enclosing_element"
    )


def test_comment_injection_in_name_id_is_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """``123<!---->45`` in a text value is refused rather than read as 123 or 12345."""

    def inject(response: etree._Element) -> None:
        assertion = response.find(q("saml", "Assertion"))
        issuer = assertion.find(q("saml", "Issuer"))
        issuer.text = forge.BROKER_ID[:10]
        issuer.append(etree.Comment(""))
        issuer[0].tail = forge.BROKER_ID[10:]

    assert rejected(world, ctx, spec, inject) in (
        "assertion_signature_invalid",
        "assertion_issuer_has_children",
    )
    # And when the comment is inside the signed content from the start, the strict read refuses.
    spec2 = ResponseSpec(service_id=forge.SERVICE_ID)
    spec2.sign_assertion = False

    def inject_then_sign(response: etree._Element) -> None:
        assertion = response.find(q("saml", "Assertion"))
        for v in assertion.iter(q("saml", "AttributeValue")):
            if v.text == forge.SERVICE_ID:
                v.text = forge.SERVICE_ID[:20]
                v.append(etree.Comment("x"))
                v[0].tail = forge.SERVICE_ID[20:]
        forge.sign(assertion, world.broker, after=assertion.find(q("saml", "Issuer")))

    assert rejected(world, ctx, spec2, inject_then_sign) == "attribute_value_has_children"


@pytest.mark.parametrize(
    "payload",
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "y">]><r>&x;</r>',
        b'<!DOCTYPE samlp:Response SYSTEM "http://evil.example/x.dtd"><samlp:Response/>',
        b"not xml at all",
        b"",
        b"<a><b></a>",
        b"\xff\xfe\x00<",
        b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"/>',
    ],
)
def test_malformed_or_doctype_input_is_saml_invalid(
    ctx: VerifyContext, spec: ResponseSpec, payload: bytes
) -> None:
    """DOCTYPEs, entities, garbage and empty input all end as SamlInvalid, nothing else."""
    with pytest.raises(SamlInvalid):
        verify_response(payload, expect(spec), ctx)


def test_doctype_inside_a_valid_response_is_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """A DOCTYPE prepended to an otherwise valid response is refused outright."""
    data = b'<!DOCTYPE x [<!ENTITY e "e">]>' + to_bytes(world.response(spec))
    with pytest.raises(SamlInvalid) as info:
        verify_response(data, expect(spec), ctx)
    assert info.value.detail == "doctype_forbidden"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (
            (
                "urn:oasis:names:tc:SAML:2.0:status:Responder",
                "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed",
                "Authentication cancelled by user",
            ),
            LoginCancelled,
        ),
        (
            (
                "urn:oasis:names:tc:SAML:2.0:status:Responder",
                "urn:oasis:names:tc:SAML:2.0:status:RequestDenied",
                None,
            ),
            LoginNotAuthorised,
        ),
        (
            (
                "urn:oasis:names:tc:SAML:2.0:status:Responder",
                "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed",
                "Authentication failed",
            ),
            SamlInvalid,
        ),
        (("urn:oasis:names:tc:SAML:2.0:status:Requester", None, None), SamlInvalid),
    ],
)
def test_non_success_status_maps_to_user_facing_error(
    world: SamlWorld, ctx: VerifyContext, status: tuple[str, str | None, str | None], error: type
) -> None:
    """Cancel, not-authorised and other failures map to their own error types."""
    rejected(world, ctx, ResponseSpec(status=status), error=error)


def test_unexpected_internal_error_becomes_saml_invalid(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """An internal failure (here: a broken decrypter) surfaces as SamlInvalid with a reason."""
    broken = VerifyContext(settings=ctx.settings, metadata=ctx.metadata, decrypter=None)  # type: ignore[arg-type]
    with pytest.raises(SamlInvalid) as info:
        verify_response(to_bytes(world.response(spec)), expect(spec), broken)
    assert info.value.detail == "unexpected_error:AttributeError"


def test_decryption_with_next_key_during_rollover(world: SamlWorld, tmp_path: object) -> None:
    """EncryptedIDs made for the next encryption key decrypt while it is configured."""
    from gateway_dev.devkeys import rsa_keypair

    nxt = rsa_keypair("sp-encryption-next")
    files = forge.write_pair(nxt, world.directory, "sp-encryption-next")
    settings = world.settings(encryption_next=files)
    ctx = make_context(world, settings)
    old_cert = world.sp_encryption
    world.sp_encryption = nxt  # the broker encrypts to the new certificate
    try:
        spec = ResponseSpec()
        response = world.response(spec)
    finally:
        world.sp_encryption = old_cert
    login = verify_response(to_bytes(response), expect(spec), ctx)
    assert login.identity.legal_subject_kvk == "12345678"


def test_encrypted_key_for_another_recipient_only_is_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """EncryptedIDs whose only EncryptedKey is addressed to someone else are refused."""

    def readdress(response: etree._Element) -> None:
        for ek in response.iter(q("xenc", "EncryptedKey")):
            if ek.get("Recipient") == SP_ID:
                ek.set("Recipient", "urn:someone:else")

    spec.sign_assertion = False

    def readdress_then_sign(response: etree._Element) -> None:
        readdress(response)
        assertion = response.find(q("saml", "Assertion"))
        forge.sign(assertion, world.broker, after=assertion.find(q("saml", "Issuer")))

    assert rejected(world, ctx, spec, readdress_then_sign) == "encrypted_key_for_us_missing"


def test_response_signature_is_checked_when_present(world: SamlWorld, ctx: VerifyContext) -> None:
    """A signed Response verifies; a broken Response signature is refused."""
    spec = ResponseSpec(sign_response=True)
    verify_response(to_bytes(world.response(spec)), expect(spec), ctx)

    spec2 = ResponseSpec(sign_response=True, destination=forge.ACS_URL)
    response = world.response(spec2)
    response.set("Consent", "urn:oasis:names:tc:SAML:2.0:consent:obtained")
    with pytest.raises(SamlInvalid) as info:
        verify_response(to_bytes(response), expect(spec2), ctx)
    assert info.value.detail == "response_signature_invalid"
