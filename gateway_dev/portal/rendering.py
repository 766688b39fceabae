"""Shared bits of the sample portal: app keys, templates and the HTML response."""

from __future__ import annotations

from typing import Any

import aiohttp
import jinja2
from aiohttp import web

from gateway_dev.portal.settings import PortalSettings

SETTINGS = web.AppKey("portal_settings", PortalSettings)
HTTP = web.AppKey("portal_http", aiohttp.ClientSession)

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway_dev.portal", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: Any) -> str:
    """Render one of the portal's (autoescaped) templates."""
    return _env.get_template(template).render(**context)


def page(body: str, status: int = 200) -> web.Response:
    """An HTML response that no cache keeps (it shows a person's identity)."""
    resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    return resp
