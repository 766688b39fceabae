"""The access policy of ``authenticated`` routes, as one pure function: facts in, verdict out.

``decide(route, session, facts)`` answers whether a request may go upstream:

- ``Allow``: yes, with a token for this audience in this header (the shell
  mints it);
- ``Redirect``: send the browser elsewhere first (the login, a step-up login,
  the client overview after the active employer withdrew its mandate);
- ``Deny``: answer with this error (401 with the login URL, 403, 400), after
  the audit event it names and, for a chain login whose one mandate is gone,
  ending the session.

The rules, in the order they are applied:

1. no session: browsers are sent to the login (``next`` = the request
   target), every other client gets 401 naming the login URL;
2. a chain login whose one employer withdrew its mandate at the fund: the
   session ends (403);
3. the employer the user was working for withdrew its mandate: a browser
   navigation goes back to the client overview, which says so;
4. the route's minimum level of assurance: browsers go to a step-up login,
   others get 403;
5. the route's employer scope: every employer identifier in the request (path
   parameter, query parameter, header, field of a small urlencoded form) must
   name an employer in the session's allowed set (403, audited). A multipart
   form on a route with a form scope is refused (400): the portal would read
   its employer field, the gateway cannot;
6. the route's required mandate scope: every employer named in the request (or
   the active one) must grant it; a mandate without scopes grants everything.

Nothing here does I/O, reads a clock or knows aiohttp: loading the session,
re-checking mandates, auditing and minting the token are the async shell's
work (``gateway.gate``), and proxy mode and forward-auth build the same
``RequestFacts`` and ask this same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple
from urllib.parse import quote

from gateway.config import EmployerScope, RouteSettings
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
from gateway.identity import Loa
from gateway.sessions import Session
from gateway.target import Target, query_pairs

Pairs = tuple[tuple[str, str], ...]


class RequestFacts(NamedTuple):
    """What the policy reads of one request, taken from it once by the shell.

    ``headers`` holds only the headers a route's employer scope names (every
    value, in order); ``form`` the fields of a small urlencoded body when it
    was read (``None``: not read); ``browser`` whether this is a top-level
    browser navigation (``is_browser_navigation``).
    """

    method: str
    target: Target
    params: Mapping[str, str]
    headers: Pairs = ()
    form: Pairs | None = None
    multipart: bool = False
    browser: bool = False


class Allow(NamedTuple):
    """Forward it, with a token for ``audience`` in ``header`` (``Authorization``: bearer)."""

    header: str
    audience: str
    bearer: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the browser to ``location`` (303) instead of forwarding."""

    location: str


@dataclass(frozen=True, slots=True)
class Denial:
    """The ``access_denied`` audit event a refusal writes: why, and for which employer."""

    reason: Literal["employer", "scope_missing"]
    employer: str


@dataclass(frozen=True, slots=True)
class Deny:
    """Answer with ``error``; write ``audit`` first; ``end_session``: destroy the session."""

    error: GatewayError
    audit: Denial | None = None
    end_session: bool = False


Verdict = Allow | Redirect | Deny


def is_browser_navigation(method: str, accept: str) -> bool:
    """A browser loading a page (sent to the login), not a script or API client (401)."""
    return method in ("GET", "HEAD") and ("text/html" in accept or "application/json" not in accept)


def login_url(prefix: str, next_path: str, loa: Loa | None = None) -> str:
    """The gateway's login, returning to ``next_path``; ``loa``: a step-up to that level."""
    url = f"{prefix}login?next={quote(next_path, safe='/')}"
    return url + (f"&loa={loa.short}" if loa else "")


def login_action(url: str) -> Action:
    return Action(url, "Inloggen met eHerkenning", "Log in with eHerkenning")


def overview_action(prefix: str) -> Action:
    """The way on from a 403: the client list (which also says when a mandate was withdrawn)."""
    return Action(prefix + "employers", "Naar uw klantenoverzicht", "To your client overview")


def admit(
    session: Session | None,
    *,
    browser: bool,
    return_to: str,
    prefix: str,
    lost_active_employer: bool = False,
) -> Session | Redirect | Deny:
    """Rules 1-3: the session a request may use, or what to answer instead.

    ``lost_active_employer``: the mandate re-check of this request removed the
    employer the session was working for.
    """
    if session is None:
        url = login_url(prefix, return_to)
        if browser:
            return Redirect(url)
        return Deny(NotAuthenticated("no session", action=login_action(url), login_url=url))
    if session.identity.mode == "chain" and not session.allowed:
        # The one employer of a chain login withdrew its mandate at the fund.
        return Deny(MandateWithdrawn("chain mandate revoked during the session"), end_session=True)
    if lost_active_employer and browser:
        return Redirect(f"{prefix}employers?notice=revoked")
    return session


def decide(
    route: RouteSettings,
    session: Session | None,
    facts: RequestFacts,
    *,
    prefix: str,
    token_header: str,
    lost_active_employer: bool = False,
) -> Verdict:
    """May this request on ``route`` go upstream for ``session``? (module docstring)

    ``prefix`` is the gateway's reserved prefix (its login and overview);
    ``token_header`` the configured identity header, used unless the route
    names its own.
    """
    admitted = admit(
        session,
        browser=facts.browser,
        return_to=facts.target.raw,
        prefix=prefix,
        lost_active_employer=lost_active_employer,
    )
    if not isinstance(admitted, Session):
        return admitted
    session = admitted
    if route.min_loa is not None and session.identity.loa < route.min_loa:
        if facts.browser:
            return Redirect(login_url(prefix, facts.target.raw, route.min_loa))
        return Deny(RouteLevelTooLow(f"route {route.name} needs {route.min_loa.short}"))
    employers: list[tuple[str, str]] = []
    if route.employer_scope:
        found = employers_in_request(route.employer_scope, facts)
        if isinstance(found, Deny):
            return found
        employers = found
    for identifier, value in employers:
        if kvk_of(session, identifier, value) is None:
            return Deny(
                EmployerNotAllowed(
                    f"employer {value} not in the allowed set", action=overview_action(prefix)
                ),
                Denial("employer", value),
            )
    if route.required_scope is not None:
        kvks = [kvk_of(session, i, v) for i, v in employers] or [session.active_employer]
        for kvk in kvks:
            employer = session.employer(kvk) if kvk else None
            # A mandate without scopes is unrestricted (docs/backends.md); one with
            # scopes covers only those parts of the portal.
            if employer is None or (
                employer.scopes and route.required_scope not in employer.scopes
            ):
                return Deny(
                    ScopeMissing(f"scope {route.required_scope} missing for {kvk}"),
                    Denial("scope_missing", kvk or "-"),
                )
    audience = route.audience or route.name
    if route.token_transport == "bearer":  # noqa: S105 - a transport name, not a secret
        return Allow("Authorization", audience, bearer=True)
    return Allow(route.identity_header or token_header, audience)


def employers_in_request(
    scopes: Iterable[EmployerScope], facts: RequestFacts
) -> list[tuple[str, str]] | Deny:
    """Every (identifier, value) the route's employer scope finds in the request, in order."""
    found: list[tuple[str, str]] = []
    for scope in scopes:
        values: list[str] = []
        if scope.location == "path":
            if scope.name in facts.params:
                values.append(facts.params[scope.name])
        elif scope.location == "query":
            # Names compare case-insensitively: many portal frameworks (ASP.NET,
            # for one) read ?Werkgever= and ?werkgever= alike. Read from the raw
            # query that is forwarded, decoded as the portal decodes it.
            values.extend(_named(query_pairs(facts.target.raw_query), scope.name))
        elif scope.location == "header":
            values.extend(_named(facts.headers, scope.name))
        elif facts.form is not None:
            values.extend(_named(facts.form, scope.name))
        elif facts.multipart:
            # Only small urlencoded forms are read for the check; a multipart
            # form would carry its employer field upstream unchecked (the
            # portal parses both alike), so it is refused: fail closed.
            return Deny(BadRequest("multipart form on a route with a form employer scope"))
        found.extend((scope.identifier, v.strip()) for v in values)
    return found


def _named(pairs: Iterable[tuple[str, str]], name: str) -> list[str]:
    wanted = name.casefold()
    return [value for key, value in pairs if key.casefold() == wanted]


def kvk_of(session: Session, identifier: str, value: str) -> str | None:
    """The KvK number of the allowed employer ``value`` names, or ``None`` if none does."""
    if identifier == "kvk":
        return value if value in session.allowed_kvks else None
    for employer in session.allowed:
        if employer.fund_number is not None and employer.fund_number == value:
            return employer.kvk
    return None
