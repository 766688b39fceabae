"""Claim building, the employer digest and the settings model (pure, no keys or network)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import EmployerNotAllowed
from gateway.identity import Employer, Loa
from gateway.tokens import (
    TokenKeyFiles,
    TokenSettings,
    TokenSubject,
    build_claims,
    employer_entries,
    employers_digest,
    employers_document,
    employers_response,
)
from gateway.tokens.claims import set_summary
from gateway.tokens.settings import EmployerIds
from tests.support import tokens as backend

SubjectFactory = Callable[..., TokenSubject]
NOW = 1_750_000_000


@pytest.fixture
def settings(tmp_path: Path) -> TokenSettings:
    return TokenSettings(
        issuer="https://werkgevers.example.nl/", keys=TokenKeyFiles(current=tmp_path / "k.pem")
    )


def test_direct_mode_claims(settings: TokenSettings, make_subject: SubjectFactory) -> None:
    """A direct-mode token carries every documented claim with the documented values."""
    subject = make_subject(2, active="10000001")
    claims = build_claims(subject, "portal", NOW, settings=settings, jti="j1")
    assert claims == {
        "iss": "https://werkgevers.example.nl",
        "sub": "pseudo-abc123",
        "aud": "portal",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 60,
        "jti": "j1",
        "sid": "sess-ref-1",
        "auth_time": int(subject.identity.login_time.timestamp()),
        "loa": "loa3",
        "mode": "direct",
        "org": {"kvk": "87654321", "name": "Administratiekantoor Jansen"},
        "employers": [
            {"kvk": "10000000", "scopes": ["contributions"]},
            {"kvk": "10000001", "scopes": ["contributions"]},
        ],
        "act_employer": {"kvk": "10000001", "scopes": ["contributions"]},
    }


def test_chain_mode_names_the_administrator_office(
    settings: TokenSettings, make_subject: SubjectFactory
) -> None:
    """In chain mode ``org`` is the intermediary and the one employer is active."""
    subject = make_subject(1, chain=True, active="10000000")
    claims = build_claims(subject, "portal", NOW, settings=settings)
    assert claims["mode"] == "chain"
    assert claims["org"] == {"kvk": "87654321", "name": "Administratiekantoor Jansen"}
    assert claims["act_employer"]["kvk"] == "10000000"
    assert len(claims["jti"]) >= 20


def test_identifier_selection_both_and_names(tmp_path: Path, make_subject: SubjectFactory) -> None:
    """``employer_ids: both`` with names puts KvK, fund number and name in each entry."""
    settings = TokenSettings(
        issuer="https://gw.example",
        keys=TokenKeyFiles(current=tmp_path / "k.pem"),
        employer_ids="both",
        employer_names=True,
    )
    claims = build_claims(make_subject(1), "portal", NOW, settings=settings)
    assert claims["employers"] == [
        {
            "kvk": "10000000",
            "fund_number": "F000000",
            "name": "Werkgever 0 B.V.",
            "scopes": ["contributions"],
        }
    ]


def test_fund_number_only_drops_unaddressable_employers() -> None:
    """With fund numbers only, an employer without one is left out (narrower, never wider)."""
    allowed = [
        Employer(kvk="11111111", name="A", fund_number="F1"),
        Employer(kvk="22222222", name="B"),
    ]
    assert employer_entries(allowed, "fund_number", False) == [{"fund_number": "F1"}]


def test_active_employer_outside_allowed_set_is_refused(
    settings: TokenSettings, make_subject: SubjectFactory
) -> None:
    """A session whose active employer is not allowed never gets a token."""
    with pytest.raises(EmployerNotAllowed):
        build_claims(make_subject(2, active="99999999"), "portal", NOW, settings=settings)


def test_separator_in_registry_value_is_refused() -> None:
    """Identifiers or scopes that would make the digest ambiguous are refused."""
    with pytest.raises(ValueError, match="scope"):
        employer_entries(
            [Employer(kvk="11111111", name="A", scopes=frozenset({"a,b"}))], "kvk", False
        )
    with pytest.raises(ValueError, match="KvK"):
        employer_entries([Employer(kvk="1111 1111", name="A")], "kvk", False)


def test_substitute_replaces_list(settings: TokenSettings, make_subject: SubjectFactory) -> None:
    """The large-set form has count, digest and URI instead of the list; act_employer stays."""
    subject = make_subject(5, active="10000003")
    claims = build_claims(subject, "portal", NOW, settings=settings, large_set=True)
    assert "employers" not in claims
    assert claims["employers_count"] == 5
    assert claims["employers_uri"] == "https://werkgevers.example.nl/_gateway/api/employers"
    assert claims["employers_digest"] == employers_digest(
        employer_entries(subject.allowed, "kvk", False)
    )
    assert claims["act_employer"] == {"kvk": "10000003", "scopes": ["contributions"]}


def test_digest_follows_the_documented_rule() -> None:
    """The digest equals the rule written out by hand, and the backend's own implementation."""
    entries: list[dict[str, Any]] = [
        {"kvk": "22222222", "fund_number": "F2"},
        {"kvk": "11111111", "scopes": ["payroll", "contributions"]},
    ]
    text = "11111111\t\tcontributions,payroll\n22222222\tF2\t\n"
    expected = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
    assert employers_digest(entries) == expected.decode()
    assert backend.employers_digest(entries) == expected.decode()


def test_digest_ignores_order_and_names_but_not_scopes() -> None:
    """Reordering or renaming does not change the digest; a scope change does."""
    a: list[dict[str, Any]] = [{"kvk": "1", "name": "x", "scopes": ["s"]}, {"kvk": "2"}]
    b: list[dict[str, Any]] = [{"kvk": "2"}, {"kvk": "1", "name": "y", "scopes": ["s"]}]
    c: list[dict[str, Any]] = [{"kvk": "2"}, {"kvk": "1", "scopes": ["s", "t"]}]
    assert employers_digest(a) == employers_digest(b)
    assert employers_digest(a) != employers_digest(c)


def test_fingerprint_changes_with_session_content(make_subject: SubjectFactory) -> None:
    """The cache fingerprint changes with the set, the active employer and the level."""
    base = make_subject(3)
    assert base.fingerprint == make_subject(3).fingerprint
    others = [
        make_subject(4),
        make_subject(3, active="10000001"),
        make_subject(3, loa=Loa.EH4),
        make_subject((*make_subject(3).allowed[:2], Employer(kvk="10000002", name="Renamed"))),
    ]
    assert len({base.fingerprint, *(o.fingerprint for o in others)}) == 5


def test_employers_endpoint_decisions(
    settings: TokenSettings, make_subject: SubjectFactory
) -> None:
    """The endpoint serves its own session's set; refuses ended, foreign or changed ones."""
    subject = make_subject(4)
    claims = build_claims(subject, "portal", NOW, settings=settings, large_set=True)
    status, body = employers_response(claims, subject, settings=settings)
    assert status == 200
    assert body == employers_document(subject, settings=settings)
    assert body["count"] == 4
    assert body["digest"] == claims["employers_digest"]
    assert body["employers"][0]["name"] == "Werkgever 0 B.V."
    assert employers_response(claims, None, settings=settings)[0] == 401
    other = make_subject(4, session_ref="other")
    assert employers_response(claims, other, settings=settings)[0] == 403
    changed = make_subject(5)
    assert employers_response(claims, changed, settings=settings) == (
        409,
        {"error": "employers_changed"},
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lifetime_seconds", 301),
        ("lifetime_seconds", 0),
        ("reuse_margin", 1.0),
        ("algorithm", "HS256"),
        ("issuer", "gw.example"),
        ("issuer", "https://gw.example/?x=1"),
        ("header_name", "X-Identity\r\nX-Evil"),
        ("header_name", "Cookie"),
        ("max_header_bytes", 100),
        ("employer_ids", "rsin"),
    ],
)
def test_settings_reject_unsafe_values(tmp_path: Path, field: str, value: object) -> None:
    """Settings refuse lifetimes over 300 s, symmetric algorithms, bad URLs and header names."""
    kwargs: dict[str, Any] = {
        "issuer": "https://gw.example",
        "keys": {"current": str(tmp_path / "k.pem")},
        field: value,
    }
    with pytest.raises(ValidationError):
        TokenSettings(**kwargs)


def test_settings_defaults(settings: TokenSettings) -> None:
    """Defaults: ES256, 60 s, 8 KiB, KvK numbers, ``X-Gateway-Identity``, 5 min JWKS cache."""
    assert settings.algorithm == "ES256"
    assert settings.lifetime_seconds == 60
    assert settings.max_header_bytes == 8192
    assert settings.employer_ids == "kvk"
    assert settings.header_name == "X-Gateway-Identity"
    assert settings.jwks_max_age_seconds == 300
    assert settings.issuer == "https://werkgevers.example.nl"


@pytest.mark.parametrize("ids", ["kvk", "fund_number", "both"])
def test_set_summary_equals_digest_of_entries(ids: EmployerIds) -> None:
    """The fast count and digest equal the documented digest over the token entries."""
    allowed = [
        Employer(kvk="33333333", name="C", fund_number="F3", scopes=frozenset({"b", "a"})),
        Employer(kvk="11111111", name="A"),
        Employer(kvk="22222222", name="B", fund_number="F2", scopes=frozenset({"a"})),
    ]
    entries = employer_entries(allowed, ids, False)
    assert set_summary(allowed, ids) == (len(entries), employers_digest(entries))
    with pytest.raises(ValueError, match=r"KvK|fund"):
        set_summary([*allowed, Employer(kvk="4444,4444", name="D", fund_number="F,4")], ids)


def test_documented_worked_example_holds() -> None:
    """The digest example in docs/backends.md is what the gateway computes."""
    entries: list[dict[str, Any]] = [
        {"kvk": "12345678", "fund_number": "204711", "scopes": ["contributions", "payroll"]},
        {"kvk": "23456789", "fund_number": "198822", "scopes": ["contributions"]},
    ]
    digest = employers_digest(entries)
    assert digest == "shIb5oiyCSkl6nkafrO8WjvEpqFFAZulUAaZSxvBeQI"
    docs = (Path(__file__).parents[2] / "docs" / "backends.md").read_text(encoding="utf-8")
    assert docs.count(digest) >= 3
