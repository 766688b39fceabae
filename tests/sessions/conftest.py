"""Fixtures for session tests: each store backend, a settable clock, sample identities."""

from __future__ import annotations

import datetime as dt

from gateway.identity import Employer, Identity, Loa
from tests.support.redis import RedisServer, redis_server  # noqa: F401 (fixture)


def make_identity(*, chain: bool = False) -> Identity:
    return Identity(
        acting_subject="ABCDEF0123456789pseudonym",
        legal_subject_kvk="12345678",
        loa=Loa.EH3,
        service_id="urn:etoegang:DV:00000001234567890000:services:1",
        login_time=dt.datetime(2026, 3, 2, 8, 59, 30, 123456, tzinfo=dt.UTC),
        legal_subject_name="Bakkerij De Korst B.V.",
        intermediary_kvk="87654321" if chain else None,
        intermediary_name="Administratiekantoor Cijfers" if chain else None,
        branch="000012345678" if chain else None,
    )


def make_employers(n: int) -> tuple[Employer, ...]:
    return tuple(
        Employer(
            kvk=f"{10000000 + i}",
            name=f"Werkgever nummer {i} B.V.",
            fund_number=f"F{i:07d}",
            scopes=frozenset({"premie", "opgave"}) if i % 3 == 0 else frozenset(),
        )
        for i in range(n)
    )
