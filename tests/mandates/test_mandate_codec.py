"""The cache's compact encoding of a mandate set."""

from __future__ import annotations

import datetime as dt

from gateway.mandates import Mandate, MandateStatus
from gateway.mandates.codec import decode_set, encode_set

FETCHED = dt.datetime(2025, 6, 15, 10, 0, 0, 123456, tzinfo=dt.UTC)


def _mandates(n: int) -> tuple[Mandate, ...]:
    return tuple(
        Mandate(
            employer_kvk=f"{30000000 + i:08d}",
            employer_name=f"Werkgever {i} B.V. Café 't Hoekje \u00eb",
            administrator_kvk="11111111",
            status=MandateStatus.ACTIVE if i % 7 else MandateStatus.REVOKED,
            valid_from=dt.date(2020, 1, 1) + dt.timedelta(days=i % 1000),
            valid_until=dt.date(2030, 1, 1) if i % 3 == 0 else None,
            fund_employer_number=f"{i:06d}" if i % 2 else None,
            branch="000012345678" if i % 11 == 0 else None,
            scopes=frozenset({"declarations", "invoices"}) if i % 5 else frozenset(),
        )
        for i in range(n)
    )


def test_round_trip_keeps_every_field() -> None:
    """Encoding then decoding gives back the same mandates, administrator and fetch time."""
    ms = _mandates(50)
    assert decode_set(encode_set("11111111", ms, FETCHED)) == ("11111111", ms, FETCHED)


def test_empty_set_round_trips() -> None:
    """An administrator without mandates is cached as such (a real answer, not a miss)."""
    assert decode_set(encode_set("11111111", (), FETCHED)) == ("11111111", (), FETCHED)


def test_ten_thousand_mandates_stay_compact() -> None:
    """10,000 mandates encode to well under a megabyte (compressed positional JSON)."""
    data = encode_set("11111111", _mandates(10_000), FETCHED)
    assert len(data) < 1_000_000
    assert decode_set(data) is not None


def test_damaged_or_foreign_entries_read_as_a_miss() -> None:
    """Garbage, a truncated entry or another format version decode to None, never raise."""
    good = encode_set("11111111", _mandates(100), FETCHED)
    for bad in (b"", b"X123", good[:-10], b'J{"v":99,"a":"1","t":0,"m":[]}', b"J[1,2]"):
        assert decode_set(bad) is None
