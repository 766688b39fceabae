"""Per-request values the edge sets for every request (``gateway.edge``) and handlers read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (method, path, handler): how feature modules hand their endpoints to app.py.
Route = tuple[str, str, Handler]

REQUEST_ID = web.RequestKey("request_id", str)
TIMING = web.RequestKey("timing", dict)
ROUTE_NAME = web.RequestKey("route_name", str)
