"""The fund's mandate rules (pure): modes, status, validity dates, branches, scopes."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from gateway.errors import LoginFailed, MandateMissing
from gateway.identity import Employer, Identity, Loa
from gateway.mandates import Mandate, MandateStatus, allowed_employers, fund_today
from gateway.mandates.rules import is_usable

ADMIN = "11111111"
OTHER_ADMIN = "22222222"
EMP_A = "30000001"
EMP_B = "30000002"
EMP_C = "30000003"
BRANCH = "000012345678"
TODAY = dt.date(2025, 6, 15)


def identity(
    legal: str | None = ADMIN, intermediary: str | None = None, branch: str | None = None
) -> Identity:
    return Identity(
        acting_subject="pseudo-1",
        legal_subject_kvk=legal,
        loa=Loa.EH3,
        service_id="urn:etoegang:DV:0000:services:1",
        login_time=dt.datetime(2025, 6, 15, 10, tzinfo=dt.UTC),
        intermediary_kvk=intermediary,
        branch=branch,
    )


def mandate(
    employer: str = EMP_A,
    name: str = "Bakkerij De Korst",
    admin: str = ADMIN,
    status: MandateStatus = MandateStatus.ACTIVE,
    valid_from: dt.date = dt.date(2020, 1, 1),
    valid_until: dt.date | None = None,
    branch: str | None = None,
    scopes: frozenset[str] = frozenset(),
    fund_number: str | None = None,
) -> Mandate:
    return Mandate(
        employer_kvk=employer,
        employer_name=name,
        administrator_kvk=admin,
        status=status,
        valid_from=valid_from,
        valid_until=valid_until,
        branch=branch,
        scopes=scopes,
        fund_employer_number=fund_number,
    )


def test_direct_mode_allows_every_active_mandate_sorted_by_name() -> None:
    """Mode 1 allows all employers with an active mandate for the administrator, sorted by name."""
    ms = [
        mandate(EMP_A, "Zuivel BV", fund_number="Z-1"),
        mandate(EMP_B, "apotheek Noord"),
        mandate(EMP_C, "Bakkerij"),
    ]
    d = allowed_employers(identity(), ms, TODAY)
    assert d.mode == "direct"
    assert not d.refused
    assert d.administrator_kvk == ADMIN
    assert [e.name for e in d.allowed] == ["apotheek Noord", "Bakkerij", "Zuivel BV"]
    assert d.allowed[2] == Employer(kvk=EMP_A, name="Zuivel BV", fund_number="Z-1")


def test_direct_mode_with_no_mandates_is_an_empty_success() -> None:
    """Mode 1 with zero mandates succeeds with an empty allowed set (not a refusal)."""
    d = allowed_employers(identity(), [], TODAY)
    assert d.allowed == ()
    assert d.refusal is None
    assert d.error() is None


@pytest.mark.parametrize("status", [s for s in MandateStatus if s is not MandateStatus.ACTIVE])
def test_only_active_status_grants(status: MandateStatus) -> None:
    """Every status other than active (pending, revoked, suspended, ...) grants nothing."""
    d = allowed_employers(identity(), [mandate(status=status)], TODAY)
    assert d.allowed == ()
    assert d.mandates_seen == 1


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "usable"),
    [
        (TODAY, None, True),  # starts today: from is inclusive
        (TODAY + dt.timedelta(days=1), None, False),  # starts tomorrow
        (dt.date(2020, 1, 1), TODAY + dt.timedelta(days=1), True),  # ends tomorrow
        (dt.date(2020, 1, 1), TODAY, False),  # until is exclusive: ends today = gone today
        (dt.date(2020, 1, 1), TODAY - dt.timedelta(days=1), False),
    ],
)
def test_validity_from_inclusive_until_exclusive(
    valid_from: dt.date, valid_until: dt.date | None, usable: bool
) -> None:
    """valid_from counts from that day on; valid_until is the first day it no longer counts."""
    d = allowed_employers(
        identity(), [mandate(valid_from=valid_from, valid_until=valid_until)], TODAY
    )
    assert bool(d.allowed) is usable


def test_mandates_of_other_administrators_are_ignored() -> None:
    """A mandate naming another administrator never grants, even if a caller passes it."""
    d = allowed_employers(identity(), [mandate(admin=OTHER_ADMIN)], TODAY)
    assert d.allowed == ()
    assert d.mandates_seen == 0


@pytest.mark.parametrize(
    ("login_branch", "mandate_branch", "usable"),
    [
        (None, None, True),
        (BRANCH, BRANCH, True),
        (BRANCH, None, False),  # whole-company mandate, branch-restricted login: fail closed
        (None, BRANCH, False),  # branch mandate, unrestricted login: fail closed
        (BRANCH, "000087654321", False),
    ],
)
@pytest.mark.parametrize("chain", [False, True])
def test_branch_must_match_exactly(
    login_branch: str | None, mandate_branch: str | None, usable: bool, chain: bool
) -> None:
    """A mandate counts only for a login restricted to exactly its branch (None = whole company)."""
    ident = (
        identity(legal=EMP_A, intermediary=ADMIN, branch=login_branch)
        if chain
        else identity(branch=login_branch)
    )
    d = allowed_employers(ident, [mandate(branch=mandate_branch)], TODAY)
    assert bool(d.allowed) is usable


def test_scopes_are_carried_through_unchanged() -> None:
    """A mandate's scopes arrive unchanged on the Employer."""
    d = allowed_employers(
        identity(), [mandate(scopes=frozenset({"declarations", "invoices"}))], TODAY
    )
    assert d.allowed[0].scopes == frozenset({"declarations", "invoices"})


def test_duplicate_mandates_merge_scopes_and_take_newest_name() -> None:
    """Two usable mandates for one employer number give one entry with the union of scopes."""
    ms = [
        mandate(name="Old Name", scopes=frozenset({"a"}), valid_from=dt.date(2020, 1, 1)),
        mandate(name="New Name", scopes=frozenset({"b"}), valid_from=dt.date(2024, 1, 1)),
        mandate(name="Revoked", scopes=frozenset({"c"}), status=MandateStatus.REVOKED),
    ]
    d = allowed_employers(identity(), ms, TODAY)
    assert d.allowed == (Employer(kvk=EMP_A, name="New Name", scopes=frozenset({"a", "b"})),)


def test_one_employer_with_two_fund_numbers_gives_two_entries() -> None:
    """An employer with two fund employer numbers appears once per number."""
    ms = [mandate(fund_number="100"), mandate(fund_number="200")]
    d = allowed_employers(identity(), ms, TODAY)
    assert [e.fund_number for e in d.allowed] == ["100", "200"]


def test_chain_mode_allows_only_the_legal_subject_employer() -> None:
    """Mode 2 allows exactly the LegalSubject employer when it mandated the intermediary."""
    ms = [mandate(EMP_A, "Klant A"), mandate(EMP_B, "Klant B")]
    d = allowed_employers(identity(legal=EMP_A, intermediary=ADMIN), ms, TODAY)
    assert d.mode == "chain"
    assert d.administrator_kvk == ADMIN
    assert d.employer_kvk == EMP_A
    assert [e.kvk for e in d.allowed] == [EMP_A]
    assert d.allows(EMP_A)
    assert not d.allows(EMP_B)


@pytest.mark.parametrize(
    "ms",
    [
        [],
        [mandate(EMP_B)],
        [mandate(EMP_A, status=MandateStatus.PENDING)],
        [mandate(EMP_A, valid_until=TODAY)],
        [mandate(EMP_A, admin=OTHER_ADMIN)],
    ],
    ids=["none", "other-employer", "pending", "ended", "other-administrator"],
)
def test_chain_mode_without_usable_mandate_is_refused(ms: list[Mandate]) -> None:
    """Mode 2 without an active mandate from that employer refuses with chain_without_mandate."""
    d = allowed_employers(identity(legal=EMP_A, intermediary=ADMIN), ms, TODAY)
    assert d.refusal == "chain_without_mandate"
    assert d.allowed == ()
    assert isinstance(d.error(), MandateMissing)
    assert d.audit_fields()["reason"] == "chain_without_mandate"


def test_missing_kvk_numbers_are_refused() -> None:
    """A login without a usable KvK number (e.g. RSIN only) is refused, never widened."""
    direct = allowed_employers(identity(legal=None), [mandate()], TODAY)
    assert direct.refusal == "administrator_kvk_missing"
    assert isinstance(direct.error(), LoginFailed)
    chain = allowed_employers(identity(legal=None, intermediary=ADMIN), [mandate()], TODAY)
    assert chain.refusal == "employer_kvk_missing"


def test_audit_fields_hold_counts_not_lists() -> None:
    """Audit fields give the mode, the KvK and counts, never the employers themselves."""
    d = allowed_employers(
        identity(), [mandate(EMP_A), mandate(EMP_B, status=MandateStatus.REVOKED)], TODAY
    )
    assert d.audit_fields() == {
        "mode": "direct",
        "administrator_kvk": ADMIN,
        "allowed_count": 1,
        "mandates_seen": 2,
    }


def test_fund_today_uses_dutch_calendar_date() -> None:
    """Validity dates are Dutch dates: 23:30 UTC on 31 Dec is already 1 Jan in Amsterdam."""
    assert fund_today(dt.datetime(2024, 12, 31, 23, 30, tzinfo=dt.UTC)) == dt.date(2025, 1, 1)
    with pytest.raises(ValueError, match="aware"):
        fund_today(dt.datetime(2025, 1, 1))


# -- property-style checks over many generated registries -----------------------------

STATUSES = list(MandateStatus)
DATES = [TODAY + dt.timedelta(days=d) for d in (-400, -1, 0, 1, 400)]
BRANCHES = [None, BRANCH]


def _random_mandates(rng: random.Random) -> list[Mandate]:
    out = []
    for _ in range(rng.randint(0, 12)):
        start = rng.choice(DATES)
        end = rng.choice([None, *[d for d in DATES if d > start]])
        out.append(
            mandate(
                employer=rng.choice([EMP_A, EMP_B, EMP_C]),
                name=rng.choice(["A", "b", "C"]),
                admin=rng.choice([ADMIN, OTHER_ADMIN]),
                status=rng.choice(STATUSES),
                valid_from=start,
                valid_until=end,
                branch=rng.choice(BRANCHES),
                scopes=frozenset(rng.sample(["x", "y", "z"], rng.randint(0, 2))),
                fund_number=rng.choice([None, "1"]),
            )
        )
    return out


@pytest.mark.parametrize("seed", range(300))
def test_properties_hold_for_generated_registries(seed: int) -> None:
    """For any registry: allowed ⊆ usable mandates, sorted, de-duplicated, order-independent."""
    rng = random.Random(seed)
    ms = _random_mandates(rng)
    for ident in (
        identity(branch=rng.choice(BRANCHES)),
        identity(legal=rng.choice([EMP_A, EMP_B]), intermediary=ADMIN, branch=rng.choice(BRANCHES)),
    ):
        d = allowed_employers(ident, ms, TODAY)
        usable = [
            m for m in ms if m.administrator_kvk == ADMIN and is_usable(m, TODAY, ident.branch)
        ]
        if ident.mode == "chain":
            usable = [m for m in usable if m.employer_kvk == ident.legal_subject_kvk]
            assert d.refused == (not usable)
        else:
            assert not d.refused
        # Every allowed employer is backed by a usable mandate, and every usable one appears.
        assert {(e.kvk, e.fund_number) for e in d.allowed} == {
            (m.employer_kvk, m.fund_employer_number) for m in usable
        }
        # Scopes are exactly the union of the backing mandates' scopes.
        for e in d.allowed:
            backing = [
                m
                for m in usable
                if (m.employer_kvk, m.fund_employer_number) == (e.kvk, e.fund_number)
            ]
            assert e.scopes == frozenset(itertools.chain.from_iterable(m.scopes for m in backing))
        keys = [(e.name.casefold(), e.kvk, e.fund_number or "") for e in d.allowed]
        assert keys == sorted(keys)
        # Order of the registry's answer never changes the decision.
        shuffled = ms[:]
        rng.shuffle(shuffled)
        assert allowed_employers(ident, shuffled, TODAY) == d
