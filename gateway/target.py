"""The request target: one canonical path for every decision, the raw bytes for forwarding.

Pure: a string in, a ``Target`` (or ``BadTarget``) out; no I/O, no clock.

A reverse proxy goes wrong when it decides on one spelling of a URL and
forwards another: routing, the employer-scope check and the upstream must all
read the same request. So the target is parsed **once**, here:

- ``raw_path`` and ``raw_query`` are the client's bytes exactly as received.
  They are what the upstream gets (after the route's strip-prefix and base
  path, which work on whole raw segments): ``?q=foo+bar`` stays ``foo+bar``,
  ``%20``, ``%23`` and ``%25`` stay encoded.
- ``path`` is the one canonical form that routing and the employer scope
  decide on: the raw path percent-decoded once, as UTF-8.

Anything where the two forms could name different resources for the upstream
is **refused** (400) instead of being normalised, because normalising here
while the portal normalises differently is exactly how a foreign employer's
page slips past the scope check:

- only origin-form targets (``/path?query``): absolute-form
  (``http://host/x``, RFC 9112 3.2.2), authority-form and asterisk-form are
  refused (``OPTIONS *`` is answered by the gateway itself);
- ``;`` anywhere in the path: servlet containers cut path parameters
  (``/werkgevers;x=1/…``, ``;jsessionid=``) before matching, the gateway would
  not, so the two would disagree on which page this is;
- dot segments (``.``/``..``, also percent-encoded), empty segments (``//``),
  backslashes, encoded slashes (``%2F``), NUL and other control characters,
  and percent-encodings that are malformed or not UTF-8 once decoded;
- a fragment (``#``) or raw non-ASCII bytes in the target (a conforming
  client percent-encodes them; the grammar of RFC 9112 3.2 has no room for
  them).

The query is forwarded as received; query parameters that decide something
(an employer scope on ``location: query``) are read from the same raw query
with ``parse_qsl`` semantics (``+`` is a space), as form-decoding portals read
them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, unquote_to_bytes

from multidict import CIMultiDictProxy

from gateway.errors import BadRequest, NotImplementedHere, VersionNotSupported

# Visible ASCII. RFC 3986 allows fewer characters, but browsers send some of
# the others unencoded (the WHATWG URL standard leaves [ ] | ^ raw in paths and
# queries), and they mean nothing special to the upstream, so they pass. Kept
# out: "#" (a fragment is never sent), and in the path "\\" (read as "/" by
# some stacks) and ";" (path parameters): refused with their own reason below.
_PATH_CHARS = re.compile(r"[\x21-\x22\x24-\x3a\x3c-\x5b\x5d-\x7e]*")
_QUERY_CHARS = re.compile(r"[\x21-\x22\x24-\x7e]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadTarget(ValueError):
    """A request target the gateway refuses; the message says why (for logs, not secrets)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One parsed origin-form request target."""

    raw_path: str
    """The path exactly as the client sent it (percent-encoded)."""
    raw_query: str | None
    """The query exactly as received, without the ``?``; None when there was no ``?``."""
    path: str
    """The canonical path: ``raw_path`` percent-decoded once (UTF-8)."""

    @property
    def raw(self) -> str:
        """Path and query as received, for a ``next`` location after the login."""
        return self.raw_path if self.raw_query is None else f"{self.raw_path}?{self.raw_query}"


# RFC 9110 7.2 / RFC 3986 3.2.2: reg-name, IPv4 or [IPv6], then an optional port.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")


class Message(Protocol):
    """What ``check_message`` reads of a request (aiohttp's ``BaseRequest`` has it)."""

    @property
    def version(self) -> tuple[int, int]: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...


def check_message(request: Message) -> None:
    """Refuse message shapes the parser lets through but RFC 9112 does not.

    - HTTP/0.9 and anything but HTTP/1.x: 400 and 505 (aiohttp reads the
      request line leniently);
    - a Host that is not a host (RFC 9112 3.2: "MUST respond with a 400");
    - a Transfer-Encoding other than plain ``chunked`` (gzip, identity, a list):
      501 (RFC 9112 6.1), because the body would reach the upstream stripped of
      a coding nobody applied back; and any Transfer-Encoding on HTTP/1.0,
      whose framing RFC 9112 6.1 calls faulty.
    """
    major, minor = request.version
    if major != 1:
        if major == 0:
            raise BadRequest("HTTP/0.9 request")
        raise VersionNotSupported(f"HTTP/{major}.{minor} request line")
    headers = request.headers
    host = headers.get("Host")
    if host is not None and not _HOST.fullmatch(host):
        raise BadRequest("invalid Host header")
    te = headers.get("Transfer-Encoding")
    if te is not None:
        if minor == 0:
            raise BadRequest("Transfer-Encoding on an HTTP/1.0 request")
        if len(headers.getall("Transfer-Encoding")) > 1 or te.strip().lower() != "chunked":
            raise NotImplementedHere(f"transfer coding {te[:40]!r}")


# Accepted targets seen lately: a page is asked for again and again (by every
# session on it), and a target's parse depends on nothing but its text. Only
# short targets are kept, and the whole memo is dropped when full.
_PARSED: dict[str, Target] = {}
_PARSED_MAX = 4096
_PARSED_LONGEST = 512


def parse_target(raw: str) -> Target:
    """Parse the request-target of a request line, or raise ``BadTarget``."""
    known = _PARSED.get(raw)
    if known is not None:
        return known
    target = _parse_target(raw)
    if len(raw) <= _PARSED_LONGEST:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[raw] = target
    return target


def _parse_target(raw: str) -> Target:
    if not raw.startswith("/"):
        if raw == "*":
            raise BadTarget("asterisk-form target")
        raise BadTarget("not an origin-form target (absolute or authority form)")
    raw_path, sep, query = raw.partition("?")
    raw_query = query if sep else None
    if not _PATH_CHARS.fullmatch(raw_path):
        if ";" in raw_path:
            raise BadTarget("path parameters (;) are not accepted")
        if "\\" in raw_path:
            raise BadTarget("backslash in the path")
        raise BadTarget("character not allowed in the path")
    if raw_query is not None and not _QUERY_CHARS.fullmatch(raw_query):
        raise BadTarget("character not allowed in the query")
    if _BAD_ESCAPE.search(raw_path):
        raise BadTarget("malformed percent-encoding in the path")
    if "%" in raw_path:
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadTarget("path is not UTF-8 once decoded") from None
        lowered = raw_path.lower()
        if "%2f" in lowered or "%5c" in lowered:
            raise BadTarget("encoded slash or backslash in the path")
    else:
        path = raw_path
    if _CONTROL.search(path) or ";" in path:
        raise BadTarget("control character or ; in the decoded path")
    _check_segments(path)
    return Target(raw_path, raw_query, path)


def _check_segments(path: str) -> None:
    # path starts with "/": the first split element is "" and is not a segment.
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment in (".", ".."):
            raise BadTarget("dot segment in the path")
        # An empty segment is fine only as the last one (a trailing slash).
        if segment == "" and i != len(segments) - 1:
            raise BadTarget("empty path segment (//)")


def strip_segments(raw_path: str, count: int) -> str:
    """``raw_path`` without its first ``count`` segments (``/`` when nothing is left).

    Works on the raw form: since an encoded slash is refused, raw and canonical
    paths have the same segments, so a prefix matched on the canonical path
    is removed here by counting segments, whatever their spelling.
    """
    if count <= 0:
        return raw_path
    parts = raw_path.split("/")
    rest = parts[count + 1 :]
    return "/" + "/".join(rest) if rest else "/"


def query_pairs(raw_query: str | None) -> list[tuple[str, str]]:
    """Query parameters as a form-decoding application reads them (``+`` is a space)."""
    if not raw_query:
        return []
    return parse_qsl(raw_query, keep_blank_values=True, errors="replace")
