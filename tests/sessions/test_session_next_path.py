"""``safe_next_path``: only same-origin paths survive; every redirect trick becomes ``/``."""

from __future__ import annotations

import pytest

from gateway.sessions.next_path import safe_next_path


@pytest.mark.parametrize(
    "value",
    [
        "/",
        "/portal",
        "/portal/werkgevers/12345678?tab=premie&page=2",
        "/zoek?q=caf%C3%A9%20de%20hoek",
        "/a/b#section",
        "/a?next=//evil.example",
        "/a/%2e%2e/b",
        "/~user/x-y_z.html",
        "/%",
    ],
)
def test_same_origin_paths_are_kept(value: str) -> None:
    """Ordinary same-origin paths, queries and fragments are returned unchanged."""
    assert safe_next_path(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "portal",
        "./portal",
        "//evil.example",
        "//evil.example/path",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\\/evil.example",
        "https://evil.example/",
        "http:/evil.example",
        "javascript:alert(1)",
        "data:text/html,hi",
        " /portal",
        "/portal ",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r\nSet-Cookie: x=y",
        "/a\x00b",
        "/a\x7fb",
        "/caf\u00e9",
        "/\u2215\u2215evil.example",
        "/%2F%2Fevil.example",
        "/%2f/evil.example",
        "/%5Cevil.example",
        "/%5c%5cevil.example",
        "/%252F%252Fevil.example",
        "/%25252F%25252Fevil.example",
        "/a%0d%0aSet-Cookie:%20x=y",
        "/a%00b",
        "/" + "a" * 3000,
    ],
)
def test_redirect_tricks_become_root(value: str | None) -> None:
    """Schemes, protocol-relative and backslash forms, controls and encoded variants give ``/``."""
    assert safe_next_path(value) == "/"


def test_forbidden_prefixes_become_root() -> None:
    """Paths the gateway serves itself (also percent-encoded) are refused to avoid loops."""
    prefixes = ("/_gateway/",)
    assert safe_next_path("/_gateway/login", forbidden_prefixes=prefixes) == "/"
    assert safe_next_path("/%5Fgateway/login", forbidden_prefixes=prefixes) == "/"
    assert safe_next_path("/portal/_gateway/", forbidden_prefixes=prefixes) == "/portal/_gateway/"
