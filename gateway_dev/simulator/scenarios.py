"""Login scenarios: who logs in, for which company, at which level, or which error.

A scenario is what a person picks on the simulator's login page (or what a
test queues through :class:`gateway_dev.simulator.control.Simulator`). It is pure
data; ``gateway_dev.simulator.messages`` turns it into SAML.

Status mapping for the error outcomes (documented in ``docs/simulator.md``):
eHerkenning brokers report a cancelled login as ``Responder/AuthnFailed``
with a StatusMessage that says so, a failed authentication as
``Responder/AuthnFailed``, and a missing authorisation as
``Responder/RequestDenied``. A consumer can only tell cancel from failure by
the StatusMessage, as with real brokers.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from gateway.identity import Loa

Outcome = Literal["success", "cancel", "authn_failed", "not_authorised"]

STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
STATUS_RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_AUTHN_FAILED = "urn:oasis:names:tc:SAML:2.0:status:AuthnFailed"
STATUS_REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
STATUS_UNSUPPORTED_BINDING = "urn:oasis:names:tc:SAML:2.0:status:UnsupportedBinding"

CANCEL_MESSAGE = "Authentication cancelled by user"

STATUS_FOR_OUTCOME: dict[str, tuple[str, str, str]] = {
    "cancel": (STATUS_RESPONDER, STATUS_AUTHN_FAILED, CANCEL_MESSAGE),
    "authn_failed": (STATUS_RESPONDER, STATUS_AUTHN_FAILED, "Authentication failed"),
    "not_authorised": (
        STATUS_RESPONDER,
        STATUS_REQUEST_DENIED,
        "No authorisation for the requested service",
    ),
}
"""Outcome -> (top-level StatusCode, second-level StatusCode, StatusMessage)."""

QUALIFIER_KVK = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
QUALIFIER_RSIN = "urn:etoegang:1.9:EntityConcernedID:RSIN"
QUALIFIER_PSEUDO = "urn:etoegang:1.9:EntityConcernedID:Pseudo"

Kvk = Annotated[str, StringConstraints(pattern=r"^[0-9]{8}$")]
Rsin = Annotated[str, StringConstraints(pattern=r"^[0-9]{9}$")]
Vestigingsnr = Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]
LoaName = Literal["loa2", "loa2plus", "loa3", "loa4"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Company(BaseModel):
    """A legal subject (the company acted for): KvK and/or RSIN, and a display name."""

    model_config = _FROZEN

    kvk: Kvk | None = None
    """KvK number, 8 digits."""
    rsin: Rsin | None = None
    """RSIN, 9 digits; sent as a second LegalSubjectID value when given with a KvK."""
    name: str = ""
    """Company name (``attribute-represented:CompanyName``)."""

    @model_validator(mode="after")
    def _one_identifier(self) -> Company:
        if not self.kvk and not self.rsin:
            raise ValueError("a company needs a kvk or an rsin")
        return self


class Intermediary(BaseModel):
    """The administrator's own office in a ketenmachtiging (mode 2)."""

    model_config = _FROZEN

    kvk: Kvk
    name: str = ""
    """Office name (``attribute-intermediate:CompanyName``)."""
    encrypted: bool = False
    """Send IntermediateEntityID as an EncryptedID instead of plain text (brokers differ)."""


class Scenario(BaseModel):
    """One choice on the login page. ``id`` is what tests and the form refer to."""

    model_config = _FROZEN

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    label: str
    """Dutch text on the login page."""
    outcome: Outcome = "success"
    loa: LoaName = "loa3"
    """Level reached (AuthnContextClassRef): loa2, loa2plus, loa3 or loa4."""
    person: str = "persoon-1"
    """A stable handle for the human; the pseudonym is derived from it (see ``pseudonym``)."""
    pseudonym: str | None = None
    """Fixed ActingSubjectID; default derived per SP and legal subject, like real brokers."""
    legal_subject: Company | None = None
    """The company acted for. Required for ``success``."""
    intermediary: Intermediary | None = None
    """Present only for a ketenmachtiging (mode 2)."""
    branch: Vestigingsnr | None = None
    """ServiceRestriction:Vestigingsnr (12 digits), when the login is limited to one branch."""
    status_message: str | None = None
    """Override the StatusMessage of an error outcome."""
    second_level_status: str | None = None
    """Override the second-level StatusCode of an error outcome."""
    advice_kvk: Kvk = "90000001"
    """KvK put in the nested Advice assertions: deliberately NOT the outer one."""
    advice_intermediary_kvk: Kvk = "90000002"
    """IntermediateEntityID in the Advice mandate assertion, present even in mode 1."""
    extra_encrypted_key: bool | None = None
    """Override the simulator's ``extra_encrypted_key`` for this scenario (stress)."""
    send_unrequested_attributes: bool | None = None
    """Override ``send_unrequested_attributes`` for this scenario (stress)."""
    real_broker_shape: bool | None = None
    """Override ``real_broker_shape`` for this scenario."""

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.outcome == "success" and self.legal_subject is None:
            raise ValueError("a success scenario needs legal_subject")
        outer = {self.legal_subject.kvk if self.legal_subject else None}
        if self.intermediary:
            outer.add(self.intermediary.kvk)
        if self.advice_kvk in outer or self.advice_intermediary_kvk in outer:
            raise ValueError("advice_kvk values must differ from the outer KvK numbers")
        return self

    @property
    def level(self) -> Loa:
        return Loa.parse(self.loa)

    def pseudonym_for(self, sp_entity_id: str) -> str:
        """The ActingSubjectID sent to ``sp_entity_id``.

        Real pseudonyms are specific to the service provider and the
        authorising company, so the same person gets a different value in a
        chain login than in a direct one; this mirrors that deterministically.
        """
        if self.pseudonym:
            return self.pseudonym
        legal = self.legal_subject
        subject = (legal.kvk or legal.rsin or "") if legal else ""
        digest = hashlib.sha256(f"{sp_entity_id}|{subject}|{self.person}".encode()).hexdigest()
        return digest[:40]

    def status(self) -> tuple[str, str, str] | None:
        """(top, second, message) for an error outcome; ``None`` for success."""
        if self.outcome == "success":
            return None
        top, second, message = STATUS_FOR_OUTCOME[self.outcome]
        return (top, self.second_level_status or second, self.status_message or message)


class ScenarioFile(BaseModel):
    """The YAML scenarios file: ``scenarios: [...]``."""

    model_config = _FROZEN

    scenarios: list[Scenario] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ScenarioFile:
        ids = [s.id for s in self.scenarios]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate scenario ids: {', '.join(dupes)}")
        return self
