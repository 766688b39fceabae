"""Endpoints for machines: the JWKS, the full employer set, the revocation push.

- ``/.well-known/jwks.json`` (and ``<prefix>jwks.json``): the public keys
  backends verify the identity token with (docs/backends.md).
- ``<prefix>api/employers``: the full allowed set for a token that carries the
  compact large-set substitute; authenticated by that same token.
- ``<prefix>admin/mandates/invalidate``: the registry pushes a revocation;
  authenticated by a shared admin secret (docs/mandates.md).
"""

from __future__ import annotations

import datetime as dt
import hmac

import pydantic
from aiohttp import web

from gateway.audit import audit
from gateway.context import REQUEST_ID, Route
from gateway.errors import BadRequest, Forbidden, NotAuthenticated
from gateway.gate import token_subject
from gateway.mandates import InvalidateRequest
from gateway.services import SERVICES
from gateway.tokens import jwks_headers


async def jwks(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    assert services.config.tokens is not None
    return web.Response(
        body=services.keys.jwks_bytes(),
        headers=jwks_headers(services.config.tokens.jwks_max_age_seconds),
    )


async def employers_api(request: web.Request) -> web.StreamResponse:
    """The full employer set of the session a backend's token names."""
    services = request.app[SERVICES]
    token = services.minter.token_from_headers(request.headers)
    if token is None:
        raise NotAuthenticated("employers endpoint without a token")
    claims = services.minter.verify_own(token)
    view = await services.sessions.view_by_ref(str(claims.get("sid", "")))
    subject = token_subject(view) if view is not None else None
    status, body = services.minter.employers_json(claims, subject)
    return web.Response(
        status=status,
        body=body,
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
    )


async def invalidate_mandates(request: web.Request) -> web.StreamResponse:
    """Revocation push from the registry: re-check this administrator everywhere, now."""
    services = request.app[SERVICES]
    if services.admin_token is None:
        raise Forbidden("admin endpoint not configured")
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
    if not given or not hmac.compare_digest(given, services.admin_token):
        audit("admin_access_denied", request_id=request[REQUEST_ID], endpoint="invalidate")
        raise NotAuthenticated("admin endpoint without a valid credential")
    raw = await request.read()
    try:
        body = InvalidateRequest.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise BadRequest(f"invalid invalidation body: {exc.error_count()} problem(s)") from exc
    await services.mandates.invalidate(
        body.administrator_kvk,
        employer_kvk=body.employer_kvk,
        audit_context={"request_id": request[REQUEST_ID]},
    )
    # This replica applies the push before answering: the store's pub/sub
    # message (which reaches the other replicas) may arrive after the pusher's
    # next request, and that request must already see the revocation.
    services.invalidated[body.administrator_kvk] = dt.datetime.now(dt.UTC)
    return web.json_response(
        {"status": "accepted", "administrator_kvk": body.administrator_kvk}, status=202
    )


def backend_routes(prefix: str, employers_path: str) -> list[Route]:
    """(method, path, handler) for machines; app.py registers them behind the edge."""
    return [
        ("GET", "/.well-known/jwks.json", jwks),
        ("GET", prefix + "jwks.json", jwks),
        ("GET", employers_path, employers_api),
        ("POST", prefix + "admin/mandates/invalidate", invalidate_mandates),
    ]
