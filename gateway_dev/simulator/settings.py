"""The simulator's configuration model and its YAML loader.

One YAML file holds the settings; scenarios come from a separate file
(``scenarios_file``) or inline (``scenarios``). Relative paths in the file are
resolved against the file's directory, so an example config works from any
working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway.errors import ConfigInvalid, ConfigProblem
from gateway_dev.simulator.scenarios import Scenario, ScenarioFile

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class MtlsSettings(BaseModel):
    """TLS for the whole simulator, with client certificates checked at the ARS."""

    model_config = _FROZEN

    cert_file: Path
    """Server certificate (PEM) the SP must trust."""
    key_file: Path
    """Server private key (PEM)."""
    require_client_cert: bool = True
    """ArtifactResolve is refused unless the TLS client presents a certificate whose
    public key is in the SP metadata (or in ``client_ca_file``-verified chains that
    also match the metadata)."""
    client_ca_file: Path | None = None
    """Extra CA bundle for client certificates issued by a CA (PKIoverheid); the SP
    metadata certificates are always trusted as self-signed anchors."""


class SimulatorSettings(BaseModel):
    """Everything the eHerkenning broker simulator needs; see ``docs/simulator.md``."""

    model_config = _FROZEN

    entity_id: str = "urn:etoegang:HM:00000009999999999000:entities:9999"
    """The broker's entityID (Issuer of every message, SourceID of every artifact)."""
    base_url: str | None = None
    """Public base URL (``http://127.0.0.1:8081``). ``None``: bound after the server listens
    (``serve_simulator`` does it), else taken from the request's Host."""
    signing_key_file: Path | None = None
    """RSA private key (PEM) for assertions and ArtifactResponses; ``None``: ephemeral."""
    signing_cert_file: Path | None = None
    """Certificate (PEM) published in the IdP metadata; required with ``signing_key_file``."""
    sp_metadata: str | None = None
    """SP metadata: a file path or an ``http(s)://`` URL (re-read when it changes).
    ``None``: tests supply it through ``Simulator.set_sp_metadata``."""
    sp_metadata_refresh_seconds: float = Field(default=60.0, gt=0)
    """How long a metadata (or catalogue) URL is cached before it is fetched again."""
    service_catalogue: str | None = None
    """The SP's dienstcatalogus (``gateway service-catalogue``, or the gateway's
    ``/_gateway/saml/catalogue``): a file path or an ``http(s)://`` URL, re-read like
    ``sp_metadata``. Gives the ServiceUUID per ServiceID, the requested (optional)
    attributes and the allowed service restrictions, as a broker knows them.
    ``None``: tests supply it through ``Simulator.set_service_catalogue``; without one the
    ServiceUUID comes from ``service_uuids`` (else a UUIDv5) and nothing is requested."""
    scenarios_file: Path | None = None
    """YAML file with ``scenarios: [...]``; merged after the inline ``scenarios``."""
    scenarios: list[Scenario] = Field(default_factory=list)
    """Inline scenarios."""
    artifact_lifetime_seconds: float = Field(default=60.0, gt=0, le=600)
    """An unresolved artifact expires after this; resolution is single-use regardless."""
    assertion_lifetime_seconds: int = Field(default=300, gt=0, le=3600)
    """Conditions/NotOnOrAfter and SubjectConfirmationData/NotOnOrAfter window."""
    acs_delivery: Literal["get", "post"] = "get"
    """How the browser carries ``SAMLart`` to the ACS: a 303 redirect or an HTML form POST."""
    allow_post_binding: bool = False
    """Honour ``ProtocolBinding=HTTP-POST`` (signed Response posted to the ACS) for
    generic SAML SPs; real eHerkenning brokers only use the Artifact binding."""
    block_cipher: Literal["aes256-gcm", "aes128-gcm", "aes256-cbc", "aes128-cbc"] = "aes256-gcm"
    """Data encryption for each EncryptedID (a fresh key per element)."""
    key_transport: Literal["rsa-oaep-mgf1p", "rsa-oaep"] = "rsa-oaep-mgf1p"
    """``rsa-oaep-mgf1p``: XML-Enc 1.0 RSA-OAEP (SHA-1 digest/MGF1), what brokers commonly
    send; ``rsa-oaep``: XML-Enc 1.1 with SHA-256 digest and MGF1-SHA-256."""
    extra_encrypted_key: bool = False
    """STRESS, opt-in: put a second EncryptedKey (Recipient = the broker itself) before the
    SP's one, so consumers must pick the key by Recipient as the profile allows. Most
    brokers send one key; python3-saml fails on this shape ("failed to decrypt")."""
    send_unrequested_attributes: bool = False
    """STRESS, opt-in: send the optional attributes (company names) and a branch
    restriction even when the catalogue does not request or allow them."""
    real_broker_shape: bool = False
    """Send the shapes seen from real brokers: KeyName-only ``KeyInfo`` in signatures,
    an ``InclusiveNamespaces PrefixList="xacml-saml"`` on the exclusive c14n transform, a
    default namespace on the assertion, millisecond timestamps, SHA-1 ``KeyName``s on
    the EncryptedKeys."""
    advice: bool = True
    """Include the nested signed Advice assertions (authentication and mandate service)."""
    require_signed_authn_request: bool = True
    """Refuse unsigned AuthnRequests (always true at real brokers)."""
    single_logout: bool = True
    """Publish a SingleLogoutService (HTTP-Redirect) in the IdP metadata and answer
    SP-initiated LogoutRequests at ``/saml/slo``; ``false``: a broker without SLO."""
    authentication_service_id: str = "urn:etoegang:AD:00000009999999999001:entities:9001"
    """Issuer of the Advice authentication assertion and AuthenticatingAuthority."""
    mandate_service_id: str = "urn:etoegang:MR:00000009999999999002:entities:9002"
    """Issuer of the Advice mandate (machtigingenregister) assertion."""
    metadata_valid_seconds: float | None = Field(default=7 * 24 * 3600.0, gt=0)
    """The IdP metadata's ``validUntil`` lies this far after the moment it is served, as
    real brokers date theirs; ``None``: no ``validUntil``."""
    service_uuids: dict[str, str] = Field(default_factory=dict)
    """ServiceID -> ServiceUUID; unknown ServiceIDs get a stable UUIDv5."""
    mtls: MtlsSettings | None = None
    """Serve over TLS and require an SP client certificate at the ArtifactResolutionService."""
    pending_login_seconds: Annotated[float, Field(gt=0)] = 900.0
    """How long a login page (an AuthnRequest waiting for a person's choice) stays valid."""
    title: Annotated[str, StringConstraints(max_length=80)] = "eHerkenning simulator"
    """Shown on the login page."""


def load_simulator_settings(path: str | Path) -> SimulatorSettings:
    """Load and validate a simulator YAML file; every problem is reported at once."""
    file = Path(path)
    try:
        raw: Any = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigInvalid([ConfigProblem(str(file), "", str(exc))]) from exc
    if not isinstance(raw, dict):
        raise ConfigInvalid([ConfigProblem(str(file), "", "expected a mapping")])
    base = file.parent
    for key in ("signing_key_file", "signing_cert_file", "scenarios_file"):
        if isinstance(raw.get(key), str):
            raw[key] = str(_resolve(base, raw[key]))
    for key in ("sp_metadata", "service_catalogue"):
        value = raw.get(key)
        if isinstance(value, str) and not value.startswith(("http://", "https://")):
            raw[key] = str(_resolve(base, value))
    mtls = raw.get("mtls")
    if isinstance(mtls, dict):
        for key in ("cert_file", "key_file", "client_ca_file"):
            if isinstance(mtls.get(key), str):
                mtls[key] = str(_resolve(base, mtls[key]))
    try:
        settings = SimulatorSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigInvalid(_problems(str(file), exc)) from exc
    if settings.scenarios_file is not None:
        load_scenarios(settings.scenarios_file)  # validate now, fail at startup
    return settings


def load_scenarios(path: Path) -> list[Scenario]:
    """Read a scenarios YAML file (``scenarios: [...]``)."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigInvalid([ConfigProblem(str(path), "", str(exc))]) from exc
    try:
        return ScenarioFile.model_validate(raw).scenarios
    except ValidationError as exc:
        raise ConfigInvalid(_problems(str(path), exc)) from exc


def all_scenarios(settings: SimulatorSettings) -> list[Scenario]:
    """Inline scenarios followed by those in ``scenarios_file``; ids must be unique."""
    found = list(settings.scenarios)
    if settings.scenarios_file is not None:
        found.extend(load_scenarios(settings.scenarios_file))
    if found:
        try:
            ScenarioFile(scenarios=found)  # ids unique across both sources
        except ValidationError as exc:
            raise ConfigInvalid(_problems("scenarios", exc)) from exc
    return found


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _problems(file: str, exc: ValidationError) -> list[ConfigProblem]:
    return [
        ConfigProblem(file, ".".join(str(part) for part in err["loc"]), err["msg"])
        for err in exc.errors()
    ]
