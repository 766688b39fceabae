"""The broker's SAML metadata: parsing, signature check, periodic refresh.

The metadata is the only place keys come from: the broker's signing
certificates here are the only keys any signature is checked with. When a
metadata-signing certificate is configured, metadata without a valid
signature by it is refused. A failed refresh keeps the last good metadata
(and logs ``broker_metadata_refresh_failed``) so a broker hiccup does not
end logins; before the first good load, logins fail closed with
``BrokerUnavailable``, and so they do once the held copy passes its
``validUntil``. The next refresh comes after ``broker_metadata_refresh_seconds``
or the metadata's ``cacheDuration``, whichever is shorter, and well before
``validUntil``; ``broker_metadata_expiring`` is logged at error level while
``validUntil`` is near. A broker signature that fails with the held keys (a
broker restart, a key rollover) triggers one reload, at most once per
``broker_metadata_min_refresh_seconds``. Outside development, ArtifactResolution
URLs in the metadata must be https.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import BrokerUnavailable, GatewayError, SamlInvalid
from gateway.saml.settings import KNOWN_DIGEST_ALGORITHMS, KNOWN_SIGNATURE_ALGORITHMS
from gateway.saml.signature import verify_enveloped
from gateway.saml.xml import check_unique_ids, parse_instant, parse_xml, q, strict_text

log = structlog.get_logger("gateway.saml")

BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_ARTIFACT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact"
BINDING_SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"

MAX_METADATA_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class BrokerMetadata:
    """What we use from the broker's IDPSSODescriptor."""

    entity_id: str
    signing_certs: tuple[bytes, ...]
    """PEM certificates; the only keys signatures are checked with."""
    sso_urls: dict[str, str]
    """SingleSignOnService location per binding URI."""
    ars_urls: dict[int, str]
    """ArtifactResolutionService (SOAP) location per endpoint index."""
    slo_urls: dict[str, str] = field(default_factory=dict)
    """SingleLogoutService location per binding URI (may be empty)."""
    valid_until: dt.datetime | None = None
    cache_duration: dt.timedelta | None = None
    """The shortest ``cacheDuration`` on the root or the broker's EntityDescriptor."""


_DURATION = re.compile(
    r"^P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> dt.timedelta:
    """An ``xs:duration`` such as ``P7D`` or ``PT1H30M`` (a year is 365 days, a month 30)."""
    m = _DURATION.match(text.strip())
    if not m or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise SamlInvalid("metadata_cache_duration_malformed")
    n = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return dt.timedelta(
        days=n["y"] * 365 + n["mo"] * 30 + n["w"] * 7 + n["d"],
        hours=n["h"],
        minutes=n["mi"],
        seconds=n["s"],
    )


def parse_broker_metadata(
    data: bytes,
    *,
    entity_id: str | None = None,
    signing_cert_pem: bytes | None = None,
    now: dt.datetime | None = None,
    require_https: bool = False,
) -> BrokerMetadata:
    """Parse (and, with ``signing_cert_pem``, verify) broker metadata; ``SamlInvalid`` if bad.

    ``require_https``: refuse ArtifactResolutionService URLs that are not https.
    """
    root = parse_xml(data, max_bytes=MAX_METADATA_BYTES)
    check_unique_ids(root)
    if signing_cert_pem is not None:
        verify_enveloped(
            root,
            [signing_cert_pem],
            signature_algorithms=KNOWN_SIGNATURE_ALGORITHMS,
            digest_algorithms=KNOWN_DIGEST_ALGORITHMS,
            what="metadata",
        )
    now = now or dt.datetime.now(dt.UTC)
    _check_valid_until(root, now)
    if root.tag == q("md", "EntityDescriptor"):
        candidates = [root]
    elif root.tag == q("md", "EntitiesDescriptor"):
        candidates = list(root.iter(q("md", "EntityDescriptor")))
    else:
        raise SamlInvalid("metadata_root_unexpected")
    candidates = [
        c
        for c in candidates
        if c.find(q("md", "IDPSSODescriptor")) is not None
        and (entity_id is None or c.get("entityID") == entity_id)
    ]
    if len(candidates) != 1:
        raise SamlInvalid(f"metadata_idp_count_{len(candidates)}")
    ed = candidates[0]
    if ed is not root:
        _check_valid_until(ed, now)
    idp = ed.find(q("md", "IDPSSODescriptor"))
    assert idp is not None
    valid_until = ed.get("validUntil") or root.get("validUntil")
    durations = [
        parse_duration(text)
        for text in (root.get("cacheDuration"), ed.get("cacheDuration"))
        if text
    ]
    certs = tuple(
        _certificates(idp, "signing"),
    )
    if not certs:
        raise SamlInvalid("metadata_signing_cert_missing")
    sso = {
        el.get("Binding", ""): el.get("Location", "")
        for el in idp.findall(q("md", "SingleSignOnService"))
    }
    ars: dict[int, str] = {}
    for el in idp.findall(q("md", "ArtifactResolutionService")):
        if el.get("Binding") != BINDING_SOAP:
            continue
        try:
            ars[int(el.get("index", ""))] = el.get("Location", "")
        except ValueError:
            raise SamlInvalid("metadata_ars_index_malformed") from None
    if require_https and any(not url.startswith("https://") for url in ars.values()):
        raise SamlInvalid("metadata_ars_not_https")
    slo = {
        el.get("Binding", ""): el.get("Location", "")
        for el in idp.findall(q("md", "SingleLogoutService"))
    }
    return BrokerMetadata(
        entity_id=ed.get("entityID", ""),
        signing_certs=certs,
        sso_urls=sso,
        ars_urls=ars,
        slo_urls=slo,
        valid_until=parse_instant(valid_until, "metadata_valid_until") if valid_until else None,
        cache_duration=min(durations) if durations else None,
    )


def _check_valid_until(el: etree._Element, now: dt.datetime) -> None:
    valid_until = el.get("validUntil")
    if valid_until and parse_instant(valid_until, "metadata_valid_until") <= now:
        raise SamlInvalid("metadata_expired")


def _certificates(descriptor: etree._Element, use: str) -> list[bytes]:
    out: list[bytes] = []
    for kd in descriptor.findall(q("md", "KeyDescriptor")):
        if kd.get("use") not in (None, use):
            continue
        for cert_el in kd.iter(q("ds", "X509Certificate")):
            der = base64.b64decode("".join(strict_text(cert_el, "x509_certificate").split()))
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                raise SamlInvalid("metadata_certificate_malformed") from None
            out.append(cert.public_bytes(serialization.Encoding.PEM))
    return out


Fetcher = Callable[[str], Awaitable[bytes]]


class BrokerMetadataSource:
    """Holds the current broker metadata and refreshes it in the background."""

    def __init__(
        self,
        source: str,
        *,
        fetch_url: Fetcher,
        entity_id: str | None = None,
        signing_cert_pem: bytes | None = None,
        refresh_seconds: float = 3600.0,
        min_refresh_seconds: float = 30.0,
        expiry_warning_seconds: float = 7 * 86400.0,
        require_https: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._source = source
        self._fetch_url = fetch_url
        self._entity_id = entity_id
        self._signing_cert_pem = signing_cert_pem
        self._refresh_seconds = refresh_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._expiry_warning = dt.timedelta(seconds=expiry_warning_seconds)
        self._require_https = require_https
        self._clock = clock
        self._now = wall_clock
        self._current: BrokerMetadata | None = None
        self._task: asyncio.Task[None] | None = None
        self._forced_lock = asyncio.Lock()
        self._last_forced: float | None = None

    @property
    def current(self) -> BrokerMetadata:
        """The last good metadata; ``BrokerUnavailable`` before the first good load or
        once its ``validUntil`` has passed (and no fresh copy could be loaded)."""
        if self._current is None:
            raise BrokerUnavailable("broker_metadata_unavailable")
        valid_until = self._current.valid_until
        if valid_until is not None and valid_until <= self._now():
            raise BrokerUnavailable("broker_metadata_expired")
        return self._current

    def next_refresh_seconds(self, now: dt.datetime | None = None) -> float:
        """Seconds until the next scheduled load: the configured period, shortened by
        ``cacheDuration`` and by an approaching ``validUntil`` (half the time left)."""
        if self._current is None:
            return min(self._refresh_seconds, 10.0)
        delay = self._refresh_seconds
        if self._current.cache_duration is not None:
            delay = min(delay, self._current.cache_duration.total_seconds())
        if self._current.valid_until is not None:
            left = (self._current.valid_until - (now or self._now())).total_seconds()
            delay = min(delay, left / 2)
        return max(delay, 10.0)

    async def refresh_after_signature_failure(self, used: BrokerMetadata) -> BrokerMetadata | None:
        """Reload after a broker signature failed with ``used``'s keys; the new metadata if
        its signing keys differ, else ``None``. At most one reload per
        ``min_refresh_seconds``, so forged signatures cannot make us hammer the broker."""
        async with self._forced_lock:
            current = self._current
            if current is not None and current.signing_certs != used.signing_certs:
                return current  # a concurrent login already picked up the new keys
            now = self._clock()
            if (
                self._last_forced is not None
                and now - self._last_forced < self._min_refresh_seconds
            ):
                log.info(
                    "broker_metadata_refresh_skipped",
                    reason="signature_failure",
                    retry_in_seconds=round(self._min_refresh_seconds - (now - self._last_forced)),
                )
                return None
            self._last_forced = now
            await self.refresh()
            current = self._current
            changed = current is not None and current.signing_certs != used.signing_certs
            log.warning(
                "broker_metadata_refresh_triggered",
                reason="signature_failure",
                keys_changed=changed,
                source=self._source,
            )
            return current if changed else None

    @property
    def loaded(self) -> bool:
        return self._current is not None

    async def refresh(self) -> bool:
        """Load once; on failure keep the last good metadata. Returns success."""
        try:
            if self._source.startswith(("https://", "http://")):
                data = await self._fetch_url(self._source)
            else:
                data = await asyncio.to_thread(Path(self._source).read_bytes)
            metadata = parse_broker_metadata(
                data,
                entity_id=self._entity_id,
                signing_cert_pem=self._signing_cert_pem,
                require_https=self._require_https,
                now=self._now(),
            )
        except (OSError, GatewayError, ValueError) as exc:
            reason = exc.detail if isinstance(exc, GatewayError) else type(exc).__name__
            log.error(
                "broker_metadata_refresh_failed",
                source=self._source,
                reason=reason,
                keeping_last_good=self._current is not None,
            )
            return False
        if self._current is None or self._current != metadata:
            log.info("broker_metadata_loaded", entity_id=metadata.entity_id)
        self._current = metadata
        if metadata.valid_until is not None:
            left = metadata.valid_until - self._now()
            if left < self._expiry_warning:
                # Error level on purpose: ops must chase the broker for fresh metadata.
                log.error(
                    "broker_metadata_expiring",
                    source=self._source,
                    valid_until=metadata.valid_until.isoformat(),
                    seconds_left=int(left.total_seconds()),
                )
        return True

    async def start(self) -> None:
        """First load, then a background refresh loop."""
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="broker-metadata-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            # Before the first good load, retry sooner: logins are failing meanwhile.
            await asyncio.sleep(self.next_refresh_seconds())
            await self.refresh()
