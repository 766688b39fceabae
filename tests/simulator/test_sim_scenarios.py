"""Scenario content: levels, chain, branch, Advice decoys, error statuses, cipher options."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.simulator import Company, Intermediary, Scenario
from gateway.simulator.settings import load_scenarios
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
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
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
    assert attrs["urn:etoegang:core:ServiceUUID"][0]
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


async def test_encrypted_ids_carry_a_decoy_key_and_pick_by_recipient() -> None:
    """Each EncryptedID has a second EncryptedKey for another Recipient, listed first."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
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
    from gateway.simulator import load_simulator_settings
    from gateway.simulator.settings import all_scenarios

    settings = load_simulator_settings(EXAMPLE_SCENARIOS.parent / "simulator.example.yaml")
    assert settings.scenarios_file == EXAMPLE_SCENARIOS
    assert len(all_scenarios(settings)) >= 10


def test_bad_config_reports_every_problem(tmp_path) -> None:
    """An invalid settings file raises ConfigInvalid naming each bad field."""
    from gateway.errors import ConfigInvalid
    from gateway.simulator import load_simulator_settings

    bad = tmp_path / "sim.yaml"
    bad.write_text("artifact_lifetime_seconds: -1\nacs_delivery: fax\nbogus: 1\n")
    with pytest.raises(ConfigInvalid) as info:
        load_simulator_settings(bad)
    paths = {p.path for p in info.value.problems}
    assert {"artifact_lifetime_seconds", "acs_delivery", "bogus"} <= paths
