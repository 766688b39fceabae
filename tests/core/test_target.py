"""The request target: refused shapes, the canonical path, raw forwarding helpers."""

from __future__ import annotations

import pytest

from gateway.target import BadTarget, parse_target, query_pairs, strip_segments


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/a/b", "/a/b", None),
        ("/a/b?", "/a/b", ""),
        ("/q?q=foo+bar&x=%23", "/q", "q=foo+bar&x=%23"),
        ("/caf%C3%A9", "/caf\u00e9", None),
        ("/a/%252e%252e", "/a/%2e%2e", None),
        ("/%61b", "/ab", None),
        ("/a/", "/a/", None),
        ("/a[1]|^", "/a[1]|^", None),
    ],
)
def test_origin_form_targets_keep_raw_and_canonical_forms(
    raw: str, path: str, query: str | None
) -> None:
    """The raw path and query are kept as sent; the canonical path is decoded once."""
    target = parse_target(raw)
    assert target.path == path
    assert target.raw_query == query
    assert target.raw == raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("http://h/x", "origin-form"),
        ("*", "asterisk"),
        ("h:443", "origin-form"),
        ("/a;b", "path parameters"),
        ("/a%3bb", "control character or ;"),
        ("/a/../b", "dot segment"),
        ("/a/%2E%2e/b", "dot segment"),
        ("/a//b", "empty path segment"),
        ("/a%2Fb", "encoded slash"),
        ("/a%5cb", "encoded slash or backslash"),
        ("/a\\b", "backslash"),
        ("/a%00", "control character"),
        ("/%FF", "not UTF-8"),
        ("/%zz", "malformed"),
        ("/a%", "malformed"),
        ("/a#b", "not allowed in the path"),
        ("/a?b#c", "not allowed in the query"),
        ("/a?b c", "not allowed in the query"),
    ],
)
def test_ambiguous_targets_are_refused_with_a_reason(raw: str, reason: str) -> None:
    """Each refused shape says why (the reason goes to the log, never a secret)."""
    with pytest.raises(BadTarget, match=reason):
        parse_target(raw)


@pytest.mark.parametrize(
    ("raw", "count", "out"),
    [
        ("/portaal/a/b", 1, "/a/b"),
        ("/portaal", 1, "/"),
        ("/portaal/", 1, "/"),
        ("/portaa%6C/caf%C3%A9", 1, "/caf%C3%A9"),
        ("/a/b/c", 2, "/c"),
        ("/a", 0, "/a"),
    ],
)
def test_strip_segments_removes_whole_raw_segments(raw: str, count: int, out: str) -> None:
    """A strip-prefix leaves the rest of the raw path byte for byte."""
    assert strip_segments(raw, count) == out


def test_query_pairs_decode_as_a_form_reading_portal_does() -> None:
    """+ is a space, escapes are decoded, names repeat, blanks are kept."""
    assert query_pairs("a=1+2&a=%33&b=&werkgever=%39") == [
        ("a", "1 2"),
        ("a", "3"),
        ("b", ""),
        ("werkgever", "9"),
    ]
    assert query_pairs(None) == []


def test_remembered_targets_parse_as_fresh_and_refusals_stay_refused() -> None:
    """Accepted targets are remembered (bounded, short ones only); a refused one never is."""
    import gateway.target as target_module

    raw = "/werkgevers/30000001/overzicht?periode=2024-12"
    first = parse_target(raw)
    assert parse_target(raw) == first == target_module._parse_target(raw)
    assert first.path == "/werkgevers/30000001/overzicht" and first.raw_query == "periode=2024-12"
    for _ in range(2):
        with pytest.raises(BadTarget):
            parse_target("/a/../b")
    assert "/a/../b" not in target_module._PARSED
    long = "/" + "a" * 600
    assert parse_target(long).path == long and long not in target_module._PARSED
    for i in range(5000):
        parse_target(f"/p/{i}")
        assert len(target_module._PARSED) <= target_module._PARSED_MAX
