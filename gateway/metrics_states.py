"""The states the metrics read from the gateway's parts at flush time, not per request.

Breaker state, active sessions, and when certificates, broker metadata and
the token signing key expire: ``ServiceStates`` reads them on each flush of
``gateway.metrics.Metrics`` (see its module docstring), so the request path
does nothing extra for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography import x509

from gateway.errors import GatewayError
from gateway.metrics import ACTIVE_SESSION_WINDOW, BREAKER_STATES, Metrics

if TYPE_CHECKING:
    from gateway.services import Services

log = structlog.get_logger("gateway.metrics")


@dataclass(frozen=True)
class Expiry:
    """One dated thing the gateway holds: a certificate (by use) and when it expires."""

    name: str
    not_after: dt.datetime


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return list(x509.load_pem_x509_certificates(data))
    except ValueError:
        return []


def certificate_file_expiry(name: str, path: Path | None) -> list[Expiry]:
    """The earliest notAfter in a PEM file (a bundle counts by its first expiry)."""
    if path is None:
        return []
    try:
        certs = _pem_certificates(path.read_bytes())
    except OSError:
        return []
    if not certs:
        return []
    return [Expiry(name, min(c.not_valid_after_utc for c in certs))]


def configured_certificates(services: Services) -> list[Expiry]:
    """Every certificate named in the configuration that the services use (read once)."""
    config = services.config
    out: list[Expiry] = []
    keys = services.sp.keys
    for name, pair in (
        ("saml_signing", keys.signing),
        ("saml_encryption", keys.encryption),
        ("saml_signing_next", keys.signing_next),
        ("saml_encryption_next", keys.encryption_next),
    ):
        if pair is not None:
            out.append(Expiry(name, pair.cert.not_valid_after_utc))
    saml = config.saml
    if saml is not None:
        if saml.tls_client is not None:
            out += certificate_file_expiry("saml_tls_client", Path(saml.tls_client.cert_file))
        out += certificate_file_expiry("broker_metadata_signer", saml.broker_metadata_cert)
        out += certificate_file_expiry("broker_tls_ca", getattr(saml, "tls_ca_file", None))
    source = config.mandates.source if config.mandates is not None else None
    if source is not None and source.kind == "http":
        out += certificate_file_expiry("registry_tls_client", source.client_cert_file)
        out += certificate_file_expiry("registry_tls_ca", source.ca_file)
    out += certificate_file_expiry("store_tls_ca", config.store.tls_ca_file)
    out += certificate_file_expiry("store_tls_client", config.store.tls_cert_file)
    return out


def broker_certificates(signing_certs: Iterable[bytes]) -> list[Expiry]:
    """The broker's signing certificates from its metadata (``broker_signing``, then ``_2``...)."""
    out: list[Expiry] = []
    for i, pem in enumerate(signing_certs):
        for cert in _pem_certificates(pem):
            out.append(
                Expiry("broker_signing" + (f"_{i + 1}" if i else ""), cert.not_valid_after_utc)
            )
    return out


class ServiceStates:
    """Reads breaker, token, session and expiry figures from the login services."""

    def __init__(self, metrics: Metrics, services: Services) -> None:
        self._metrics = metrics
        self._services = services
        self._configured = configured_certificates(services)
        self._metadata: object | None = None
        self._broker: list[Expiry] = []
        self._valid_until: dt.datetime | None = None
        self._entity_id = ""
        self._snapshot: object | None = None
        self._key_due: dt.datetime | None = None
        self._kid = ""
        self._signed = self._hits = self._large = 0
        self._names: set[str] = set()

    def __call__(self, now: float) -> None:
        m, services = self._metrics, self._services
        source = services.mandates.source
        breaker = getattr(source, "breaker", None)
        if breaker is not None:
            m.mandate_breaker.set(BREAKER_STATES.get(breaker.state, 0))
        minter = services.minter
        signed, hits, large = minter.signs, minter.hits, minter.substitutes
        m.tokens_signed.inc(max(0, signed - self._signed))
        m.token_cache_hits.inc(max(0, hits - self._hits))
        m.tokens_large_set.inc(max(0, large - self._large))
        self._signed, self._hits, self._large = signed, hits, large
        m.sessions_active.set(minter.active_sessions(now - ACTIVE_SESSION_WINDOW))
        self._refresh_broker()
        self._refresh_token_key()
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        seen: set[str] = set()
        for item in (*self._configured, *self._broker):
            m.certificate_expiry.labels(item.name).set((item.not_after - when).total_seconds())
            seen.add(item.name)
        for gone in self._names - seen:  # e.g. a broker certificate rolled over
            with contextlib.suppress(KeyError):
                m.certificate_expiry.remove(gone)
        self._names = seen
        if self._valid_until is not None:
            m.broker_metadata_expiry.labels(self._entity_id).set(
                (self._valid_until - when).total_seconds()
            )
        if self._key_due is not None:
            m.token_key_expiry.labels(self._kid).set((self._key_due - when).total_seconds())

    def _refresh_broker(self) -> None:
        try:
            metadata = self._services.sp.metadata
        except GatewayError:  # not loaded yet
            return
        if metadata is not self._metadata:
            self._metadata = metadata
            self._broker = broker_certificates(metadata.signing_certs)
            if self._valid_until is not None and metadata.entity_id != self._entity_id:
                with contextlib.suppress(KeyError):
                    self._metrics.broker_metadata_expiry.remove(self._entity_id)
            self._valid_until = metadata.valid_until
            self._entity_id = metadata.entity_id

    def _refresh_token_key(self) -> None:
        from gateway.tokens.rotation import read_stamps

        keys = self._services.keys
        snapshot = keys.snapshot
        if snapshot is self._snapshot:
            return
        self._snapshot = snapshot
        if self._key_due is not None:  # the previous signing key's figure ends with it
            with contextlib.suppress(KeyError):
                self._metrics.token_key_expiry.remove(self._kid)
        settings = self._services.config.tokens
        days = settings.key_lifetime_days if settings is not None else 0
        since = read_stamps(settings.keys.current).signing_since if settings else None
        self._key_due = since + dt.timedelta(days=days) if since and days else None
        self._kid = snapshot.kid
