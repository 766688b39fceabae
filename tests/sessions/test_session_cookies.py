"""Cookie attributes: __Host- session cookie, cross-site-safe pre-login cookie, dev mode."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from gateway.sessions.cookies import (
    clear_session_cookie,
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
