"""Fixtures for the SAML core tests: a throw-away broker and SP, a verify context."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.saml.encryption import Decrypter
from gateway.saml.keys import load_sp_keys
from gateway.saml.metadata import parse_broker_metadata
from gateway.saml.settings import SamlSettings
from gateway.saml.verify import Expectation, VerifyContext
from tests.support.saml import ACS_URL, SP_ID, ResponseSpec, SamlWorld


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> SamlWorld:
    """One broker + SP key set for the whole session (RSA key generation is slow)."""
    return SamlWorld(directory=Path(tmp_path_factory.mktemp("saml")))


@pytest.fixture(scope="session")
def settings(world: SamlWorld) -> SamlSettings:
    return world.settings()


def make_context(world: SamlWorld, settings: SamlSettings) -> VerifyContext:
    keys = load_sp_keys(settings)
    return VerifyContext(
        settings=settings,
        metadata=parse_broker_metadata(world.broker_metadata()),
        decrypter=Decrypter(
            entity_id=settings.entity_id,
            keys=keys.decryption_keys,
            key_transport_algorithms=settings.key_transport_algorithms,
            block_algorithms=settings.block_algorithms,
            max_bytes=settings.max_message_bytes,
        ),
    )


@pytest.fixture(scope="session")
def ctx(world: SamlWorld, settings: SamlSettings) -> VerifyContext:
    return make_context(world, settings)


@pytest.fixture
def spec() -> ResponseSpec:
    return ResponseSpec()


def expect(spec: ResponseSpec) -> Expectation:
    return Expectation(
        request_id=spec.request_id, acs_url=ACS_URL, sp_entity_id=SP_ID, now=spec.now
    )
