"""The async shell around ``gateway.policy``: session, mandate re-check, audit, token.

Runs after routing and before forwarding, for proxy mode and forward-auth alike:

1. load the session from the cookie value;
2. re-check mandates when ``gateway.mandates.freshness`` says so: the
   session's registry answer is no longer fresh, or a revocation was pushed for
   this administrator (one request per session saves the result, thanks to a
   short lock in the store); fail closed when the registry has been unreachable
   for longer than the staleness limit;
3. ask ``gateway.policy.decide`` (no session, withdrawn mandates, level,
   employer scope, required scope) and carry out its verdict: write the audit
   event, end a session whose chain mandate is gone, raise the error;
4. mint (or reuse) the signed token for this session and the route's audience.

Any failure here denies the request; nothing is forwarded on a partial answer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import weakref
from collections.abc import Mapping
from typing import NamedTuple

import structlog
from multidict import CIMultiDictProxy

from gateway.audit import audit
from gateway.config import RouteSettings
from gateway.errors import GatewayError, RegistryUnavailable
from gateway.policy import (
    Allow,
    Deny,
    Pairs,
    Redirect,
    RequestFacts,
    Verdict,
    admit,
    decide,
    is_browser_navigation,
)
from gateway.services import Services
from gateway.sessions import Session
from gateway.target import Target
from gateway.tokens import TokenSubject

log = structlog.get_logger("gateway.gate")


class Forward(NamedTuple):
    """Go ahead: add these headers upstream."""

    headers: dict[str, str]
    session: Session
    token_expires: int = 0
    """The token's ``exp`` (epoch seconds): a proxy must not reuse these headers after it."""


def request_facts(
    route: RouteSettings,
    method: str,
    target: Target,
    params: Mapping[str, str],
    headers: CIMultiDictProxy[str],
    form: Pairs | None = None,
) -> RequestFacts:
    """The facts ``gateway.policy`` decides on, read once from a request's parts.

    Only the headers the route's employer scope names are kept. Proxy mode
    passes the request itself; forward-auth the original request its proxy
    describes in headers.
    """
    wanted = [s.name for s in route.employer_scope if s.location == "header"]
    scoped: Pairs = tuple((name, v) for name in wanted for v in headers.getall(name, ()))
    content_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return RequestFacts(
        method=method,
        target=target,
        params=params,
        headers=scoped,
        form=form,
        multipart=content_type == "multipart/form-data",
        browser=is_browser_navigation(method, headers.get("Accept", "")),
    )


async def authorize(
    services: Services,
    route: RouteSettings,
    facts: RequestFacts,
    session_id: str | None,
    request_id: str,
) -> Forward | Redirect:
    """Whether this request may go upstream, and with which identity headers.

    Raises the error of a ``Deny`` verdict, after its audit event.
    """
    # The usual request (``_quiet``) is answered without another coroutine.
    session = _quiet(services, session_id)
    lost_active = False
    if session is None:
        session, lost_active = await _load_due(services, session_id, request_id)
    config = services.config
    assert config.tokens is not None
    verdict = _decide(
        route, session, facts, config.server.reserved_prefix, config.tokens.header_name, lost_active
    )
    if isinstance(verdict, Allow):
        assert session is not None
        token, expires = services.minter.mint_expiring(session.token_subject, verdict.audience)
        value = f"Bearer {token}" if verdict.bearer else token
        return Forward({verdict.header: value}, session, expires)
    if isinstance(verdict, Redirect):
        return verdict
    raise await _refusal(services, verdict, session, route.name, request_id)


# ``Allow`` verdicts of lately decided requests. ``decide`` is a pure function of
# the route, the session object (frozen: any change makes a new one), the
# request's facts, the prefix and the token header, so a session asking for the
# same page again gets the very verdict it got before; only the usual requests
# are remembered (no re-check just removed an employer, no form or scoped
# header, a short target), and the whole memo is dropped when full. Sessions
# are held weakly: a replaced session object (every touch makes one) is not
# kept alive by the memo.
_ALLOWED: dict[tuple[object, ...], tuple[weakref.ref[Session], RouteSettings, Allow]] = {}
_ALLOWED_MAX = 16_384
_ALLOWED_TARGET = 1024


def _decide(
    route: RouteSettings,
    session: Session | None,
    facts: RequestFacts,
    prefix: str,
    token_header: str,
    lost_active: bool,
) -> Verdict:
    """``decide``, remembered for the usual request (see ``_ALLOWED``)."""
    target = facts.target
    if (
        session is None
        or lost_active
        or facts.headers
        or facts.form is not None
        or len(target.raw_path) + len(target.raw_query or "") > _ALLOWED_TARGET
    ):
        return decide(
            route,
            session,
            facts,
            prefix=prefix,
            token_header=token_header,
            lost_active_employer=lost_active,
        )
    key: tuple[object, ...] = (id(session), id(route), facts.method, target)
    key += (facts.multipart, facts.browser, prefix, token_header)
    known = _ALLOWED.get(key)
    if known is not None and known[0]() is session and known[1] is route:
        return known[2]
    verdict = decide(route, session, facts, prefix=prefix, token_header=token_header)
    if isinstance(verdict, Allow):
        if len(_ALLOWED) >= _ALLOWED_MAX:
            _ALLOWED.clear()
        _ALLOWED[key] = (weakref.ref(session), route, verdict)
    return verdict


async def current_session(
    services: Services,
    session_id: str | None,
    request_id: str,
    *,
    browser: bool,
    return_to: str,
) -> Session | Redirect:
    """The live session with fresh mandates (``gateway.policy.admit``), or where to go instead.

    The gateway's own pages use it (the client overview); it raises the error
    of a ``Deny`` (401 with the login URL when there is no session).
    """
    session, lost_active = await _load(services, session_id, request_id)
    admitted = admit(
        session,
        browser=browser,
        return_to=return_to,
        prefix=services.config.server.reserved_prefix,
        lost_active_employer=lost_active,
    )
    if isinstance(admitted, Deny):
        raise await _refusal(services, admitted, session, None, request_id)
    return admitted


async def _load(
    services: Services, session_id: str | None, request_id: str
) -> tuple[Session | None, bool]:
    """The session for a cookie value with its mandates re-checked when due.

    Also says whether that re-check removed the employer the session was
    working for.
    """
    session = _quiet(services, session_id)
    if session is not None:
        return session, False
    return await _load_due(services, session_id, request_id)


def _quiet(services: Services, session_id: str | None) -> Session | None:
    """The session when this replica can answer alone, else ``None`` (use ``_load_due``).

    Most requests: the session is in this replica's cache, nothing about it is
    due and no revocation push concerns it. ``load_quiet`` answers exactly then,
    and then ``load`` would return the same object and no re-check would be due,
    so the general path would change nothing (it costs more: coroutines, clock
    readings, date arithmetic).
    """
    session = services.sessions.load_quiet(session_id)
    if session is None or (services.invalidated and _push_pending(services, session)):
        return None
    return session


async def _load_due(
    services: Services, session_id: str | None, request_id: str
) -> tuple[Session | None, bool]:
    """``_load``'s general path: store reads, expiry, touches and due mandate re-checks."""
    manager = services.sessions
    session = await manager.load(session_id)
    if session is None:
        return None, False
    active_before = session.active_employer
    check = manager.mandate_check(session, _pushed_at(services, session))
    if check.due:
        session = await _recheck_mandates(services, session, request_id, check.not_before)
    return session, bool(active_before) and session.active_employer is None


async def _refusal(
    services: Services,
    deny: Deny,
    session: Session | None,
    route: str | None,
    request_id: str,
) -> GatewayError:
    """Carry out a ``Deny``: its audit event, the end of the session if asked; its error."""
    if deny.audit is not None and session is not None:
        audit(
            "access_denied",
            reason=deny.audit.reason,
            route=route,
            request_id=request_id,
            session_ref=session.ref,
            administrator_kvk=session.identity.administrator_kvk,
            employer_kvk=deny.audit.employer,
            acting_subject=session.identity.acting_subject,
        )
    if deny.end_session and session is not None:
        await services.sessions.destroy(session)
    return deny.error


def token_subject(session: Session) -> TokenSubject:
    """What the token says about a session (version: the minter's cache key).

    Built once per session object (``Session.token_subject``), so the minter's cache
    hit costs no construction and no fingerprint per request.
    """
    return session.token_subject


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
