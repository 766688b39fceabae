"""A route's upstream as the forwarder uses it: computed once per route, not per request.

The origin and connection pool a route's requests go to, the request target
upstream (base path + the client's raw path and query after the route's
strip-prefix), and the rewrite of upstream redirects that point at the
upstream's own address back to the public address.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from yarl import URL

from gateway.route_settings import RouteSettings
from gateway.routing import has_prefix
from gateway.target import Target, strip_segments
from gateway.upstream_client import Origin


@dataclass(frozen=True)
class Upstream:
    """Precomputed facts about a route's upstream, so the hot path only concatenates."""

    settings: RouteSettings

    @cached_property
    def url(self) -> URL:
        return URL(str(self.settings.upstream))

    @cached_property
    def origin(self) -> str:
        return str(self.url.origin())

    @cached_property
    def base_path(self) -> str:
        return self.url.raw_path.rstrip("/")

    @cached_property
    def origin_key(self) -> Origin:
        """The connection pool this upstream's requests use."""
        url = self.url
        assert url.raw_host is not None  # validated in config
        assert url.port is not None
        return Origin(url.scheme, url.raw_host, url.port)

    @cached_property
    def strip_segments(self) -> int:
        strip = (self.settings.strip_prefix or "").rstrip("/")
        return strip.count("/")

    def target_path(self, target: Target) -> str:
        """The request target upstream: base path + the client's raw path and query.

        The strip-prefix is matched on the canonical path (in the route's case
        rule) and removed from the raw path by whole segments, so the bytes the
        client sent pass unchanged after it.
        """
        raw_path = target.raw_path
        strip = self.settings.strip_prefix
        if strip and has_prefix(
            target.path, strip, ignore_case=self.settings.policy == "authenticated"
        ):
            raw_path = strip_segments(raw_path, self.strip_segments)
        out = self.base_path + raw_path
        if target.raw_query is not None:
            out += "?" + target.raw_query
        return out

    def target(self, target: Target) -> URL:
        return URL(self.origin + self.target_path(target), encoded=True)

    def public_location(self, location: str, public_origin: str) -> str:
        """Rewrite ``location`` if it points at the upstream's own address."""
        if not location.startswith(("http://", "https://")):
            return location
        try:
            loc = URL(location)
        except ValueError:
            return location
        if str(loc.origin()) != self.origin:
            return location
        path = loc.raw_path
        if self.base_path and (path == self.base_path or path.startswith(self.base_path + "/")):
            path = path[len(self.base_path) :] or "/"
        path = (self.settings.strip_prefix or "") + path
        out = public_origin + path
        if loc.raw_query_string:
            out += "?" + loc.raw_query_string
        if loc.raw_fragment:
            out += "#" + loc.raw_fragment
        return out
