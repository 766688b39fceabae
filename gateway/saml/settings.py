"""Configuration of the SAML service provider (the gateway's eHerkenning side).

One frozen pydantic model, ``SamlSettings``, with production-safe defaults: the
lead plugs it into the root config. Every security knob that could weaken a
check (clock skew, algorithms, accepting the POST response binding) defaults
to the strict value; the algorithm allow-lists can only be narrowed, never
widened to SHA-1 or RSA-1.5 (a validator refuses those).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.identity import Loa

# The algorithm URIs we know how to check. SHA-1 and RSA-1.5 are absent on
# purpose: they are broken (collisions; Bleichenbacher padding oracles).
SIG_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SIG_RSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
SIG_RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
SIG_ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SIG_ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
SIG_ECDSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512"
DIGEST_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
DIGEST_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
DIGEST_SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
KT_RSA_OAEP_MGF1P = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"
KT_RSA_OAEP = "http://www.w3.org/2009/xmlenc11#rsa-oaep"
ENC_AES128_GCM = "http://www.w3.org/2009/xmlenc11#aes128-gcm"
ENC_AES192_GCM = "http://www.w3.org/2009/xmlenc11#aes192-gcm"
ENC_AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
ENC_AES128_CBC = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
ENC_AES192_CBC = "http://www.w3.org/2001/04/xmlenc#aes192-cbc"
ENC_AES256_CBC = "http://www.w3.org/2001/04/xmlenc#aes256-cbc"

KNOWN_SIGNATURE_ALGORITHMS = frozenset(
    {
        SIG_RSA_SHA256,
        SIG_RSA_SHA384,
        SIG_RSA_SHA512,
        SIG_ECDSA_SHA256,
        SIG_ECDSA_SHA384,
        SIG_ECDSA_SHA512,
    }
)
KNOWN_DIGEST_ALGORITHMS = frozenset({DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512})
KNOWN_KEY_TRANSPORT_ALGORITHMS = frozenset({KT_RSA_OAEP_MGF1P, KT_RSA_OAEP})
KNOWN_BLOCK_ALGORITHMS = frozenset(
    {
        ENC_AES128_GCM,
        ENC_AES192_GCM,
        ENC_AES256_GCM,
        ENC_AES128_CBC,
        ENC_AES192_CBC,
        ENC_AES256_CBC,
    }
)

IdentifierType = Literal["KvKnr", "RSIN"]

_SERVICE_ID = re.compile(r"^urn:etoegang:DV:\d{20}:services:\d+$")
_ENTITY_ID = re.compile(r"^urn:etoegang:DV:\d{20}:entities:\d+$")

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class KeyPairFiles(BaseModel):
    """A PEM private key and its certificate (PKIoverheid in production)."""

    model_config = _FROZEN

    key_file: Path
    """PEM private key (PKCS#8 or traditional), readable by the gateway only."""
    cert_file: Path
    """PEM X.509 certificate published in our metadata."""


class ServiceSettings(BaseModel):
    """One service registered in the dienstcatalogus (one AttributeConsumingService)."""

    model_config = _FROZEN

    index: int = Field(ge=0, le=65535)
    """AttributeConsumingServiceIndex of this service."""
    service_id: str
    """``urn:etoegang:DV:<OIN>:services:<index>``: the broker returns it as ServiceID."""
    service_uuid: uuid.UUID
    """ServiceUUID from the dienstcatalogus (ServiceDefinition)."""
    instance_uuid: uuid.UUID
    """UUID of the ServiceInstance in the dienstcatalogus."""
    name: str
    """Service name shown by the broker (Dutch)."""
    description: str
    """Service description (Dutch)."""
    loa: Loa = Loa.EH3
    """Level of assurance registered for the service."""
    identifier_types: tuple[IdentifierType, ...] = ("KvKnr", "RSIN")
    """LegalSubjectID types the service accepts (EntityConcernedTypesAllowed)."""
    default: bool = False
    """Exactly one service is the default (isDefault in the metadata)."""
    service_url: str | None = None
    """ServiceURL for the catalogue (the portal's home page)."""
    privacy_policy_url: str | None = None
    """PrivacyPolicyURL for the catalogue."""

    @field_validator("loa", mode="before")
    @classmethod
    def _parse_loa(cls, v: object) -> object:
        return Loa.parse(v) if isinstance(v, str) else v

    @field_validator("service_id")
    @classmethod
    def _check_service_id(cls, v: str) -> str:
        if not _SERVICE_ID.match(v):
            raise ValueError("must look like urn:etoegang:DV:<20-digit OIN>:services:<index>")
        return v


class SamlSettings(BaseModel):
    """Everything the SAML service provider needs; strict defaults."""

    model_config = _FROZEN

    entity_id: str
    """Our entityID: ``urn:etoegang:DV:<OIN>:entities:<index>``."""
    organisation_name: str = "Pensioenfonds"
    """OrganizationDisplayName in the catalogue and metadata."""
    oin: str | None = None
    """Our OIN (20 digits); derived from ``entity_id`` when omitted."""
    acs_url: str
    """Public absolute URL of our AssertionConsumerService (where SAMLart arrives)."""
    acs_index: int = Field(default=0, ge=0, le=65535)
    """Index of the Artifact ACS endpoint in our metadata."""
    signing: KeyPairFiles
    """Current signing key: AuthnRequest, ArtifactResolve, metadata."""
    signing_next: KeyPairFiles | None = None
    """Next signing certificate, published in metadata ahead of a rollover."""
    encryption: KeyPairFiles
    """Current encryption key: the broker encrypts EncryptedIDs to it."""
    encryption_next: KeyPairFiles | None = None
    """Next encryption key: published and also tried when decrypting (rollover)."""
    request_binding: Literal["redirect", "post"] = "redirect"
    """How the AuthnRequest travels to the broker."""
    services: tuple[ServiceSettings, ...]
    """Registered services; exactly one is the default."""
    attribute_consuming_service_index: int | None = None
    """Service index to request; ``None`` means the default service."""
    force_authn: bool = True
    """ForceAuthn in every AuthnRequest (eHerkenning requires true)."""
    requested_authn_context: Loa | None = None
    """Optional RequestedAuthnContext (Comparison=minimum); the catalogue normally sets it."""
    minimum_loa: Loa = Loa.EH3
    """Responses below this level fail with LevelTooLow."""
    clock_skew_seconds: float = Field(default=60.0, ge=0, le=600)
    """Tolerance for NotBefore/NotOnOrAfter against the broker's clock."""
    broker_metadata: str
    """Broker metadata source: a file path or an https:// (http:// in tests) URL."""
    broker_entity_id: str | None = None
    """Broker entityID to pick from an EntitiesDescriptor (and to insist on)."""
    broker_oin: str | None = None
    """The broker's OIN (HerkenningsmakelaarId in the catalogue); from its entityID if omitted."""
    broker_metadata_cert: Path | None = None
    """When set, the metadata must carry a valid signature by this certificate."""
    broker_metadata_refresh_seconds: float = Field(default=3600.0, gt=0)
    """How often the metadata is reloaded; failures keep the last good copy."""
    artifact_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    """Connect timeout of the SOAP ArtifactResolve call."""
    artifact_read_timeout_seconds: float = Field(default=10.0, gt=0)
    """Total read timeout of the SOAP ArtifactResolve call."""
    tls_client: KeyPairFiles | None = None
    """Client certificate for mutual TLS to the broker's ArtifactResolutionService."""
    tls_ca_file: Path | None = None
    """CA bundle for the broker's TLS certificate (default: the system store)."""
    accept_post_response: bool = False
    """Also accept SAMLResponse by HTTP-POST (generic brokers; eHerkenning uses Artifact)."""
    single_logout: bool = False
    """Send a signed SAML LogoutRequest to the broker on logout (when its metadata has a
    Redirect SingleLogoutService) and publish our SingleLogoutService. Off by default:
    many eHerkenning deployments log out locally only."""
    slo_url: str | None = None
    """Public absolute URL of our SingleLogoutService; ``None``: ``acs_url`` with its last
    path segment (``acs``) replaced by ``slo``, i.e. ``<public base>/_gateway/saml/slo``."""
    max_message_bytes: int = Field(default=512 * 1024, ge=4096)
    """Larger SAML messages are refused before parsing."""
    signature_algorithms: frozenset[str] = frozenset(KNOWN_SIGNATURE_ALGORITHMS)
    """Accepted XML signature methods (subset of RSA/ECDSA with SHA-256+)."""
    digest_algorithms: frozenset[str] = frozenset(KNOWN_DIGEST_ALGORITHMS)
    """Accepted reference digests (SHA-256+)."""
    key_transport_algorithms: frozenset[str] = frozenset(KNOWN_KEY_TRANSPORT_ALGORITHMS)
    """Accepted EncryptedKey methods (RSA-OAEP only)."""
    block_algorithms: frozenset[str] = frozenset(KNOWN_BLOCK_ALGORITHMS)
    """Accepted EncryptedData methods (AES-GCM, AES-CBC)."""
    verify_workers: int = Field(default=2, ge=1, le=32)
    """Workers that run signature checks and decryption off the event loop."""
    verify_pool: Literal["process", "thread"] = "process"
    """``process`` (default) keeps the event loop free of GIL contention; ``thread``
    starts instantly (tests, tiny deployments) but stalls the loop more under bursts."""
    xmlsec_binary: Path | None = None
    """Unused by the gateway (its crypto runs in-process); accepted so older configs still load."""

    @field_validator("minimum_loa", "requested_authn_context", mode="before")
    @classmethod
    def _parse_loa(cls, v: object) -> object:
        return Loa.parse(v) if isinstance(v, str) else v

    @field_validator("entity_id")
    @classmethod
    def _check_entity_id(cls, v: str) -> str:
        if not _ENTITY_ID.match(v):
            raise ValueError("must look like urn:etoegang:DV:<20-digit OIN>:entities:<index>")
        return v

    @model_validator(mode="after")
    def _check(self) -> SamlSettings:
        problems: list[str] = []
        for name, allowed, known in (
            ("signature_algorithms", self.signature_algorithms, KNOWN_SIGNATURE_ALGORITHMS),
            ("digest_algorithms", self.digest_algorithms, KNOWN_DIGEST_ALGORITHMS),
            (
                "key_transport_algorithms",
                self.key_transport_algorithms,
                KNOWN_KEY_TRANSPORT_ALGORITHMS,
            ),
            ("block_algorithms", self.block_algorithms, KNOWN_BLOCK_ALGORITHMS),
        ):
            unknown = sorted(allowed - known)
            if unknown:
                problems.append(f"{name}: not allowed (weak or unknown): {', '.join(unknown)}")
            if not allowed:
                problems.append(f"{name}: must not be empty")
        if not self.services:
            problems.append("services: at least one service is required")
        defaults = [s for s in self.services if s.default]
        if self.services and len(defaults) != 1:
            problems.append("services: exactly one service must have default: true")
        indexes = [s.index for s in self.services]
        if len(set(indexes)) != len(indexes):
            problems.append("services: indexes must be unique")
        if (
            self.attribute_consuming_service_index is not None
            and self.attribute_consuming_service_index not in indexes
        ):
            problems.append("attribute_consuming_service_index: no service has this index")
        if self.oin is not None and not re.fullmatch(r"\d{20}", self.oin):
            problems.append("oin: must be 20 digits")
        if not self.acs_url.startswith(("https://", "http://")):
            problems.append("acs_url: must be an absolute http(s) URL")
        if self.slo_url is not None and not self.slo_url.startswith(("https://", "http://")):
            problems.append("slo_url: must be an absolute http(s) URL")
        if self.single_logout and self.slo_url is None and not self.acs_url.endswith("/acs"):
            problems.append(
                "slo_url: required with single_logout when acs_url does not end in /acs"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def our_oin(self) -> str:
        """The OIN from ``oin`` or from the entityID."""
        return self.oin or self.entity_id.split(":")[3]

    @property
    def single_logout_url(self) -> str:
        """Where the broker sends LogoutResponses: ``slo_url`` or derived from ``acs_url``."""
        if self.slo_url is not None:
            return self.slo_url
        return self.acs_url.removesuffix("acs") + "slo"

    @property
    def default_service(self) -> ServiceSettings:
        """The service marked default."""
        return next(s for s in self.services if s.default)

    @property
    def requested_service_index(self) -> int:
        """The AttributeConsumingServiceIndex we put in AuthnRequests."""
        if self.attribute_consuming_service_index is not None:
            return self.attribute_consuming_service_index
        return self.default_service.index
