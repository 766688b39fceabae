"""Configuration: one YAML file plus environment overrides, validated all at once.

The file is validated with pydantic models that forbid unknown keys, so a typo
is an error rather than a silently ignored setting. Every problem is reported
together, each with the file, the path inside it (``routes[2].upstream``), the
line where YAML can tell, and what is wrong.

Environment overrides
---------------------
Any value can be overridden by an environment variable named ``GATEWAY__``
followed by the path, with ``__`` between the parts, case-insensitive::

    GATEWAY__SERVER__PORT=9000
    GATEWAY__LOGGING__FORMAT=console
    GATEWAY__ROUTES__0__UPSTREAM=http://portal:8080      # by position
    GATEWAY__ROUTES__PORTAL__UPSTREAM=http://portal:8080 # or by route name

The value is read as a YAML scalar or flow collection (``true``, ``5``,
``[GET, POST]``). Secrets never sit in the YAML: settings that hold one take a
file path (``*_file``) or the name of an environment variable (``*_env``).

Types are strict: a value must have the YAML type of its key (no quoted
numbers), durations are seconds or ISO 8601 (``gateway.durations``), header
names and values follow RFC 9110 (``gateway.http_fields``). The JSON Schema
(``config_json_schema``) says the same, so an editor refuses what the loader
refuses. ``check_config`` is what ``check-config`` and ``serve`` run: the
file, then every file it names (``gateway.config_files``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from gateway.config_files import as_config_problems, check_files
from gateway.config_source import (
    apply_env_overrides,
    env_key,
    format_loc,
    line_of,
    problem_message,
)
from gateway.errors import ConfigInvalid, ConfigProblem
from gateway.http_fields import (
    HeaderName,
    HeaderSet,
    IdentityHeaderName,
    header_name_problem,
)
from gateway.identity import Loa
from gateway.mandates.settings import MandateSettings
from gateway.metrics import MetricsSettings
from gateway.route_patterns import PatternError, compile_pattern
from gateway.saml.settings import SamlSettings
from gateway.sessions.settings import SessionSettings
from gateway.store.factory import StoreSettings
from gateway.tokens.settings import TokenSettings

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

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# The JSON Schema states the single-key rules the validators below enforce.
_METHOD = (
    "^(?:" + "|".join("".join(f"[{c}{c.lower()}]" for c in m) for m in sorted(HTTP_METHODS)) + ")$"
)
_RESERVED_PREFIX = r"^/[A-Za-z0-9._~-]+/$"


class Model(BaseModel):
    """Base for every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    min_loa: Loa | None = Field(
        None, description="Minimum level for this route (e.g. loa4); lower logins step up."
    )
    required_scope: str | None = Field(
        None,
        description="A mandate scope the employer in the request (or the active one) must carry.",
    )

    @field_validator("min_loa", mode="before")
    @classmethod
    def _parse_loa(cls, v: object) -> object:
        return Loa.parse(v) if isinstance(v, str) else v

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


class GatewayConfig(Model):
    """The whole configuration file."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    saml: SamlSettings | None = Field(None, description="eHerkenning login (docs/login.md).")
    mandates: MandateSettings | None = Field(
        None, description="The fund's mandate registry (docs/mandates.md)."
    )
    tokens: TokenSettings | None = Field(
        None, description="The signed identity token for backends (docs/backends.md)."
    )
    admin: AdminSettings | None = None
    forward_auth: ForwardAuthSettings = Field(default_factory=ForwardAuthSettings)
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings,
        description="Where /_gateway/metrics is served and who may read it.",
    )
    routes: Annotated[list[RouteSettings], Field(min_length=1)]

    @property
    def login_enabled(self) -> bool:
        return self.saml is not None and self.mandates is not None and self.tokens is not None

    def identity_headers(self) -> frozenset[str]:
        """Every header name that carries our token: clients may never send these.

        With any bearer route, ``Authorization`` is one of them on every route: a
        backend that trusts bearer tokens may also be reached through another route.
        """
        names = {r.identity_header for r in self.routes if r.identity_header}
        if self.tokens is not None:
            names.add(self.tokens.header_name)
        if any(r.token_transport == "bearer" for r in self.routes):  # noqa: S105 - a transport name
            names.add("Authorization")
        return frozenset(n.lower() for n in names)


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, override from ``environ`` and validate; raise ``ConfigInvalid`` with every problem."""
    environ = os.environ if environ is None else environ
    return parse_config(_read_config(path), file=str(path), environ=environ)


def _read_config(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problem = ConfigProblem(str(path), "", f"cannot read file: {reason}")
        raise ConfigInvalid([problem]) from exc


@dataclass(frozen=True)
class CheckedConfig:
    """A configuration that passed ``check_config``, with what it warns about."""

    config: GatewayConfig
    warnings: tuple[ConfigProblem, ...]
    files_checked: bool


def check_config(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    files: bool = True,
    now: dt.datetime | None = None,
) -> CheckedConfig:
    """What ``check-config`` and ``serve`` run: ``load_config``, then every file it names.

    With ``files`` the keys, certificates, secrets, mandate and metadata files
    are opened and parsed (``gateway.config_files``); a problem there raises
    ``ConfigInvalid`` like any other, certificates close to expiry come back
    as warnings.
    """
    environ = os.environ if environ is None else environ
    text = _read_config(path)
    file = str(path)
    config = parse_config(text, file=file, environ=environ)
    if not files:
        return CheckedConfig(config, (), files_checked=False)
    report = check_files(config, now=now)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    problems = as_config_problems(report.problems, file, node)
    if problems:
        raise ConfigInvalid(problems)
    warnings = tuple(as_config_problems(report.warnings, file, node))
    return CheckedConfig(config, warnings, files_checked=True)


def parse_config(text: str, *, file: str, environ: Mapping[str, str]) -> GatewayConfig:
    """Validate YAML ``text`` (named ``file`` in messages) with overrides from ``environ``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigInvalid([ConfigProblem(file, "", f"not valid YAML: {where}{problem}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigInvalid([ConfigProblem(file, "", "the file must hold a mapping of sections")])

    problems: list[ConfigProblem] = []
    env_sources = apply_env_overrides(data, environ, file, problems)

    def report(err: Any) -> None:
        loc = tuple(err["loc"])
        where = format_loc(loc)
        src = env_sources.get(env_key(loc))
        line = line_of(node, loc)
        suffix = f" (from environment variable {src})" if src else ""
        prefix = f"line {line}: " if line and not src else ""
        problems.append(ConfigProblem(file, where, f"{prefix}{problem_message(err)}{suffix}"))

    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            report(err)
    else:
        for err in _json_type_errors(data):
            report(err)
    problems.extend(_semantic_problems(config, data, file, node))
    if problems:
        raise ConfigInvalid(problems)
    assert config is not None
    return config


def _json_type_errors(data: dict[str, Any]) -> list[Any]:
    """Values whose YAML type is not the one the key takes, though pydantic could convert them.

    pydantic's lax mode reads ``port: "8080"`` as 8080 and ``access_log: "no"``
    as false; the JSON Schema (``gateway config-schema``) does not, and a quoted
    number is more often a mistake than a wish. So the data is validated once
    more in pydantic's strict JSON mode, where only JSON's own types count.
    Two conversions stay allowed because the schema allows them too: an
    integral float for an integer (``5.0``) and a number of seconds for a
    duration (``gateway.durations``).
    """
    try:
        GatewayConfig.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        return [
            err
            for err in exc.errors()
            if not (
                err["type"] == "int_type"
                and isinstance(err["input"], float)
                and err["input"].is_integer()
            )
        ]
    return []


def _valid_routes(
    config: GatewayConfig | None, data: dict[str, Any]
) -> tuple[str, list[tuple[int, RouteSettings]]]:
    """The reserved prefix and every route that is valid on its own, even if others are not.

    This lets cross-field checks run (and report) alongside field errors, so one
    run of ``check-config`` lists everything.
    """
    if config is not None:
        return config.server.reserved_prefix, list(enumerate(config.routes))
    try:
        reserved = ServerSettings.model_validate(data.get("server") or {}).reserved_prefix
    except ValidationError:
        reserved = ServerSettings().reserved_prefix
    routes: list[tuple[int, RouteSettings]] = []
    raw = data.get("routes")
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        try:
            routes.append((i, RouteSettings.model_validate(item)))
        except ValidationError:
            continue
    return reserved, routes


def _semantic_problems(
    config: GatewayConfig | None, data: dict[str, Any], file: str, node: yaml.Node | None
) -> list[ConfigProblem]:
    """Checks that span fields: unique names, reserved paths, valid patterns."""

    problems: list[ConfigProblem] = []
    reserved, routes = _valid_routes(config, data)
    if config is not None:
        problems.extend(_section_problems(config, file, node))

    def add(loc: tuple[Any, ...], message: str) -> None:
        line = line_of(node, loc)
        problems.append(
            ConfigProblem(file, format_loc(loc), (f"line {line}: " if line else "") + message)
        )

    seen: dict[str, int] = {}
    for i, route in routes:
        if route.name in seen:
            add(("routes", i, "name"), f"duplicate route name (also routes[{seen[route.name]}])")
        seen.setdefault(route.name, i)
        path = route.match.path
        if path.rstrip("/") + "/" == reserved or path.startswith(reserved):
            add(
                ("routes", i, "match", "path"),
                f"{reserved} is reserved for the gateway itself and is never proxied",
            )
        names: set[str] = set()
        if route.match.type == "pattern":
            try:
                names = set(compile_pattern(path).groupindex)
            except PatternError as exc:
                add(("routes", i, "match", "path"), str(exc))
        for j, scope in enumerate(route.employer_scope):
            if scope.location == "path" and scope.name not in names:
                add(
                    ("routes", i, "employer_scope", j, "name"),
                    f"the route's path pattern has no parameter {{{scope.name}}}",
                )
        if route.policy == "public" and (
            route.employer_scope or route.min_loa or route.required_scope
        ):
            add(
                ("routes", i, "policy"),
                "employer_scope, min_loa and required_scope need an authenticated route",
            )
        strip = route.strip_prefix
        if (
            strip
            and route.match.type != "pattern"
            and not (path == strip or path.startswith(strip + "/"))
        ):
            add(
                ("routes", i, "strip_prefix"),
                f"{strip!r} is not a prefix of the route's path {path!r}",
            )
    return problems


def _section_problems(
    config: GatewayConfig, file: str, node: yaml.Node | None
) -> list[ConfigProblem]:
    """Checks between sections: login needs its three parts, replicas need shared state."""
    out: list[ConfigProblem] = []

    def add(loc: tuple[Any, ...], message: str) -> None:
        line = line_of(node, loc)
        out.append(
            ConfigProblem(file, format_loc(loc), (f"line {line}: " if line else "") + message)
        )

    identity = config.identity_headers()
    for i, route in enumerate(config.routes):
        bearer = route.token_transport == "bearer"  # noqa: S105 (a transport, not a secret)
        carries = identity | ({"authorization"} if bearer else set())
        edits = [*route.request_headers.set, *route.request_headers.remove]
        clash = sorted({name for name in edits if name.lower() in carries})
        if clash:
            add(
                ("routes", i, "request_headers"),
                f"must not set or remove {', '.join(clash)}: the gateway puts the identity "
                "token there itself",
            )

    needs_login = [i for i, r in enumerate(config.routes) if r.policy == "authenticated"]
    if needs_login:
        for section in ("saml", "mandates", "tokens"):
            if getattr(config, section) is None:
                add(
                    (section,),
                    f"required: routes[{needs_login[0]}] is authenticated, and logging in "
                    f"needs the {section} section",
                )
    memory = config.store.url.startswith("memory:")
    if memory and config.server.workers > 1 and needs_login:
        add(
            ("store", "url"),
            "the memory store is per process; with several workers use Redis "
            "(sessions would not be shared)",
        )
    if not memory and config.sessions.ref_secret_file is None:
        add(
            ("sessions", "ref_secret_file"),
            "required with a shared store: every replica must derive the same session "
            "references (token sid)",
        )
    if config.tokens is not None:
        prefix = config.server.reserved_prefix
        if not config.tokens.employers_path.startswith(prefix):
            add(
                ("tokens", "employers_path"),
                f"must be under the reserved prefix {prefix}",
            )
    return out


class _LoaderSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, corrected where the loader accepts more than pydantic says.

    - Levels of assurance: the loader takes the URN, the short name (``loa3``)
      and the EH name (``EH3``, ``EH2+``), not only the URN.
    - Lists read into sets may repeat an entry (the set keeps one), so no
      ``uniqueItems``.
    - URLs restricted to http(s) say so in a ``pattern``, not only in ``format``
      (which most validators do not check).
    Durations and header fields carry their own schema (``gateway.durations``,
    ``gateway.http_fields``).
    """

    def enum_schema(self, schema: core_schema.EnumSchema) -> JsonSchemaValue:
        if schema["cls"] is Loa:
            spellings = [s for loa in Loa for s in loa_spellings(loa)]
            return {"title": "Loa", "type": "string", "enum": spellings}
        return super().enum_schema(schema)

    def set_schema(self, schema: core_schema.SetSchema) -> JsonSchemaValue:
        out = super().set_schema(schema)
        out.pop("uniqueItems", None)
        return out

    def frozenset_schema(self, schema: core_schema.FrozenSetSchema) -> JsonSchemaValue:
        out = super().frozenset_schema(schema)
        out.pop("uniqueItems", None)
        return out

    def url_schema(self, schema: core_schema.UrlSchema) -> JsonSchemaValue:
        out = super().url_schema(schema)
        schemes = schema.get("allowed_schemes")
        if schemes:
            alternatives = "|".join(
                "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in s)
                for s in sorted(schemes)
            )
            out["pattern"] = f"^(?:{alternatives})://"
        return out


def loa_spellings(loa: Loa) -> list[str]:
    """Every way the configuration may write ``loa`` (what ``Loa.parse`` accepts)."""
    return list(dict.fromkeys([loa.value, loa.short, loa.name, loa.name.replace("PLUS", "+")]))


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file, for editors and CI checks.

    Everything the loader accepts passes it. Rules between keys (unique route
    names, the sections login needs, ...) and the contents of the files a
    configuration names are checked by ``gateway check-config`` only.
    """
    schema = GatewayConfig.model_json_schema(schema_generator=_LoaderSchema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "eHerkenning gateway configuration"
    return schema
