"""Who logged in, and for whom they may act: the values every later step shares.

``Identity`` is what a verified eHerkenning assertion says (produced by
``gateway.saml``); ``Employer`` is one entry of the allowed set (produced by
``gateway.mandates``). Both are plain frozen values so the decisions that use
them stay pure and testable without a network.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["direct", "chain"]


class Loa(enum.Enum):
    """eHerkenning levels of assurance, ordered (EH3 = eIDAS substantial)."""

    EH2 = "urn:etoegang:core:assurance-class:loa2"
    EH2PLUS = "urn:etoegang:core:assurance-class:loa2plus"
    EH3 = "urn:etoegang:core:assurance-class:loa3"
    EH4 = "urn:etoegang:core:assurance-class:loa4"

    @property
    def rank(self) -> int:
        return _LOA_ORDER.index(self)

    @property
    def short(self) -> str:
        """The short name used in config and tokens: ``loa2``, ``loa2plus``, ``loa3``, ``loa4``."""
        return self.value.rsplit(":", 1)[1]

    @classmethod
    def parse(cls, text: str) -> Loa:
        """Accept the URN, the short name (``loa3``) or the EH name (``EH3``)."""
        loa = _LOA_NAMES.get(text.strip()) if isinstance(text, str) else None
        if loa is None:
            raise ValueError(f"unknown level of assurance {text!r}")
        return loa

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Loa):
            return NotImplemented
        return self.rank >= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Loa):
            return NotImplemented
        return self.rank < other.rank


_LOA_ORDER = [Loa.EH2, Loa.EH2PLUS, Loa.EH3, Loa.EH4]
# Every spelling ``Loa.parse`` accepts: the URN, the short name, the EH name (EH2PLUS, EH2+).
_LOA_NAMES = {
    name: loa
    for loa in Loa
    for name in (loa.value, loa.short, loa.name, loa.name.replace("PLUS", "+"))
}


@dataclass(frozen=True)
class Identity:
    """The verified statements of one eHerkenning login (outer assertion only)."""

    acting_subject: str
    """Pseudonym of the person, specific to this service and authorising company."""
    legal_subject_kvk: str | None
    """KvK number of the company the user acts for (mode 1: own office; mode 2: the employer)."""
    loa: Loa
    service_id: str
    login_time: dt.datetime
    legal_subject_rsin: str | None = None
    intermediary_kvk: str | None = None
    """Present only with a ketenmachtiging: the administrator's own KvK number."""
    legal_subject_name: str | None = None
    intermediary_name: str | None = None
    service_uuid: str | None = None
    branch: str | None = None
    """Vestigingsnummer (12 digits) when the login is restricted to one branch."""
    authenticating_authority: str | None = None
    name_id: str | None = None
    """The outer assertion's Subject NameID, exactly as received (transient in eHerkenning).
    Kept only to address a SAML LogoutRequest; never logged and never put in tokens."""
    name_id_format: str | None = None
    """The NameID's ``Format`` attribute, copied into the LogoutRequest."""
    name_id_qualifier: str | None = None
    """The NameID's ``NameQualifier`` attribute."""
    name_id_sp_qualifier: str | None = None
    """The NameID's ``SPNameQualifier`` attribute."""
    session_index: str | None = None
    """The outer assertion's ``AuthnStatement/@SessionIndex``, for the LogoutRequest."""

    @property
    def mode(self) -> Mode:
        """``chain`` when an intermediary is present (ketenmachtiging), else ``direct``."""
        return "chain" if self.intermediary_kvk else "direct"

    @property
    def administrator_kvk(self) -> str | None:
        """The administrator's office: the intermediary in chain mode, else the legal subject."""
        return self.intermediary_kvk if self.mode == "chain" else self.legal_subject_kvk

    @property
    def administrator_name(self) -> str | None:
        return self.intermediary_name if self.mode == "chain" else self.legal_subject_name


@dataclass(frozen=True)
class Employer:
    """One employer the administrator may act for, as the fund's registry says."""

    kvk: str
    name: str
    fund_number: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
