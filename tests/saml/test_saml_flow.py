"""End-to-end logins: our ServiceProvider against the broker simulator over loopback HTTP.

Each test sends a real signed AuthnRequest to the simulator's SSO endpoint,
takes the ``SAMLart`` from its redirect to our ACS, and lets
``ServiceProvider.consume_artifact`` resolve it by SOAP and verify it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from gateway.errors import (
    BrokerUnavailable,
    LevelTooLow,
    LoginCancelled,
    LoginNotAuthorised,
    SamlInvalid,
)
from gateway.identity import Loa
from gateway.saml import ServiceProvider
from gateway.saml.keys import load_sp_keys
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway_dev.simulator import Simulator
from tests.support.saml import SERVICE_ID, SamlWorld
from tests.support.simulator import acs_params, start_simulator


@dataclass
class Flow:
    sp: ServiceProvider
    sim: Simulator
    browser: aiohttp.ClientSession

    async def artifact_for(self, scenario: str, relay_state: str = "rs-1") -> tuple[str, str]:
        """Run the browser part of a login; returns (request ID, SAMLart)."""
        request_id, http = self.sp.build_authn_request(relay_state)
        self.sim.use_scenario(scenario, request_id=request_id)
        if http.binding == "redirect":
            # encoded=True: send the URL byte for byte, as a browser does (the
            # query signature covers the exact encoding).
            resp = await self.browser.get(URL(http.url, encoded=True), allow_redirects=False)
        else:
            assert http.form is not None
            resp = await self.browser.post(http.url, data=http.form, allow_redirects=False)
        async with resp:
            assert resp.status in (302, 303), await resp.text()
            params = acs_params(resp.headers["Location"])
        assert params["RelayState"] == relay_state
        return request_id, params["SAMLart"]

    async def login(self, scenario: str):  # type: ignore[no-untyped-def]
        request_id, artifact = await self.artifact_for(scenario)
        return await self.sp.consume_artifact(artifact, self.sp.expectation(request_id))


async def _flow(
    world: SamlWorld, sim_overrides: dict[str, object] | None = None, **overrides: object
) -> AsyncIterator[Flow]:
    base = world.settings()
    keys = load_sp_keys(base)
    async with start_simulator(
        sp_metadata=sp_metadata_xml(base, keys),
        catalogue=service_catalogue_xml(base, keys),
        **(sim_overrides or {}),
    ) as sim:
        settings = world.settings(
            broker_metadata=sim.metadata_url, broker_entity_id=sim.settings.entity_id, **overrides
        )
        sp = ServiceProvider(settings)
        await sp.start()
        try:
            async with aiohttp.ClientSession() as browser:
                yield Flow(sp=sp, sim=sim, browser=browser)
        finally:
            await sp.close()


# One simulator and SP for the module: starting them generates RSA keys (seconds).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def flow(world: SamlWorld) -> AsyncIterator[Flow]:
    async for f in _flow(world):
        yield f


@pytest.mark.parametrize(
    ("scenario", "kvk", "intermediary", "loa"),
    [
        ("direct", "12345678", None, Loa.EH3),
        ("chain", "23456789", "12345678", Loa.EH3),
        ("chain-no-mandate", "34567890", "12345678", Loa.EH3),
        ("chain-encrypted-intermediary", "23456789", "12345678", Loa.EH3),
        ("direct-eh4", "45678901", None, Loa.EH4),
        ("branch", "45678901", None, Loa.EH3),
    ],
)
async def test_successful_scenarios_give_the_outer_identity(
    flow: Flow, scenario: str, kvk: str, intermediary: str | None, loa: Loa
) -> None:
    """Every success scenario resolves, verifies and decrypts to the scenario's identity."""
    login = await flow.login(scenario)
    ident = login.identity
    assert ident.legal_subject_kvk == kvk
    assert ident.intermediary_kvk == intermediary
    assert ident.loa is loa
    assert ident.service_id == SERVICE_ID
    assert ident.acting_subject
    if scenario == "branch":
        assert ident.branch == "000012345678"
    if scenario == "direct":
        assert ident.legal_subject_rsin == "812345671"
        assert ident.legal_subject_name == "Administratiekantoor De Boekhouder B.V."


@pytest.mark.parametrize(
    ("scenario", "error"),
    [
        ("direct-eh2", LevelTooLow),
        ("direct-eh2plus", LevelTooLow),
        ("chain-eh2", LevelTooLow),
        ("cancel", LoginCancelled),
        ("not-authorised", LoginNotAuthorised),
        ("authn-failed", SamlInvalid),
    ],
)
async def test_failing_scenarios_raise_their_user_facing_error(
    flow: Flow, scenario: str, error: type[Exception]
) -> None:
    """Low levels, cancel, refusal and failure each map to their own error type."""
    with pytest.raises(error) as info:
        await flow.login(scenario)
    assert type(info.value) is error


async def test_artifact_is_single_use(flow: Flow) -> None:
    """Resolving the same artifact twice fails the second time (the broker forgets it)."""
    request_id, artifact = await flow.artifact_for("direct")
    expectation = flow.sp.expectation(request_id)
    await flow.sp.consume_artifact(artifact, expectation)
    with pytest.raises(SamlInvalid):
        await flow.sp.consume_artifact(artifact, expectation)


async def test_response_for_another_browsers_request_is_refused(flow: Flow) -> None:
    """An artifact for request A presented with browser B's pending request ID is refused."""
    _, artifact = await flow.artifact_for("direct")
    other_id, _ = flow.sp.build_authn_request(None)
    with pytest.raises(SamlInvalid) as info:
        await flow.sp.consume_artifact(artifact, flow.sp.expectation(other_id))
    assert info.value.detail == "response_in_response_to_mismatch"


async def test_post_binding_authn_request_works(world: SamlWorld) -> None:
    """With request_binding=post the signed AuthnRequest form is accepted by the broker."""
    async for flow in _flow(world, request_binding="post"):
        login = await flow.login("chain")
        assert login.identity.mode == "chain"


async def test_real_broker_shape_and_stress_options_are_accepted(world: SamlWorld) -> None:
    """KeyName-only signatures, prefix list, default namespace, ms times, SHA-1 KeyNames and
    the extra EncryptedKey listed first: our gateway reads the identity all the same."""
    shapes = {"real_broker_shape": True, "extra_encrypted_key": True}
    async for flow in _flow(world, sim_overrides=shapes):
        for scenario, kvk in (("direct", "12345678"), ("chain", "23456789")):
            login = await flow.login(scenario)
            assert login.identity.legal_subject_kvk == kvk
            assert login.identity.mode == scenario


async def test_broker_down_is_broker_unavailable(flow: Flow) -> None:
    """When the ArtifactResolutionService refuses connections the error is BrokerUnavailable."""
    request_id, artifact = await flow.artifact_for("direct")
    sp = ServiceProvider(flow.sp.settings.model_copy(update={"verify_pool": "thread"}))
    await sp.start()
    try:
        metadata = flow.sp.metadata
        # The same broker, but its ARS on a closed port: a real connection refusal.
        sp.broker._current = replace(  # test reaches the far edge
            metadata, ars_urls=dict.fromkeys(metadata.ars_urls, "http://127.0.0.1:9/ars")
        )
        with pytest.raises(BrokerUnavailable):
            await sp.consume_artifact(artifact, sp.expectation(request_id))
    finally:
        await sp.close()
