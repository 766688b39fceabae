"""The simulator's state and its Python control API (what tests and the demo drive).

One :class:`Simulator` per application, reachable as ``app[SIMULATOR]``. It
holds the scenarios, the queue of scenarios chosen in advance ("the next
login for AuthnRequest R uses scenario S"), pending login pages, issued
artifacts, a record of every login answered, the broker's own sessions
(ended by single logout) and a record of every LogoutRequest answered. All of it lives in process
memory: the simulator is one process by design.
"""

from __future__ import annotations

import datetime as dt
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway_dev.devkeys import rsa_keypair
from gateway_dev.simulator.artifacts import ArtifactStore
from gateway_dev.simulator.authnrequest import AuthnRequest
from gateway_dev.simulator.catalogue import ServiceCatalogue, parse_service_catalogue
from gateway_dev.simulator.idpmetadata import ARS_PATH, METADATA_PATH, SLO_PATH, SSO_PATH
from gateway_dev.simulator.messages import Keys, Rewrite
from gateway_dev.simulator.scenarios import Scenario
from gateway_dev.simulator.settings import SimulatorSettings, all_scenarios
from gateway_dev.simulator.spmetadata import DocumentSource, SpMetadata, SpMetadataSource
from gateway_dev.simulator.xmlcrypto import Signer


@dataclass(frozen=True)
class IssuedLogin:
    """A record of one answered AuthnRequest, so tests know what the SP should see."""

    request_id: str
    scenario_id: str
    outcome: str
    sp_entity_id: str
    artifact: str | None
    """``None`` when the Response went by HTTP-POST."""
    pseudonym: str | None
    legal_subject_kvk: str | None
    intermediary_kvk: str | None
    loa: str | None


@dataclass(frozen=True)
class PendingLogin:
    """An AuthnRequest waiting for a person to pick a scenario on the login page."""

    request: AuthnRequest
    relay_state: str | None
    sp_entity_id: str
    expires_at: float


@dataclass(frozen=True)
class BrokerSession:
    """The broker's own (simulated) session of one successful login, ended by single logout."""

    sp_entity_id: str
    name_id: str
    """The transient Subject NameID of the outer assertion."""
    name_qualifier: str
    session_index: str
    scenario_id: str


@dataclass(frozen=True)
class LogoutRecord:
    """A record of one answered LogoutRequest."""

    request_id: str
    sp_entity_id: str
    status: str
    """``success`` or ``refused``."""
    reason: str | None
    ended: tuple[BrokerSession, ...]


def _spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class Simulator:
    """Control API of one running broker simulator."""

    def __init__(
        self, settings: SimulatorSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.scenarios: dict[str, Scenario] = {s.id: s for s in all_scenarios(settings)}
        self.artifacts = ArtifactStore(settings.artifact_lifetime_seconds, clock)
        self.metadata = SpMetadataSource(
            settings.sp_metadata, refresh_seconds=settings.sp_metadata_refresh_seconds
        )
        self.catalogue: DocumentSource[ServiceCatalogue] = DocumentSource(
            settings.service_catalogue,
            refresh_seconds=settings.sp_metadata_refresh_seconds,
            parse=parse_service_catalogue,
            what="service catalogue",
        )
        self.issued: list[IssuedLogin] = []
        self.sessions: dict[str, BrokerSession] = {}
        """Live simulated broker sessions by SessionIndex."""
        self.logouts: list[LogoutRecord] = []
        self.keys = Keys(
            broker=_broker_signer(settings),
            authentication_service=_ephemeral("authentication-service"),
            mandate_service=_ephemeral("mandate-service"),
        )
        self.tls_context: ssl.SSLContext | None = (
            _tls_context(settings) if settings.mtls is not None else None
        )
        self._trusted: set[bytes] = set()
        self._base_url = settings.base_url.rstrip("/") if settings.base_url else None
        self._next: deque[str] = deque()
        self._by_request: dict[str, str] = {}
        self._pending: dict[str, PendingLogin] = {}
        self._rewrites: deque[Rewrite] = deque()

    # -- driving logins -------------------------------------------------------

    def use_scenario(self, scenario: str | Scenario, *, request_id: str | None = None) -> None:
        """The next login (or the login for AuthnRequest ``request_id``) uses ``scenario``.

        The SSO endpoint then answers at once (redirect to the ACS with a
        ``SAMLart``) instead of showing the login page. Passing a
        :class:`Scenario` object registers it too.
        """
        sid = self.add_scenario(scenario) if isinstance(scenario, Scenario) else scenario
        if sid not in self.scenarios:
            raise KeyError(f"unknown scenario {sid!r}")
        if request_id is None:
            self._next.append(sid)
        else:
            self._by_request[request_id] = sid

    def add_scenario(self, scenario: Scenario) -> str:
        """Register (or replace) a scenario; returns its id."""
        self.scenarios[scenario.id] = scenario
        return scenario.id

    def clear_queue(self) -> None:
        """Forget scenarios queued with :meth:`use_scenario` and queued rewrites."""
        self._next.clear()
        self._by_request.clear()
        self._rewrites.clear()

    def take_scenario(self, request_id: str) -> Scenario | None:
        """The queued scenario for this request, if any (used once)."""
        sid = self._by_request.pop(request_id, None)
        if sid is None and self._next:
            sid = self._next.popleft()
        return self.scenarios[sid] if sid is not None else None

    def rewrite_next_response(self, rewrite: Rewrite) -> None:
        """Edit the next successful Response with ``rewrite`` before it is signed and sent.

        For tests of what a broker holding the real keys could send (stray
        assertions, extra elements): the assertion is already signed, the
        Response (POST) and the ArtifactResponse are signed afterwards.
        """
        self._rewrites.append(rewrite)

    def take_rewrite(self) -> Rewrite | None:
        """The queued rewrite for the next successful Response, if any (used once)."""
        return self._rewrites.popleft() if self._rewrites else None

    def add_pending(self, request: AuthnRequest, relay_state: str | None, sp: str) -> str:
        now = self.clock()
        for key in [k for k, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[key]
        token = secrets.token_urlsafe(24)
        self._pending[token] = PendingLogin(
            request, relay_state, sp, now + self.settings.pending_login_seconds
        )
        return token

    def peek_pending(self, token: str) -> PendingLogin | None:
        pending = self._pending.get(token)
        if pending is None or pending.expires_at <= self.clock():
            return None
        return pending

    def take_pending(self, token: str) -> PendingLogin | None:
        pending = self.peek_pending(token)
        self._pending.pop(token, None)
        return pending

    def end_sessions(
        self, sp_entity_id: str, name_id: str, name_qualifier: str, session_indexes: list[str]
    ) -> tuple[BrokerSession, ...]:
        """End this SP's sessions of ``name_id`` (only those ``session_indexes``, if given)."""
        ended = tuple(
            s
            for s in self.sessions.values()
            if s.sp_entity_id == sp_entity_id
            and s.name_id == name_id
            and s.name_qualifier == name_qualifier
            and (not session_indexes or s.session_index in session_indexes)
        )
        for s in ended:
            del self.sessions[s.session_index]
        return ended

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- addresses ------------------------------------------------------------

    def set_base_url(self, url: str) -> None:
        """Bind the public base URL once the server listens (ephemeral ports)."""
        self._base_url = url.rstrip("/")

    def base_url(self, fallback: str | None = None) -> str:
        """The configured/bound base URL, else ``fallback`` (the request's origin)."""
        if self._base_url:
            return self._base_url
        if fallback is None:
            raise RuntimeError("simulator base URL not bound yet")
        return fallback.rstrip("/")

    @property
    def metadata_url(self) -> str:
        return self.base_url() + METADATA_PATH

    @property
    def sso_url(self) -> str:
        return self.base_url() + SSO_PATH

    @property
    def ars_url(self) -> str:
        return self.base_url() + ARS_PATH

    @property
    def slo_url(self) -> str:
        return self.base_url() + SLO_PATH

    # -- SP metadata and client certificates ----------------------------------

    def set_sp_metadata(self, xml: bytes) -> SpMetadata:
        """Use this SP metadata from now on (instead of the configured source)."""
        sp = self.metadata.set_xml(xml)
        self._trust(sp.all_certs)
        return sp

    async def sp_metadata(self, session: aiohttp.ClientSession) -> SpMetadata:
        sp = await self.metadata.get(session)
        self._trust(sp.all_certs)
        return sp

    def set_service_catalogue(self, xml: bytes) -> ServiceCatalogue:
        """Use this dienstcatalogus from now on (instead of the configured source)."""
        return self.catalogue.set_xml(xml)

    async def service_catalogue(self, session: aiohttp.ClientSession) -> ServiceCatalogue | None:
        """The SP's catalogue; ``None`` when none is configured (legacy behaviour)."""
        if not self.catalogue.configured:
            return None
        return await self.catalogue.get(session)

    def client_cert_matches(self, peer_der: bytes | None, sp: SpMetadata) -> bool:
        """The TLS client presented a certificate whose key is in the SP metadata."""
        if not peer_der:
            return False
        peer = _spki(peer_der)
        return any(_spki(der) == peer for der in sp.all_certs)

    def _trust(self, certs: Iterable[bytes]) -> None:
        # The SP's self-signed certificates become TLS trust anchors so the
        # handshake accepts them; which client may resolve is decided at the
        # ARS by matching the key against the metadata.
        if self.tls_context is None:
            return
        for der in certs:
            if der not in self._trusted:
                self.tls_context.load_verify_locations(cadata=der)
                self._trusted.add(der)


def _broker_signer(settings: SimulatorSettings) -> Signer:
    if settings.signing_key_file is None or settings.signing_cert_file is None:
        return _ephemeral("eherkenning-simulator")
    return Signer(
        key_pem=Path(settings.signing_key_file).read_bytes(),
        cert_pem=Path(settings.signing_cert_file).read_bytes(),
    )


def _ephemeral(name: str) -> Signer:
    pair = rsa_keypair(name)
    return Signer(key_pem=pair.key_pem, cert_pem=pair.cert_pem)


def _tls_context(settings: SimulatorSettings) -> ssl.SSLContext:
    mtls = settings.mtls
    assert mtls is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(mtls.cert_file, mtls.key_file)
    # Optional at the handshake (browsers use the same port); required at the ARS.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    if mtls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=mtls.client_ca_file)
    return ctx


SIMULATOR = web.AppKey("simulator", Simulator)
"""The control API of the simulator app: ``app[SIMULATOR].use_scenario(...)``."""
HTTP_SESSION = web.AppKey("simulator_http_session", aiohttp.ClientSession)
"""Client session for fetching SP metadata from a URL (created in cleanup_ctx)."""
