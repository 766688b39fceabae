"""Session serialisation: exact round trips, compact large sets, and refusal of foreign data."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from gateway.identity import Employer
from gateway.sessions.record import Session, decode_session, encode_session
from tests.sessions.conftest import make_employers, make_identity

NOW = dt.datetime(2026, 3, 2, 9, 0, 0, 654321, tzinfo=dt.UTC)


def _session(allowed: tuple[Employer, ...], *, chain: bool = False) -> Session:
    return Session(
        id="x" * 43,
        identity=make_identity(chain=chain),
        allowed=allowed,
        active_employer=allowed[0].kvk if allowed else None,
        created_at=NOW,
        last_seen=NOW + dt.timedelta(seconds=1),
        last_mandate_check=NOW + dt.timedelta(seconds=2),
        mandate_check_ok_at=NOW.astimezone(dt.timezone(dt.timedelta(hours=1))),
        csrf_secret="csrf-secret",
        version=7,
        ref="ref",
    )


@pytest.mark.parametrize("chain", [False, True])
def test_small_session_round_trips_exactly(chain: bool) -> None:
    """Every field, including Loa, microseconds, UTC offsets and scopes, survives encoding."""
    session = _session(make_employers(3), chain=chain)
    blob = encode_session(session)
    assert blob.startswith(b"J")
    assert decode_session("x" * 43, "ref", blob) == session


def test_session_without_employers_round_trips() -> None:
    """A mode-1 session with zero mandates (empty overview) round-trips."""
    session = _session(())
    assert decode_session("x" * 43, "ref", encode_session(session)) == session


def test_large_employer_set_is_compressed_and_round_trips() -> None:
    """10,000 employers are stored compressed, well below their plain JSON size."""
    session = _session(make_employers(10_000))
    blob = encode_session(session)
    assert blob.startswith(b"Z")
    assert len(blob) < 200_000
    assert decode_session("x" * 43, "ref", blob) == session


def test_the_session_id_is_not_stored_in_the_record() -> None:
    """The record never contains the cookie value (a store dump yields no usable session)."""
    session = _session(make_employers(1))
    assert b"x" * 43 not in encode_session(session)


@pytest.mark.parametrize(
    "blob",
    [b"", b"Xjunk", b"J{}", b'J{"v":99}', b"Jnot json", b"Zbroken", b'J{"v":1,"id":{}}'],
)
def test_foreign_or_corrupt_records_are_refused(blob: bytes) -> None:
    """Anything not written by this version of the encoder raises ValueError."""
    with pytest.raises(ValueError, match=r"session|Expecting|Extra"):
        decode_session("x" * 43, "ref", blob)


def test_repr_hides_the_session_id_and_csrf_secret() -> None:
    """Printing a session (e.g. in a traceback) does not reveal its cookie or CSRF secret."""
    text = repr(_session(make_employers(1)))
    assert "x" * 43 not in text
    assert "csrf-secret" not in text


def test_token_subject_is_built_once_per_session_object() -> None:
    """The token subject says what the session says, is reused while the object lives,
    and any change (a new object) gets its own subject with the new version."""
    session = _session(make_employers(3))
    subject = session.token_subject
    assert subject is session.token_subject
    assert subject.identity == session.identity
    assert subject.allowed == session.allowed
    assert subject.session_ref == session.ref
    assert subject.active_employer == session.active_employer
    assert subject.login_time == session.created_at
    assert subject.fingerprint == "v7"
    changed = session.with_changes(active_employer=None)
    assert changed.token_subject.active_employer is None
    assert changed.token_subject.fingerprint == "v8"
    touched = replace(session, last_seen=NOW + dt.timedelta(minutes=1))
    assert touched.token_subject is not subject
    assert touched.token_subject.fingerprint == subject.fingerprint  # same token content
    assert touched == replace(touched)  # the cached subject is not part of equality
