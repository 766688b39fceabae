"""The session cookie and the pre-login cookie: names and attributes in one place.

Session cookie (default ``__Host-gw_session``): ``Secure``, ``HttpOnly``,
``SameSite=Lax``, ``Path=/``, no ``Domain``, no ``Max-Age`` (it ends with the
browser; the server enforces idle and absolute lifetimes). ``__Host-`` makes the
browser refuse it unless it is Secure, host-only and for path ``/``, so a sibling
subdomain cannot plant or overwrite it (session fixation).

Pre-login cookie (default ``__Host-gw_login``): binds a pending login to the
browser that started it, ``Max-Age`` = the pre-login TTL. It is
``SameSite=None`` because the broker may return the user with a cross-site
*POST* (HTTP-POST binding, or an artifact sent by POST), and a Lax cookie is not
sent on those. That is safe here: the cookie only names pending state that is
single-use and bound to a request ID the broker echoes, and it grants nothing
by itself.

``insecure_dev_cookies`` (DEVELOPMENT ONLY) drops ``Secure`` and the ``__Host-``
prefix and uses Lax everywhere, so a plain-HTTP demo on localhost works
(browsers refuse ``SameSite=None`` without ``Secure``). Never in production.
"""

from __future__ import annotations

from aiohttp import web

from gateway.sessions.settings import SessionSettings


def session_cookie_name(settings: SessionSettings) -> str:
    return settings.effective_cookie_name(settings.cookie_name)


def prelogin_cookie_name(settings: SessionSettings) -> str:
    return settings.effective_cookie_name(settings.prelogin_cookie_name)


def read_session_cookie(request: web.BaseRequest, settings: SessionSettings) -> str | None:
    return request.cookies.get(session_cookie_name(settings))


def read_prelogin_cookie(request: web.BaseRequest, settings: SessionSettings) -> str | None:
    return request.cookies.get(prelogin_cookie_name(settings))


def set_session_cookie(
    response: web.StreamResponse, session_id: str, settings: SessionSettings
) -> None:
    response.set_cookie(
        session_cookie_name(settings),
        session_id,
        path="/",
        secure=not settings.insecure_dev_cookies,
        httponly=True,
        samesite="Lax",
    )


def clear_session_cookie(response: web.StreamResponse, settings: SessionSettings) -> None:
    response.del_cookie(
        session_cookie_name(settings),
        path="/",
        secure=not settings.insecure_dev_cookies,
        httponly=True,
        samesite="Lax",
    )


def set_prelogin_cookie(
    response: web.StreamResponse, value: str, settings: SessionSettings
) -> None:
    dev = settings.insecure_dev_cookies
    response.set_cookie(
        prelogin_cookie_name(settings),
        value,
        path="/",
        max_age=int(settings.prelogin_ttl.total_seconds()),
        secure=not dev,
        httponly=True,
        samesite="Lax" if dev else "None",
    )


def clear_prelogin_cookie(response: web.StreamResponse, settings: SessionSettings) -> None:
    dev = settings.insecure_dev_cookies
    response.del_cookie(
        prelogin_cookie_name(settings),
        path="/",
        secure=not dev,
        httponly=True,
        samesite="Lax" if dev else "None",
    )
