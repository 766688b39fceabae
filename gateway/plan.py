"""Proxy mode's way from a request to a ``ForwardPlan``: shape, route, policy.

For every request outside the reserved prefix, in this order:

1. refuse message shapes RFC 9112 does not allow (``gateway.target.check_message``)
   and answer ``OPTIONS *`` itself;
2. parse the request target once (``gateway.target``): refused shapes are 400
   and an audit event;
3. match a route (``gateway.routing``): none is 404, the path but not the
   method 405; the gateway's own prefix is never routed upstream;
4. for an ``authenticated`` route, read a small urlencoded form when the
   employer scope needs it, build the ``RequestFacts`` and ask the policy
   (``gateway.gate`` around ``gateway.policy``): a redirect is answered here,
   a refusal raised;
5. work out the client's address, scheme and host (``gateway.client.client_view``).

The result is either a response to send as it is, or the plan the forwarder
carries out (``gateway.proxy.Forwarder.forward``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from aiohttp import web

from gateway.audit import audit
from gateway.client import client_view
from gateway.context import REQUEST_ID, ROUTE_NAME, TIMING
from gateway.errors import BadRequest, GatewayError, MethodNotAllowed, NotFound
from gateway.gate import authorize, request_facts
from gateway.pages import see_other
from gateway.policy import Pairs, Redirect
from gateway.proxy import ForwardPlan
from gateway.routing import NoMatch
from gateway.runtime import RUNTIME
from gateway.services import SERVICES
from gateway.sessions.cookies import read_session_cookie
from gateway.target import BadTarget, Target, check_message, parse_target

# What ``OPTIONS *`` (a request about the server, not a resource) is told.
_SERVER_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

# Employer-scope checks on form fields read the body first; only small
# urlencoded forms qualify, everything else still streams.
_FORM_LIMIT = 64 * 1024


async def plan(request: web.Request) -> web.StreamResponse | ForwardPlan:
    """A response to send as it is (``OPTIONS *``, a redirect to the login), or the plan."""
    generation = request.app[RUNTIME].current  # in-flight requests keep this generation
    config = generation.config
    target = _target(request)
    if isinstance(target, web.StreamResponse):
        return target
    path = target.path
    if path.startswith(config.server.reserved_prefix):
        raise NotFound(f"no gateway endpoint {path}")
    match = generation.router.resolve(request.host, path, request.method)
    if isinstance(match, NoMatch):
        raise MethodNotAllowed() if match.path_matched else NotFound(f"no route for {path}")
    route = match.route.settings
    request[ROUTE_NAME] = route.name
    identity: dict[str, str] = {}
    body: bytes | None = None
    if route.policy == "authenticated":
        form: Pairs | None = None
        if any(s.location == "form" for s in route.employer_scope):
            body = await _small_form(request, route.max_body_bytes)
            if body is not None:
                form = tuple(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        services = request.app[SERVICES]
        facts = request_facts(route, request.method, target, match.params, request.headers, form)
        session_id = read_session_cookie(request, services.config.sessions)
        decision = await authorize(services, route, facts, session_id, request[REQUEST_ID])
        if isinstance(decision, Redirect):
            return see_other(decision.location)
        identity = decision.headers
    client = client_view(request, config.server.trusted_proxies, generation.public_url)
    return ForwardPlan(
        target=target,
        route=route,
        client=client,
        request_id=request[REQUEST_ID],
        identity_headers=identity,
        timing=request[TIMING],
        deny=generation.deny_headers,
        body=body,
    )


def _target(request: web.Request) -> Target | web.StreamResponse:
    """The parsed target, or the answer to ``OPTIONS *``; refused shapes raise (audited)."""
    try:
        check_message(request)
        raw = request.raw_path
        if raw == "*" and request.method == "OPTIONS":
            return web.Response(
                status=200, headers={"Allow": _SERVER_METHODS, "Content-Length": "0"}
            )
        try:
            return parse_target(raw)
        except BadTarget as exc:
            raise BadRequest(str(exc)) from None
    except GatewayError as err:
        # A refused shape is what probing looks like: each one is on the audit
        # trail with its reason (never the target itself: it may carry secrets).
        audit(
            "request_refused",
            reason=err.detail,
            status=err.status,
            method=request.method[:16],
            request_id=request[REQUEST_ID],
            client=request.remote,
        )
        raise


async def _small_form(request: web.Request, route_limit: int) -> bytes | None:
    """The body of a small urlencoded form, read whole; ``None`` for any other body."""
    if request.content_type != "application/x-www-form-urlencoded" or not request.body_exists:
        return None
    length = request.content_length
    if length is None or length > min(_FORM_LIMIT, route_limit):
        raise BadRequest("form too large for an employer-scope check")
    return await request.read()
