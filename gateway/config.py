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
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError
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
from gateway.identity import Loa
from gateway.mandates.settings import MandateSettings
from gateway.metrics import MetricsSettings
from gateway.route_patterns import PatternError, compile_pattern
from gateway.route_settings import (
    HTTP_METHODS,
    EmployerScope,
    HeaderOps,
    MatchRule,
    RouteSettings,
    Timeouts,
)
from gateway.saml.settings import SamlSettings
from gateway.server_settings import (
    DEFAULT_DENY_HEADERS,
    AdminSettings,
    ForwardAuthSettings,
    LoggingSettings,
    ServerSettings,
)
from gateway.sessions.settings import SessionSettings
from gateway.settings_base import Model
from gateway.store.factory import StoreSettings
from gateway.tokens.settings import TokenSettings

__all__ = [
    "DEFAULT_DENY_HEADERS",
    "HTTP_METHODS",
    "AdminSettings",
    "CheckedConfig",
    "EmployerScope",
    "ForwardAuthSettings",
    "GatewayConfig",
    "HeaderOps",
    "LoggingSettings",
    "MatchRule",
    "Model",
    "RouteSettings",
    "ServerSettings",
    "Timeouts",
    "check_config",
    "config_json_schema",
    "loa_spellings",
    "load_config",
    "parse_config",
]


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
