"""The policy step for ``authenticated`` routes: session, mandates, employer scope, token.

Runs after routing and before forwarding (design.md steps 2-5):

1. load the session from the cookie (no session: send browsers to the login,
   answer API clients 401 with the login URL);
2. re-check mandates when ``gateway.mandates.freshness`` says so: the
   session's registry answer is no longer fresh, or a revocation was pushed for
   this administrator (one request per session saves the result, thanks to a
   short lock in the store); fail closed when the registry has been unreachable
   for longer than the staleness limit;
3. enforce the route's employer scope, minimum level and required scope;
4. mint (or reuse) the signed token for this session and the route's audience.

Any failure here denies the request; nothing is forwarded on a partial answer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import structlog
from aiohttp import web

from gateway.audit import audit
from gateway.config import EmployerScope, RouteSettings
from gateway.context import ERROR_EXTRA, FORM_FIELDS
from gateway.errors import (
    BadRequest,
    EmployerNotAllowed,
    GatewayError,
    LevelTooLow,
    MandateMissing,
    NotAuthenticated,
    RegistryUnavailable,
    ScopeMissing,
)
from gateway.services import Services
from gateway.sessions import Session
from gateway.sessions.cookies import read_session_cookie
from gateway.target import Target, query_pairs
from gateway.tokens import TokenSubject

log = structlog.get_logger("gateway.gate")


@dataclass(frozen=True)
class Forward:
    """Go ahead: add these headers upstream."""

    headers: dict[str, str]
    session: Session


@dataclass(frozen=True)
class Respond:
    """Answer the client directly (a redirect to the login or the overview)."""

    response: web.StreamResponse


def login_url(services: Services, next_path: str, loa: str | None = None) -> str:
    url = f"{services.config.server.reserved_prefix}login?next={quote(next_path, safe='/')}"
    return url + (f"&loa={loa}" if loa else "")


def _browser_navigation(request: web.BaseRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return request.method in ("GET", "HEAD") and (
        "text/html" in accept or "application/json" not in accept
    )


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def current_session(
    request: web.Request, services: Services, request_id: str, return_to: str
) -> Session | Respond:
    """The request's live session with fresh mandates, or how to answer instead.

    No session: a redirect to the login for browsers, else ``NotAuthenticated``
    (401 with the login URL). Mandates are re-checked when due.
    """
    manager = services.sessions
    session_id = read_session_cookie(request, services.config.sessions)
    # Most requests: the session is in this replica's cache, nothing about it is
    # due and no revocation push concerns it. ``load_quiet`` answers exactly then,
    # and then ``load`` would return the same object and no re-check would be due,
    # so the general path below would change nothing (it costs more: coroutines,
    # clock readings, date arithmetic).
    session = manager.load_quiet(session_id)
    if session is not None and _push_pending(services, session):
        session = None
    active_before: str | None = None
    if session is None:
        session = await manager.load(session_id)
        if session is None:
            target = login_url(services, return_to)
            if _browser_navigation(request):
                return Respond(_redirect(target))
            request[ERROR_EXTRA] = {
                "login_url": target,
                "action_url": target,
                "action_nl": "Inloggen met eHerkenning",
                "action_en": "Log in with eHerkenning",
            }
            raise NotAuthenticated("no session")
        active_before = session.active_employer
        check = services.sessions.mandate_check(session, _pushed_at(services, session))
        if check.due:
            session = await _recheck_mandates(services, session, request_id, check.not_before)
    if session.identity.mode == "chain" and not session.allowed:
        # The one employer of a chain login withdrew its mandate at the fund.
        await services.sessions.destroy(session)
        raise MandateMissing("chain mandate revoked during the session")
    if active_before and session.active_employer is None and _browser_navigation(request):
        # The employer the user was working for withdrew the mandate: back to the
        # overview, which says so.
        overview = f"{services.config.server.reserved_prefix}employers?notice=revoked"
        return Respond(_redirect(overview))
    return session


async def authorize(
    request: web.Request,
    target: Target,
    route: RouteSettings,
    params: Mapping[str, str],
    services: Services,
    request_id: str,
) -> Forward | Respond:
    """Decide whether this request may go upstream, and with which identity headers."""
    found = await current_session(request, services, request_id, target.raw)
    if isinstance(found, Respond):
        return found
    session = found

    if route.min_loa is not None and session.identity.loa < route.min_loa:
        if _browser_navigation(request):
            return Respond(_redirect(login_url(services, target.raw, route.min_loa.short)))
        raise LevelTooLow(f"route {route.name} needs {route.min_loa.short}")

    employers = (
        _employers_in_request(request, target, route.employer_scope, params)
        if route.employer_scope
        else []
    )
    for identifier, value in employers:
        if not _allowed(session, identifier, value):
            _deny(session, request_id, route, value)
            # The way on from a 403: the client list (which also says when a
            # mandate was just withdrawn).
            request[ERROR_EXTRA] = {
                "action_url": services.config.server.reserved_prefix + "employers",
                "action_nl": "Naar uw klantenoverzicht",
                "action_en": "To your client overview",
            }
            raise EmployerNotAllowed(f"employer {value} not in the allowed set")
    if route.required_scope is not None:
        kvks = [_kvk_of(session, i, v) for i, v in employers] or [session.active_employer]
        for kvk in kvks:
            employer = session.employer(kvk) if kvk else None
            # A mandate without scopes is unrestricted (docs/backends.md); one with
            # scopes covers only those parts of the portal.
            if employer is None or (
                employer.scopes and route.required_scope not in employer.scopes
            ):
                _deny(session, request_id, route, kvk or "-", reason="scope_missing")
                raise ScopeMissing(f"scope {route.required_scope} missing for {kvk}")

    tokens = services.config.tokens
    assert tokens is not None
    token = services.minter.mint(token_subject(session), route.audience or route.name)
    if route.token_transport == "bearer":  # noqa: S105 - a transport name, not a secret
        return Forward({"Authorization": f"Bearer {token}"}, session)
    return Forward({route.identity_header or tokens.header_name: token}, session)


def token_subject(session: Session) -> TokenSubject:
    """What the token says about a session (version: the minter's cache key).

    Built once per session object (``Session.token_subject``), so the minter's cache
    hit costs no construction and no fingerprint per request.
    """
    return session.token_subject


def _employers_in_request(
    request: web.Request, target: Target, scopes: list[EmployerScope], params: Mapping[str, str]
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for scope in scopes:
        values: list[str] = []
        if scope.location == "path":
            if scope.name in params:
                values.append(params[scope.name])
        elif scope.location == "query":
            # Names compare case-insensitively: many portal frameworks (ASP.NET,
            # for one) read ?Werkgever= and ?werkgever= alike.
            # Read from the raw query that is forwarded, decoded as the portal decodes it.
            wanted = scope.name.casefold()
            values.extend(v for k, v in query_pairs(target.raw_query) if k.casefold() == wanted)
        elif scope.location == "header":
            values.extend(request.headers.getall(scope.name, []))
        else:
            form = request.get(FORM_FIELDS)
            if form is not None:
                wanted = scope.name.casefold()
                for key, field_values in form.items():
                    if key.casefold() == wanted:
                        values.extend(field_values)
            elif request.content_type == "multipart/form-data":
                # Only small urlencoded forms are read for the check; a multipart
                # form would carry its employer field upstream unchecked (the
                # portal parses both alike), so it is refused: fail closed.
                raise BadRequest("multipart form on a route with a form employer scope")
        found.extend((scope.identifier, v.strip()) for v in values)
    return found


def _allowed(session: Session, identifier: str, value: str) -> bool:
    return _kvk_of(session, identifier, value) is not None


def _kvk_of(session: Session, identifier: str, value: str) -> str | None:
    if identifier == "kvk":
        return value if value in session.allowed_kvks else None
    for employer in session.allowed:
        if employer.fund_number is not None and employer.fund_number == value:
            return employer.kvk
    return None


def _deny(
    session: Session, request_id: str, route: RouteSettings, employer: str, reason: str = "employer"
) -> None:
    audit(
        "access_denied",
        reason=reason,
        route=route.name,
        request_id=request_id,
        session_ref=session.ref,
        administrator_kvk=session.identity.administrator_kvk,
        employer_kvk=employer,
        acting_subject=session.identity.acting_subject,
    )


def _pushed_at(services: Services, session: Session) -> dt.datetime | None:
    """When the latest revocation push for this session's administrator reached this replica."""
    if not services.invalidated:
        return None  # no push on this replica yet: skip the administrator lookup
    return services.invalidated.get(session.identity.administrator_kvk or "")


def _push_pending(services: Services, session: Session) -> bool:
    """Has a revocation push for this session's administrator arrived since its last check?"""
    return services.sessions.freshness.push_pending(
        _pushed_at(services, session),
        fetched_at=session.mandate_check_ok_at,
        last_attempt=session.last_mandate_check,
    )


async def _recheck_mandates(
    services: Services, session: Session, request_id: str, not_before: dt.datetime | None
) -> Session:
    """Re-check a session's mandates that ``Freshness.check`` found due.

    Every request that finds them due asks (the mandate service shares one lookup
    between them), so none goes on with an answer that is no longer fresh while
    another request is busy with the re-check; the one holding the refresh lock
    saves the outcome, the others save only a change (the same answer).
    """
    manager = services.sessions
    locked = await manager.try_refresh_lock(session)
    try:
        try:
            decision, mset = await services.mandates.decide(
                session.identity,
                purpose="recheck",
                not_before=not_before,
                audit_context={
                    "request_id": request_id,
                    "session_ref": session.ref,
                    "acting_subject": session.identity.acting_subject,
                },
            )
        except RegistryUnavailable:
            if locked:
                session = await manager.record_mandate_check(session, None)
            if manager.mandates_stale(session):
                raise
            log.warning("mandate_recheck_failed_using_last_known", session_ref=session.ref)
            return session
        if not locked and decision.allowed == session.allowed:
            return session  # nothing changed; the lock holder saves the new date
        before = session.allowed_kvks
        session = await manager.record_mandate_check(
            session, decision.allowed, fetched_at=mset.fetched_at if mset else None
        )
        removed = before - session.allowed_kvks
        if removed:
            audit(
                "mandate_revoked_during_session",
                request_id=request_id,
                session_ref=session.ref,
                administrator_kvk=session.identity.administrator_kvk,
                removed_count=len(removed),
                employer_kvk=sorted(removed)[0] if len(removed) == 1 else None,
                acting_subject=session.identity.acting_subject,
            )
        return session
    finally:
        if locked:
            with contextlib.suppress(GatewayError):  # the lock expires by itself
                await manager.release_refresh_lock(session)
