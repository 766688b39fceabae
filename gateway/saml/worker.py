"""The CPU-heavy SAML work as plain functions that run in a worker process or thread.

A process pool is the default: signature checks, decryption and the Python
that walks the XML then run truly in parallel and never hold the event
loop's GIL (measured: with threads, a burst of logins stalls the loop by
~40 ms; with processes it stays far lower). Each worker loads our keys once
(``init_worker``); per call only the message bytes, the expectation and the
current broker metadata cross the process boundary.
"""

from __future__ import annotations

import datetime as dt
import os

from gateway.identity import Identity
from gateway.saml.artifact import Artifact, artifact_resolve_envelope, verify_artifact_response
from gateway.saml.authn_request import AuthnRequestHttp, build_authn_request
from gateway.saml.encryption import Decrypter
from gateway.saml.keys import SpKeys, load_sp_keys
from gateway.saml.logout import (
    LogoutExpectation,
    LogoutRequestHttp,
    build_logout_request,
    verify_logout_response,
)
from gateway.saml.metadata import BrokerMetadata
from gateway.saml.settings import SamlSettings
from gateway.saml.verify import Expectation, VerifiedLogin, VerifyContext, verify_response

_STATE: tuple[SamlSettings, SpKeys, Decrypter] | None = None


def make_decrypter(settings: SamlSettings, keys: SpKeys) -> Decrypter:
    return Decrypter(
        entity_id=settings.entity_id,
        keys=keys.decryption_keys,
        key_transport_algorithms=settings.key_transport_algorithms,
        block_algorithms=settings.block_algorithms,
        max_bytes=settings.max_message_bytes,
    )


def init_worker(settings: SamlSettings, keys: SpKeys | None = None, *, nice: int = 0) -> None:
    """Load keys once per worker (processes cannot share the parent's key objects).

    ``nice`` lowers a worker *process's* CPU priority so that, on a busy host, the
    kernel runs the event loop (proxied traffic) first and logins absorb the wait.
    """
    global _STATE
    if nice:
        os.nice(nice)
    keys = keys or load_sp_keys(settings)
    _STATE = (settings, keys, make_decrypter(settings, keys))


def _state() -> tuple[SamlSettings, SpKeys, Decrypter]:
    if _STATE is None:
        raise RuntimeError("SAML worker not initialised")
    return _STATE


def ping() -> bool:
    """Warm-up call so workers start before the first login."""
    return _STATE is not None


def resolve_envelope(artifact: Artifact, url: str, resolve_id: str, now: dt.datetime) -> bytes:
    settings, keys, _ = _state()
    return artifact_resolve_envelope(settings, keys.signing, artifact, url, resolve_id, now)


def authn_request(
    metadata: BrokerMetadata, relay_state: str | None
) -> tuple[str, AuthnRequestHttp]:
    settings, keys, _ = _state()
    return build_authn_request(settings, metadata, keys.signing, relay_state)


def logout_request(
    metadata: BrokerMetadata, identity: Identity, relay_state: str | None
) -> LogoutRequestHttp:
    settings, keys, _ = _state()
    return build_logout_request(settings, metadata, keys.signing, identity, relay_state)


def verify_logout(raw_query: str, expected: LogoutExpectation, metadata: BrokerMetadata) -> None:
    settings, _, _ = _state()
    verify_logout_response(raw_query, expected, settings, metadata)


def verify_artifact(
    data: bytes, resolve_id: str, expected: Expectation, metadata: BrokerMetadata
) -> VerifiedLogin:
    settings, _, decrypter = _state()
    ctx = VerifyContext(settings=settings, metadata=metadata, decrypter=decrypter)
    return verify_artifact_response(data, resolve_id, expected, ctx)


def verify_post(data: bytes, expected: Expectation, metadata: BrokerMetadata) -> VerifiedLogin:
    settings, _, decrypter = _state()
    ctx = VerifyContext(settings=settings, metadata=metadata, decrypter=decrypter)
    return verify_response(data, expected, ctx)
