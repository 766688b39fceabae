"""The demo's control page on the sample portal: the scenario guide and live revocation.

``GET /demo`` lists the demo scenarios and the hand-written mandates of the
demo registry file, each with a button. ``POST /demo/mandates`` rewrites that
file (the gateway's file source picks it up within its check interval; a
running session sees the change at its next mandate re-check), and with
``push`` also calls the gateway's admin invalidation endpoint, as a real
registry would, so the change is seen at the next request.

Demo only: it exists only when ``PortalSettings.demo_mandates_file`` is set.
The form carries a per-process CSRF token so another site cannot revoke.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets

import aiohttp
import structlog
from aiohttp import web

from gateway_dev.portal.demo_data import read_mandates, set_status
from gateway_dev.portal.rendering import HTTP, SETTINGS, page, render

log = structlog.get_logger("gateway_dev.portal")

CSRF = web.AppKey("portal_demo_csrf", str)


async def demo_page(request: web.Request) -> web.Response:
    """The guide and the mandates table."""
    settings = request.app[SETTINGS]
    mandates = None
    generated = 0
    if settings.demo_mandates_file is not None:
        records = await asyncio.to_thread(read_mandates, settings.demo_mandates_file)
        # Generated clients have a fund number starting with 3 and are not worth listing.
        mandates = [
            r for r in records if not str(r.get("fund_employer_number", "")).startswith("3")
        ]
        generated = len(records) - len(mandates)
    notice = {
        "revoked": "Machtiging ingetrokken. / Mandate revoked.",
        "revoked-pushed": "Machtiging ingetrokken en direct doorgegeven aan de gateway. "
        "/ Revoked and pushed to the gateway.",
        "restored": "Machtiging hersteld. / Mandate restored.",
    }.get(request.query.get("notice", ""))
    body = render(
        "demo.html",
        title="Demo",
        guide=settings.demo_guide,
        mandates=mandates,
        generated=generated,
        csrf=request.app[CSRF],
        recheck=int(settings.demo_recheck_seconds),
        notice=notice,
    )
    return page(body)


async def change_mandate(request: web.Request) -> web.Response:
    """Revoke or restore one mandate in the demo registry file."""
    settings = request.app[SETTINGS]
    path = settings.demo_mandates_file
    if path is None:
        raise web.HTTPNotFound()
    form = await request.post()
    csrf = form.get("csrf")
    if not isinstance(csrf, str) or not hmac.compare_digest(csrf, request.app[CSRF]):
        raise web.HTTPForbidden(text="CSRF-controle mislukt / CSRF check failed")
    admin, employer, action = (form.get(k) for k in ("administrator_kvk", "employer_kvk", "action"))
    if not (isinstance(admin, str) and isinstance(employer, str)) or action not in (
        "revoke",
        "restore",
    ):
        raise web.HTTPBadRequest(text="administrator_kvk, employer_kvk, action")
    status = "revoked" if action == "revoke" else "active"
    if not await asyncio.to_thread(set_status, path, admin, employer, status):
        raise web.HTTPNotFound(text="geen zulke machtiging / no such mandate")
    log.info("demo_mandate_changed", administrator_kvk=admin, employer_kvk=employer, status=status)
    notice = "revoked" if action == "revoke" else "restored"
    if form.get("push") and await _push(request, admin, employer):
        notice = "revoked-pushed"
    raise web.HTTPSeeOther(f"/demo?notice={notice}")


async def _push(request: web.Request, admin: str, employer: str) -> bool:
    """Tell the gateway at once, as the registry's revocation push would."""
    settings = request.app[SETTINGS]
    if settings.demo_gateway_url is None or settings.demo_admin_token_file is None:
        return False
    token = (await asyncio.to_thread(settings.demo_admin_token_file.read_text)).strip()
    url = settings.demo_gateway_url.rstrip("/") + "/_gateway/admin/mandates/invalidate"
    try:
        async with request.app[HTTP].post(
            url,
            json={"administrator_kvk": admin, "employer_kvk": employer},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            ok = resp.status == 202
    except aiohttp.ClientError as exc:
        log.warning("demo_push_failed", error=str(exc))
        return False
    log.info("demo_push_sent", administrator_kvk=admin, accepted=ok)
    return ok


def add_demo_routes(app: web.Application) -> None:
    app[CSRF] = secrets.token_urlsafe(24)
    app.router.add_get("/demo", demo_page)
    app.router.add_post("/demo/mandates", change_mandate)
