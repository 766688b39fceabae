"""Settings for mandates: which registry source, and how lookups share and fail.

``MandateSettings`` is the ``mandates`` section of the root configuration
(``gateway.config``); every field has a production-safe default except the
source, which must be chosen explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FileSourceSettings(BaseModel):
    """The registry as a YAML or CSV file (demo and small installations)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["file"] = "file"
    path: Path
    """``.yaml``/``.yml`` or ``.csv``; the format is chosen by the extension."""
    check_interval: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """Seconds between cheap ``stat`` checks for a changed file (done on lookup, no thread)."""


class HttpSourceSettings(BaseModel):
    """The fund's registry service (JSON over HTTPS); contract in ``docs/mandates.md``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["http"] = "http"
    url_template: str
    """E.g. ``https://registry.example/api/administrators/{kvk}/mandates``."""
    allow_plain_http: bool = False
    """Permit ``http://`` (tests and a registry on the same host only)."""
    bearer_token_file: Path | None = None
    """File holding a bearer token; re-read when it changes, never logged."""
    client_cert_file: Path | None = None
    """PEM client certificate for mutual TLS (with ``client_key_file``)."""
    client_key_file: Path | None = None
    ca_file: Path | None = None
    """PEM CA bundle to verify the registry; default: the system trust store."""
    connect_timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    read_timeout: Annotated[float, Field(gt=0, le=120)] = 5.0
    """Longest silence while waiting for (a chunk of) the response."""
    total_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Budget for one lookup across all attempts and back-off sleeps."""
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    backoff_base: Annotated[float, Field(ge=0, le=10)] = 0.2
    backoff_max: Annotated[float, Field(ge=0, le=60)] = 2.0
    breaker_failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    """Consecutive failed attempts that open the circuit."""
    breaker_cooldown: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds the circuit stays open before one trial request."""
    max_response_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024

    @model_validator(mode="after")
    def _check(self) -> HttpSourceSettings:
        t = self.url_template
        if (
            t.count("{kvk}") != 1
            or t.replace("{kvk}", "").count("{")
            or "}" in t.replace("{kvk}", "")
        ):
            raise ValueError("url_template must contain '{kvk}' exactly once and no other braces")
        if not t.startswith("https://") and not (self.allow_plain_http and t.startswith("http://")):
            raise ValueError("url_template must be https:// (or set allow_plain_http)")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self


class MandateSettings(BaseModel):
    """Mandate source, single flight and failure handling.

    How old an answer may be is not set here: ``sessions.mandate_recheck_interval``
    and ``sessions.mandate_max_staleness`` are the one rule for logins, sessions
    and the cache (``gateway.mandates.freshness``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Annotated[FileSourceSettings | HttpSourceSettings, Field(discriminator="kind")]
    cache_ttl: None = Field(
        None, description="Removed: set sessions.mandate_recheck_interval.", exclude=True
    )
    max_staleness: None = Field(
        None, description="Removed: set sessions.mandate_max_staleness.", exclude=True
    )
    lock_ttl: Annotated[float, Field(gt=0, le=600)] = 15.0
    """Lifetime of the single-flight lock; longer than one lookup can take."""
    lock_wait: Annotated[float, Field(gt=0, le=600)] = 12.0
    """How long a caller waits for another replica's lookup before giving up (fail closed)."""
    lock_poll_interval: Annotated[float, Field(gt=0, le=5)] = 0.05
    failure_hold: Annotated[float, Field(ge=0, le=60)] = 2.0
    """Seconds a failed lookup is remembered so waiting replicas fail fast together."""

    @field_validator("cache_ttl", mode="before")
    @classmethod
    def _cache_ttl_removed(cls, value: object) -> None:
        # A second limit next to the sessions' is how answers came to be used for
        # twice the re-check interval; an old configuration says so at startup.
        raise ValueError(
            "no longer a mandate setting: a registry answer is used for at most "
            "sessions.mandate_recheck_interval (set that instead)"
        )

    @field_validator("max_staleness", mode="before")
    @classmethod
    def _max_staleness_removed(cls, value: object) -> None:
        raise ValueError(
            "set sessions.mandate_max_staleness instead (one limit for sessions and the "
            "mandate cache)"
        )

    @model_validator(mode="after")
    def _check(self) -> MandateSettings:
        if (
            isinstance(self.source, HttpSourceSettings)
            and self.lock_ttl <= self.source.total_timeout
        ):
            raise ValueError("lock_ttl must exceed source.total_timeout (a lookup holds the lock)")
        return self
