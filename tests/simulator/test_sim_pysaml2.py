"""A pysaml2 SP, written here and not in the gateway, completes a login through the simulator."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import aiohttp
import pytest
from lxml import etree
from saml2 import BINDING_HTTP_ARTIFACT, BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from gateway_dev.devkeys import KeyPair, rsa_keypair
from tests.support.simulator import (
    NS,
    MiniSp,
    acs_params,
    artifact_response,
    start_simulator,
    verify_signed,
)

SP_ENTITY = "urn:etoegang:DV:00000001234567890000:entities:0001"
ACS = "https://sp.example/saml/acs"


def _client(
    tmp_path: Path, pair: KeyPair, idp_metadata: bytes | None
) -> tuple[Saml2Client, MiniSp]:
    pair.write(tmp_path / "sp.key", tmp_path / "sp.crt")
    config: dict[str, object] = {
        "entityid": SP_ENTITY,
        "key_file": str(tmp_path / "sp.key"),
        "cert_file": str(tmp_path / "sp.crt"),
        "encryption_keypairs": [
            {"key_file": str(tmp_path / "sp.key"), "cert_file": str(tmp_path / "sp.crt")}
        ],
        "xmlsec_binary": shutil.which("xmlsec1"),
        "allow_unknown_attributes": True,
        "accepted_time_diff": 60,
        "signing_algorithm": SIG_RSA_SHA256,
        "digest_algorithm": DIGEST_SHA256,
        "service": {
            "sp": {
                "endpoints": {
                    "assertion_consumer_service": [
                        (ACS, BINDING_HTTP_ARTIFACT),
                        (ACS, BINDING_HTTP_POST),
                    ]
                },
                "authn_requests_signed": True,
                "want_assertions_signed": True,
                "want_response_signed": False,
                "only_use_keys_in_metadata": True,
                "requested_attributes": [
                    {"name": "urn:etoegang:DV:00000001234567890000:services:1", "required": False}
                ],
            }
        },
    }
    if idp_metadata is not None:
        config["metadata"] = {"inline": [idp_metadata.decode()]}
    conf = SPConfig()
    conf.load(config)
    # The decrypting helper shares the SP's key; it reads the verified assertion.
    helper = MiniSp(entity_id=SP_ENTITY, acs_url=ACS, key_pem=pair.key_pem, cert_pem=pair.cert_pem)
    return Saml2Client(conf), helper


@pytest.mark.parametrize(
    ("scenario", "legal", "intermediary"),
    [("direct", "12345678", None), ("chain", "23456789", "12345678")],
)
async def test_pysaml2_sp_logs_in_by_redirect_and_artifact(
    tmp_path: Path, scenario: str, legal: str, intermediary: str | None
) -> None:
    """pysaml2 signs a Redirect request, resolves the artifact, gets the scenario identity."""
    pair = rsa_keypair("pysaml2-sp")
    client, helper = _client(tmp_path, pair, None)
    sp_metadata = str(entity_descriptor(client.config)).encode()
    async with start_simulator(sp_metadata=sp_metadata) as sim, aiohttp.ClientSession() as http:
        async with http.get(sim.metadata_url) as resp:
            idp_md = await resp.read()
        client, helper = _client(tmp_path, pair, idp_md)
        request_id, info = client.prepare_for_authenticate(
            entityid=sim.settings.entity_id,
            relay_state="/portal",
            binding=BINDING_HTTP_REDIRECT,
            sigalg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
            response_binding=BINDING_HTTP_ARTIFACT,
            force_authn="true",
        )
        location = dict(info["headers"])["Location"]
        sim.use_scenario(scenario, request_id=request_id)
        async with http.get(location, allow_redirects=False) as resp:
            assert resp.status == 303
            params = acs_params(resp.headers["Location"])
        assert params["RelayState"] == "/portal"

        # pysaml2's own artifact path is broken (docs/dependencies.md, "pysaml2 as a peer"):
        # build and sign the ArtifactResolve with pysaml2, send it ourselves.
        _, signed = client.create_artifact_resolve(
            params["SAMLart"],
            sim.ars_url,
            "s1",
            sign=True,
            sign_alg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
        )
        soap = (
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            + signed.split("?>", 1)[1]
            + "</soap:Body></soap:Envelope>"
        )
        async with http.post(
            sim.ars_url, data=soap.encode(), headers={"Content-Type": "text/xml"}
        ) as resp:
            body = await resp.read()

    ar = artifact_response(body)
    verify_signed(ar, sim.keys.broker.cert_pem)  # on the original bytes
    inner = ar.find("samlp:Response", NS)
    parsed = client.parse_authn_request_response(
        base64.b64encode(etree.tostring(inner)).decode(),
        BINDING_HTTP_POST,
        outstanding={request_id: "/portal"},
    )
    assert parsed is not None
    assert parsed.assertion is not None  # pysaml2 verified the assertion signature
    assert parsed.assertion.authn_statement[0].authn_context.authn_context_class_ref.text == (
        "urn:etoegang:core:assurance-class:loa3"
    )

    # Decrypt the EncryptedIDs of the verified, outer assertion only.
    assertion = inner.find("saml:Assertion", NS)
    assert assertion.get("ID") == parsed.assertion.id
    attrs = helper.outer_attributes(assertion)
    kvk = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
    assert (kvk, legal) in attrs["urn:etoegang:core:LegalSubjectID"]
    pseudonym = sim.scenarios[scenario].pseudonym_for(SP_ENTITY)
    assert attrs["urn:etoegang:core:ActingSubjectID"] == [
        ("urn:etoegang:1.9:EntityConcernedID:Pseudo", pseudonym)
    ]
    if intermediary is None:
        assert "urn:etoegang:1.9:IntermediateEntityID:KvKnr" not in attrs
    else:
        assert attrs["urn:etoegang:1.9:IntermediateEntityID:KvKnr"] == [intermediary]
