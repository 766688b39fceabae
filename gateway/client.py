"""Who the client is: its address, scheme and host, after the trusted-proxy rules.

``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
``Forwarded`` are believed only when the TCP peer is one of
``server.trusted_proxies``; the client address is then the nearest hop that
is not itself a trusted proxy. ``server.public_url``, when set, fixes the
scheme and host. The proxy rebuilds the forwarding headers from this view,
the login-start limits count per its address, and forward-auth answers only
trusted peers.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from aiohttp import web
from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientView(NamedTuple):
    """Who the client is and how it reached us, after applying trusted-proxy rules."""

    address: str
    proto: str
    host: str
    xff: str
    forwarded: str

    @property
    def public_origin(self) -> str:
        return f"{self.proto}://{self.host}"


def client_view(
    request: web.BaseRequest, trusted: Iterable[Network], public_url: str | None
) -> ClientView:
    """Work out client address, scheme and host; believe forwarded headers only from ``trusted``."""
    peer = request.remote or "unknown"
    proto = request.scheme
    host = request.host
    trusted = tuple(trusted)
    incoming_xff = request.headers.get("X-Forwarded-For", "")
    incoming_fwd = request.headers.get("Forwarded", "")
    if trusted and _is_trusted(peer, trusted):
        hops = [h.strip() for h in incoming_xff.split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            client = hop
            if not _is_trusted(hop, trusted):
                break
        proto = request.headers.get("X-Forwarded-Proto", proto).split(",")[0].strip() or proto
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
        xff = f"{incoming_xff}, {peer}" if incoming_xff else peer
        fwd_prefix = f"{incoming_fwd}, " if incoming_fwd else ""
    else:
        client = peer
        xff = peer
        fwd_prefix = ""
    if public_url:
        proto, host = _public_parts(public_url)
    for_value = f'"[{peer}]"' if ":" in peer else peer
    forwarded = f"{fwd_prefix}for={for_value};proto={proto};host={_quote_host(host)}"
    return ClientView(client, proto, host, xff, forwarded)


@functools.lru_cache(maxsize=16)
def _public_parts(public_url: str) -> tuple[str, str]:
    """Scheme and authority of ``server.public_url``: parsed once, not per request."""
    pub = URL(public_url)
    return pub.scheme, pub.raw_authority


def _quote_host(host: str) -> str:
    return f'"{host}"' if ":" in host else host


def is_trusted_peer(remote: str | None, trusted: Iterable[Network]) -> bool:
    """Is the TCP peer one of the configured trusted proxies?"""
    return remote is not None and _is_trusted(remote, tuple(trusted))


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
