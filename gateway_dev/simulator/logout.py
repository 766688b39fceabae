"""The SingleLogoutService: an SP-initiated LogoutRequest by HTTP-Redirect, answered likewise.

Order, as at the SSO: decode and parse (hardened), learn the Issuer, find the
SP in the metadata and its Redirect SingleLogoutService (the only place an
answer ever goes; never a URL from the request). Then the checks: the query
signature over the raw octets against the SP metadata's signing certificates
(RSA-SHA256/512; unsigned, SHA-1 or a foreign key refused), Destination = this
SLO URL, NotOnOrAfter not passed, a NameID present. A failure is answered with
a signed LogoutResponse ``Requester/RequestDenied``. Otherwise the broker's own
(simulated) sessions of that NameID at that SP end (only the named
SessionIndex when one is given) and the answer is a signed ``Success``.

Both answers travel back by Redirect with a query signature (RSA-SHA256), as
the SP's LogoutRequest came. IdP-initiated logout is not simulated.
"""

from __future__ import annotations

import base64
import datetime as dt
import zlib
from urllib.parse import quote_plus

import structlog
from aiohttp import web
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway_dev.simulator.authnrequest import RequestUnreadable, decode_redirect
from gateway_dev.simulator.control import HTTP_SESSION, SIMULATOR, LogoutRecord, Simulator
from gateway_dev.simulator.idpmetadata import SLO_PATH
from gateway_dev.simulator.pages import error_page
from gateway_dev.simulator.scenarios import STATUS_REQUEST_DENIED, STATUS_REQUESTER, STATUS_SUCCESS
from gateway_dev.simulator.spmetadata import MetadataUnavailable, SpMetadata
from gateway_dev.simulator.xmlcrypto import SignatureInvalid, sign_redirect, verify_redirect
from gateway_dev.simulator.xmlutil import (
    BINDING_REDIRECT,
    SAML,
    SAMLP,
    XmlRejected,
    instant,
    new_id,
    parse_xml,
    q,
)

log = structlog.get_logger("gateway_dev.simulator")


class _Refused(Exception):
    """A known SP's LogoutRequest that fails a check: answered with RequestDenied."""


def _html_error(sim: Simulator, title_nl: str, text_en: str, status: int) -> web.Response:
    return web.Response(
        text=error_page(sim.settings.title, title_nl, text_en),
        status=status,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


async def handle(request: web.Request) -> web.StreamResponse:
    """``GET /saml/slo``: one LogoutRequest in, one signed LogoutResponse out (or a 4xx page)."""
    sim = request.app[SIMULATOR]
    value = request.query.get("SAMLRequest")
    relay_state = request.query.get("RelayState")
    try:
        if not value:
            raise RequestUnreadable("no SAMLRequest")
        root = parse_xml(decode_redirect(value))
    except (RequestUnreadable, XmlRejected) as exc:
        log.info("sim_logout_request_unreadable", reason=str(exc))
        return _html_error(sim, "Ongeldig uitlogverzoek", "Invalid SAML request.", 400)
    issuer = (root.findtext(q(SAML, "Issuer")) or "").strip()
    request_id = root.get("ID")
    if root.tag != q(SAMLP, "LogoutRequest") or not issuer or not request_id:
        log.info("sim_logout_request_unreadable", reason="not a LogoutRequest with ID and Issuer")
        return _html_error(sim, "Ongeldig uitlogverzoek", "Invalid SAML request.", 400)
    try:
        sp = await sim.sp_metadata(request.app[HTTP_SESSION])
    except MetadataUnavailable as exc:
        log.warning("sim_sp_metadata_unavailable", reason=str(exc))
        return _html_error(sim, "Metadata ontbreekt", "SP metadata unavailable.", 503)
    slo = next((e.location for e in sp.slo if e.binding == BINDING_REDIRECT), None)
    if issuer != sp.entity_id or slo is None:
        log.info("sim_logout_request_unknown_sp", issuer=issuer, sp_has_slo=slo is not None)
        return _html_error(sim, "Onbekende dienstverlener", "Unknown service provider.", 400)

    base = sim.base_url(str(request.url.origin()))
    try:
        _check(root, sp, request.rel_url.raw_query_string, base + SLO_PATH, sim.now())
    except _Refused as exc:
        log.info("sim_logout_request_refused", request_id=request_id, reason=str(exc))
        sim.logouts.append(LogoutRecord(request_id, sp.entity_id, "refused", str(exc), ()))
        denied = (STATUS_REQUESTER, STATUS_REQUEST_DENIED, str(exc))
        return _answer(sim, slo, request_id, relay_state, denied)

    name_id = root.find(q(SAML, "NameID"))
    assert name_id is not None  # _check
    indexes = [(el.text or "").strip() for el in root.findall(q(SAMLP, "SessionIndex"))]
    ended = sim.end_sessions(
        sp.entity_id, (name_id.text or "").strip(), name_id.get("NameQualifier", ""), indexes
    )
    sim.logouts.append(LogoutRecord(request_id, sp.entity_id, "success", None, ended))
    log.info("sim_logout_answered", request_id=request_id, sessions_ended=len(ended))
    return _answer(sim, slo, request_id, relay_state, (STATUS_SUCCESS, None, None))


def _check(
    root: etree._Element, sp: SpMetadata, raw_query: str, slo_url: str, now: dt.datetime
) -> None:
    try:
        verify_redirect(raw_query, sp.signing_certs, message="SAMLRequest")
    except SignatureInvalid as exc:
        raise _Refused(f"LogoutRequest signature: {exc}") from exc
    if root.get("Destination") != slo_url:
        raise _Refused("LogoutRequest Destination is not this SLO URL")
    not_on_or_after = root.get("NotOnOrAfter")
    if not_on_or_after is not None:
        try:
            deadline = dt.datetime.fromisoformat(not_on_or_after.replace("Z", "+00:00"))
        except ValueError as exc:
            raise _Refused("LogoutRequest NotOnOrAfter malformed") from exc
        if now >= deadline:
            raise _Refused("LogoutRequest expired (NotOnOrAfter)")
    name_id = root.find(q(SAML, "NameID"))
    if name_id is None or not (name_id.text or "").strip():
        raise _Refused("LogoutRequest without NameID")


def _answer(
    sim: Simulator,
    slo_url: str,
    in_response_to: str,
    relay_state: str | None,
    status: tuple[str, str | None, str | None],
) -> web.Response:
    """A signed LogoutResponse to the SP's SLO URL from metadata, by Redirect."""
    root = etree.Element(
        q(SAMLP, "LogoutResponse"),
        {
            "ID": new_id(),
            "Version": "2.0",
            "IssueInstant": instant(sim.now()),
            "Destination": slo_url,
            "InResponseTo": in_response_to,
        },
        nsmap={"samlp": SAMLP, "saml": SAML},
    )
    etree.SubElement(root, q(SAML, "Issuer")).text = sim.settings.entity_id
    st = etree.SubElement(root, q(SAMLP, "Status"))
    top, second, message = status
    code = etree.SubElement(st, q(SAMLP, "StatusCode"), {"Value": top})
    if second:
        etree.SubElement(code, q(SAMLP, "StatusCode"), {"Value": second})
    if message:
        etree.SubElement(st, q(SAMLP, "StatusMessage")).text = message
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = deflater.compress(etree.tostring(root)) + deflater.flush()
    query = "SAMLResponse=" + quote_plus(base64.b64encode(deflated).decode())
    if relay_state is not None:
        query += "&RelayState=" + quote_plus(relay_state)
    query = sign_redirect(query, sim.keys.broker)
    sep = "&" if "?" in slo_url else "?"
    # A plain Location header: the signed octets must reach the SP unchanged.
    return web.Response(
        status=303, headers={"Location": slo_url + sep + query, "Cache-Control": "no-store"}
    )
