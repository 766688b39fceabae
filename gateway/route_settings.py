"""One route of the configuration: what it matches, where it goes, who may pass.

A route matches requests (``MatchRule``: path prefix, exact path or pattern,
host, methods), forwards them to an upstream with its own timeouts, header
changes and body limit, and for ``authenticated`` routes says where employer
identifiers appear (``EmployerScope``), which level and mandate scope the
route needs, and how the identity token travels. ``gateway.config`` checks
the route list as a whole (unique names, path parameters the scope names).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, Field, field_validator, model_validator

from gateway.http_fields import HeaderName, HeaderSet, IdentityHeaderName, header_name_problem
from gateway.settings_base import LoaSetting, Model

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# The JSON Schema states the single-key rules the validators below enforce.
_METHOD = (
    "^(?:" + "|".join("".join(f"[{c}{c.lower()}]" for c in m) for m in sorted(HTTP_METHODS)) + ")$"
)


class MatchRule(Model):
    """Which requests a route takes."""

    path: str = Field(
        description="Path prefix, exact path, or pattern (see `type`).",
        json_schema_extra={"pattern": "^/"},
    )
    type: Literal["prefix", "exact", "pattern"] = Field(
        "prefix",
        description="prefix: segment-wise prefix (/api takes /api and /api/x, not /apix); "
        "exact: this path only; pattern: full match with {name} for one segment "
        "or {name:regex}.",
    )
    host: str | None = Field(
        None, description="Host name to match (case-insensitive; *.example.nl allowed)."
    )
    methods: list[str] | None = Field(
        None,
        description="Allowed methods; default all.",
        json_schema_extra={"minItems": 1, "items": {"type": "string", "pattern": _METHOD}},
    )

    @field_validator("path")
    @classmethod
    def _path_shape(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v

    @field_validator("methods")
    @classmethod
    def _methods_known(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        up = [m.upper() for m in v]
        unknown = sorted(set(up) - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
        if not up:
            raise ValueError("must list at least one method, or be left out for all")
        return up


class Timeouts(Model):
    connect: float = Field(5.0, gt=0, description="Seconds to open a connection upstream.")
    read: float = Field(
        60.0, gt=0, description="Seconds the upstream may stay silent while answering."
    )


class HeaderOps(Model):
    set: HeaderSet = Field(default_factory=dict, description="Headers to set (replace).")
    remove: list[HeaderName] = Field(default_factory=list, description="Headers to remove.")


class EmployerScope(Model):
    """Where an employer identifier appears in requests on a route.

    The gateway answers 403 before the request reaches the portal when the
    identifier is not in the session's allowed set.
    """

    location: Literal["path", "query", "header", "form"] = Field(
        description="path: a named parameter of a pattern route; query: a query parameter; "
        "header: a request header; form: a field of a urlencoded form post (small bodies)."
    )
    name: str = Field(description="Parameter, header or field name.")
    identifier: Literal["kvk", "fund_number"] = Field(
        "kvk", description="Which employer identifier the value is."
    )

    @model_validator(mode="after")
    def _header_name(self) -> EmployerScope:
        if self.location == "header":
            problem = header_name_problem(self.name)
            if problem:
                raise ValueError(f"name: {problem}")
        return self


class RouteSettings(Model):
    """One entry of the ordered route list; the first route that matches wins."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Unique route name.")
    match: MatchRule
    upstream: AnyHttpUrl = Field(description="Base URL of the application behind this route.")
    policy: Literal["public", "authenticated"] = "authenticated"
    strip_prefix: str | None = Field(
        None,
        description="Path prefix removed before forwarding (e.g. /portaal).",
        json_schema_extra={"pattern": "^/.*[^/]$"},
    )
    preserve_host: bool = Field(
        False, description="Send the client's Host upstream instead of the upstream's own."
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=0, description="Largest request body accepted (413 above)."
    )
    websocket: bool = Field(False, description="Pass websocket upgrades through.")
    request_headers: HeaderOps = Field(default_factory=HeaderOps)
    response_headers: HeaderOps = Field(default_factory=HeaderOps)
    audience: str | None = Field(
        None, description="Token audience (aud) for this route; default: the route name."
    )
    identity_header: IdentityHeaderName | None = Field(
        None, description="Header that carries the token; default: tokens.header_name."
    )
    token_transport: Literal["header", "bearer"] = Field(
        "header", description="header: identity_header; bearer: Authorization: Bearer."
    )
    employer_scope: list[EmployerScope] = Field(
        default_factory=list, description="Where employer identifiers appear (403 if foreign)."
    )
    min_loa: LoaSetting | None = Field(
        None, description="Minimum level for this route (e.g. loa4); lower logins step up."
    )
    required_scope: str | None = Field(
        None,
        description="A mandate scope the employer in the request (or the active one) must carry.",
    )

    @field_validator("strip_prefix")
    @classmethod
    def _strip_shape(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or v.endswith("/")):
            raise ValueError("must start with / and not end with / (e.g. /portaal)")
        return v

    @model_validator(mode="after")
    def _upstream_plain(self) -> RouteSettings:
        if self.upstream.query or self.upstream.fragment:
            raise ValueError("upstream: must not have a query or fragment")
        return self
