"""The sample legacy portal: what a backend behind the gateway sees and checks.

Every page verifies the gateway's identity token exactly as docs/backends.md
tells a backend to (``gateway_dev/portal/verify.py``, a copy of the reference
verifier) and shows the result: acting administrator, mode, level, active
employer and the allowed set (fetched from the gateway's employers endpoint
when the token carries the large-set substitute). A missing or invalid token
is said plainly and answered 401, as a real backend would. Employer pages
(``/werkgevers/{kvk}/...``) re-check the employer against the allowed set: the
second line behind the gateway's own 403.

``/demo`` (demo only) lists the demo scenarios and revokes mandates live, see
``gateway_dev/portal/demo_page.py``. ``/api/headers`` echoes the request headers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import jwt
import structlog
from aiohttp import web

from gateway_dev.portal.demo_page import add_demo_routes
from gateway_dev.portal.rendering import HTTP, SETTINGS, page, render
from gateway_dev.portal.settings import PortalSettings
from gateway_dev.portal.verify import IdentityVerifier

log = structlog.get_logger("gateway_dev.portal")

VERIFIER = web.AppKey("portal_verifier", IdentityVerifier)
SET_CACHE = web.AppKey("portal_set_cache", dict)

FOREIGN_EXAMPLE_KVK = "34567890"  # an employer outside every demo set (no mandate anywhere)
_KVK = re.compile(r"^[0-9]{8}$")


@dataclass
class TokenView:
    """What the portal made of the request's identity token."""

    status: Literal["off", "missing", "invalid", "ok"]
    reason: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    employers: list[dict[str, Any]] | None = None
    large_set: bool = False
    set_error: str | None = None

    def employer(self, kvk: str) -> dict[str, Any] | None:
        return next((e for e in self.employers or [] if e.get("kvk") == kvk), None)


async def read_identity(request: web.Request) -> TokenView:
    """Verify the request's token the documented way; never raises for a bad token."""
    verifier = request.app.get(VERIFIER)
    if verifier is None:
        return TokenView("off")
    token = verifier.token_from(request.headers)
    if token is None:
        return TokenView("missing")
    try:
        # PyJWKClient blocks (urllib); its JWKS cache makes this cheap after the first call.
        claims = await asyncio.to_thread(verifier.verify, token)
    except jwt.PyJWTError as exc:
        log.info("portal_token_rejected", reason=type(exc).__name__)
        return TokenView("invalid", reason=f"{type(exc).__name__}: {exc}")
    view = TokenView("ok", claims=claims)
    if "employers" in claims:
        view.employers = list(claims["employers"])
        return view
    view.large_set = True
    cache: dict[tuple[str, str], list[dict[str, Any]]] = request.app[SET_CACHE]
    key = (str(claims.get("sid")), str(claims.get("employers_digest")))
    if key not in cache:
        try:
            employers = await verifier.employer_set_async(request.app[HTTP], token, claims)
        except (aiohttp.ClientError, ValueError, KeyError) as exc:
            view.set_error = f"De volledige set kon niet worden opgehaald / fetch failed: {exc}"
            return view
        if len(cache) > 100:
            cache.clear()
        cache[key] = employers
    view.employers = cache[key]
    return view


def _context(request: web.Request, view: TokenView, title: str) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    expires = ""
    if view.status == "ok":
        expires = dt.datetime.fromtimestamp(int(view.claims["exp"]), dt.UTC).strftime("%H:%M:%S")
    names = {e.get("kvk"): e.get("name") for e in view.employers or []}
    return {
        "title": title,
        "view": view,
        "show": settings.show_employers,
        "header": settings.header_name,
        "expires": expires + " UTC" if expires else "",
        "names": names,
        "foreign": FOREIGN_EXAMPLE_KVK,
        "replica": request.headers.get("X-Demo-Replica"),
        "headers": [
            (k, v if k.lower() != settings.header_name.lower() else v[:24] + "…")
            for k, v in request.headers.items()
        ],
    }


def _status(view: TokenView) -> int:
    # A backend answers 401 without a valid token (docs/backends.md); "off" is a bare portal.
    return 401 if view.status in ("missing", "invalid") else 200


async def home(request: web.Request) -> web.Response:
    """Any page that is not an employer page: who you are, per the token."""
    view = await read_identity(request)
    body = render("home.html", **_context(request, view, "Werkgeversportaal"))
    return page(body, _status(view))


async def employer_page(request: web.Request) -> web.Response:
    """``/werkgevers/{kvk}/...``: one employer's page, allowed only within the token's set."""
    kvk = request.match_info["kvk"]
    view = await read_identity(request)
    employer = view.employer(kvk) if view.status == "ok" else None
    ctx = _context(request, view, f"Werkgever {kvk}")
    body = render(
        "employer.html", kvk=kvk, employer=employer, rest=request.match_info["rest"], **ctx
    )
    status = _status(view)
    if view.status == "ok" and employer is None and view.employers is not None:
        status = 403  # the backend's own check, behind the gateway's
    return page(body, status)


async def open_employer(request: web.Request) -> web.Response:
    """``/open?kvk=...``: the home page's form, redirected to that employer's page."""
    kvk = request.query.get("kvk", "").strip()
    if not _KVK.match(kvk):
        raise web.HTTPBadRequest(text="KvK-nummer: 8 cijfers / 8 digits")
    raise web.HTTPSeeOther(f"/werkgevers/{kvk}/overzicht")


async def favicon(request: web.Request) -> web.Response:
    """No icon, and no session work for the browser's automatic request."""
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


async def headers_json(request: web.Request) -> web.Response:
    """``/api/headers``: the received headers as JSON, for scripts and tests."""
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        app[HTTP] = session
        yield


def build_portal_app(settings: PortalSettings | None = None) -> web.Application:
    """The sample portal; with ``settings.jwks_url`` it verifies the gateway's token."""
    settings = settings or PortalSettings()
    app = web.Application()
    app[SETTINGS] = settings
    app[SET_CACHE] = {}
    if settings.jwks_url is not None:
        if settings.issuer is None:
            raise ValueError("portal: issuer is required with jwks_url")
        app[VERIFIER] = IdentityVerifier(
            settings.jwks_url,
            issuer=settings.issuer,
            audience=settings.audience,
            algorithms=settings.algorithms,
            header_name=settings.header_name,
        )
    app.cleanup_ctx.append(_http_client)
    app.router.add_route("*", "/api/headers", headers_json)
    add_demo_routes(app)
    app.router.add_get("/open", open_employer)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_route("*", "/werkgevers/{kvk}/{rest:.*}", employer_page)
    app.router.add_route("*", "/{tail:.*}", home)
    return app
