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

import functools
import re

from aiohttp import hdrs, web

from gateway.sessions.settings import SessionSettings

# The fast path of ``cookie_value`` takes only the shape browsers send: ``name=value``
# pairs joined by ``;`` plus optional spaces or tabs, names and values from the
# characters below, a value optionally in double quotes (no backslash inside). On
# exactly this shape aiohttp's parser (``aiohttp._cookie_helpers.parse_cookie_header``)
# splits at every ``;``, keeps every name and unquotes by dropping the quotes, so
# a plain search gives the same answer. Anything else (whitespace inside a pair, a
# name without ``=``, ``;;``, a quoted value with spaces or escapes, non-ASCII, a
# date with ", ") goes to aiohttp's parser itself.
#
# Names: aiohttp's name pattern minus ",", which its name check then refuses.
_NAME = r"[A-Za-z0-9!#$%&'()*+\-./:<>?@\[\]^_`{|}~]+"
# Values: printable ASCII except space, '"', ";" and backslash (aiohttp's plain value).
_VALUE = r"[A-Za-z0-9!#$%&'()*+,\-./:<=>?@\[\]^_`{|}~]*"
_PAIR = rf"{_NAME}=(?:{_VALUE}|\"{_VALUE}\")"
_SIMPLE_HEADER = re.compile(rf"{_PAIR}(?:;[ \t]*{_PAIR})*")


def session_cookie_name(settings: SessionSettings) -> str:
    return settings.effective_cookie_name(settings.cookie_name)


def prelogin_cookie_name(settings: SessionSettings) -> str:
    return settings.effective_cookie_name(settings.prelogin_cookie_name)


_NAME_RE = re.compile(_NAME)


@functools.lru_cache(maxsize=32)
def _search_key(name: str) -> str | None:
    """``name=`` to search for, or ``None`` for a name the fast path cannot look up."""
    return name + "=" if _NAME_RE.fullmatch(name) else None


def cookie_value(request: web.BaseRequest, name: str) -> str | None:
    """The value of the request's cookie ``name``: exactly ``request.cookies.get(name)``.

    ``request.cookies`` parses the whole ``Cookie`` header into ``Morsel`` objects
    (several microseconds, tens with analytics cookies) on every request that
    needs one cookie. This looks the one name up in the raw header instead, and
    asks aiohttp's parser whenever the header is not of the simple shape (see
    ``_SIMPLE_HEADER``), so the answer never differs from aiohttp's, in particular:

    * only the first ``Cookie`` header counts (aiohttp reads ``headers.get``);
    * a name sent twice gives the *last* value (aiohttp builds a dict);
    * a quoted value comes back without its quotes; an empty value is ``""``;
    * ``gw_session`` does not match ``x_gw_session`` or ``gw_session2``.
    """
    header = request.headers.get(hdrs.COOKIE)
    if not header or name not in header:
        return None  # aiohttp's names are substrings of the header: not there, no cookie
    # A browser sends the same header on every request of a session: the answer
    # for a usual-sized one is remembered (a pure function of header and name).
    found = _simple_value(header, name) if len(header) <= 512 else _scan(header, name)
    return request.cookies.get(name) if isinstance(found, _NotSimple) else found


class _NotSimple:
    """``_scan``'s answer for a header the fast path does not read: ask aiohttp."""


_NOT_SIMPLE = _NotSimple()


@functools.lru_cache(maxsize=16_384)
def _simple_value(header: str, name: str) -> str | _NotSimple | None:
    return _scan(header, name)


def _scan(header: str, name: str) -> str | _NotSimple | None:
    """The value of ``name`` in a simple ``header`` (see ``cookie_value``); ``_NOT_SIMPLE``
    for a header (or name) of another shape."""
    key = _search_key(name)
    if key is None or _SIMPLE_HEADER.fullmatch(header) is None:
        return _NOT_SIMPLE
    # In a simple header whitespace only follows a ";", and names and values hold
    # no ";", so ``name=`` starts a pair exactly where it starts the header or
    # follows ";", space or tab; the value runs to the next ";". Occurrences of
    # ``name=`` cannot overlap (a name has no "="), so searching backwards from
    # each miss finds the last pair with this name: aiohttp's answer.
    end = len(header)
    while (start := header.rfind(key, 0, end)) >= 0:
        if start == 0 or header[start - 1] in "; \t":
            value_start = start + len(key)
            stop = header.find(";", value_start)
            value = header[value_start:] if stop < 0 else header[value_start:stop]
            # A value starting with '"' is a whole quoted string without escapes here:
            # aiohttp's unquoting only drops the quotes.
            return value[1:-1] if value[:1] == '"' else value
        end = start
    return None


def read_session_cookie(request: web.BaseRequest, settings: SessionSettings) -> str | None:
    return cookie_value(request, session_cookie_name(settings))


def read_prelogin_cookie(request: web.BaseRequest, settings: SessionSettings) -> str | None:
    return cookie_value(request, prelogin_cookie_name(settings))


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
