"""Which HTTP header names and values a configuration may use (RFC 9110).

One rule for every header the configuration names (the identity header, the
request-id header, the deny-list, a route's header edits, an employer-scope
header): the name is an RFC 9110 ``token`` and not a header the gateway
manages itself, and a value holds no control characters, so a configured
value can never end a header line and start another. The same rule is the
``pattern`` of these fields in ``gateway config-schema``, so an editor that
checks the schema refuses what the loader refuses.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

# RFC 9110 §5.1: field-name = token; §5.6.2: tchar.
TCHARS = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(f"[{TCHARS}]+")

# Connection-specific (RFC 9110 §7.6.1) and the other headers the proxy strips in
# both directions (gateway/proxy.py): configuring them either does nothing or
# breaks the connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Message framing (RFC 9112 §6): set or removed by hand, it desynchronises the
# two ends of a keep-alive connection (request smuggling).
FRAMING = frozenset({"content-length", "transfer-encoding"})
# Host decides routing here and the virtual host upstream; ``preserve_host`` is
# the one switch for it.
HOST = frozenset({"host"})
MANAGED = HOP_BY_HOP | FRAMING | HOST
# The identity token never travels in a cookie header.
COOKIES = frozenset({"cookie", "set-cookie"})

# RFC 9110 §5.5: field-value characters are VCHAR, obs-text, SP and HTAB; any
# other control character (CR and LF above all) is refused.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _case_insensitive(name: str) -> str:
    """``host`` as ``[Hh][Oo][Ss][Tt]``: ECMA-262 patterns (editors) have no (?i) flag."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in name)


def _name_pattern(forbidden: frozenset[str]) -> str:
    names = "|".join(_case_insensitive(n) for n in sorted(forbidden))
    return f"^(?!(?:{names})$)[{TCHARS}]+$"


def header_name_problem(name: str, *, forbidden: frozenset[str] = MANAGED) -> str | None:
    """Why ``name`` cannot be configured as a header name, or ``None``."""
    if not _TOKEN.fullmatch(name):
        return (
            f"{name!r} is not an HTTP header name (an RFC 9110 token: letters, digits "
            "and !#$%&'*+-.^_`|~, no spaces)"
        )
    low = name.lower()
    if low in FRAMING:
        return f"{name} is a message framing header; the gateway sets it itself"
    if low in HOP_BY_HOP:
        return f"{name} is a hop-by-hop header; the gateway never forwards it"
    if low in HOST:
        return "Host is set by the gateway (use preserve_host to send the client's Host)"
    if low in forbidden:
        return f"{name} cannot carry this setting"
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header value, or ``None``."""
    bad = _BAD_VALUE.search(value)
    if bad is None:
        return None
    char = bad.group()
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL"}
    return (
        f"the value contains a control character ({names.get(char, f'0x{ord(char):02x}')}); "
        "CR, LF and NUL would end the header line and start another"
    )


def _check_name(value: str) -> str:
    problem = header_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# The token's size budget reserves 128 bytes of the header line for the name
# (gateway.tokens.settings.TokenSettings.token_budget).
IDENTITY_NAME_MAX = 100


def _check_identity_name(value: str) -> str:
    problem = header_name_problem(value, forbidden=MANAGED | COOKIES)
    if problem is None and len(value) > IDENTITY_NAME_MAX:
        problem = f"at most {IDENTITY_NAME_MAX} characters (the token's size budget)"
    if problem:
        raise ValueError(problem)
    return value


def _check_value(value: str) -> str:
    problem = header_value_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_set(values: dict[str, str]) -> dict[str, str]:
    problems = []
    for name, value in values.items():
        name_problem = header_name_problem(name)
        value_problem = header_value_problem(value)
        if name_problem:
            problems.append(name_problem)
        elif value_problem:
            problems.append(f"{name}: {value_problem}")
    if problems:
        raise ValueError("; ".join(problems))
    return values


_VALUE_PATTERN = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f]*$"
_NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": _name_pattern(MANAGED)}

HeaderName = Annotated[str, AfterValidator(_check_name), WithJsonSchema(_NAME_SCHEMA)]
"""A header name the configuration may use (token; not hop-by-hop, framing or Host)."""

IdentityHeaderName = Annotated[
    str,
    AfterValidator(_check_identity_name),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": IDENTITY_NAME_MAX,
            "pattern": _name_pattern(MANAGED | COOKIES),
        }
    ),
]
"""A header that may carry the identity token: a ``HeaderName`` and not a cookie header."""

HeaderValue = Annotated[
    str,
    AfterValidator(_check_value),
    WithJsonSchema({"type": "string", "pattern": _VALUE_PATTERN}),
]
"""A header value without control characters (HTAB allowed)."""

HeaderSet = Annotated[
    dict[str, str],
    AfterValidator(_check_set),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": _NAME_SCHEMA,
            "additionalProperties": {"type": "string", "pattern": _VALUE_PATTERN},
        }
    ),
]
"""Header name → value, every name a ``HeaderName`` and every value a ``HeaderValue``."""
