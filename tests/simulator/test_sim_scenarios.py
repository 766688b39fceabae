"""Scenario content: levels, chain, branch, Advice decoys, error statuses, cipher options."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from gateway_dev.simulator import Company, Intermediary, Scenario
from gateway_dev.simulator.settings import load_scenarios
from tests.support.simulator import (
    EXAMPLE_SCENARIOS,
    NS,
    MiniSp,
    login_once,
    start_simulator,
    status_codes,
    verify_signed,
)

RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
AUTHN_FAILED = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"
DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
KVK = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
LEGAL = "urn:etoegang:core:LegalSubjectID"
INTERMEDIARY = "urn:etoegang:1.9:IntermediateEntityID:KvKnr"


@pytest.mark.parametrize(
    ("scenario", "codes", "message"),
    [
        ("cancel", [RESPONDER, AUTHN_FAILED], "cancelled"),
        ("authn-failed", [RESPONDER, AUTHN_FAILED], "failed"),
        ("not-authorised", [RESPONDER, DENIED], "authorisation"),
    ],
)
async def test_error_scenarios_yield_their_saml_status(
    scenario: str, codes: list[str], message: str
) -> None:
    """Each error scenario answers a Response without assertion and with its status codes."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        response = await login_once(s, sim, sp, scenario)
    assert status_codes(response) == codes
    assert message in response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)
    assert response.find("saml:Assertion", NS) is None


@pytest.mark.parametrize(
    ("scenario", "loa"),
    [("direct-eh2", "loa2"), ("direct-eh2plus", "loa2plus"), ("direct-eh4", "loa4")],
)
async def test_level_of_assurance_follows_the_scenario(scenario: str, loa: str) -> None:
    """AuthnContextClassRef carries the scenario's level (EH2 and EH2+ for refusal tests)."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        response = await login_once(s, sim, sp, scenario)
    ref = response.findtext(
        "saml:Assertion/saml:AuthnStatement//saml:AuthnContextClassRef", namespaces=NS
    )
    assert ref == f"urn:etoegang:core:assurance-class:{loa}"


async def test_assertion_shape_matches_the_eherkenning_profile() -> None:
    """Signed assertion; Destination, Recipient, InResponseTo, Audience and ServiceID are right."""
    sp = MiniSp()
    async with (
        start_simulator(sp_metadata=sp.metadata(), catalogue=sp.catalogue()) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "branch")
        request_id = sim.issued[-1].request_id
    assertion = response.find("saml:Assertion", NS)
    verify_signed(assertion, sim.keys.broker.cert_pem)
    assert response.find("ds:Signature", NS) is None  # inner Response unsigned, like brokers
    assert response.get("Destination") == sp.acs_url
    assert response.get("InResponseTo") == request_id
    conf = assertion.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
    assert conf.get("Recipient") == sp.acs_url
    assert conf.get("InResponseTo") == request_id
    assert conf.get("NotOnOrAfter")
    audience = assertion.findtext(
        "saml:Conditions/saml:AudienceRestriction/saml:Audience", namespaces=NS
    )
    assert audience == sp.entity_id
    assert assertion.findtext(".//saml:AuthenticatingAuthority", namespaces=NS)
    attrs = sp.outer_attributes(assertion)
    assert attrs["urn:etoegang:core:ServiceID"] == [sp.service_id]
    assert attrs["urn:etoegang:core:ServiceUUID"] == [sp.service_uuid]  # from the catalogue
    assert attrs["urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"] == ["000012345678"]
    assert attrs[LEGAL] == [(KVK, "45678901")]
    assert INTERMEDIARY not in attrs
    assert attrs["urn:etoegang:1.11:attribute-represented:CompanyName"] == [
        "Salarisbureau Pietersen"
    ]


async def test_advice_holds_signed_assertions_that_disagree_with_the_outer_one() -> None:
    """Advice has two assertions signed by other keys whose KvK and intermediary differ."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        response = await login_once(s, sim, sp, "direct")
    nested = response.findall("saml:Assertion/saml:Advice/saml:Assertion", NS)
    assert len(nested) == 2
    verify_signed(nested[0], sim.keys.authentication_service.cert_pem)
    verify_signed(nested[1], sim.keys.mandate_service.cert_pem)
    advice_attrs = sp.outer_attributes(nested[1])
    outer_attrs = sp.outer_attributes(response.find("saml:Assertion", NS))
    assert advice_attrs[LEGAL] != outer_attrs[LEGAL]
    assert INTERMEDIARY in advice_attrs  # a reader of Advice would wrongly see a chain login
    assert INTERMEDIARY not in outer_attrs


async def test_encrypted_ids_carry_one_key_for_the_sp_by_default() -> None:
    """Like most brokers, each EncryptedID has exactly one EncryptedKey: ours."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        response = await login_once(s, sim, sp, "direct")
    for enc in response.findall("saml:Assertion/saml:AttributeStatement//saml:EncryptedID", NS):
        recipients = [k.get("Recipient") for k in enc.findall("xenc:EncryptedKey", NS)]
        assert recipients == [sp.entity_id]


async def test_extra_encrypted_key_is_an_opt_in_stress_option() -> None:
    """extra_encrypted_key (settings or per scenario) adds a key for the broker, listed first."""
    sp = MiniSp()
    stress = Scenario(
        id="direct-extra-key",
        label="Test",
        legal_subject=Company(kvk="11112222"),
        extra_encrypted_key=True,
    )
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        sim.add_scenario(stress)
        response = await login_once(s, sim, sp, "direct-extra-key")
        plain = await login_once(s, sim, sp, "direct")
    enc = response.find("saml:Assertion/saml:AttributeStatement//saml:EncryptedID", NS)
    recipients = [k.get("Recipient") for k in enc.findall("xenc:EncryptedKey", NS)]
    assert recipients == [sim.settings.entity_id, sp.entity_id]
    enc = plain.find("saml:Assertion/saml:AttributeStatement//saml:EncryptedID", NS)
    assert len(enc.findall("xenc:EncryptedKey", NS)) == 1  # the setting itself stays off
    async with (
        start_simulator(sp_metadata=sp.metadata(), extra_encrypted_key=True) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "direct")
    enc = response.find("saml:Assertion/saml:AttributeStatement//saml:EncryptedID", NS)
    recipients = [k.get("Recipient") for k in enc.findall("xenc:EncryptedKey", NS)]
    assert recipients == [sim.settings.entity_id, sp.entity_id]


@pytest.mark.parametrize(
    ("cipher", "transport"),
    [("aes128-cbc", "rsa-oaep"), ("aes256-cbc", "rsa-oaep-mgf1p"), ("aes256-gcm", "rsa-oaep")],
)
async def test_cipher_options_decrypt_to_the_same_identity(cipher: str, transport: str) -> None:
    """AES-CBC/GCM and both RSA-OAEP variants all decrypt to the scenario's KvK and RSIN."""
    sp = MiniSp()
    async with (
        start_simulator(
            sp_metadata=sp.metadata(), block_cipher=cipher, key_transport=transport
        ) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "direct")
    attrs = sp.outer_attributes(response.find("saml:Assertion", NS))
    assert attrs[LEGAL] == [
        (KVK, "12345678"),
        ("urn:etoegang:1.9:EntityConcernedID:RSIN", "812345671"),
    ]


async def test_encrypted_intermediary_and_inline_scenarios() -> None:
    """An inline scenario can send IntermediateEntityID encrypted; it decrypts to the KvK."""
    sp = MiniSp()
    custom = Scenario(
        id="custom-chain",
        label="Test",
        legal_subject=Company(kvk="11112222"),
        intermediary=Intermediary(kvk="33334444", encrypted=True),
    )
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        sim.add_scenario(custom)
        response = await login_once(s, sim, sp, "custom-chain")
    attrs = sp.outer_attributes(response.find("saml:Assertion", NS))
    assert attrs[INTERMEDIARY] == [(KVK, "33334444")]
    assert attrs[LEGAL] == [(KVK, "11112222")]


def test_example_scenarios_cover_the_issue_list() -> None:
    """The example file has direct, chain, chain without mandate, EH2, EH2+, branch and errors."""
    scenarios = {s.id: s for s in load_scenarios(EXAMPLE_SCENARIOS)}
    assert scenarios["direct"].intermediary is None
    assert scenarios["chain"].intermediary is not None
    assert scenarios["chain-no-mandate"].intermediary is not None
    assert {scenarios["direct-eh2"].loa, scenarios["direct-eh2plus"].loa} == {"loa2", "loa2plus"}
    assert scenarios["branch"].branch is not None
    outcomes = {s.outcome for s in scenarios.values()}
    assert outcomes == {"success", "cancel", "authn_failed", "not_authorised"}


def test_pseudonym_differs_per_legal_subject_like_real_brokers() -> None:
    """The same person gets a different ActingSubjectID when acting for another company."""
    scenarios = {s.id: s for s in load_scenarios(EXAMPLE_SCENARIOS)}
    sp = "urn:etoegang:DV:1:entities:1"
    assert scenarios["direct"].pseudonym_for(sp) != scenarios["chain"].pseudonym_for(sp)
    assert scenarios["direct"].pseudonym_for(sp) == scenarios["direct-eh2"].pseudonym_for(sp)


def test_example_config_loads_with_paths_resolved() -> None:
    """config/simulator.example.yaml validates and finds its scenarios file."""
    from gateway_dev.simulator import load_simulator_settings
    from gateway_dev.simulator.settings import all_scenarios

    settings = load_simulator_settings(EXAMPLE_SCENARIOS.parent / "simulator.example.yaml")
    assert settings.scenarios_file == EXAMPLE_SCENARIOS
    assert len(all_scenarios(settings)) >= 10


def test_bad_config_reports_every_problem(tmp_path) -> None:
    """An invalid settings file raises ConfigInvalid naming each bad field."""
    from gateway.errors import ConfigInvalid
    from gateway_dev.simulator import load_simulator_settings

    bad = tmp_path / "sim.yaml"
    bad.write_text("artifact_lifetime_seconds: -1\nacs_delivery: fax\nbogus: 1\n")
    with pytest.raises(ConfigInvalid) as info:
        load_simulator_settings(bad)
    paths = {p.path for p in info.value.problems}
    assert {"artifact_lifetime_seconds", "acs_delivery", "bogus"} <= paths


NAMES = {
    "urn:etoegang:1.11:attribute-represented:CompanyName",
    "urn:etoegang:1.13:attribute-intermediate:CompanyName",
}


@pytest.mark.parametrize(
    ("requested", "send_unrequested", "expected"),
    [
        (("urn:etoegang:1.11:attribute-represented:CompanyName",), False, 1),
        ((), False, 0),
        ((), True, 2),
    ],
    ids=["one-requested", "none-requested", "stress-send-anyway"],
)
async def test_optional_attributes_only_when_the_catalogue_requests_them(
    requested: tuple[str, ...], send_unrequested: bool, expected: int
) -> None:
    """Company names go out only when requested in the catalogue (or with the stress option)."""
    sp = MiniSp()
    async with (
        start_simulator(
            sp_metadata=sp.metadata(),
            catalogue=sp.catalogue(requested=requested),
            send_unrequested_attributes=send_unrequested,
        ) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "chain")
    attrs = sp.outer_attributes(response.find("saml:Assertion", NS))
    sent = NAMES & set(attrs)
    assert len(sent) == expected
    assert set(requested) <= sent or send_unrequested


async def test_without_a_catalogue_nothing_optional_is_sent() -> None:
    """No catalogue: no company names (nothing was requested), a derived ServiceUUID."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        response = await login_once(s, sim, sp, "chain")
    attrs = sp.outer_attributes(response.find("saml:Assertion", NS))
    assert not NAMES & set(attrs)
    assert attrs["urn:etoegang:core:ServiceUUID"] != [sp.service_uuid]


async def test_branch_login_needs_the_restriction_allowed_in_the_catalogue() -> None:
    """A branch-restricted login for a service that allows no restriction is RequestDenied."""
    sp = MiniSp()
    async with (
        start_simulator(sp_metadata=sp.metadata(), catalogue=sp.catalogue(restrictions=())) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "branch")
    assert status_codes(response) == [RESPONDER, DENIED]
    assert response.find("saml:Assertion", NS) is None
    assert "branch" in response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)


async def test_service_missing_from_the_catalogue_is_refused() -> None:
    """A ServiceID the catalogue does not list is refused (Requester/RequestDenied)."""
    sp = MiniSp()
    other = "urn:etoegang:DV:00000001234567890000:services:9"
    async with (
        start_simulator(sp_metadata=sp.metadata(), catalogue=sp.catalogue(service_id=other)) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "direct")
    assert status_codes(response) == ["urn:oasis:names:tc:SAML:2.0:status:Requester", DENIED]
    assert "catalogue" in response.findtext("samlp:Status/samlp:StatusMessage", namespaces=NS)


def _service_uuid(sp: MiniSp, response: etree._Element) -> list[str]:
    return sp.outer_attributes(response.find("saml:Assertion", NS))["urn:etoegang:core:ServiceUUID"]


async def test_catalogue_file_is_read_and_reread_on_change(tmp_path: Path) -> None:
    """service_catalogue as a file: its ServiceUUID is used, and a rewrite is picked up."""
    sp = MiniSp()
    path = tmp_path / "catalogue.xml"
    path.write_bytes(sp.catalogue())
    async with (
        start_simulator(sp_metadata=sp.metadata(), service_catalogue=str(path)) as sim,
        aiohttp.ClientSession() as s,
    ):
        first = await login_once(s, sim, sp, "direct")
        sp.service_uuid = "99999999-9f8e-4d7c-8b6a-5f4e3d2c1b0a"
        path.write_bytes(sp.catalogue())
        os.utime(path, (1, 1))  # a different mtime even within the same second
        second = await login_once(s, sim, sp, "direct")
    assert _service_uuid(sp, first) == ["3d2c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a"]
    assert _service_uuid(sp, second) == ["99999999-9f8e-4d7c-8b6a-5f4e3d2c1b0a"]


async def test_real_broker_shape_sends_the_shapes_real_brokers_send() -> None:
    """KeyName-only KeyInfo, xacml-saml prefix list, default namespace, ms times, SHA-1 KeyNames."""
    sp = MiniSp()
    async with (
        start_simulator(
            sp_metadata=sp.metadata(), catalogue=sp.catalogue(), real_broker_shape=True
        ) as sim,
        aiohttp.ClientSession() as s,
    ):
        response = await login_once(s, sim, sp, "chain")
    assertion = response.find("saml:Assertion", NS)
    verify_signed(assertion, sim.keys.broker.cert_pem)  # still a valid signature
    key_info = assertion.find("ds:Signature/ds:KeyInfo", NS)
    assert [etree.QName(c).localname for c in key_info] == ["KeyName"]
    prefix_list = assertion.find(
        "ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform/"
        "{http://www.w3.org/2001/10/xml-exc-c14n#}InclusiveNamespaces",
        NS,
    )
    assert prefix_list is not None and prefix_list.get("PrefixList") == "xacml-saml"
    assert assertion.prefix is None  # the SAML namespace is the default namespace
    assert len(assertion.get("IssueInstant")) == len("2026-01-01T00:00:00.000Z")
    for ek in assertion.iterfind("saml:AttributeStatement//xenc:EncryptedKey", NS):
        assert len(ek.findtext("ds:KeyInfo/ds:KeyName", namespaces=NS)) == 40  # SHA-1 hex
    attrs = sp.outer_attributes(assertion)  # an independent SP still decrypts everything
    assert attrs[LEGAL] == [(KVK, "23456789")]
