"""Artifact binding: format, single use, expiry and the ArtifactResolve checks."""

from __future__ import annotations

import base64
import hashlib
import time

import aiohttp

from gateway_dev.devkeys import rsa_keypair
from tests.support.clock import FakeClock
from tests.support.simulator import (
    NS,
    MiniSp,
    acs_params,
    artifact_response,
    start_simulator,
    status_codes,
    verify_signed,
)

SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"


async def _artifact(
    session: aiohttp.ClientSession, sim, sp: MiniSp, scenario: str = "direct"
) -> str:
    rid, url = sp.redirect_url(sim.sso_url)
    sim.use_scenario(scenario, request_id=rid)
    async with session.get(url, allow_redirects=False) as resp:
        assert resp.status == 303
        params = acs_params(resp.headers["Location"])
        assert resp.headers["Location"].startswith(sp.acs_url + "?")
        assert params["RelayState"] == "state-1"
    assert sim.issued[-1].outcome == "success"
    return params["SAMLart"]


async def test_artifact_has_type_0004_and_sha1_source_id() -> None:
    """An artifact is type 0x0004, endpoint index 0, SourceID = SHA-1(entityID), 20-byte handle."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        raw = base64.b64decode(await _artifact(s, sim, sp))
    assert len(raw) == 44
    assert raw[:2] == b"\x00\x04"
    assert raw[2:4] == b"\x00\x00"
    assert raw[4:24] == hashlib.sha1(sim.settings.entity_id.encode()).digest()  # noqa: S324


async def test_artifact_resolves_once_and_never_twice() -> None:
    """The first ArtifactResolve returns the Response; a second returns no message."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        artifact = await _artifact(s, sim, sp)
        status, first = await sp.resolve(s, sim, artifact)
        status2, second = await sp.resolve(s, sim, artifact)
    assert status == 200
    assert status2 == 200
    ar1, ar2 = artifact_response(first), artifact_response(second)
    verify_signed(ar1, sim.keys.broker.cert_pem)
    assert status_codes(ar1) == [SUCCESS]
    assert ar1.find("samlp:Response", NS) is not None
    verify_signed(ar2, sim.keys.broker.cert_pem)
    assert ar2.find("samlp:Response", NS) is None


async def test_expired_artifact_does_not_resolve() -> None:
    """An artifact older than its lifetime resolves to an ArtifactResponse without a message."""
    sp = MiniSp()
    clock = FakeClock(time.time())  # now: the broker's certificates must be valid
    async with (
        start_simulator(
            sp_metadata=sp.metadata(), clock=clock.time, artifact_lifetime_seconds=30
        ) as sim,
        aiohttp.ClientSession() as s,
    ):
        artifact = await _artifact(s, sim, sp)
        clock.advance(31)
        _, body = await sp.resolve(s, sim, artifact)
    assert artifact_response(body).find("samlp:Response", NS) is None


async def test_unsigned_artifact_resolve_is_denied_without_burning_the_artifact() -> None:
    """An unsigned ArtifactResolve gets Requester/RequestDenied; the real SP can still resolve."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        artifact = await _artifact(s, sim, sp)
        unsigned = sp.artifact_resolve(artifact, sim.ars_url, sign=False)
        status, body = await sp.resolve(s, sim, artifact, body=unsigned)
        _, good = await sp.resolve(s, sim, artifact)
    assert status == 200
    denied = artifact_response(body)
    assert status_codes(denied) == [REQUESTER, DENIED]
    assert denied.find("samlp:Response", NS) is None
    assert artifact_response(good).find("samlp:Response", NS) is not None


async def test_artifact_resolve_signed_with_foreign_key_is_denied() -> None:
    """An ArtifactResolve signed with a key not in the SP metadata gets RequestDenied."""
    sp = MiniSp()
    other = rsa_keypair("intruder")
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        artifact = await _artifact(s, sim, sp)
        forged = sp.artifact_resolve(artifact, sim.ars_url, key_pem=other.key_pem)
        status, body = await sp.resolve(s, sim, artifact, body=forged)
    assert status == 200
    assert status_codes(artifact_response(body)) == [REQUESTER, DENIED]


async def test_non_soap_body_gets_a_soap_fault_not_a_crash() -> None:
    """Garbage or a DOCTYPE at the ARS is answered with a SOAP Client fault (HTTP 400)."""
    sp = MiniSp()
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        for body in (b"not xml", evil, b"<a/>"):
            status, reply = await sp.resolve(s, sim, "x", body=body)
            assert status == 400
            assert b"Fault" in reply
            assert b"root:" not in reply


async def test_ars_answers_with_text_xml() -> None:
    """The ArtifactResolutionService answers SOAP with Content-Type text/xml."""
    sp = MiniSp()
    async with start_simulator(sp_metadata=sp.metadata()) as sim, aiohttp.ClientSession() as s:
        artifact = await _artifact(s, sim, sp)
        async with s.post(sim.ars_url, data=sp.artifact_resolve(artifact, sim.ars_url)) as resp:
            assert resp.content_type == "text/xml"
