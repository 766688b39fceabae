"""HTTP endpoints of the broker simulator and ``build_simulator_app``.

Routes: ``/saml/metadata`` (IdP metadata), ``/saml/sso`` (AuthnRequest by
Redirect or POST), ``/saml/login`` (the login page's form), ``/saml/ars``
(SOAP ArtifactResolutionService), ``/saml/slo`` (SingleLogoutService, see
``gateway_dev.simulator.logout``) and ``/`` (an index for people).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from gateway_dev.simulator import ars, logout
from gateway_dev.simulator.artifacts import make_artifact
from gateway_dev.simulator.authnrequest import (
    AuthnRequest,
    RequestRefused,
    RequestUnreadable,
    decode_post,
    decode_redirect,
    peek,
    verify,
)
from gateway_dev.simulator.catalogue import ServiceCatalogue
from gateway_dev.simulator.control import (
    HTTP_SESSION,
    SIMULATOR,
    BrokerSession,
    IssuedLogin,
    Simulator,
)
from gateway_dev.simulator.idpmetadata import (
    ARS_PATH,
    LOGIN_PATH,
    METADATA_PATH,
    SLO_PATH,
    SSO_PATH,
    idp_metadata,
)
from gateway_dev.simulator.messages import Login, Shape, Status, error_response, refusal, response
from gateway_dev.simulator.pages import error_page, index_page, login_page, post_form
from gateway_dev.simulator.scenarios import STATUS_FOR_OUTCOME, STATUS_REQUESTER, Scenario
from gateway_dev.simulator.settings import SimulatorSettings
from gateway_dev.simulator.spmetadata import MetadataUnavailable, SpMetadata
from gateway_dev.simulator.xmlutil import BINDING_ARTIFACT, BINDING_POST, to_bytes

log = structlog.get_logger("gateway_dev.simulator")

_CANCEL = Scenario(id="cancel", label="Annuleren", outcome="cancel")


def build_simulator_app(
    settings: SimulatorSettings, *, clock: Callable[[], float] | None = None
) -> web.Application:
    """The simulator as an aiohttp application; ``app[SIMULATOR]`` is its control API.

    ``clock`` (seconds since the epoch) lets tests move time, e.g. to expire an artifact.
    """
    app = web.Application(client_max_size=1024 * 1024)
    app[SIMULATOR] = Simulator(settings, clock=clock) if clock else Simulator(settings)
    app.cleanup_ctx.append(_http_session)
    app.router.add_get("/", _index)
    app.router.add_get(METADATA_PATH, _metadata)
    app.router.add_route("GET", SSO_PATH, _sso)
    app.router.add_route("POST", SSO_PATH, _sso)
    app.router.add_post(LOGIN_PATH, _login)
    app.router.add_post(ARS_PATH, ars.handle)
    if settings.single_logout:
        app.router.add_get(SLO_PATH, logout.handle)
    return app


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    # One session for fetching SP metadata from a URL, for the app's lifetime.
    async with aiohttp.ClientSession() as session:
        app[HTTP_SESSION] = session
        yield


def _base(request: web.Request) -> str:
    return request.app[SIMULATOR].base_url(str(request.url.origin()))


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


async def _index(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    return _html(
        index_page(sim.settings.title, _base(request) + METADATA_PATH, sim.scenarios.values())
    )


async def _metadata(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    valid = sim.settings.metadata_valid_seconds
    body = idp_metadata(
        sim.settings.entity_id,
        _base(request),
        sim.keys.broker,
        slo=sim.settings.single_logout,
        valid_until=sim.now() + dt.timedelta(seconds=valid) if valid else None,
    )
    return web.Response(body=body, content_type="application/samlmetadata+xml")


async def _sso(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    title = sim.settings.title
    try:
        if request.method == "GET":
            value, relay_state = request.query.get("SAMLRequest"), request.query.get("RelayState")
            raw_query: str | None = request.rel_url.raw_query_string
            xml = decode_redirect(value) if value else b""
        else:
            form = await request.post()
            v, rs = form.get("SAMLRequest"), form.get("RelayState")
            value = v if isinstance(v, str) else None
            relay_state = rs if isinstance(rs, str) else None
            raw_query = None
            xml = decode_post(value) if value else b""
        if not value:
            raise RequestUnreadable("no SAMLRequest")
        unverified = peek(xml)
    except RequestUnreadable as exc:
        log.info("sim_authn_request_unreadable", reason=str(exc))
        return _html(error_page(title, "Ongeldig inlogverzoek", "Invalid SAML request."), 400)
    try:
        sp = await sim.sp_metadata(request.app[HTTP_SESSION])
        catalogue = await sim.service_catalogue(request.app[HTTP_SESSION])
    except MetadataUnavailable as exc:
        log.warning("sim_sp_metadata_unavailable", reason=str(exc))
        return _html(error_page(title, "Metadata ontbreekt", "SP metadata unavailable."), 503)
    if unverified.issuer != sp.entity_id:
        log.info("sim_authn_request_unknown_sp", issuer=unverified.issuer)
        return _html(
            error_page(title, "Onbekende dienstverlener", "Unknown service provider."), 400
        )
    try:
        authn = verify(
            unverified,
            sp,
            sso_url=_base(request) + SSO_PATH,
            raw_query=raw_query,
            require_signature=sim.settings.require_signed_authn_request,
            allow_post_binding=sim.settings.allow_post_binding,
        )
    except RequestRefused as exc:
        log.info("sim_authn_request_refused", request_id=unverified.id, reason=str(exc))
        # Answer with a SAML error, but only ever to the ACS from metadata.
        acs = sp.default_acs(BINDING_ARTIFACT)
        if acs is None:
            return _html(error_page(title, "Verzoek geweigerd", "Request refused."), 400)
        refused = AuthnRequest(
            unverified.id, sp.entity_id, acs, BINDING_ARTIFACT, None, None, False
        )
        status: Status = (STATUS_REQUESTER, exc.second_level, str(exc))
        return deliver(request, sp, refused, None, relay_state, status=status)

    scenario = sim.take_scenario(authn.id)
    if scenario is not None:
        return deliver(request, sp, authn, scenario, relay_state, catalogue=catalogue)
    token = sim.add_pending(authn, relay_state, sp.entity_id)
    return _html(
        login_page(
            title=title,
            token=token,
            action=LOGIN_PATH,
            service_provider=sp.entity_id,
            scenarios=sim.scenarios.values(),
        )
    )


async def _login(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    form = await request.post()
    token, choice, action = form.get("login"), form.get("scenario"), form.get("action")
    pending = sim.take_pending(token) if isinstance(token, str) else None
    if pending is None:
        return _html(
            error_page(sim.settings.title, "Inlogpoging verlopen", "Login attempt expired."), 400
        )
    if action == "cancel":
        scenario: Scenario | None = _CANCEL
    else:
        scenario = sim.scenarios.get(choice) if isinstance(choice, str) else None
    try:
        sp = await sim.sp_metadata(request.app[HTTP_SESSION])
        catalogue = await sim.service_catalogue(request.app[HTTP_SESSION])
    except MetadataUnavailable:
        return _html(
            error_page(sim.settings.title, "Metadata ontbreekt", "SP metadata unavailable."), 503
        )
    if scenario is None:
        token2 = sim.add_pending(pending.request, pending.relay_state, pending.sp_entity_id)
        return _html(
            login_page(
                title=sim.settings.title,
                token=token2,
                action=LOGIN_PATH,
                service_provider=sp.entity_id,
                scenarios=sim.scenarios.values(),
                error="Kies een scenario / Choose a scenario",
            ),
            400,
        )
    return deliver(request, sp, pending.request, scenario, pending.relay_state, catalogue=catalogue)


def deliver(
    request: web.Request,
    sp: SpMetadata,
    authn: AuthnRequest,
    scenario: Scenario | None,
    relay_state: str | None,
    *,
    status: Status | None = None,
    catalogue: ServiceCatalogue | None = None,
) -> web.StreamResponse:
    """Answer ``authn``: build the Response and send the browser to the ACS."""
    sim = request.app[SIMULATOR]
    s = sim.settings
    now = sim.now()
    post = authn.binding == BINDING_POST
    shape = Shape.of(s, scenario)
    if scenario is not None and scenario.outcome != "success":
        top, second, message = scenario.status() or STATUS_FOR_OUTCOME["authn_failed"]
        status = (top, second, message)
    login: Login | None = None
    if status is None and scenario is not None:
        login = Login(
            settings=s,
            sp=sp,
            request=authn,
            scenario=scenario,
            now=now,
            catalogue=catalogue,
            shape=shape,
        )
        status = refusal(login)
        if status is not None:
            log.info("sim_login_refused_by_catalogue", request_id=authn.id, reason=status[2])
            scenario = scenario.model_copy(update={"outcome": "not_authorised"})
    if status is not None:
        signer = sim.keys.broker if post else None
        resp = error_response(s, authn.id, authn.acs.location, status, now, signer=signer)
    else:
        assert scenario is not None
        assert login is not None
        resp = response(login, sim.keys, sign_response=post, rewrite=sim.take_rewrite())
        sim.sessions[login.session_index] = BrokerSession(
            sp_entity_id=sp.entity_id,
            name_id=login.subject_id,
            name_qualifier=s.authentication_service_id,
            session_index=login.session_index,
            scenario_id=scenario.id,
        )

    artifact = None
    fields: dict[str, str] = {}
    if post:
        fields["SAMLResponse"] = base64.b64encode(to_bytes(resp)).decode()
    else:
        artifact = make_artifact(s.entity_id, 0)
        sim.artifacts.put(
            artifact, to_bytes(resp), sp.entity_id, real_broker_shape=shape.real_broker_shape
        )
        fields["SAMLart"] = artifact
    if relay_state is not None:
        fields["RelayState"] = relay_state
    _record(sim, sp, authn, scenario, artifact)
    if post or s.acs_delivery == "post":
        return _html(post_form(s.title, authn.acs.location, fields))
    raise web.HTTPSeeOther(str(URL(authn.acs.location).extend_query(fields)))


def _record(
    sim: Simulator,
    sp: SpMetadata,
    authn: AuthnRequest,
    scenario: Scenario | None,
    artifact: str | None,
) -> None:
    success = scenario is not None and scenario.outcome == "success"
    legal = scenario.legal_subject if scenario is not None else None
    login = IssuedLogin(
        request_id=authn.id,
        scenario_id=scenario.id if scenario is not None else "refused",
        outcome=scenario.outcome if scenario is not None else "refused",
        sp_entity_id=sp.entity_id,
        artifact=artifact,
        pseudonym=scenario.pseudonym_for(sp.entity_id) if success and scenario else None,
        legal_subject_kvk=legal.kvk if success and legal else None,
        intermediary_kvk=scenario.intermediary.kvk
        if success and scenario and scenario.intermediary
        else None,
        loa=scenario.loa if success and scenario else None,
    )
    sim.issued.append(login)
    log.info(
        "sim_login_answered",
        request_id=authn.id,
        scenario=login.scenario_id,
        outcome=login.outcome,
        binding=authn.binding,
    )
