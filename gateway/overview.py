"""The administrator's overview: which employers they may act for, and choosing one.

``/_gateway/employers`` lists the session's allowed employers (search and
paging, fast at 10,000), in Dutch or English, as HTML without JavaScript or as
JSON (``Accept: application/json``) for a portal that renders it itself.
Choosing one is a CSRF-protected POST that sets the active employer and
rotates the session ID.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from gateway.audit import audit
from gateway.context import REQUEST_ID, Route
from gateway.errors import CsrfFailed, EmployerNotAllowed, NotAuthenticated
from gateway.gate import current_session
from gateway.pages import PAGE_HEADERS, html_response, render, see_other, wants_json
from gateway.policy import Redirect, is_browser_navigation
from gateway.services import SERVICES, Services
from gateway.sessions import Session
from gateway.sessions.cookies import read_session_cookie, set_session_cookie
from gateway.sessions.next_path import safe_next_path

PAGE_SIZE = 50

TEXT: dict[str, dict[str, str]] = {
    "nl": {
        "title": "Uw klanten",
        "logged_in_as": "Ingelogd voor",
        "kvk": "KvK",
        "level": "niveau",
        "mode_direct": "eigen eHerkenning",
        "mode_chain": "ketenmachtiging",
        "chain_explain": (
            "U bent ingelogd met een ketenmachtiging voor deze ene klant. Wilt u zaken regelen "
            "voor een andere klant? Log dan opnieuw in met de ketenmachtiging van die klant."
        ),
        "none_title": "Nog geen klanten",
        "none_explain": (
            "Er zijn nog geen klanten die u gemachtigd hebben bij het pensioenfonds. U kunt "
            "alleen zaken regelen voor klanten die u gemachtigd hebben. Uw klant kan de "
            "machtiging aanvragen via onze website. Daarna ziet u de klant hier."
        ),
        "search_label": "Zoek op naam, KvK-nummer of aansluitnummer",
        "search_button": "Zoeken",
        "count": "{shown} van {total} klanten",
        "caption": "Klanten die u gemachtigd hebben",
        "name": "Naam",
        "fund_number": "Aansluitnummer",
        "choose_col": "Actie",
        "choose": "Kies",
        "active": "Actief",
        "paging": "Pagina's",
        "previous": "Vorige",
        "next": "Volgende",
        "page": "Pagina {page} van {pages}",
        "to_portal": "Naar het portaal",
        "other_language": "English",
        "logout": "Uitloggen",
        "revoked": (
            "De klant waarvoor u werkte heeft de machtiging ingetrokken. Kies een andere klant."
        ),
    },
    "en": {
        "title": "Your clients",
        "logged_in_as": "Logged in for",
        "kvk": "KvK",
        "level": "level",
        "mode_direct": "own eHerkenning",
        "mode_chain": "chain authorisation",
        "chain_explain": (
            "You logged in with a chain authorisation for this one client. To work for another "
            "client, log in again with that client's chain authorisation."
        ),
        "none_title": "No clients yet",
        "none_explain": (
            "No clients have authorised you at the pension fund yet. You can only act for "
            "clients who authorised you. Your client can request the authorisation on our "
            "website; the client then appears here."
        ),
        "search_label": "Search by name, KvK number or fund number",
        "search_button": "Search",
        "count": "{shown} of {total} clients",
        "caption": "Clients who authorised you",
        "name": "Name",
        "fund_number": "Fund number",
        "choose_col": "Action",
        "choose": "Choose",
        "active": "Active",
        "paging": "Pages",
        "previous": "Previous",
        "next": "Next",
        "page": "Page {page} of {pages}",
        "to_portal": "To the portal",
        "other_language": "Nederlands",
        "logout": "Log out",
        "revoked": "The client you were working for withdrew the mandate. Choose another client.",
    },
}


def _lang(request: web.Request) -> str:
    if request.query.get("lang") in ("nl", "en"):
        return request.query["lang"]
    accept = request.headers.get("Accept-Language", "").lower()
    return "en" if accept.startswith("en") else "nl"


def _matches(session: Session, query: str) -> list[Any]:
    if not query:
        return list(session.allowed)
    # Fund numbers may hold letters: compare them casefolded, like names (the
    # query is casefolded, so a raw comparison never matched "F1234").
    q = query.casefold()
    return [
        e
        for e in session.allowed
        if q in e.name.casefold() or q in e.kvk or (e.fund_number and q in e.fund_number.casefold())
    ]


async def _session(request: web.Request, services: Services) -> Session | Redirect:
    return await current_session(
        services,
        read_session_cookie(request, services.config.sessions),
        request[REQUEST_ID],
        browser=is_browser_navigation(request.method, request.headers.get("Accept", "")),
        return_to=request.path_qs,
    )


async def employers_page(request: web.Request) -> web.StreamResponse:
    """The overview, as HTML or JSON."""
    services = request.app[SERVICES]
    found = await _session(request, services)
    if isinstance(found, Redirect):
        return see_other(found.location)
    session = found
    query = request.query.get("q", "").strip()[:100]
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        page = 1
    matches = _matches(session, query)
    pages = max(1, math.ceil(len(matches) / PAGE_SIZE))
    page = min(page, pages)
    rows = matches[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    identity = session.identity
    if wants_json(request):
        return web.json_response(
            {
                "mode": identity.mode,
                "administrator": {
                    "kvk": identity.administrator_kvk,
                    "name": identity.administrator_name,
                },
                "loa": identity.loa.short,
                "active_employer": session.active_employer,
                "query": query,
                "total": len(matches),
                "page": page,
                "pages": pages,
                "page_size": PAGE_SIZE,
                "employers": [
                    {"kvk": e.kvk, "name": e.name, "fund_number": e.fund_number} for e in rows
                ],
            },
            headers=PAGE_HEADERS,
        )
    lang = _lang(request)
    text = TEXT[lang]
    notice = text["revoked"] if request.query.get("notice") == "revoked" else None
    body = render(
        "employers.html",
        lang=lang,
        text=text,
        title=text["title"],
        notice=notice,
        mode=identity.mode,
        admin_name=identity.administrator_name,
        admin_kvk=identity.administrator_kvk,
        loa=identity.loa.name.replace("PLUS", "+"),
        query=query,
        total=len(matches),
        rows=rows,
        page=page,
        pages=pages,
        active=session.active_employer,
        csrf=session.csrf_secret,
        action_base=services.config.server.reserved_prefix,
    )
    return html_response(body)


async def select_employer(request: web.Request) -> web.StreamResponse:
    """Set the active employer (CSRF-protected), rotate the session ID, go back."""
    services = request.app[SERVICES]
    settings = services.config.sessions
    found = await _session(request, services)
    if isinstance(found, Redirect):
        raise NotAuthenticated("no session for employer selection")
    session = found
    form = await request.post()
    token = form.get("csrf")
    if not session.csrf_matches(token if isinstance(token, str) else None):
        raise CsrfFailed("employer selection without a valid CSRF token")
    kvk = form.get("kvk")
    if not isinstance(kvk, str) or session.employer(kvk) is None:
        audit(
            "access_denied",
            reason="employer_selection",
            request_id=request[REQUEST_ID],
            session_ref=session.ref,
            administrator_kvk=session.identity.administrator_kvk,
            employer_kvk=kvk if isinstance(kvk, str) else None,
            acting_subject=session.identity.acting_subject,
        )
        raise EmployerNotAllowed("selected employer not in the allowed set")
    session = await services.sessions.update(session, active_employer=kvk)
    session = await services.sessions.rotate(session)
    audit(
        "employer_selected",
        request_id=request[REQUEST_ID],
        session_ref=session.ref,
        administrator_kvk=session.identity.administrator_kvk,
        employer_kvk=kvk,
        acting_subject=session.identity.acting_subject,
    )
    nxt = form.get("next")
    target = safe_next_path(
        nxt if isinstance(nxt, str) else "/", forbidden_prefixes=services.forbidden_next_prefixes()
    )
    response = web.Response(status=303, headers={"Location": target, **PAGE_HEADERS})
    set_session_cookie(response, session.id, settings)
    return response


def overview_routes(prefix: str) -> list[Route]:
    """(method, path, handler) of the overview; app.py registers them behind the edge."""
    return [
        ("GET", prefix + "employers", employers_page),
        ("POST", prefix + "employers/select", select_employer),
    ]
