"""The ``Session`` record and its compact, exactly round-tripping serialisation.

A session is stored as one value. Encoding (``encode_session``):

- JSON with short keys, ``None`` fields left out, datetimes as ISO 8601 (which
  round-trips microseconds and UTC offsets exactly), the level as its short name;
- employers as arrays ``[kvk, name, fund_number?, [scopes...]?]`` rather than
  objects, which roughly halves the size of a large allowed set;
- above 2 KiB the JSON is zlib-compressed (level 1: fast). Large allowed sets
  (thousands of employers) shrink severalfold, which matters for Redis memory
  and for the bytes every cache miss moves.

The first byte says which: ``J`` (plain JSON) or ``Z`` (zlib). A record of an
unknown format version decodes to an error, which the manager treats as "no
session" (fail closed: the user logs in again).
"""

from __future__ import annotations

import datetime as dt
import hmac
import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import orjson

from gateway.identity import Employer, Identity, Loa
from gateway.tokens.claims import TokenSubject

FORMAT_VERSION = 1
_COMPRESS_ABOVE = 2048


@dataclass(frozen=True)
class Session:
    """One logged-in browser. ``id`` is the cookie value: never log it (use ``ref``)."""

    id: str = field(repr=False)
    identity: Identity
    allowed: tuple[Employer, ...]
    active_employer: str | None
    """KvK number of the employer the user is working on, if one is selected."""
    created_at: dt.datetime
    last_seen: dt.datetime
    last_mandate_check: dt.datetime
    """The last mandate re-check attempt: a failed one's time, else ``mandate_check_ok_at``."""
    mandate_check_ok_at: dt.datetime
    """When the registry was asked for the answer ``allowed`` comes from (freshness and
    staleness are measured from here; see ``gateway.mandates.freshness``)."""
    csrf_secret: str = field(repr=False)
    version: int = 1
    """Incremented by every content change (not by touches)."""
    ref: str = ""
    """Keyed hash of ``id`` for logs, audit and the token ``sid`` (set by the manager)."""

    @cached_property
    def allowed_kvks(self) -> frozenset[str]:
        """KvK numbers of the allowed employers (built once per ``Session`` object:
        every request on an employer's page asks)."""
        return frozenset(e.kvk for e in self.allowed)

    def employer(self, kvk: str) -> Employer | None:
        """The allowed employer with this KvK number, or ``None``."""
        for e in self.allowed:
            if e.kvk == kvk:
                return e
        return None

    def csrf_matches(self, token: str | None) -> bool:
        """Constant-time check of a submitted CSRF token against this session's secret."""
        return token is not None and hmac.compare_digest(token, self.csrf_secret)

    @cached_property
    def token_subject(self) -> TokenSubject:
        """What the token says about this session; built once per ``Session`` object.

        Every authenticated request needs it, and the session cache hands out the
        same object until anything changes, so a request costs an attribute read
        instead of building a ``TokenSubject`` (and its ``fingerprint``) each time.
        Exact: the session is frozen and every change (``replace``, ``with_changes``,
        a re-read from the store) makes a new object. ``version`` is the minter's
        cache key (every content change bumps it).
        """
        return TokenSubject(
            identity=self.identity,
            allowed=self.allowed,
            session_ref=self.ref,
            active_employer=self.active_employer,
            login_time=self.created_at,
            version=self.version,
        )

    def with_changes(self, **changes: Any) -> Session:
        """A copy with ``changes`` applied and the version bumped."""
        return replace(self, version=self.version + 1, **changes)


def _dt(value: dt.datetime) -> str:
    return value.isoformat()


def _undt(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


_IDENTITY_FIELDS = (
    "legal_subject_kvk",
    "legal_subject_rsin",
    "intermediary_kvk",
    "legal_subject_name",
    "intermediary_name",
    "service_uuid",
    "branch",
    "authenticating_authority",
    # For a SAML LogoutRequest; absent in records written before single logout existed.
    "name_id",
    "name_id_format",
    "name_id_qualifier",
    "name_id_sp_qualifier",
    "session_index",
)


def _identity_to_json(identity: Identity) -> dict[str, Any]:
    out: dict[str, Any] = {
        "as": identity.acting_subject,
        "loa": identity.loa.short,
        "svc": identity.service_id,
        "lt": _dt(identity.login_time),
    }
    for name in _IDENTITY_FIELDS:
        value = getattr(identity, name)
        if value is not None:
            out[name] = value
    return out


def _identity_from_json(data: dict[str, Any]) -> Identity:
    return Identity(
        acting_subject=data["as"],
        loa=Loa.parse(data["loa"]),
        service_id=data["svc"],
        login_time=_undt(data["lt"]),
        legal_subject_kvk=data.get("legal_subject_kvk"),
        **{k: data.get(k) for k in _IDENTITY_FIELDS if k != "legal_subject_kvk"},
    )


def _employer_to_json(e: Employer) -> list[Any]:
    row: list[Any] = [e.kvk, e.name]
    if e.fund_number is not None or e.scopes:
        row.append(e.fund_number)
    if e.scopes:
        row.append(sorted(e.scopes))
    return row


# Decoded employers, shared between the sessions that list them (``Employer`` is
# frozen): the sessions of one administration office list the same employers, so
# a replica's session cache holds each once, and decoding a record mostly looks
# employers up instead of building them. Bounded: emptied when full.
_EMPLOYERS: dict[tuple[Any, ...], Employer] = {}
_EMPLOYERS_MAX = 100_000


def _employer_from_json(row: list[Any]) -> Employer:
    n = len(row)
    key = (row[0], row[1], row[2], *row[3]) if n > 3 else (row[0], row[1], *row[2:3])
    employer = _EMPLOYERS.get(key)
    if employer is None:
        fund_number = row[2] if n > 2 else None
        scopes = frozenset(row[3]) if n > 3 else frozenset()
        employer = Employer(kvk=row[0], name=row[1], fund_number=fund_number, scopes=scopes)
        if not isinstance(employer.kvk, str) or not isinstance(employer.name, str):
            raise TypeError("employer kvk and name must be text")
        if len(_EMPLOYERS) >= _EMPLOYERS_MAX:
            _EMPLOYERS.clear()
        _EMPLOYERS[key] = employer
    return employer


def encode_session(session: Session) -> bytes:
    """Serialise a session for the store (the ``id`` and ``ref`` are not stored in it)."""
    data: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "id": _identity_to_json(session.identity),
        "al": [_employer_to_json(e) for e in session.allowed],
        "ca": _dt(session.created_at),
        "ls": _dt(session.last_seen),
        "mc": _dt(session.last_mandate_check),
        "mo": _dt(session.mandate_check_ok_at),
        "cs": session.csrf_secret,
        "n": session.version,
    }
    if session.active_employer is not None:
        data["ae"] = session.active_employer
    raw = orjson.dumps(data)  # compact, UTF-8 (ensure_ascii=False)
    if len(raw) > _COMPRESS_ABOVE:
        return b"Z" + zlib.compress(raw, 1)
    return b"J" + raw


def decode_session(session_id: str, ref: str, blob: bytes) -> Session:
    """Rebuild a session; ``ValueError`` for anything not written by ``encode_session``."""
    try:
        if blob[:1] == b"Z":
            raw = zlib.decompress(blob[1:])
        elif blob[:1] == b"J":
            raw = blob[1:]
        else:
            raise ValueError("unknown session encoding")
        data = orjson.loads(raw)
        if data.get("v") != FORMAT_VERSION:
            raise ValueError("unknown session format version")
        return Session(
            id=session_id,
            identity=_identity_from_json(data["id"]),
            allowed=tuple(_employer_from_json(r) for r in data["al"]),
            active_employer=data.get("ae"),
            created_at=_undt(data["ca"]),
            last_seen=_undt(data["ls"]),
            last_mandate_check=_undt(data["mc"]),
            mandate_check_ok_at=_undt(data["mo"]),
            csrf_secret=data["cs"],
            version=data["n"],
            ref=ref,
        )
    except orjson.JSONDecodeError as exc:
        raise ValueError("corrupt session record: not JSON") from exc
    except (KeyError, TypeError, IndexError, AttributeError, zlib.error) as exc:
        raise ValueError(f"corrupt session record: {type(exc).__name__}") from exc
