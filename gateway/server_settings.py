"""The configuration's server-wide sections: listening, logging, admin, forward-auth.

``server`` is how the gateway listens and what it serves itself (with the
headers it never forwards from a client), ``logging`` its log lines, ``admin``
the credential of its admin endpoints and ``forward_auth`` the auth-subrequest
endpoint for a proxy in front (docs/forward-auth.md). ``gateway.config`` puts
them together with the other sections.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, field_validator

from gateway.http_fields import HeaderName
from gateway.settings_base import Model

# Hop-by-hop and identity headers are always removed; this list adds the
# headers a legacy portal behind us might be tempted to trust.
DEFAULT_DENY_HEADERS = (
    "X-Gateway-Identity",
    "X-Remote-User",
    "X-Forwarded-User",
    "X-Authenticated-User",
    "Remote-User",
    "X-User",
    "X-Employer",
    "X-Kvk",
)

_RESERVED_PREFIX = r"^/[A-Za-z0-9._~-]+/$"


class ServerSettings(Model):
    """How the gateway listens and what it serves itself."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 picks a free one).")
    public_url: AnyHttpUrl | None = Field(
        None,
        description="The URL users type (e.g. https://portaal.fonds.nl). Used to rewrite "
        "upstream redirects, and later as the token issuer. Default: taken from each request.",
    )
    reserved_prefix: str = Field(
        "/_gateway/",
        description="Everything the gateway serves itself lives here.",
        json_schema_extra={"pattern": _RESERVED_PREFIX},
    )
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list,
        description="Networks whose X-Forwarded-*/Forwarded headers are believed "
        "(your load balancer). Everyone else's are replaced.",
    )
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    shutdown_grace_seconds: float = Field(
        25.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    drain_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, how long to keep accepting while readiness reports 503, "
        "so a load balancer can stop sending traffic first.",
    )
    uvloop: bool = Field(True, description="Use uvloop when it is installed.")
    config_poll_seconds: float = Field(
        2.0, ge=0, description="How often to check the config file for changes (0: only SIGHUP)."
    )
    deny_headers: list[HeaderName] = Field(
        default_factory=lambda: list(DEFAULT_DENY_HEADERS),
        description="Client-sent headers never forwarded upstream (in any spelling: case, "
        "and _ for -). Identity headers of every route are always added to this list.",
    )
    underscores_in_headers: bool = Field(
        False,
        description="Forward client headers whose names contain an underscore (like nginx's "
        "underscores_in_headers). Off: they are dropped, since CGI/WSGI-style stacks read "
        "X_Remote_User and X-Remote-User as one variable. Even when on, a name that equals a "
        "denied or gateway-set header once _ is read as - is dropped.",
    )
    request_id_header: HeaderName = Field(
        "X-Request-ID",
        description="Request id header: a valid incoming value is kept, else one is made; "
        "sent upstream, returned and logged.",
    )
    upstream_pool_size: int = Field(
        200,
        ge=1,
        description="Maximum open connections to all upstreams together (websockets included).",
    )
    upstream_idle_seconds: float = Field(
        15.0,
        gt=0,
        description="Close a pooled upstream connection after this long unused. Keep it below "
        "the upstream's own keep-alive timeout.",
    )
    gateway_cookie_prefixes: list[str] = Field(
        default_factory=lambda: ["__Host-gw_", "gw_"],
        description="Cookies whose name starts with one of these belong to the gateway and "
        "are never forwarded upstream.",
    )
    # Client connections (docs/operations.md, "Client connections: deadlines and caps").
    client_keepalive_seconds: float = Field(
        75.0,
        gt=0,
        description="Close a client's keep-alive connection after this long without a new "
        "request (nginx keepalive_timeout: 75 s). Keep it above your load balancer's idle "
        "timeout.",
    )
    client_header_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="The whole request head (request line and headers) must arrive within "
        "this time: from the connection's start for its first request, from the first byte "
        "for later ones. Otherwise the connection is closed (nginx client_header_timeout: 60 s).",
    )
    client_body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest pause between two reads of a request body; past it the client "
        "gets a 408 page and the connection is closed (nginx client_body_timeout: 60 s).",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Client connections one worker keeps open; more get a 503 page and are "
        "closed. Default (null): what the descriptor limit leaves after a reserve for "
        "upstream connections, at most 4096.",
    )
    max_connections_per_client: int = Field(
        256,
        ge=1,
        description="Client connections one worker keeps open per client address (IPv6: per "
        "/64); more get a 503 page and are closed. Peers in trusted_proxies count only toward "
        "max_connections.",
    )

    @field_validator("reserved_prefix")
    @classmethod
    def _prefix_shape(cls, v: str) -> str:
        if not re.fullmatch(_RESERVED_PREFIX, v):
            raise ValueError("must look like /_gateway/ (one path segment, slashes both sides)")
        return v


class LoggingSettings(Model):
    format: Literal["json", "console"] = Field(
        "json", description="json in production; console for people."
    )
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="One structured line per request.")


class AdminSettings(Model):
    """The credential for the gateway's admin endpoints (mandate revocation push)."""

    token_file: Path = Field(
        description="File holding the shared secret the registry sends as a Bearer token."
    )


class ForwardAuthSettings(Model):
    """The auth-subrequest endpoint for a proxy that carries the bytes (docs/forward-auth.md)."""

    enabled: bool = Field(
        False,
        description="Serve {reserved_prefix}auth for nginx auth_request, ingress-nginx auth-url, "
        "Traefik forwardAuth and Envoy ext_authz. Only peers in server.trusted_proxies may ask.",
    )
    cache_seconds: int = Field(
        60,
        ge=0,
        le=60,
        description="How long the proxy may cache an allowing answer at most (X-Accel-Expires "
        "and Cache-Control max-age). Each answer's time is also cut to when the session's "
        "mandates must be asked again and to its token's expiry, so a revocation takes "
        "effect within the mandate re-check interval, as in proxy mode, and no cached answer "
        "outlives the token it carries. A session that ended (logout) passes the proxy's "
        "cache for at most this long: by default no longer than its last token stays valid "
        "(tokens.lifetime_seconds, 60 s).",
    )
    browser_status: Literal[401, 303] = Field(
        401,
        description="A browser without a session: 401 with the login URL in Location and "
        "X-Auth-Redirect (nginx: error_page 401), or 303 straight to the login (Traefik, Envoy, "
        "which pass the answer to the client).",
    )
