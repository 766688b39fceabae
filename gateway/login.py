"""The eHerkenning login flow over HTTP: start, assertion consumer, logout, SP metadata.

The SAML work itself (signing, artifact resolution, verification, decryption)
is ``gateway.saml``; the pending-login state is ``gateway.sessions``. This
module is the glue, in a strict order at the ACS: take this browser's pending
login (cookie + RelayState) first, then resolve and verify the message against
the request ID it holds, then the assertion replay cache, then the mandate
decision, and only then a brand-new session. Every refusal is an audit event
and a 4xx page (503 when a dependency is down); never a traceback.

Logout ends the local session first (fail closed); with ``saml.single_logout``
and a broker SingleLogoutService it then sends a signed LogoutRequest, whose
LogoutResponse comes back to ``saml/slo``.
"""

from __future__ import annotations

import functools
import secrets
from typing import Any

import structlog
from aiohttp import web

from gateway.audit import audit
from gateway.client import client_view
from gateway.context import REQUEST_ID, Handler, Route
from gateway.errors import (
    Action,
    BadRequest,
    CsrfFailed,
    GatewayError,
    LoginsBusy,
    SamlInvalid,
    TooManyLogins,
    for_http_status,
)
from gateway.identity import Identity, Loa
from gateway.pages import PAGE_HEADERS, error_response, html_response, render
from gateway.saml.authn_request import AuthnRequestHttp, build_authn_request
from gateway.services import SERVICES, Services
from gateway.sessions import Session, new_relay_state
from gateway.sessions.cookies import (
    clear_prelogin_cookie,
    clear_session_cookie,
    read_prelogin_cookie,
    read_session_cookie,
    set_prelogin_cookie,
    set_session_cookie,
)
from gateway.sessions.next_path import safe_next_path
from gateway.sessions.pending import PendingLogout, PendingLogouts, browser_cookie_value

log = structlog.get_logger("gateway.login")


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _offering_retry(handler: Handler) -> Handler:
    """``handler`` whose error pages offer to log in again (unless the error offers more)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as err:
            err.offering(_retry(request))
            raise
        except web.HTTPException as exc:  # aiohttp's own, e.g. a bad form body
            raise for_http_status(exc.status, exc.reason).offering(_retry(request)) from exc

    return wrapped


def _retry(request: web.Request) -> Action:
    return Action(
        _services(request).config.server.reserved_prefix + "login",
        "Opnieuw inloggen met eHerkenning",
        "Log in with eHerkenning again",
    )


@_offering_retry
async def login(request: web.Request) -> web.StreamResponse:
    """Start an SP-initiated login: a signed AuthnRequest to the broker.

    First of all (before any signing or storing) the login-start limits: a
    refused client gets a 429 page (503 when the whole deployment is at its
    limit) with ``Retry-After``; see ``gateway.sessions.login_limits``.
    """
    services = _services(request)
    refused = await _refused_start(request, services)
    if refused is not None:
        return refused
    prefixes = services.forbidden_next_prefixes()
    next_path = safe_next_path(_bounded_next(request, services), forbidden_prefixes=prefixes)
    relay_state = new_relay_state()
    step_up = _step_up_loa(request.query.get("loa"), services)
    if step_up is None:
        request_id, http = await services.sp.authn_request(relay_state)
    else:
        request_id, http = _step_up_request(services, step_up, relay_state)
    pending = await services.logins.begin(
        next_path,
        request_id=request_id,
        relay_state=relay_state,
        existing_cookie=read_prelogin_cookie(request, services.config.sessions),
        forbidden_prefixes=prefixes,
    )
    response = _to_broker(http)
    set_prelogin_cookie(response, pending.prelogin_cookie, services.config.sessions)
    return response


async def _refused_start(request: web.Request, services: Services) -> web.Response | None:
    """The refusal page if this client may not start a login now, else ``None``."""
    server = services.config.server
    address = client_view(request, server.trusted_proxies, None).address
    refusal = await services.login_limiter.check(address, request_id=request[REQUEST_ID])
    if refusal is None:
        return None
    seconds = refusal.retry_after
    wait_nl = "1 seconde" if seconds == 1 else f"{seconds} seconden"
    wait_en = "1 second" if seconds == 1 else f"{seconds} seconds"
    error: GatewayError
    if refusal.scope == "address":
        error = TooManyLogins(
            text_nl=(
                "Vanaf uw internetadres zijn in korte tijd te veel inlogpogingen gestart. "
                f"Wacht {wait_nl} en probeer het dan opnieuw."
            ),
            text_en=(
                "Too many logins were started from your internet address in a short time. "
                f"Please wait {wait_en} and try again."
            ),
        )
    else:
        error = LoginsBusy(
            text_nl=(
                f"Er wordt op dit moment erg veel ingelogd. Probeer het over {wait_nl} opnieuw."
            ),
            text_en=(
                f"A great many people are logging in right now. Please try again in {wait_en}."
            ),
        )
    response = error_response(request, error, request[REQUEST_ID])
    response.headers["Retry-After"] = str(seconds)
    return response


def _bounded_next(request: web.Request, services: Services) -> str | None:
    """``next`` as given, or ``None`` (so ``/``) when longer than the configured limit."""
    value = request.query.get("next")
    limit = services.config.sessions.login_limits.next_max_length
    if value is not None and len(value) > limit:
        log.info(
            "login_next_dropped",
            reason="too_long",
            length=len(value),
            limit=limit,
            request_id=request[REQUEST_ID],
        )
        return None
    return value


def _step_up_loa(value: str | None, services: Services) -> Loa | None:
    """A requested level above the configured minimum, if a registered service offers it."""
    if not value:
        return None
    try:
        loa = Loa.parse(value)
    except ValueError:
        return None
    saml = services.sp.settings
    if loa.rank <= saml.minimum_loa.rank:
        return None
    return loa if any(s.loa >= loa for s in saml.services) else None


def _step_up_request(
    services: Services, loa: Loa, relay_state: str
) -> tuple[str, AuthnRequestHttp]:
    # eHerkenning sets the level per registered service, so a step-up asks for
    # the (lowest) service registered at that level or higher.
    saml = services.sp.settings
    service = min((s for s in saml.services if s.loa >= loa), key=lambda s: s.loa.rank)
    settings = saml.model_copy(
        update={
            "attribute_consuming_service_index": service.index,
            "requested_authn_context": loa,
        }
    )
    return build_authn_request(
        settings, services.sp.metadata, services.sp.keys.signing, relay_state
    )


def _to_broker(http: AuthnRequestHttp) -> web.Response:
    if http.binding == "redirect":
        return web.Response(status=303, headers={"Location": http.url, **PAGE_HEADERS})
    nonce = secrets.token_urlsafe(16)
    response = html_response(http.post_form_html(script_nonce=nonce))
    # No form-action here: browsers enforce it on every redirect after the
    # submission too, so the broker's answer (a redirect to its authentication
    # service, or straight back to our ACS) would be blocked and the login hang.
    # The page holds only our own escaped values and a nonce'd script, so there
    # is no injected form for form-action to stop.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return response


@_offering_retry
async def acs(request: web.Request) -> web.StreamResponse:
    """The assertion consumer: SAMLart (GET or POST), or SAMLResponse when enabled."""
    services = _services(request)
    request_id = request[REQUEST_ID]
    params: Any = await request.post() if request.method == "POST" else request.query
    artifact = params.get("SAMLart")
    saml_response = params.get("SAMLResponse")
    relay_state = params.get("RelayState")
    identity: Identity | None = None
    try:
        if not isinstance(artifact, str) and not isinstance(saml_response, str):
            raise SamlInvalid("neither SAMLart nor SAMLResponse")
        cookie = read_prelogin_cookie(request, services.config.sessions)
        pending = await services.logins.consume(
            cookie, relay_state if isinstance(relay_state, str) else None
        )
        expectation = services.sp.expectation(pending.request_id)
        if isinstance(artifact, str):
            verified = await services.sp.consume_artifact(artifact, expectation)
        else:
            verified = await services.sp.consume_post_response(str(saml_response), expectation)
        identity = verified.identity
        if not await services.replay.remember(
            verified.assertion_id, verified.not_on_or_after, issuer=verified.issuer
        ):
            raise SamlInvalid("assertion_replayed")
        decision, mandates = await services.mandates.decide(
            identity,
            audit_context={"request_id": request_id, "acting_subject": identity.acting_subject},
        )
        error = decision.error()
        if error is not None:
            raise error
    except GatewayError as err:
        audit(
            "login_refused",
            reason=err.code,
            detail=err.detail,
            request_id=request_id,
            mode=identity.mode if identity else None,
            loa=identity.loa.short if identity else None,
            administrator_kvk=identity.administrator_kvk if identity else None,
            employer_kvk=identity.legal_subject_kvk
            if identity and identity.mode == "chain"
            else None,
            acting_subject=identity.acting_subject if identity else None,
        )
        services.metrics.login("refused", err.code)
        raise

    settings = services.config.sessions
    old = read_session_cookie(request, settings)
    if old:
        await services.sessions.destroy(old)  # a new login never inherits an old session
    active = identity.legal_subject_kvk if identity.mode == "chain" else None
    if active is None and len(decision.allowed) == 1:
        active = decision.allowed[0].kvk
    session = await services.sessions.create(
        identity,
        decision.allowed,
        active_employer=active,
        # The session's answer keeps its registry date: it is re-checked when that
        # answer stops being fresh, not a whole interval after this login.
        mandates_fetched_at=mandates.fetched_at if mandates else None,
    )
    audit(
        "login_succeeded",
        request_id=request_id,
        session_ref=session.ref,
        loa=identity.loa.short,
        acting_subject=identity.acting_subject,
        **decision.audit_fields(),
    )
    services.metrics.login("succeeded")
    target = pending.next_path
    if identity.mode == "direct" and target == "/" and len(decision.allowed) != 1:
        # Land on the client list: pick an employer, or read how clients authorise you.
        target = services.config.server.reserved_prefix + "employers"
    response = web.Response(status=303, headers={"Location": target, **PAGE_HEADERS})
    set_session_cookie(response, session.id, settings)
    clear_prelogin_cookie(response, settings)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session (CSRF-protected POST); then single logout at the broker, if enabled."""
    services = _services(request)
    settings = services.config.sessions
    session = await services.sessions.load(read_session_cookie(request, settings))
    form = await request.post()
    response: web.Response | None = None
    if session is not None:
        token = form.get("csrf")
        if not session.csrf_matches(token if isinstance(token, str) else None):
            raise CsrfFailed("logout without a valid CSRF token")
        # Fail closed: the local session ends first, whatever happens at the broker.
        await services.sessions.destroy(session)
        audit(
            "logout_succeeded",
            request_id=request[REQUEST_ID],
            session_ref=session.ref,
            administrator_kvk=session.identity.administrator_kvk,
            acting_subject=session.identity.acting_subject,
        )
        response = await _single_logout(request, services, session)
    if response is None:
        response = _to_logged_out(services)
    clear_session_cookie(response, settings)
    return response


async def _single_logout(
    request: web.Request, services: Services, session: Session
) -> web.Response | None:
    """Redirect to the broker with a signed LogoutRequest; ``None`` to stay local."""
    identity = session.identity
    try:
        reason = services.sp.single_logout_skip_reason(identity)
        if reason is not None:
            if reason != "single_logout_disabled":
                log.info("slo_skipped", reason=reason, session_ref=session.ref)
            return None
        settings = services.config.sessions
        cookie = browser_cookie_value(read_prelogin_cookie(request, settings))
        relay_state = new_relay_state()
        http = await services.sp.logout_request(identity, relay_state)
        await _pending_logouts(services).begin(
            cookie,
            relay_state,
            PendingLogout(
                request_id=http.request_id,
                session_ref=session.ref,
                administrator_kvk=identity.administrator_kvk,
                acting_subject=identity.acting_subject,
            ),
        )
    except (GatewayError, ValueError) as err:
        # The local session is already gone; the broker's may outlive it.
        reason = err.code if isinstance(err, GatewayError) else type(err).__name__
        log.warning("slo_request_failed", reason=reason, session_ref=session.ref)
        return None
    audit(
        "slo_requested",
        request_id=request[REQUEST_ID],
        session_ref=session.ref,
        administrator_kvk=identity.administrator_kvk,
        acting_subject=identity.acting_subject,
    )
    response = web.Response(status=303, headers={"Location": http.url, **PAGE_HEADERS})
    set_prelogin_cookie(response, cookie, settings)
    return response


async def single_logout_return(request: web.Request) -> web.StreamResponse:
    """The broker's LogoutResponse (Redirect binding): verify, audit, show the logged-out page.

    The local session ended before the LogoutRequest was sent, so a broken,
    unsigned or replayed response still ends on the logged-out page; it is
    audited as ``logout_response_invalid`` (the broker may still hold its session).
    """
    services = _services(request)
    settings = services.config.sessions
    if "SAMLRequest" in request.query:
        # IdP-initiated logout is not supported: say so instead of pretending.
        raise BadRequest("idp_initiated_logout_unsupported")
    relay_state = request.query.get("RelayState")
    pending: PendingLogout | None = None
    try:
        if "SAMLResponse" not in request.query:
            raise SamlInvalid("logout_response_missing")
        pending = await _pending_logouts(services).take(
            read_prelogin_cookie(request, settings), relay_state
        )
        await services.sp.verify_logout_response(
            request.rel_url.raw_query_string, pending.request_id
        )
    except GatewayError as err:
        audit(
            "logout_response_invalid",
            reason=err.code,
            detail=err.detail,
            request_id=request[REQUEST_ID],
            session_ref=pending.session_ref if pending else None,
            administrator_kvk=pending.administrator_kvk if pending else None,
            acting_subject=pending.acting_subject if pending else None,
        )
    else:
        audit(
            "slo_completed",
            request_id=request[REQUEST_ID],
            session_ref=pending.session_ref,
            administrator_kvk=pending.administrator_kvk,
            acting_subject=pending.acting_subject,
        )
    response = _to_logged_out(services)
    clear_prelogin_cookie(response, settings)
    return response


def _pending_logouts(services: Services) -> PendingLogouts:
    return PendingLogouts(services.store, services.config.sessions.prelogin_ttl.total_seconds())


def _to_logged_out(services: Services) -> web.Response:
    location = services.config.server.reserved_prefix + "logged-out"
    return web.Response(status=303, headers={"Location": location, **PAGE_HEADERS})


async def logged_out(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    body = render(
        "logged_out.html",
        title="U bent uitgelogd",
        login_url=services.config.server.reserved_prefix + "login",
    )
    return html_response(body)


async def sp_metadata(request: web.Request) -> web.StreamResponse:
    """Our signed SP metadata, for registration with the broker."""
    body = _services(request).sp.sp_metadata_xml()
    return web.Response(
        body=body,
        headers={"Content-Type": "application/samlmetadata+xml", "Cache-Control": "max-age=300"},
    )


async def service_catalogue(request: web.Request) -> web.StreamResponse:
    """Our signed dienstcatalogus (what the broker registers; the simulator reads it)."""
    body = _services(request).sp.service_catalogue_xml()
    return web.Response(
        body=body,
        headers={"Content-Type": "application/xml", "Cache-Control": "max-age=300"},
    )


def login_routes(prefix: str) -> list[Route]:
    """(method, path, handler) of the login flow; app.py registers them behind the edge."""
    return [
        ("GET", prefix + "login", login),
        ("GET", prefix + "saml/acs", acs),
        ("POST", prefix + "saml/acs", acs),
        ("GET", prefix + "saml/metadata", sp_metadata),
        ("GET", prefix + "saml/catalogue", service_catalogue),
        ("POST", prefix + "logout", logout),
        ("GET", prefix + "saml/slo", single_logout_return),
        ("GET", prefix + "logged-out", logged_out),
    ]
