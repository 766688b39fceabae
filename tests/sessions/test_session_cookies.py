"""Session and pre-login cookies: attributes (__Host-, SameSite, dev mode) and reading them."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.sessions.cookies import (
    _SIMPLE_HEADER,
    clear_session_cookie,
    cookie_value,
    read_prelogin_cookie,
    read_session_cookie,
    set_prelogin_cookie,
    set_session_cookie,
)
from gateway.sessions.settings import SessionSettings


def _header(settings: SessionSettings, *, prelogin: bool = False, clear: bool = False) -> str:
    response = web.Response()
    if clear:
        clear_session_cookie(response, settings)
    elif prelogin:
        set_prelogin_cookie(response, "v" * 43, settings)
    else:
        set_session_cookie(response, "s" * 43, settings)
    (morsel,) = response.cookies.values()
    return morsel.OutputString()


def test_session_cookie_is_host_only_secure_httponly_lax() -> None:
    """The default session cookie is __Host-, Secure, HttpOnly, SameSite=Lax, Path=/, no Domain."""
    header = _header(SessionSettings())
    assert header.startswith("__Host-gw_session=" + "s" * 43)
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in header
    assert "Domain" not in header
    assert "Max-Age" not in header


def test_prelogin_cookie_survives_a_cross_site_post() -> None:
    """The pre-login cookie is SameSite=None + Secure and lives as long as the pending login."""
    header = _header(SessionSettings(prelogin_ttl=dt.timedelta(minutes=10)), prelogin=True)
    assert header.startswith("__Host-gw_login=")
    for attribute in ("Secure", "HttpOnly", "SameSite=None", "Path=/", "Max-Age=600"):
        assert attribute in header


def test_clearing_the_session_cookie_expires_it() -> None:
    """Logout sends an expired session cookie with the same name and path."""
    header = _header(SessionSettings(), clear=True)
    assert header.startswith('__Host-gw_session=""')
    assert "Max-Age=0" in header


def test_insecure_dev_cookies_drop_secure_and_the_host_prefix() -> None:
    """The development switch sends plain-HTTP cookies without the __Host- prefix."""
    dev = SessionSettings(insecure_dev_cookies=True)
    session = _header(dev)
    prelogin = _header(dev, prelogin=True)
    assert session.startswith("gw_session=")
    assert prelogin.startswith("gw_login=")
    assert "Secure" not in session
    assert "Secure" not in prelogin
    assert "SameSite=Lax" in prelogin


# -- reading: cookie_value must answer exactly what aiohttp's request.cookies does --


def _request(*cookie_headers: str) -> web.Request:
    headers = CIMultiDict[str]([("Accept", "text/html"), ("User-Agent", "Mozilla/5.0")])
    for value in cookie_headers:
        headers.add("Cookie", value)
    return make_mocked_request("GET", "/portaal", headers=headers)


SID = "AbC-_0123456789abcdefghijklmnopqrstuvwxyzA"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), None),  # no Cookie header
        (("",), None),  # an empty one
        (("lang=nl; theme=dark",), None),  # only other cookies
        ((f"gw_session={SID}",), SID),
        ((f"lang=nl; gw_session={SID}",), SID),
        ((f"lang=nl;gw_session={SID};theme=dark",), SID),  # no space after ";"
        ((f"lang=nl;  \tgw_session={SID}",), SID),  # spaces and tabs after ";"
        ((f"x_gw_session={SID}",), None),  # the name is a suffix of another name
        ((f"gw_session2={SID}",), None),  # ... or a prefix of another name
        ((f"gw_session_old=1; gw_session={SID}; my_gw_session=2",), SID),
        ((f"lang=gw_session={SID}",), None),  # only inside another cookie's value
        (("gw_session=",), ""),  # empty value
        (("gw_session=; lang=nl",), ""),
        ((f'gw_session="{SID}"',), SID),  # quoted: aiohttp drops the quotes
        (('gw_session=""',), ""),
        (('gw_session="a b"',), "a b"),  # quoted with a space (aiohttp's parser)
        (('gw_session="a\\"b"',), 'a"b'),  # quoted with an escape (aiohttp's parser)
        (('pref="x; gw_session=planted"; lang=nl',), None),  # ";" inside quotes
        (("gw_session=first; gw_session=second",), "second"),  # aiohttp: the last one
        (("gw_session=one", "gw_session=two"), "one"),  # aiohttp: only the first header
        (("lang=nl", f"gw_session={SID}"), None),
        (("gw_session = spaced",), "spaced"),  # odd shapes go to aiohttp's parser
        (("gw_session",), ""),
        (("lang=nl gw_session=x",), "x"),
    ],
)
def test_cookie_value_edge_cases(headers: tuple[str, ...], expected: str | None) -> None:
    """The one-cookie lookup gives aiohttp's answer for every shape of header, odd or not."""
    request = _request(*headers)
    assert cookie_value(request, "gw_session") == expected
    assert request.cookies.get("gw_session") == expected


def test_read_session_and_prelogin_cookies_use_the_effective_names() -> None:
    """Production names carry __Host-; dev mode reads the names without it."""
    request = _request(f"__Host-gw_login=pre; gw_session=dev; __Host-gw_session={SID}")
    prod = SessionSettings()
    dev = SessionSettings(insecure_dev_cookies=True)
    assert read_session_cookie(request, prod) == SID
    assert read_prelogin_cookie(request, prod) == "pre"
    assert read_session_cookie(request, dev) == "dev"
    assert read_prelogin_cookie(request, dev) is None


def test_a_name_outside_the_fast_path_still_gets_aiohttps_answer() -> None:
    """Names the direct search cannot handle (here with "; ") are left to aiohttp."""
    request = _request("a=1; b=2")
    assert cookie_value(request, "a=1; b") is None
    assert cookie_value(request, "b") == "2"


_PRINTABLE = [chr(c) for c in range(0x21, 0x7F)]
_NAME_CHARS = [c for c in _PRINTABLE if c not in '",;\\=']
_VALUE_CHARS = [c for c in _PRINTABLE if c not in '";\\']
_NAMES = ["gw_session", "x_gw_session", "gw_session2", "gw", "__Host-gw_session", "gw_sessio"]
_ODD_VALUES = [
    "Wed,",
    "Wed, 09 Jun 2021 10:18:14 GMT",
    "Wed Jun  9 10:18:14 2021",
    "x y",
    '"a',
    "a\\b",
    '"a\\"b"',
    '"a;b"',
    "é",
]


def _random_header(rng: random.Random) -> str:
    """Mostly browser-shaped headers, with now and then something aiohttp must sort out."""
    pairs = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.5:
            name = rng.choice(_NAMES)
        else:
            name = "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.2:
            name = rng.choice(["", "x", "gw_session"]) + name + rng.choice(["", "gw_session"])
        value = "".join(rng.choice(_VALUE_CHARS) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.2:
            value = f'"{value}"'
        if rng.random() < 0.1:
            value = rng.choice(_ODD_VALUES)
        pairs.append(f"{name}{'=' if rng.random() < 0.95 else ' = '}{value}")
    separators = ["; ", ";", ";  ", ";\t"] + ([" ;", ";;", " "] if rng.random() < 0.1 else [])
    header = pairs[0]
    for pair in pairs[1:]:
        header += rng.choice(separators) + pair
    if rng.random() < 0.05:
        header = " " + header
    if rng.random() < 0.05:
        header += rng.choice([";", " ", "; "])
    return header


@pytest.mark.parametrize("seed", range(4))
def test_cookie_value_matches_aiohttp_on_random_headers(seed: int) -> None:
    """Differential check: thousands of headers, every name in them, aiohttp as the oracle."""
    rng = random.Random(seed)
    base = _request()
    simple = 0
    for _ in range(2000):
        header = _random_header(rng)
        simple += _SIMPLE_HEADER.fullmatch(header) is not None
        request = base.clone(headers=CIMultiDict[str]([("Cookie", header)]))
        names = set(_NAMES) | {p.split("=", 1)[0].strip() for p in header.split(";")}
        for name in names - {""}:
            assert cookie_value(request, name) == request.cookies.get(name), (header, name)
    assert simple > 1000  # most headers take the direct search, not aiohttp's parser
