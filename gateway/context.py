"""Per-request values shared between the edge middleware, the policy step and handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (method, path, handler): how feature modules hand their endpoints to app.py.
Route = tuple[str, str, Handler]

REQUEST_ID = web.RequestKey("request_id", str)
TIMING = web.RequestKey("timing", dict)
ROUTE_NAME = web.RequestKey("route_name", str)
# Extra context for the error page of this request (login URL, a "try again" link).
ERROR_EXTRA = web.RequestKey("error_extra", dict)
# Fields of a small urlencoded form body, parsed for employer-scope checks.
FORM_FIELDS = web.RequestKey("form_fields", dict)
