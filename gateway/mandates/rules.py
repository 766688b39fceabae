"""The fund's mandate rules: which employers an authenticated identity may act for.

Pure: takes an ``Identity``, the registry's mandates for the administrator and
today's date, returns a ``Decision``. No I/O, no clock; the caller passes
``today`` (use :func:`fund_today`, the date in the Netherlands).

The rules (``docs/mandates.md`` explains them for the fund):

* **Mode 1, direct** (no intermediary): the administrator is the LegalSubject;
  the allowed set is every employer with a usable mandate for that
  administrator. None at all is a *successful* login to an empty overview.
* **Mode 2, chain** (ketenmachtiging): the administrator is the intermediary
  and the employer is the LegalSubject; the allowed set is that one employer,
  and only if it has a usable mandate for the administrator; otherwise the
  login is refused with ``chain_without_mandate``.

A mandate is *usable* when all of these hold:

* its status is ``active``;
* ``valid_from <= today`` and (no ``valid_until`` or ``today < valid_until``):
  the end date is **exclusive**, the first day it no longer counts;
* its branch equals the login's branch restriction exactly. A login restricted
  to a vestiging (eHerkenning ServiceRestriction Vestigingsnr) uses only
  mandates the registry recorded for that vestiging, and a login without a
  restriction uses only whole-company mandates. The portal knows employers,
  not branches, so granting a whole-company employer to a branch-restricted
  login (or the reverse) would exceed what one of the two parties authorised;
  we fail closed and let the registry say explicitly which vestiging a mandate
  is for (vestigingsnummers are unique across companies, so one field serves
  both modes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

from gateway.errors import GatewayError, LoginFailed, MandateMissing
from gateway.identity import Employer, Identity, Mode
from gateway.mandates.model import Mandate, MandateStatus, is_kvk

RefusalReason = Literal[
    "chain_without_mandate",
    "administrator_kvk_missing",
    "employer_kvk_missing",
]

_NL = ZoneInfo("Europe/Amsterdam")
_ACTIVE = MandateStatus.ACTIVE  # module constant: enum attribute lookup is slow on 3.11


def fund_today(now: dt.datetime) -> dt.date:
    """The calendar date in the Netherlands at ``now`` (aware), which validity dates mean."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(_NL).date()


@dataclass(frozen=True)
class Decision:
    """The outcome of the rules for one login or re-check."""

    mode: Mode
    administrator_kvk: str | None
    employer_kvk: str | None
    """The LegalSubject employer in chain mode; ``None`` in direct mode."""
    allowed: tuple[Employer, ...]
    """Sorted by name, then KvK, then fund number; empty when refused."""
    refusal: RefusalReason | None = None
    mandates_seen: int = 0
    """How many mandates for this administrator (and, in chain mode, employer) the
    registry returned, usable or not: for audit and support, never for decisions."""

    @property
    def refused(self) -> bool:
        return self.refusal is not None

    def allows(self, employer_kvk: str) -> bool:
        return any(e.kvk == employer_kvk for e in self.allowed)

    def error(self) -> GatewayError | None:
        """The error to show for a refusal (``None`` when the login may proceed)."""
        if self.refusal == "chain_without_mandate":
            return MandateMissing(
                f"chain login: no usable mandate from {self.employer_kvk} "
                f"to {self.administrator_kvk} ({self.mandates_seen} found)"
            )
        if self.refusal is not None:
            return LoginFailed(
                self.refusal,
                text_nl=(
                    "Uw eHerkenning gaf geen KvK-nummer door. Het pensioenfonds herkent "
                    "administrateurs en werkgevers aan hun KvK-nummer. Neem contact op met "
                    "uw eHerkenning-leverancier."
                ),
                text_en=(
                    "Your eHerkenning did not provide a KvK number. The pension fund "
                    "identifies administrators and employers by their KvK number. Please "
                    "contact your eHerkenning supplier."
                ),
            )
        return None

    def audit_fields(self) -> dict[str, Any]:
        """Counts and identifiers for an audit event; never the list of employers."""
        fields: dict[str, Any] = {
            "mode": self.mode,
            "administrator_kvk": self.administrator_kvk,
            "allowed_count": len(self.allowed),
            "mandates_seen": self.mandates_seen,
        }
        if self.employer_kvk is not None:
            fields["employer_kvk"] = self.employer_kvk
        if self.refusal is not None:
            fields["reason"] = self.refusal
        return fields


def is_usable(mandate: Mandate, today: dt.date, branch: str | None) -> bool:
    """Active, valid today (from inclusive, until exclusive) and for exactly this branch."""
    if mandate.status is not _ACTIVE:
        return False
    if today < mandate.valid_from:
        return False
    if mandate.valid_until is not None and today >= mandate.valid_until:
        return False
    return mandate.branch == branch


def allowed_employers(identity: Identity, mandates: Sequence[Mandate], today: dt.date) -> Decision:
    """Apply the fund's rules; see the module docstring."""
    mode = identity.mode
    administrator = identity.administrator_kvk
    if mode == "chain":
        employer = identity.legal_subject_kvk
        if not is_kvk(administrator):
            return Decision(mode, administrator, employer, (), "administrator_kvk_missing")
        if not is_kvk(employer):
            return Decision(mode, administrator, employer, (), "employer_kvk_missing")
        relevant = [
            m
            for m in mandates
            if m.administrator_kvk == administrator and m.employer_kvk == employer
        ]
        allowed = _employers(m for m in relevant if is_usable(m, today, identity.branch))
        if not allowed:
            return Decision(
                mode, administrator, employer, (), "chain_without_mandate", len(relevant)
            )
        return Decision(mode, administrator, employer, allowed, None, len(relevant))

    if not is_kvk(administrator):
        return Decision(mode, administrator, None, (), "administrator_kvk_missing")
    # The source already filters by administrator; filtering again keeps the
    # rule correct for any caller that passes a wider list.
    relevant = [m for m in mandates if m.administrator_kvk == administrator]
    allowed = _employers(m for m in relevant if is_usable(m, today, identity.branch))
    return Decision(mode, administrator, None, allowed, None, len(relevant))


def _employers(usable: Iterable[Mandate]) -> tuple[Employer, ...]:
    """One ``Employer`` per (KvK, fund number); several usable mandates merge their scopes."""
    named: dict[tuple[str, str | None], Mandate] = {}
    merged_scopes: dict[tuple[str, str | None], set[str]] = {}
    for m in usable:
        key = (m.employer_kvk, m.fund_employer_number)
        first = named.get(key)
        if first is None:
            named[key] = m
            continue
        merged_scopes.setdefault(key, set(first.scopes)).update(m.scopes)
        # The most recently started mandate names the employer (registrations
        # get renamed); ties break on the name so the result is deterministic.
        if (m.valid_from, m.employer_name) > (first.valid_from, first.employer_name):
            named[key] = m
    employers = [
        Employer(
            m.employer_kvk,
            m.employer_name,
            m.fund_employer_number,
            frozenset(merged_scopes[key]) if key in merged_scopes else m.scopes,
        )
        for key, m in named.items()
    ]
    employers.sort(key=lambda e: (e.name.casefold(), e.kvk, e.fund_number or ""))
    return tuple(employers)
