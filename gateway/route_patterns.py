"""Route path patterns: ``/werkgevers/{kvk}/{rest:.*}`` compiled to an anchored regex.

Pure, and apart from ``gateway.routing`` so that the configuration loader can
check patterns (a parameter named twice, a bad regex, an employer scope naming
a parameter the pattern lacks) without importing the router that takes its
settings.
"""

from __future__ import annotations

import re


class PatternError(ValueError):
    """A route pattern that cannot be compiled."""


# {name} or {name:regex}; the regex may hold one level of braces ({8}, {2,4}).
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{[^{}]*\})+))?\}")


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile ``/werkgevers/{kvk}/{rest:.*}`` to an anchored regex with named groups."""
    out = ""
    pos = 0
    names: set[str] = set()
    for m in _PARAM.finditer(pattern):
        literal = pattern[pos : m.start()]
        if "{" in literal or "}" in literal:
            raise PatternError(f"unbalanced braces in pattern {pattern!r}")
        out += re.escape(literal)
        name, regex = m.group(1), m.group(2)
        if name in names:
            raise PatternError(f"parameter {{{name}}} appears twice in {pattern!r}")
        names.add(name)
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise PatternError(f"bad regex for {{{name}}}: {exc}") from exc
        out += f"(?P<{name}>{regex if regex is not None else '[^/]+'})"
        pos = m.end()
    tail = pattern[pos:]
    if "{" in tail or "}" in tail:
        raise PatternError(f"unbalanced braces in pattern {pattern!r}")
    out += re.escape(tail)
    return re.compile(out, re.IGNORECASE if ignore_case else 0)
