"""Forward-auth: the gateway's decision for a proxy that carries the bytes itself.

nginx ``auth_request``, ingress-nginx ``auth-url``, Traefik ``forwardAuth`` and
Envoy's HTTP ``ext_authz`` ask an auth service, per request (or per cached
interval), "may this request pass, and with which identity header?". This
module answers at ``{reserved_prefix}auth`` from the **same** route table,
target parsing (``gateway.target``) and policy (``gateway.policy.decide``, through
the shell ``gateway.gate.authorize``) as proxy mode: there is no second
implementation of any rule.

The original request comes from the headers these proxies send, believed only
from ``server.trusted_proxies`` (anyone else gets 403):

- target: ``X-Original-URI`` (nginx), ``X-Forwarded-Uri`` (Traefik),
  ``X-Original-URL`` (ingress-nginx, a full URL), or the path after
  ``{reserved_prefix}auth`` (Envoy's ``path_prefix``);
- method: ``X-Original-Method``, ``X-Forwarded-Method``, else the method of the
  auth request itself;
- host: ``X-Forwarded-Host``, else ``Host``; cookies and every other header
  as they are.

Answers:

- **200**: allowed. The route's identity header (or ``Authorization: Bearer``)
  carries the signed token; ``X-Gateway-Route`` names the route. A public
  route is allowed with no identity header. ``X-Accel-Expires`` and
  ``Cache-Control: max-age`` let the proxy cache it for
  ``forward_auth.cache_seconds``.
- **401**: no session (or a step-up login is needed): ``Location`` and
  ``X-Auth-Redirect`` hold the login URL (nginx: ``error_page 401``); with
  ``forward_auth.browser_status: 303`` browsers get the redirect itself.
- **403**: the employer is not in the allowed set, no route takes the
  request, or the target is a shape proxy mode refuses; and every request
  from a peer that is not a trusted proxy.

A route with a ``form`` employer scope cannot be checked without the body,
which no auth subrequest carries: such requests are refused unless their
method has no body (GET, HEAD).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from gateway.audit import audit
from gateway.client import is_trusted_peer
from gateway.config import GatewayConfig
from gateway.context import REQUEST_ID, ROUTE_NAME, Handler, Route
from gateway.errors import Forbidden, NotAuthenticated
from gateway.gate import authorize, request_facts
from gateway.pages import error_response, see_other
from gateway.policy import Redirect, login_action
from gateway.routing import NoMatch, Router
from gateway.services import SERVICES
from gateway.sessions.cookies import read_session_cookie
from gateway.target import BadTarget, parse_target

log = structlog.get_logger("gateway.forward_auth")

# Headers that describe the original request to us; never passed on as its own.
_ORIGINAL = frozenset(
    {
        "x-original-uri",
        "x-original-url",
        "x-original-method",
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-auth-request-redirect",
        "x-sent-from",
        "content-length",
        "transfer-encoding",
    }
)
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


class ForwardAuthDenied(Forbidden):
    """A forward-auth question the gateway will not answer with "allowed"."""

    code = "forward_auth_denied"


@dataclass(frozen=True)
class Original:
    """The request the proxy is asking about."""

    method: str
    target: str
    host: str


def original_request(
    headers: Mapping[str, str], method: str, host: str, tail: str | None
) -> Original:
    """Read the original request from the headers the known proxies send."""
    target = headers.get("X-Original-URI") or headers.get("X-Forwarded-Uri")
    if not target and headers.get("X-Original-URL"):
        parts = urlsplit(headers["X-Original-URL"])
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    if not target and tail is not None:
        target = tail
    if not target:
        raise ForwardAuthDenied("forward-auth request without the original target")
    original_method = (
        headers.get("X-Original-Method") or headers.get("X-Forwarded-Method") or method
    ).upper()
    return Original(original_method, target, headers.get("X-Forwarded-Host") or host)


Current = Callable[[], tuple[GatewayConfig, Router]]
"""The configuration and router in force (a reload replaces both)."""


def forward_auth_routes(prefix: str, current: Current) -> list[Route]:
    """The endpoint, for every method (a subrequest may keep the original one)."""
    handler = _handler(current)
    return [("*", prefix + "auth", handler), ("*", prefix + "auth/{tail:.*}", handler)]


def _handler(current: Current) -> Handler:
    async def forward_auth(request: web.Request) -> web.StreamResponse:
        config, router = current()
        request_id = request[REQUEST_ID]
        if not is_trusted_peer(request.remote, config.server.trusted_proxies):
            audit(
                "forward_auth_refused",
                reason="untrusted_peer",
                request_id=request_id,
                client=request.remote,
            )
            raise ForwardAuthDenied("forward-auth request from a peer that is not trusted")
        tail = request.match_info.get("tail")
        original = original_request(
            request.headers, request.method, request.host, "/" + tail if tail else None
        )
        try:
            target = parse_target(original.target)
        except BadTarget as exc:
            audit("request_refused", reason=str(exc), request_id=request_id, forward_auth=True)
            raise ForwardAuthDenied(f"refused target: {exc}") from None
        if target.path.startswith(config.server.reserved_prefix):
            raise ForwardAuthDenied("the gateway's own paths are not for forward-auth")
        match = router.resolve(original.host, target.path, original.method)
        if isinstance(match, NoMatch):
            raise ForwardAuthDenied(f"no route for {target.path}")
        route = match.route.settings
        request[ROUTE_NAME] = route.name
        settings = config.forward_auth
        if route.policy == "public":
            return web.Response(status=200, headers=_allowed(route.name, settings.cache_seconds))
        for scope in route.employer_scope:
            if scope.location == "form" and original.method not in _BODYLESS:
                raise ForwardAuthDenied(f"route {route.name}: a form employer scope needs the body")
            if scope.location == "header" and scope.name.lower() in _ORIGINAL:
                # That header describes the original request to us; it is not the original's.
                raise ForwardAuthDenied(f"route {route.name}: employer scope header {scope.name}")
        services = request.app[SERVICES]
        # The same facts and the same decision as proxy mode, read from the
        # original request this one describes (its cookies and headers are the
        # original's, apart from the ones that describe it, which no employer
        # scope may name: see ``GatewayConfig``).
        facts = request_facts(route, original.method, target, match.params, request.headers)
        session_id = read_session_cookie(request, services.config.sessions)
        try:
            decision = await authorize(services, route, facts, session_id, request_id)
        except NotAuthenticated as err:
            return _login_needed(request, err.login_url or "", request_id)
        if isinstance(decision, Redirect):
            if settings.browser_status == 303:
                return see_other(decision.location)
            return _login_needed(request, decision.location, request_id)
        seconds = cacheable_for(
            settings.cache_seconds,
            now=services.sessions.now(),
            mandates_due=services.sessions.mandates_due(decision.session),
            token_expires=decision.token_expires,
        )
        return web.Response(
            status=200, headers={**_allowed(route.name, seconds), **decision.headers}
        )

    return forward_auth


def _allowed(route: str, seconds: int) -> dict[str, str]:
    """The headers of an allowing answer that the proxy may reuse for ``seconds``."""
    return {
        # nginx 1.22 honours X-Accel-Expires only when it comes before Cache-Control:
        # a "private" seen first makes the answer uncacheable whatever follows.
        "X-Accel-Expires": str(seconds),
        "X-Gateway-Route": route,
        "Cache-Control": f"private, max-age={seconds}" if seconds else "no-store",
    }


def cacheable_for(
    limit: int, *, now: dt.datetime, mandates_due: dt.datetime, token_expires: int
) -> int:
    """How long a proxy may reuse an allowing answer: whole seconds, at most ``limit``.

    Never past the moment the session's mandates must be asked again (so a
    revocation stops a session through the proxy's cache within the re-check
    interval, as in proxy mode), nor past the token's ``exp`` (the cached
    identity header must still verify when the proxy sends it). 0: do not cache.
    """
    now_s = now.timestamp()
    left = min(float(limit), mandates_due.timestamp() - now_s, token_expires - now_s - 1)
    return max(0, math.floor(left))


def _login_needed(request: web.Request, location: str, request_id: str) -> web.Response:
    """401 with where to go: the page for clients that show it, headers for proxies."""
    err = NotAuthenticated("no session", action=login_action(location), login_url=location)
    resp = error_response(request, err, request_id)
    resp.headers["Location"] = location
    resp.headers["X-Auth-Redirect"] = location
    resp.headers["Cache-Control"] = "no-store"
    return resp
