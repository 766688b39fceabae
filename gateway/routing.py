"""Request → route: which configured route takes a request, and with which parameters.

Pure: takes a host, a path and a method, returns a match. Routes are tried in
file order and the **first match wins**: put specific routes before general
ones. A route whose path matches but whose methods do not is skipped (a later
route may take the method); if no route takes the request but some route's
path matched, the answer is 405, otherwise 404.

The path is the canonical (decoded, checked) path of ``gateway.target``.
**Authenticated routes match it case-insensitively, public routes only in the
exact spelling.** Many portal stacks (IIS, ASP.NET, servlet containers with
case-insensitive mappings) serve ``/Werkgevers/1/`` and ``/werkgevers/1/``
alike, so a case-variant must meet the stricter route: an employer-scoped
pattern catches every spelling, while a case-variant of a *public* path falls
through to whatever authenticated route follows instead of being let through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.config import RouteSettings
from gateway.route_patterns import compile_pattern


@dataclass(frozen=True)
class Route:
    """A compiled route: the settings plus what matching needs."""

    settings: RouteSettings
    index: int
    _regex: re.Pattern[str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def ignore_case(self) -> bool:
        """Authenticated routes take every spelling of their path (module docstring)."""
        return self.settings.policy == "authenticated"

    def match_path(self, path: str) -> dict[str, str] | None:
        rule = self.settings.match
        if rule.type == "exact":
            if self.ignore_case:
                return {} if path.lower() == rule.path.lower() else None
            return {} if path == rule.path else None
        if rule.type == "prefix":
            return {} if has_prefix(path, rule.path, ignore_case=self.ignore_case) else None
        assert self._regex is not None
        m = self._regex.fullmatch(path)
        return m.groupdict() if m else None

    def match_host(self, host: str) -> bool:
        want = self.settings.match.host
        if want is None:
            return True
        want = want.lower()
        if want.startswith("*."):
            return host.endswith(want[1:]) and len(host) > len(want) - 1
        return host == want

    def allows(self, method: str) -> bool:
        methods = self.settings.match.methods
        return methods is None or method in methods or (method == "HEAD" and "GET" in methods)


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    params: dict[str, str]


@dataclass(frozen=True)
class NoMatch:
    """No route takes the request; ``path_matched`` means the method was the problem."""

    path_matched: bool


class Router:
    """The ordered routes of one configuration generation."""

    def __init__(self, routes: Sequence[RouteSettings]):
        self.routes = tuple(
            Route(
                r,
                i,
                compile_pattern(r.match.path, ignore_case=r.policy == "authenticated")
                if r.match.type == "pattern"
                else None,
            )
            for i, r in enumerate(routes)
        )
        # Answers for (host, path, method) seen lately: routing depends on nothing
        # else, and a page is asked for again and again. Bounded like
        # ``gateway.target``'s memo; callers treat the answer (and its params)
        # as read-only.
        self._memo: dict[tuple[str, str, str], RouteMatch | NoMatch] = {}

    def resolve(self, host: str, path: str, method: str) -> RouteMatch | NoMatch:
        key = (host, path, method)
        known = self._memo.get(key)
        if known is not None:
            return known
        answer = self._resolve(host, path, method)
        if len(path) <= 512 and len(host) <= 256:
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[key] = answer
        return answer

    def _resolve(self, host: str, path: str, method: str) -> RouteMatch | NoMatch:
        host = _bare_host(host)
        path_matched = False
        for route in self.routes:
            if not route.match_host(host):
                continue
            params = route.match_path(path)
            if params is None:
                continue
            if route.allows(method):
                return RouteMatch(route, params)
            path_matched = True
        return NoMatch(path_matched)


def _bare_host(host: str) -> str:
    """Lower-case host without port; IPv6 literals keep their brackets."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def has_prefix(path: str, prefix: str, *, ignore_case: bool = False) -> bool:
    """Whether ``path`` has ``prefix`` on a segment boundary: /a takes /a/b, not /ab."""
    prefix = prefix.rstrip("/")
    if ignore_case:
        path, prefix = path.lower(), prefix.lower()
    return not prefix or path == prefix or path.startswith(prefix + "/")
