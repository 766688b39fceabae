"""The mandate value and the record format every mandate source shares.

A ``Mandate`` is one line of the fund's registry: employer E authorised
administrator A (optionally only for one branch, optionally only for some
portal scopes), with a status and a validity period. ``MandateRecord`` is the
wire/file shape of that line (YAML, CSV and the HTTP registry's JSON all use
the same field names), validated strictly with pydantic so a typo in a field
name is an error instead of a silently missing end date.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

KVK_PATTERN = r"^[0-9]{8}$"
"""KvK number: exactly 8 digits (kept as text: leading zeros matter)."""
BRANCH_PATTERN = r"^[0-9]{12}$"
"""Vestigingsnummer: exactly 12 digits."""
SCOPE_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,63}$"

_KVK_RE = re.compile(KVK_PATTERN)


def is_kvk(value: object) -> bool:
    """True when ``value`` is an 8-digit KvK number as text."""
    return isinstance(value, str) and bool(_KVK_RE.match(value))


class MandateStatus(enum.StrEnum):
    """Registry statuses. Only ``active`` ever grants access."""

    ACTIVE = "active"
    PENDING = "pending"
    """Requested by the employer, not yet confirmed by the fund."""
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    """A status this gateway version does not know: treated like any non-active status."""

    @classmethod
    def parse(cls, text: str) -> MandateStatus:
        """Map registry text to a status; unknown words become ``UNKNOWN`` (never active)."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class Mandate:
    """Employer ``employer_kvk`` authorised administrator ``administrator_kvk`` at the fund."""

    employer_kvk: str
    employer_name: str
    administrator_kvk: str
    status: MandateStatus
    valid_from: dt.date
    """First day the mandate is valid (inclusive)."""
    valid_until: dt.date | None = None
    """First day the mandate is **no longer** valid (exclusive); ``None`` = open-ended."""
    fund_employer_number: str | None = None
    """The fund's own employer number (aansluitnummer), where the registry has one."""
    branch: str | None = None
    """Vestigingsnummer this mandate is limited to; ``None`` = the whole company."""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """Portal parts this mandate covers, passed through to the session unchanged."""


def _no_bare_numbers(value: Any) -> Any:
    # YAML turns an unquoted 01234567 into an (octal!) integer and CSV tools
    # strip leading zeros; refusing numbers forces identifiers to be quoted.
    if isinstance(value, bool | int | float):
        raise ValueError("must be text (quote it: '01234567'), not a number")
    return value


def _date_from_text(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        raise ValueError("must be a date (YYYY-MM-DD), not a date-time")
    if isinstance(value, str) and value.strip() == "":
        return None
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value.strip()):
        raise ValueError("must be a date written as YYYY-MM-DD")
    return value.strip() if isinstance(value, str) else value


def _optional_text(value: Any) -> Any:
    value = _no_bare_numbers(value)
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


def _scopes(value: Any) -> Any:
    # CSV and simple files write scopes as one string separated by spaces,
    # commas or semicolons; JSON and YAML use a list.
    if value is None:
        return []
    if isinstance(value, str):
        return [s for s in re.split(r"[\s,;]+", value) if s]
    return value


KvkText = Annotated[str, BeforeValidator(_no_bare_numbers), Field(pattern=KVK_PATTERN)]
DateText = Annotated[dt.date, BeforeValidator(_date_from_text)]
OptionalDate = Annotated[dt.date | None, BeforeValidator(_date_from_text)]


class MandateRecord(BaseModel):
    """One mandate as the registry writes it (file row or JSON object)."""

    # extra="forbid": an unknown field is far more likely a typo ("valid_untill")
    # than a new feature, and ignoring it could silently drop a restriction.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    administrator_kvk: Annotated[KvkText | None, BeforeValidator(_optional_text)] = None
    """Required in files (one file holds every administrator); optional in an HTTP
    response, where it must match the administrator asked for if present."""
    employer_kvk: KvkText
    employer_name: Annotated[
        str, BeforeValidator(_no_bare_numbers), Field(min_length=1, max_length=200)
    ]
    fund_employer_number: Annotated[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")] | None,
        BeforeValidator(_optional_text),
    ] = None
    status: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z_]+$")]
    valid_from: DateText
    valid_until: OptionalDate = None
    branch: Annotated[
        Annotated[str, Field(pattern=BRANCH_PATTERN)] | None, BeforeValidator(_optional_text)
    ] = None
    scopes: Annotated[
        list[Annotated[str, Field(pattern=SCOPE_PATTERN)]],
        BeforeValidator(_scopes),
        Field(default_factory=list, max_length=64),
    ]

    @field_validator("valid_until")
    @classmethod
    def _until_after_from(cls, value: dt.date | None, info: Any) -> dt.date | None:
        start = info.data.get("valid_from")
        if value is not None and start is not None and value <= start:
            raise ValueError("valid_until must be after valid_from (it is exclusive)")
        return value

    def to_mandate(self, administrator_kvk: str) -> Mandate:
        """The domain value; ``administrator_kvk`` fills in what an HTTP record may omit."""
        return Mandate(
            employer_kvk=self.employer_kvk,
            employer_name=self.employer_name,
            administrator_kvk=self.administrator_kvk or administrator_kvk,
            status=MandateStatus.parse(self.status),
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            fund_employer_number=self.fund_employer_number,
            branch=self.branch,
            scopes=frozenset(self.scopes),
        )


def describe_errors(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """``(path, message)`` per problem, without echoing input values (they may be data)."""
    out: list[tuple[str, str]] = []
    for item in error.errors(include_input=False, include_url=False):
        path = prefix
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = item["msg"].removeprefix("Value error, ")
        out.append((path, msg))
    return out
