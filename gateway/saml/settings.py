"""Configuration of the SAML service provider (the gateway's eHerkenning side).

One frozen pydantic model, ``SamlSettings``, with production-safe defaults; it
is the ``saml`` section of the root configuration (``gateway.config``). Every
security knob that could weaken a check (clock skew, algorithms, accepting the
POST response binding) defaults to the strict value; the algorithm
allow-lists can only be narrowed, never widened to SHA-1 or RSA-1.5 (a
validator refuses those).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.identity import Loa
from gateway.settings_base import LoaSetting

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

ATTR_REPRESENTED_NAME = "urn:etoegang:1.11:attribute-represented:CompanyName"
ATTR_INTERMEDIATE_NAME = "urn:etoegang:1.13:attribute-intermediate:CompanyName"
RESTRICTION_BRANCH = "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"

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


class Localised(BaseModel):
    """A text in Dutch and English (the catalogue carries both, ``xml:lang`` nl and en)."""

    model_config = _FROZEN

    nl: str = Field(min_length=1, max_length=1024)
    en: str = Field(min_length=1, max_length=1024)


class RequestedAttribute(BaseModel):
    """An attribute the service asks the broker for (catalogue ``RequestedAttribute``).

    Brokers send optional attributes, such as company names, only when the
    catalogue requests them.
    """

    model_config = _FROZEN

    name: str = Field(pattern=r"^urn:etoegang:\S+$")
    """The attribute URI, e.g. ``urn:etoegang:1.11:attribute-represented:CompanyName``."""
    required: bool = False
    """``isRequired``: the login fails at the broker when it cannot supply it."""
    purpose: Localised
    """Why the service needs it (``PurposeStatement``), shown to the user by the broker."""


DEFAULT_REQUESTED_ATTRIBUTES = (
    RequestedAttribute(
        name=ATTR_REPRESENTED_NAME,
        purpose=Localised(
            nl="De naam van de werkgever tonen in het portaal en aan de pensioenadministratie.",
            en="To show the employer's name in the portal and to the pension administration.",
        ),
    ),
    RequestedAttribute(
        name=ATTR_INTERMEDIATE_NAME,
        purpose=Localised(
            nl="De naam van het administratiekantoor tonen dat namens de werkgever handelt.",
            en="To show the name of the payroll office acting for the employer.",
        ),
    ),
)
"""What the gateway uses (token ``org``/employer names, the overview page)."""


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
    name: str = Field(min_length=1, max_length=64)
    """Service name shown by the broker (Dutch; the catalogue allows 64 characters)."""
    description: str = Field(min_length=1, max_length=1024)
    """Service description (Dutch)."""
    name_en: str | None = Field(default=None, min_length=1, max_length=64)
    """Service name in English (``xml:lang="en"`` in the catalogue)."""
    description_en: str | None = Field(default=None, min_length=1, max_length=1024)
    """Service description in English."""
    requested_attributes: tuple[RequestedAttribute, ...] = DEFAULT_REQUESTED_ATTRIBUTES
    """Attributes requested in the catalogue; default: the two company names (optional)."""
    service_restrictions_allowed: tuple[str, ...] = (RESTRICTION_BRANCH,)
    """``ServiceRestrictionsAllowed``: restrictions a user's authorisation may carry for
    this service; default: a branch (Vestigingsnummer), which the mandate check handles."""
    loa: LoaSetting = Loa.EH3
    """Level of assurance registered for the service."""
    identifier_types: tuple[IdentifierType, ...] = ("KvKnr", "RSIN")
    """LegalSubjectID types the service accepts (EntityConcernedTypesAllowed)."""
    default: bool = False
    """Exactly one service is the default (isDefault in the metadata)."""
    service_url: str | None = None
    """ServiceURL for the catalogue (the portal's home page)."""
    privacy_policy_url: str | None = None
    """PrivacyPolicyURL for the catalogue."""

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
    """The broker's OIN (20 digits): ``HerkenningsmakelaarId`` in the catalogue. Required
    unless ``broker_entity_id`` is an ``urn:etoegang:HM:<OIN>:entities:<n>`` entityID."""
    broker_metadata_cert: Path | None = None
    """When set, the metadata must carry a valid signature by this certificate."""
    broker_metadata_refresh_seconds: float = Field(default=3600.0, gt=0)
    """How often the metadata is reloaded at most; a shorter ``cacheDuration`` in the
    metadata, or a ``validUntil`` coming up, makes it sooner. Failures keep the last
    good copy (until its ``validUntil``)."""
    broker_metadata_expiry_warning_seconds: float = Field(default=7 * 86400.0, ge=0)
    """Log ``broker_metadata_expiring`` (error level, for alerting) on every load when the
    metadata's ``validUntil`` is closer than this."""
    broker_metadata_min_refresh_seconds: float = Field(default=30.0, ge=1)
    """A broker signature that does not verify with the current metadata keys (a broker
    restart or key change) triggers a metadata reload, at most once per this interval."""
    insecure_dev_http: bool = False
    """DEVELOPMENT ONLY: allow plain-``http://`` broker metadata and ArtifactResolution
    URLs (the simulator on localhost). Outside development both must be ``https://``."""
    artifact_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    """Connect timeout of the SOAP ArtifactResolve call."""
    artifact_read_timeout_seconds: float = Field(default=10.0, gt=0)
    """Total read timeout of the SOAP ArtifactResolve call."""
    artifact_resolve_content_type: Literal["text/xml", "application/soap+xml"] = "text/xml"
    """Content-Type of the ArtifactResolve POST: ``text/xml`` (SOAP 1.1, with a
    ``SOAPAction`` header) or ``application/soap+xml`` for brokers that want it (the
    SOAPAction then travels as the media type's ``action`` parameter)."""
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
        if self.broker_oin is not None and not re.fullmatch(r"\d{20}", self.broker_oin):
            problems.append("broker_oin: must be 20 digits (the broker's OIN)")
        elif self.herkenningsmakelaar_id is None:
            problems.append(
                "broker_oin: required: the service catalogue's HerkenningsmakelaarId cannot be "
                "derived; set broker_oin to the broker's 20-digit OIN, or broker_entity_id to "
                "its entityID (urn:etoegang:HM:<OIN>:entities:<n>)"
            )
        if self.broker_metadata.startswith("http://") and not self.insecure_dev_http:
            problems.append(
                "broker_metadata: plain http is refused outside development: use an https:// "
                "URL or a file (insecure_dev_http: true only for a local simulator)"
            )
        elif "://" in self.broker_metadata and not self.broker_metadata.startswith(
            ("https://", "http://")
        ):
            problems.append("broker_metadata: must be a file path or an https:// URL")
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
    def herkenningsmakelaar_id(self) -> str | None:
        """The broker's OIN: ``broker_oin``, else the OIN in ``broker_entity_id``."""
        if self.broker_oin:
            return self.broker_oin
        if self.broker_entity_id:
            m = re.fullmatch(r"urn:etoegang:HM:(\d{20}):entities:[^:]+", self.broker_entity_id)
            if m:
                return m.group(1)
        return None

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
