"""The SP's metadata, as the broker learns it: ACS endpoints, certificates, services.

Metadata comes from a file (re-read when its mtime changes), a URL (fetched
again after a refresh interval, so a gateway started after the simulator is
picked up) or bytes a test hands in. The metadata signature is not checked:
real brokers receive it out of band through the eHerkenning network.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import aiohttp
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway_dev.simulator.xmlutil import DS, MD, XmlRejected, parse_xml, q


class MetadataUnavailable(RuntimeError):
    """No usable SP metadata (not configured, unreadable or invalid)."""


@dataclass(frozen=True)
class Endpoint:
    binding: str
    location: str
    index: int
    is_default: bool


@dataclass(frozen=True)
class AttributeService:
    """One AttributeConsumingService: eHerkenning names the ServiceID as its RequestedAttribute."""

    index: int
    is_default: bool
    service_ids: tuple[str, ...]


@dataclass(frozen=True)
class SpMetadata:
    entity_id: str
    acs: tuple[Endpoint, ...]
    slo: tuple[Endpoint, ...]
    signing_certs: tuple[bytes, ...]
    """DER certificates for AuthnRequest/ArtifactResolve signatures (current and next)."""
    encryption_certs: tuple[bytes, ...]
    services: tuple[AttributeService, ...]

    @property
    def all_certs(self) -> tuple[bytes, ...]:
        return tuple(dict.fromkeys(self.signing_certs + self.encryption_certs))

    def default_acs(self, binding: str) -> Endpoint | None:
        """The ACS for ``binding``: the one marked default, else the lowest index."""
        matching = sorted((e for e in self.acs if e.binding == binding), key=lambda e: e.index)
        for e in matching:
            if e.is_default:
                return e
        return matching[0] if matching else None

    def service(self, index: int | None) -> AttributeService | None:
        """The service by AttributeConsumingServiceIndex, else the default one."""
        if index is not None:
            return next((s for s in self.services if s.index == index), None)
        ordered = sorted(self.services, key=lambda s: (not s.is_default, s.index))
        return ordered[0] if ordered else None


def parse_sp_metadata(data: bytes) -> SpMetadata:
    """Read the first EntityDescriptor with an SPSSODescriptor."""
    try:
        root = parse_xml(data)
    except XmlRejected as exc:
        raise MetadataUnavailable(str(exc)) from exc
    if root.tag == q(MD, "EntityDescriptor"):
        entities = [root]
    else:
        entities = list(root.iter(q(MD, "EntityDescriptor")))
    for entity in entities:
        sp = entity.find(q(MD, "SPSSODescriptor"))
        if sp is not None and entity.get("entityID"):
            return _read(entity.get("entityID", ""), sp)
    raise MetadataUnavailable("no SPSSODescriptor in SP metadata")


def _read(entity_id: str, sp: etree._Element) -> SpMetadata:
    signing: list[bytes] = []
    encryption: list[bytes] = []
    for kd in sp.findall(q(MD, "KeyDescriptor")):
        use = kd.get("use")
        for cert in kd.iter(q(DS, "X509Certificate")):
            der = base64.b64decode("".join((cert.text or "").split()))
            if use in (None, "signing"):
                signing.append(der)
            if use in (None, "encryption"):
                encryption.append(der)
    services = tuple(
        AttributeService(
            index=int(acs.get("index", "0")),
            is_default=acs.get("isDefault") in ("true", "1"),
            service_ids=tuple(
                r.get("Name", "") for r in acs.findall(q(MD, "RequestedAttribute")) if r.get("Name")
            ),
        )
        for acs in sp.findall(q(MD, "AttributeConsumingService"))
    )
    if not signing:
        raise MetadataUnavailable("SP metadata has no signing certificate")
    if not encryption:
        raise MetadataUnavailable("SP metadata has no encryption certificate")
    return SpMetadata(
        entity_id=entity_id,
        acs=_endpoints(sp, "AssertionConsumerService"),
        slo=_endpoints(sp, "SingleLogoutService"),
        signing_certs=tuple(signing),
        encryption_certs=tuple(encryption),
        services=services,
    )


def _endpoints(sp: etree._Element, tag: str) -> tuple[Endpoint, ...]:
    return tuple(
        Endpoint(
            binding=e.get("Binding", ""),
            location=e.get("Location", ""),
            index=int(e.get("index", str(n))),
            is_default=e.get("isDefault") in ("true", "1"),
        )
        for n, e in enumerate(sp.findall(q(MD, tag)))
    )


T = TypeVar("T")


class DocumentSource(Generic[T]):
    """Where a document the SP registered comes from (file, URL or bytes), cached.

    Files are re-read when their mtime changes; URLs are fetched again after
    ``refresh_seconds`` and a failed fetch keeps the last good copy.
    """

    def __init__(
        self,
        source: str | None,
        *,
        refresh_seconds: float,
        parse: Callable[[bytes], T],
        what: str = "SP metadata",
    ) -> None:
        self._source = source
        self._refresh = refresh_seconds
        self._parse = parse
        self._what = what
        self._cached: T | None = None
        self._stamp: float = 0.0  # file mtime, or monotonic fetch time for URLs
        self._fixed = False

    @property
    def configured(self) -> bool:
        return self._fixed or self._source is not None

    def set_xml(self, data: bytes) -> T:
        """Use these bytes from now on (tests); file/URL loading stops."""
        self._cached = self._parse(data)
        self._fixed = True
        return self._cached

    async def get(self, session: aiohttp.ClientSession) -> T:
        """Current document; raises :class:`MetadataUnavailable` when none can be loaded."""
        if self._fixed and self._cached is not None:
            return self._cached
        if self._source is None:
            raise MetadataUnavailable(f"no {self._what} configured")
        if self._source.startswith(("http://", "https://")):
            return await self._from_url(session, self._source)
        return self._from_file(Path(self._source))

    def _from_file(self, path: Path) -> T:
        try:
            mtime = path.stat().st_mtime
            if self._cached is None or mtime != self._stamp:
                self._cached = self._parse(path.read_bytes())
                self._stamp = mtime
        except OSError as exc:
            raise MetadataUnavailable(f"cannot read {self._what}: {exc}") from exc
        return self._cached

    async def _from_url(self, session: aiohttp.ClientSession, url: str) -> T:
        now = time.monotonic()
        if self._cached is not None and now - self._stamp < self._refresh:
            return self._cached
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                resp.raise_for_status()
                data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            if self._cached is not None:
                return self._cached  # keep serving the last good copy
            raise MetadataUnavailable(f"cannot fetch {self._what}: {exc}") from exc
        self._cached = self._parse(data)
        self._stamp = now
        return self._cached


class SpMetadataSource(DocumentSource[SpMetadata]):
    """Where the SP metadata comes from, with caching and reload."""

    def __init__(self, source: str | None, *, refresh_seconds: float) -> None:
        super().__init__(source, refresh_seconds=refresh_seconds, parse=parse_sp_metadata)
