"""The access policy (``gateway.policy.decide``) as a table: facts in, verdict out.

No server, no aiohttp, no services: every row is a route as an operator writes
it in the configuration file, a session as the login makes it, and the facts of
one request; the verdict is compared whole. Routes come from the example
configuration where it has one (what operators copy), else from the same keys
written inline.
"""

from __future__ import annotations

import datetime as dt
import gc
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import gate
from gateway.config import RouteSettings
from gateway.errors import (
    Action,
    BadRequest,
    EmployerNotAllowed,
    GatewayError,
    MandateWithdrawn,
    NotAuthenticated,
    RouteLevelTooLow,
    ScopeMissing,
)
from gateway.identity import Employer, Identity, Loa
from gateway.policy import (
    Allow,
    Denial,
    Deny,
    Redirect,
    RequestFacts,
    Verdict,
    admit,
    decide,
    is_browser_navigation,
)
from gateway.routing import RouteMatch, Router
from gateway.sessions import Session
from gateway.target import parse_target

PREFIX = "/_gateway/"
TOKEN_HEADER = "X-Gateway-Identity"
EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.yaml"
NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)

OFFICE = "12345678"
PREMIE_ONLY = Employer("10000000", "Bakkerij B.V.", "F0000000", frozenset({"premie"}))
UNRESTRICTED = Employer("10000001", "Garage B.V.", "F0000001")
FOREIGN = "99999999"


def example_route(name: str) -> RouteSettings:
    routes = yaml.safe_load(EXAMPLE.read_text())["routes"]
    return RouteSettings.model_validate(next(r for r in routes if r["name"] == name))


def route(**settings: Any) -> RouteSettings:
    return RouteSettings.model_validate(
        {"name": "portal", "match": {"path": "/"}, "upstream": "http://127.0.0.1:9", **settings}
    )


def session(
    *,
    chain: bool = False,
    loa: Loa = Loa.EH3,
    allowed: tuple[Employer, ...] = (PREMIE_ONLY, UNRESTRICTED),
    active: str | None = None,
) -> Session:
    identity = Identity(
        acting_subject="ABCDEF0123456789pseudonym",
        legal_subject_kvk=PREMIE_ONLY.kvk if chain else OFFICE,
        loa=loa,
        service_id="urn:etoegang:DV:00000001234567890000:services:1",
        login_time=NOW,
        intermediary_kvk=OFFICE if chain else None,
    )
    return Session(
        id="s" * 43,
        identity=identity,
        allowed=allowed,
        active_employer=active,
        created_at=NOW,
        last_seen=NOW,
        last_mandate_check=NOW,
        mandate_check_ok_at=NOW,
        csrf_secret="c",
        ref="ref",
    )


def facts(
    target: str = "/portaal/start",
    *,
    method: str = "GET",
    accept: str = "text/html",
    params: Mapping[str, str] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    form: tuple[tuple[str, str], ...] | None = None,
    multipart: bool = False,
) -> RequestFacts:
    return RequestFacts(
        method=method,
        target=parse_target(target),
        params=params or {},
        headers=headers,
        form=form,
        multipart=multipart,
        browser=is_browser_navigation(method, accept),
    )


API = "application/json"
ALLOW = Allow(TOKEN_HEADER, "portal")


@dataclass(frozen=True)
class Case:
    """One row: what goes in, and the verdict (a ``Deny`` compared by error type and context)."""

    name: str
    route: RouteSettings
    session: Session | None
    facts: RequestFacts
    verdict: Verdict
    lost_active_employer: bool = False
    error_context: dict[str, object] = field(default_factory=dict)


def deny(error: type[GatewayError], audit: Denial | None = None, *, end: bool = False) -> Deny:
    return Deny(error(), audit, end_session=end)


def employer_route(**settings: Any) -> RouteSettings:
    return route(match={"path": "/werkgevers/{kvk}{rest:(?:/.*)?}", "type": "pattern"}, **settings)


CASES = [
    # 1. no session
    Case(
        "no session, a browser page: to the login, coming back to the same target",
        route(),
        None,
        facts("/portaal/x?a=1&b=%20"),
        Redirect("/_gateway/login?next=/portaal/x%3Fa%3D1%26b%3D%2520"),
    ),
    Case(
        "no session, an API client: 401 naming the login",
        route(),
        None,
        facts("/portaal/x", accept=API),
        deny(NotAuthenticated),
        error_context={
            "login_url": "/_gateway/login?next=/portaal/x",
            "action": Action(
                "/_gateway/login?next=/portaal/x",
                "Inloggen met eHerkenning",
                "Log in with eHerkenning",
            ),
        },
    ),
    Case(
        "no session, a form post (not a navigation): 401",
        route(),
        None,
        facts("/portaal/x", method="POST"),
        deny(NotAuthenticated),
    ),
    # 2. a chain login whose one mandate is gone
    Case(
        "chain login without its employer: the session ends",
        route(),
        session(chain=True, allowed=()),
        facts(),
        deny(MandateWithdrawn, end=True),
    ),
    Case(
        "chain login with its employer: allowed",
        route(),
        session(chain=True, allowed=(PREMIE_ONLY,), active=PREMIE_ONLY.kvk),
        facts(),
        ALLOW,
    ),
    # 3. the active employer withdrew
    Case(
        "active employer withdrawn, a browser page: back to the overview",
        route(),
        session(),
        facts(),
        Redirect("/_gateway/employers?notice=revoked"),
        lost_active_employer=True,
    ),
    Case(
        "active employer withdrawn, an API client: goes on (no employer in the token)",
        route(),
        session(),
        facts(accept=API),
        ALLOW,
        lost_active_employer=True,
    ),
    # 4. level of assurance
    Case(
        "level too low, a browser page: step-up login at the route's level",
        route(min_loa="loa4"),
        session(loa=Loa.EH3),
        facts("/portaal/geheim"),
        Redirect("/_gateway/login?next=/portaal/geheim&loa=loa4"),
    ),
    Case(
        "level too low, an API client: 403",
        route(min_loa="loa4"),
        session(loa=Loa.EH3),
        facts(accept=API),
        deny(RouteLevelTooLow),
    ),
    Case(
        "level high enough: allowed",
        route(min_loa="EH3"),
        session(loa=Loa.EH4),
        facts(),
        ALLOW,
    ),
    # 5. employer scope
    Case(
        "the example's employer pages, an allowed employer in the path",
        example_route("employer-pages"),
        session(),
        facts(f"/werkgevers/{PREMIE_ONLY.kvk}/loonaangifte", params={"kvk": PREMIE_ONLY.kvk}),
        Allow(TOKEN_HEADER, "portal"),
    ),
    Case(
        "the example's employer pages, a foreign employer in the path: 403, audited",
        example_route("employer-pages"),
        session(),
        facts(f"/werkgevers/{FOREIGN}", params={"kvk": FOREIGN}),
        deny(EmployerNotAllowed, Denial("employer", FOREIGN)),
        error_context={
            "action": Action(
                "/_gateway/employers", "Naar uw klantenoverzicht", "To your client overview"
            )
        },
    ),
    Case(
        "query scope: any spelling of the name, every value checked",
        route(employer_scope=[{"location": "query", "name": "werkgever"}]),
        session(),
        facts(f"/portaal?werkgever={PREMIE_ONLY.kvk}&Werkgever={FOREIGN}"),
        deny(EmployerNotAllowed, Denial("employer", FOREIGN)),
    ),
    Case(
        "query scope: decoded as the portal decodes it (+ is a space, then trimmed)",
        route(employer_scope=[{"location": "query", "name": "werkgever"}]),
        session(),
        facts(f"/portaal?WERKGEVER=+%31{PREMIE_ONLY.kvk[1:]}+"),
        ALLOW,
    ),
    Case(
        "query scope: a request without the parameter has nothing to check",
        route(employer_scope=[{"location": "query", "name": "werkgever"}]),
        session(),
        facts("/portaal?andere=1"),
        ALLOW,
    ),
    Case(
        "header scope, fund number: the allowed employer's number passes",
        route(
            employer_scope=[
                {"location": "header", "name": "X-Fund-Number", "identifier": "fund_number"}
            ]
        ),
        session(),
        facts(headers=(("X-Fund-Number", UNRESTRICTED.fund_number or ""),)),
        ALLOW,
    ),
    Case(
        "header scope, fund number: a KvK number is not a fund number",
        route(
            employer_scope=[
                {"location": "header", "name": "x-fund-number", "identifier": "fund_number"}
            ]
        ),
        session(),
        facts(headers=(("X-Fund-Number", UNRESTRICTED.kvk),)),
        deny(EmployerNotAllowed, Denial("employer", UNRESTRICTED.kvk)),
    ),
    Case(
        "form scope: a field of the small urlencoded body",
        route(employer_scope=[{"location": "form", "name": "kvk"}]),
        session(),
        facts(method="POST", form=(("kvk", FOREIGN), ("bedrag", "10"))),
        deny(EmployerNotAllowed, Denial("employer", FOREIGN)),
    ),
    Case(
        "form scope: a multipart body cannot be checked, so it is refused",
        route(employer_scope=[{"location": "form", "name": "kvk"}]),
        session(),
        facts(method="POST", multipart=True),
        deny(BadRequest),
    ),
    Case(
        "form scope: a request without a form has nothing to check",
        route(employer_scope=[{"location": "form", "name": "kvk"}]),
        session(),
        facts(method="GET"),
        ALLOW,
    ),
    # 6. required scope
    Case(
        "required scope granted by the employer in the request",
        employer_route(
            employer_scope=[{"location": "path", "name": "kvk"}], required_scope="premie"
        ),
        session(),
        facts(f"/werkgevers/{PREMIE_ONLY.kvk}", params={"kvk": PREMIE_ONLY.kvk}),
        ALLOW,
    ),
    Case(
        "required scope not among the employer's scopes: 403, audited",
        employer_route(
            employer_scope=[{"location": "path", "name": "kvk"}], required_scope="opgave"
        ),
        session(),
        facts(f"/werkgevers/{PREMIE_ONLY.kvk}", params={"kvk": PREMIE_ONLY.kvk}),
        deny(ScopeMissing, Denial("scope_missing", PREMIE_ONLY.kvk)),
    ),
    Case(
        "a mandate without scopes grants every scope",
        employer_route(
            employer_scope=[{"location": "path", "name": "kvk"}], required_scope="opgave"
        ),
        session(),
        facts(f"/werkgevers/{UNRESTRICTED.kvk}", params={"kvk": UNRESTRICTED.kvk}),
        ALLOW,
    ),
    Case(
        "no employer in the request: the active employer's scopes count",
        route(required_scope="opgave"),
        session(active=PREMIE_ONLY.kvk),
        facts(),
        deny(ScopeMissing, Denial("scope_missing", PREMIE_ONLY.kvk)),
    ),
    Case(
        "no employer in the request and none active: 403",
        route(required_scope="premie"),
        session(),
        facts(),
        deny(ScopeMissing, Denial("scope_missing", "-")),
    ),
    # the token
    Case(
        "bearer transport: the token goes in Authorization",
        route(token_transport="bearer", audience="api"),
        session(),
        facts(accept=API),
        Allow("Authorization", "api", bearer=True),
    ),
    Case(
        "a route's own identity header and, without an audience, the route name",
        route(identity_header="X-Portal-Identity"),
        session(),
        facts(),
        Allow("X-Portal-Identity", "portal"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_policy_table(case: Case) -> None:
    """Each row's route, session and request facts give exactly the row's verdict."""
    verdict = decide(
        case.route,
        case.session,
        case.facts,
        prefix=PREFIX,
        token_header=TOKEN_HEADER,
        lost_active_employer=case.lost_active_employer,
    )
    assert_same_verdict(verdict, case.verdict)
    if isinstance(verdict, Deny):
        for name, value in case.error_context.items():
            assert getattr(verdict.error, name) == value


def assert_same_verdict(verdict: Verdict, expected: Verdict) -> None:
    """Equal verdicts; a ``Deny`` compared by error type, audit and end of session."""
    if isinstance(expected, Deny):
        assert isinstance(verdict, Deny)
        assert type(verdict.error) is type(expected.error)
        assert (verdict.audit, verdict.end_session) == (expected.audit, expected.end_session)
    else:
        assert verdict == expected


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_gate_remembers_exactly_the_policys_verdicts(case: Case) -> None:
    """The gate's remembered verdicts are the policy's, asked twice, on every row of the table.

    A request the memo keeps (an ``Allow``) gets the very same answer the second
    time; anything else is decided anew each time, never answered from memory.
    """
    for _ in range(2):
        verdict = gate._decide(
            case.route, case.session, case.facts, PREFIX, TOKEN_HEADER, case.lost_active_employer
        )
        again = decide(
            case.route,
            case.session,
            case.facts,
            prefix=PREFIX,
            token_header=TOKEN_HEADER,
            lost_active_employer=case.lost_active_employer,
        )
        assert type(verdict) is type(again)
        assert_same_verdict(verdict, again)


def test_a_changed_session_is_decided_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose allowed set changed (a new object) is not answered from memory,
    and the memo does not keep the replaced object alive."""
    r = employer_route(employer_scope=[{"location": "path", "name": "kvk"}])
    request = facts(f"/werkgevers/{UNRESTRICTED.kvk}/x", params={"kvk": UNRESTRICTED.kvk})
    before = session()
    assert isinstance(gate._decide(r, before, request, PREFIX, TOKEN_HEADER, False), Allow)
    assert isinstance(gate._decide(r, before, request, PREFIX, TOKEN_HEADER, False), Allow)
    after = replace(before, allowed=(PREMIE_ONLY,))
    refused = gate._decide(r, after, request, PREFIX, TOKEN_HEADER, False)
    assert isinstance(refused, Deny) and isinstance(refused.error, EmployerNotAllowed)
    gone = weakref.ref(before)
    del before
    gc.collect()
    assert gone() is None  # the memo does not keep a replaced session alive
    monkeypatch.setattr(gate, "_ALLOWED_MAX", 20)
    for _ in range(100):  # every one a new session: the memo stays within its bound
        assert isinstance(gate._decide(r, session(), request, PREFIX, TOKEN_HEADER, False), Allow)
        assert len(gate._ALLOWED) <= 20


def test_the_example_route_table_routes_and_decides_on_one_spelling() -> None:
    """A case-variant of the example's employer path is routed to the scoped route and its
    parameter (any spelling) is what the policy checks: a foreign employer is refused."""
    routes = yaml.safe_load(EXAMPLE.read_text())["routes"]
    router = Router([RouteSettings.model_validate(r) for r in routes])
    target = parse_target(f"/WerkGevers/{FOREIGN}/Loonaangifte")
    match = router.resolve("portaal.example", target.path, "GET")
    assert isinstance(match, RouteMatch)
    verdict = decide(
        match.route.settings,
        session(),
        facts(target.raw)._replace(params=match.params),
        prefix=PREFIX,
        token_header=TOKEN_HEADER,
    )
    assert isinstance(verdict, Deny) and verdict.audit == Denial("employer", FOREIGN)


@pytest.mark.parametrize(
    ("method", "accept", "navigation"),
    [
        ("GET", "text/html,application/xhtml+xml,*/*;q=0.8", True),  # a browser's page load
        ("HEAD", "", True),  # curl -I, no Accept: treated like a page
        ("GET", "*/*", True),
        ("GET", "application/json", False),  # fetch() asking for JSON
        ("GET", "application/json, text/html", True),  # both: a page is fine
        ("POST", "text/html", False),  # a form post is never redirected
        ("DELETE", "*/*", False),
    ],
)
def test_browser_navigation(method: str, accept: str, navigation: bool) -> None:
    """Who is sent to the login (browsers loading a page) and who gets a 401."""
    assert is_browser_navigation(method, accept) is navigation


def test_admit_is_the_session_part_alone() -> None:
    """The gateway's own pages use only rules 1-3: a session passes whatever the route says."""
    live = session(loa=Loa.EH2)
    assert admit(live, browser=True, return_to="/x", prefix=PREFIX) is live
    assert admit(None, browser=True, return_to="/_gateway/employers?q=a", prefix=PREFIX) == (
        Redirect("/_gateway/login?next=/_gateway/employers%3Fq%3Da")
    )
