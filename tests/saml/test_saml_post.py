"""The HTTP-POST response binding through ServiceProvider (off by default)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from gateway.errors import SamlInvalid
from gateway.saml import ServiceProvider
from tests.support.saml import ResponseSpec, SamlWorld, to_bytes


@pytest.fixture
async def sp(world: SamlWorld) -> AsyncIterator[ServiceProvider]:
    provider = ServiceProvider(world.settings(accept_post_response=True, verify_pool="thread"))
    await provider.start()
    yield provider
    await provider.close()


async def test_post_response_is_verified_off_the_loop(
    world: SamlWorld, sp: ServiceProvider
) -> None:
    """A base64 SAMLResponse with a signed assertion gives the identity."""
    spec = ResponseSpec()
    b64 = base64.b64encode(to_bytes(world.response(spec))).decode()
    login = await sp.consume_post_response(b64, sp.expectation(spec.request_id, spec.now))
    assert login.identity.legal_subject_kvk == "12345678"


@pytest.mark.parametrize("value", ["", "!!!not base64!!!", base64.b64encode(b"junk").decode()])
async def test_malformed_post_input_is_saml_invalid(sp: ServiceProvider, value: str) -> None:
    """Bad base64, empty input and non-XML all end as SamlInvalid."""
    with pytest.raises(SamlInvalid):
        await sp.consume_post_response(value, sp.expectation("_r"))


async def test_post_binding_is_refused_unless_enabled(world: SamlWorld) -> None:
    """With the default settings an HTTP-POST SAMLResponse is refused outright."""
    provider = ServiceProvider(world.settings(verify_pool="thread"))
    await provider.start()
    try:
        spec = ResponseSpec()
        b64 = base64.b64encode(to_bytes(world.response(spec))).decode()
        with pytest.raises(SamlInvalid, match="post_binding_disabled"):
            await provider.consume_post_response(b64, provider.expectation(spec.request_id))
    finally:
        await provider.close()
