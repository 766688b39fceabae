"""Compact bytes for a cached mandate set (10,000 mandates fit in a few hundred KB).

Layout: one tag byte, then JSON with one positional array per mandate
(field names would be most of the bytes). Above a small size the JSON is
zlib-compressed (tag ``Z``), below it is stored plain (tag ``J``). The JSON
carries a format version so a rolling upgrade that changes the layout reads
an old entry as a cache miss instead of misreading it.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from typing import Any

from gateway.mandates.model import Mandate, MandateStatus

_VERSION = 1
_COMPRESS_ABOVE = 2048
_STATUS = {s.value: s for s in MandateStatus}


def encode_set(
    administrator_kvk: str, mandates: tuple[Mandate, ...], fetched_at: dt.datetime
) -> bytes:
    """Serialise a fetched set for the store."""
    doc = {
        "v": _VERSION,
        "a": administrator_kvk,
        "t": fetched_at.timestamp(),
        "m": [
            [
                m.employer_kvk,
                m.employer_name,
                m.administrator_kvk,
                m.status.value,
                m.valid_from.toordinal(),
                m.valid_until.toordinal() if m.valid_until else None,
                m.fund_employer_number,
                m.branch,
                sorted(m.scopes),
            ]
            for m in mandates
        ],
    }
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if len(raw) > _COMPRESS_ABOVE:
        return b"Z" + zlib.compress(raw, 6)
    return b"J" + raw


def decode_set(data: bytes) -> tuple[str, tuple[Mandate, ...], dt.datetime] | None:
    """The stored set, or ``None`` if it is from another format version or damaged."""
    try:
        if data[:1] == b"Z":
            raw = zlib.decompress(data[1:])
        elif data[:1] == b"J":
            raw = data[1:]
        else:
            return None
        doc: Any = json.loads(raw)
        if doc.get("v") != _VERSION:
            return None
        # Registries repeat the same dates and scope sets a lot: build each once.
        dates: dict[int, dt.date] = {}
        scopes: dict[tuple[str, ...], frozenset[str]] = {}
        status_of = _STATUS.get
        unknown = MandateStatus.UNKNOWN

        def date(n: int) -> dt.date:
            d = dates.get(n)
            if d is None:
                d = dates[n] = dt.date.fromordinal(n)
            return d

        def scope_set(items: list[str]) -> frozenset[str]:
            key = tuple(items)
            fs = scopes.get(key)
            if fs is None:
                fs = scopes[key] = frozenset(key)
            return fs

        mandates = tuple(
            Mandate(
                e,
                n,
                a,
                status_of(s, unknown),
                date(f),
                None if u is None else date(u),
                fn,
                b,
                scope_set(sc),
            )
            for e, n, a, s, f, u, fn, b, sc in doc["m"]
        )
        fetched_at = dt.datetime.fromtimestamp(doc["t"], dt.UTC)
        return str(doc["a"]), mandates, fetched_at
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error):
        return None
