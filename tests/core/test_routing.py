"""Route matching: pure, ordered, first match wins."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import RouteSettings
from gateway.route_patterns import PatternError, compile_pattern
from gateway.routing import NoMatch, RouteMatch, Router
from tests.conftest import make_config


def _router(*routes: dict[str, Any]) -> Router:
    for r in routes:
        r.setdefault("upstream", "http://u")
        r.setdefault("policy", "public")
    return Router(make_config({"routes": list(routes)}).routes)


def _name(result: RouteMatch | NoMatch) -> str | None:
    return result.route.name if isinstance(result, RouteMatch) else None


def test_prefix_matches_whole_segments_only() -> None:
    """/api takes /api and /api/x but not /apix."""
    router = _router({"name": "api", "match": {"path": "/api"}})
    assert _name(router.resolve("h", "/api", "GET")) == "api"
    assert _name(router.resolve("h", "/api/x", "GET")) == "api"
    assert _name(router.resolve("h", "/apix", "GET")) is None


def test_first_match_wins() -> None:
    """The earlier route wins even when a later one is also a match."""
    router = _router(
        {"name": "specific", "match": {"path": "/api/v2"}},
        {"name": "general", "match": {"path": "/"}},
    )
    assert _name(router.resolve("h", "/api/v2/x", "GET")) == "specific"
    assert _name(router.resolve("h", "/other", "GET")) == "general"


def test_exact_match() -> None:
    """An exact route takes only its own path."""
    router = _router({"name": "e", "match": {"path": "/login", "type": "exact"}})
    assert _name(router.resolve("h", "/login", "GET")) == "e"
    assert _name(router.resolve("h", "/login/x", "GET")) is None


def test_pattern_extracts_named_parameters() -> None:
    """Patterns match whole paths and return their named parameters."""
    router = _router(
        {"name": "p", "match": {"path": "/werkgevers/{kvk:[0-9]{8}}/{rest:.*}", "type": "pattern"}}
    )
    result = router.resolve("h", "/werkgevers/12345678/loonaangifte", "GET")
    assert isinstance(result, RouteMatch)
    assert result.params == {"kvk": "12345678", "rest": "loonaangifte"}
    assert _name(router.resolve("h", "/werkgevers/1234/x", "GET")) is None


def test_plain_parameter_is_one_segment() -> None:
    """{name} does not cross a slash."""
    router = _router({"name": "p", "match": {"path": "/a/{id}", "type": "pattern"}})
    assert _name(router.resolve("h", "/a/1", "GET")) == "p"
    assert _name(router.resolve("h", "/a/1/2", "GET")) is None


def test_methods_fall_through_then_405() -> None:
    """A method mismatch tries later routes; if none takes it the result says 405."""
    router = _router(
        {"name": "read", "match": {"path": "/d", "methods": ["GET"]}},
        {"name": "write", "match": {"path": "/d", "methods": ["POST"]}},
    )
    assert _name(router.resolve("h", "/d", "POST")) == "write"
    assert _name(router.resolve("h", "/d", "HEAD")) == "read"
    result = router.resolve("h", "/d", "DELETE")
    assert isinstance(result, NoMatch) and result.path_matched


def test_host_matching_exact_and_wildcard() -> None:
    """Hosts match case-insensitively without port; *.domain takes subdomains only."""
    router = _router(
        {"name": "exact", "match": {"path": "/", "host": "portaal.fonds.nl"}},
        {"name": "wild", "match": {"path": "/", "host": "*.fonds.nl"}},
    )
    assert _name(router.resolve("PORTAAL.fonds.nl:8443", "/", "GET")) == "exact"
    assert _name(router.resolve("api.fonds.nl", "/", "GET")) == "wild"
    assert _name(router.resolve("fonds.nl", "/", "GET")) is None


@pytest.mark.parametrize("pattern", ["/a/{x", "/a/{x}/{x}", "/a/{x:(}"])
def test_bad_patterns_rejected(pattern: str) -> None:
    """Unbalanced braces, repeated names and bad regexes are refused."""
    with pytest.raises(PatternError):
        compile_pattern(pattern)


def test_authenticated_routes_match_every_spelling_public_routes_one() -> None:
    """/Werkgevers/1 meets the employer route; /STATIC/x falls through to the stricter route."""
    routes = [
        {"name": "static", "match": {"path": "/static"}, "policy": "public"},
        {
            "name": "employer",
            "match": {"path": "/werkgevers/{kvk}{rest:(?:/.*)?}", "type": "pattern"},
            "policy": "authenticated",
        },
        {"name": "rest", "match": {"path": "/"}, "policy": "authenticated"},
    ]
    router = Router([RouteSettings.model_validate({"upstream": "http://u", **r}) for r in routes])
    for spelling in ("/werkgevers/1/x", "/Werkgevers/1/x", "/WERKGEVERS/1", "/werkgevers/1"):
        found = router.resolve("h", spelling, "GET")
        assert isinstance(found, RouteMatch) and found.route.name == "employer", spelling
        assert found.params["kvk"] == "1"
    assert _name(router.resolve("h", "/static/app.css", "GET")) == "static"
    assert _name(router.resolve("h", "/STATIC/app.css", "GET")) == "rest"
    assert _name(router.resolve("h", "/werkgevers", "GET")) == "rest"


def test_remembered_answers_equal_fresh_ones_and_stay_bounded() -> None:
    """Answers are remembered per (host, path, method) and always equal a fresh resolve.

    Routing depends on nothing else, so a repeated page costs a lookup; the memo
    is bounded (emptied when full) and leaves out long paths.
    """
    router = _router(
        {"name": "one", "match": {"type": "pattern", "path": "/werkgevers/{kvk}/{rest:.*}"}},
        {"name": "get-only", "match": {"path": "/lezen", "methods": ["GET"]}},
    )
    cases = [
        ("h", "/werkgevers/30000001/a", "GET"),
        ("H:8080", "/werkgevers/30000002/b", "POST"),
        ("h", "/lezen", "POST"),
        ("h", "/nergens", "GET"),
    ]
    for _ in range(2):
        for host, path, method in cases:
            assert router.resolve(host, path, method) == router._resolve(host, path, method)
    first = router.resolve("h", "/werkgevers/30000001/a", "GET")
    assert isinstance(first, RouteMatch) and first.params == {"kvk": "30000001", "rest": "a"}
    assert router.resolve("h", "/lezen", "POST") == NoMatch(path_matched=True)
    assert router.resolve("h", "/" + "x" * 600, "GET") == NoMatch(path_matched=False)
    assert ("h", "/" + "x" * 600, "GET") not in router._memo
    for i in range(5000):
        router.resolve("h", f"/werkgevers/{i}/p", "GET")
        assert len(router._memo) <= 4096
    again = router.resolve("h", "/werkgevers/4999/p", "GET")
    assert isinstance(again, RouteMatch) and again.params == {"kvk": "4999", "rest": "p"}
