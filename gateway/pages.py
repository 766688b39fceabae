"""The gateway's own pages: error pages for browsers, JSON errors for API clients.

Templates live in ``gateway/templates`` and are autoescaped. Error pages say
what happened in Dutch first and English second, carry the request id so a
help desk can find the log line, and never include internals or tracebacks.

Every template is read and compiled when this module is imported, never on
first use: an error page is most needed when the process has run out of file
descriptors, and then no template file could be opened. If rendering still
fails, the client gets a minimal page built from plain strings (``static_page``)
and the traceback is logged.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

import jinja2
import structlog
from aiohttp import web

from gateway.errors import GatewayError, Overloaded

log = structlog.get_logger("gateway.pages")


def _template_sources() -> dict[str, str]:
    folder = resources.files("gateway") / "templates"
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".html")
    }


# Sources in memory and auto_reload off: rendering (including {% extends %})
# never touches the file system again.
_env = jinja2.Environment(
    loader=jinja2.DictLoader(_template_sources()),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
_TEMPLATES = {name: _env.get_template(name) for name in _env.list_templates()}

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
    """Render one of the gateway's templates (compiled at import)."""
    return _TEMPLATES[template].render(**context)


def html_response(
    body: str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers.update(PAGE_HEADERS)
    if headers:
        resp.headers.update(headers)
    return resp


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` that no cache keeps (the login, the client overview)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def wants_json(request: web.BaseRequest) -> bool:
    """API clients ask for JSON; browsers (and anything unsure) get HTML."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: web.BaseRequest, error: GatewayError, request_id: str) -> web.Response:
    """The response for ``error``: a bilingual page, or JSON for API clients.

    The page offers the error's own ``action``; JSON names its ``login_url``.
    Never raises: when the page cannot be made, the traceback is logged and the
    client gets ``static_page`` with the same status.
    """
    try:
        return _error_response(request, error, request_id)
    except Exception:
        log.exception(
            "error_page_failed", status=error.status, code=error.code, request_id=request_id
        )
        resp = web.Response(
            text=static_page(error, request_id),
            status=error.status,
            content_type="text/html",
            charset="utf-8",
        )
        resp.headers.update(PAGE_HEADERS)
        if error.status == 503:
            resp.headers["Retry-After"] = "30"
        return resp


def _error_response(request: web.BaseRequest, error: GatewayError, request_id: str) -> web.Response:
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
                **({"login_url": error.login_url} if error.login_url is not None else {}),
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
        action_url=error.action.url if error.action else None,
        action_nl=error.action.nl if error.action else "",
        action_en=error.action.en if error.action else "",
    )
    return html_response(body, status=error.status, headers=headers)


def static_page(error: GatewayError, request_id: str = "") -> str:
    """A minimal bilingual page from plain strings: what is sent when rendering fails."""
    e = html.escape
    reference = f"<p>referentie / reference: {e(request_id)}</p>" if request_id else ""
    return (
        f'<!doctype html><html lang="nl"><meta charset="utf-8">'
        f"<title>{error.status} {e(error.title_nl)}</title>"
        f"<h1>{e(error.title_nl)}</h1><p>{e(error.text_nl)}</p>"
        f'<h2 lang="en">{e(error.title_en)}</h2><p lang="en">{e(error.text_en)}</p>'
        f"<p>Foutcode / error code: {e(error.code)} · {error.status}</p>{reference}</html>\n"
    )


def refusal_bytes(retry_after: int = 5) -> bytes:
    """A whole HTTP/1.1 503 answer (head and body) for a connection the gateway will not serve.

    Written straight to the socket when a connection is over a cap or arrives
    while no descriptor is left; it is computed once, so sending it needs
    nothing but the write.
    """
    body = static_page(Overloaded()).encode()
    head = [
        "HTTP/1.1 503 Service Unavailable",
        "Content-Type: text/html; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Retry-After: {retry_after}",
        *(f"{name}: {value}" for name, value in PAGE_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
