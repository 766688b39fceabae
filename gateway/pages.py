"""The gateway's own pages: error pages for browsers, JSON errors for API clients.

Templates live in ``gateway/templates`` and are autoescaped. Error pages say
what happened in Dutch first and English second, carry the request id so a
help desk can find the log line, and never include internals or tracebacks.
"""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

from gateway.errors import GatewayError

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# Security headers for everything the gateway renders itself.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def render(template: str, **context: Any) -> str:
    """Render one of the gateway's templates."""
    return _env.get_template(template).render(**context)


def html_response(
    body: str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers.update(PAGE_HEADERS)
    if headers:
        resp.headers.update(headers)
    return resp


def wants_json(request: web.BaseRequest) -> bool:
    """API clients ask for JSON; browsers (and anything unsure) get HTML."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(
    request: web.BaseRequest, error: GatewayError, request_id: str, **extra: Any
) -> web.Response:
    """The response for ``error``: a bilingual page, or JSON for API clients."""
    headers: dict[str, str] = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'eHerkenning realm="werkgeversportaal"'
    if error.status == 503:
        headers["Retry-After"] = "30"
    if wants_json(request):
        resp = web.json_response(
            {
                "error": error.code,
                "status": error.status,
                "message": {"nl": error.text_nl, "en": error.text_en},
                "request_id": request_id,
                **{k: v for k, v in extra.items() if k in ("login_url",)},
            },
            status=error.status,
        )
        resp.headers.update(PAGE_HEADERS)
        resp.headers.update(headers)
        return resp
    body = render(
        "error.html",
        error=error,
        status=error.status,
        request_id=request_id,
        title=error.title_nl,
        action_url=extra.get("action_url"),
        action_nl=extra.get("action_nl", ""),
        action_en=extra.get("action_en", ""),
    )
    return html_response(body, status=error.status, headers=headers)
