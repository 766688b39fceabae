"""Forwarding one request upstream: header hygiene, streaming, websockets, errors.

What crosses the gateway, and what does not:

- Hop-by-hop headers (Connection and the headers it names, Keep-Alive, TE,
  Trailer, Transfer-Encoding, Upgrade unless a websocket is passed through,
  Proxy-*, Expect) never cross in either direction.
- Client-sent identity headers, every header on the deny-list (any case),
  headers with ``_`` in the name (unless allowed, and never one that reads
  as a protected name) and the "real URL / client / method" headers of
  ``_CLIENT_FORBIDDEN`` are removed here; so are the gateway's own cookies
  from ``Cookie``, and an upstream may not set them either.
- ``X-Forwarded-For/-Proto/-Host``, ``Forwarded`` and ``X-Real-IP`` are
  rebuilt: incoming values are believed only from configured trusted proxies.
- The request target goes upstream as the client's raw bytes
  (``gateway.target``), after the route's strip-prefix and base path.
- Bodies stream in both directions in chunks; nothing is buffered whole.
- Upstream redirects to the upstream's own address are rewritten to the public
  address.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Mapping
from typing import NamedTuple

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway import http_fields
from gateway.client import ClientView
from gateway.config import RouteSettings, ServerSettings
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    HeaderValueNotAllowed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.route_upstream import Upstream
from gateway.target import Target
from gateway.upstream_client import (
    InvalidHeader,
    RequestBodyError,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)

log = structlog.get_logger("gateway.proxy")

# Hop-by-hop headers never cross in either direction (one list: gateway.http_fields).
HOP_BY_HOP = http_fields.HOP_BY_HOP
# Recomputed by us for every request; client copies are never passed on as-is.
_FORWARDING = frozenset(
    {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# Headers that front proxies and frameworks read as "the real client", "the real
# URL" or "the real method". A client may not choose them: some upstream stacks
# route by X-Original-URL/X-Rewrite-URL (IIS URL Rewrite, Symfony), log or rate
# limit by X-Real-IP/True-Client-IP, or turn a GET into a DELETE by
# X-HTTP-Method-Override. Never forwarded from a client; X-Real-IP is rebuilt.
_CLIENT_FORBIDDEN = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-original-method",
        "x-original-host",
        "x-forwarded-uri",
        "x-forwarded-path",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-forwarded-method",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-url-scheme",
        "x-scheme",
        "front-end-https",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-proxyuser-ip",
        "x-host",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)


# Deny-lists whose header name sets are kept (configuration reloads add one each).
_HEADER_SETS_KEPT = 8


def connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in ``Connection``: hop-by-hop by declaration."""
    value = headers.get("Connection", "")
    return {t.strip().lower() for t in value.split(",") if t.strip()}


@functools.lru_cache(maxsize=256)
def _and_listed(names: frozenset[str], listed: str) -> frozenset[str]:
    """``names`` and the header names a ``Connection`` value lists (one set per value,
    not per message: upstreams and browsers send the same few values)."""
    return names | {t.strip().lower() for t in listed.split(",") if t.strip()}


def is_gateway_cookie(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.startswith(prefixes)


def strip_gateway_cookies(cookie_header: str, prefixes: tuple[str, ...]) -> str:
    """``Cookie`` without the gateway's own cookies; other cookies pass unchanged.

    A browser sends the same header on every request of a session: the answer
    for a usual-sized one is remembered (a pure function of its arguments).
    """
    if len(cookie_header) <= 512:
        return _stripped(cookie_header, prefixes)
    return _strip(cookie_header, prefixes)


@functools.lru_cache(maxsize=16_384)
def _stripped(cookie_header: str, prefixes: tuple[str, ...]) -> str:
    return _strip(cookie_header, prefixes)


def _strip(cookie_header: str, prefixes: tuple[str, ...]) -> str:
    kept = [
        part
        for part in cookie_header.split(";")
        if part.strip() and not is_gateway_cookie(part.strip().split("=", 1)[0], prefixes)
    ]
    return ";".join(kept).strip()


class ForwardPlan(NamedTuple):
    """Everything decided about one request before it goes upstream (``gateway.plan``)."""

    target: Target
    route: RouteSettings
    client: ClientView
    request_id: str
    identity_headers: Mapping[str, str]
    """The signed token's header(s) for an authenticated route; empty for a public one."""
    timing: dict[str, float]
    """Where the edge collects this request's timings (``upstream``) for its access line."""
    deny: frozenset[str] = frozenset()
    """Lower-case names of client headers nobody behind the gateway may see."""
    body: bytes | None = None
    """The body when the policy read it already (a small form); ``None``: stream it."""


class Forwarder:
    """Sends requests to upstreams through one pooled client session per process."""

    def __init__(self, server: ServerSettings, metrics: Metrics):
        self.server = server
        self.metrics = metrics
        self.cookie_prefixes = tuple(server.gateway_cookie_prefixes)
        # Names the gateway itself sets on every request: a client's look-alike
        # (X_Request_ID) must not arrive next to ours.
        self._set_by_gateway = frozenset({server.request_id_header.lower()})
        self._header_sets: dict[frozenset[str], tuple[frozenset[str], frozenset[str]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._client: UpstreamClient | None = None
        self._upstreams: dict[int, Upstream] = {}

    async def start(self) -> None:
        self._client = UpstreamClient(
            limit=self.server.upstream_pool_size,
            idle_timeout=self.server.upstream_idle_seconds,
        )
        # Websockets only: their handshake and framing come from aiohttp. No limit
        # of its own: each websocket holds a place of the client's one limit.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # A shared jar would replay one user's upstream cookies to another.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._session is not None:
            await self._session.close()

    @property
    def client(self) -> UpstreamClient:
        assert self._client is not None, "Forwarder.start() was not called"
        return self._client

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Forwarder.start() was not called"
        return self._session

    def upstream(self, route: RouteSettings) -> Upstream:
        key = id(route)
        up = self._upstreams.get(key)
        if up is None or up.settings is not route:
            up = self._upstreams[key] = Upstream(route)
        return up

    def request_headers(
        self,
        request: web.BaseRequest,
        route: RouteSettings,
        client: ClientView,
        request_id: str,
        extra: Mapping[str, str],
        deny: frozenset[str] = frozenset(),
        websocket: bool = False,
    ) -> CIMultiDict[str]:
        """Headers to send upstream: hygiene first, then ours, then the route's own edits.

        ``deny`` (lower-case names) holds the client-sent headers nobody behind
        the gateway may see: identity headers and the configured deny-list.
        """
        sets = self._header_sets.get(deny)
        if sets is None:
            # Per deny-list (one per configuration generation), not per request.
            sets = self._header_sets[deny] = (
                HOP_BY_HOP | _FORWARDING | _CLIENT_FORBIDDEN | deny,
                _FORWARDING | _CLIENT_FORBIDDEN | deny | self._set_by_gateway,
            )
            while len(self._header_sets) > _HEADER_SETS_KEPT:
                del self._header_sets[next(iter(self._header_sets))]
        drop, protected = sets
        listed = request.headers.get("Connection")
        if listed:
            drop = _and_listed(drop, listed)
        if websocket:
            drop = drop | _WS_HANDSHAKE | {"sec-websocket-protocol"}
        underscores = self.server.underscores_in_headers
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            low = name.lower()
            if low in drop:
                continue
            if "_" in low and (not underscores or low.replace("_", "-") in protected):
                # X_Remote_User reaches a CGI/WSGI-style app as HTTP_X_REMOTE_USER,
                # the very variable X-Remote-User fills (nginx drops them too).
                continue
            if low == "cookie":
                value = strip_gateway_cookies(value, self.cookie_prefixes)
                if not value:
                    continue
            out.add(name, value)
        if route.preserve_host:
            out["Host"] = request.host
        out["X-Forwarded-For"] = client.xff
        out["X-Real-IP"] = client.address
        out["X-Forwarded-Proto"] = client.proto
        out["X-Forwarded-Host"] = client.host
        out["Forwarded"] = client.forwarded
        out[self.server.request_id_header] = request_id
        for name, value in extra.items():
            out[name] = value
        ops = route.request_headers
        for name in ops.remove:
            out.popall(name, None)
        for name, value in ops.set.items():
            out[name] = value
        return out

    async def forward(self, request: web.Request, plan: ForwardPlan) -> web.StreamResponse:
        """Proxy one HTTP request and stream the answer back."""
        route, target, client, request_id = plan.route, plan.target, plan.client, plan.request_id
        extra_headers, deny, body = plan.identity_headers, plan.deny, plan.body
        up = self.upstream(route)
        if (
            route.websocket
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in connection_tokens(request.headers)
        ):
            headers = self.request_headers(
                request, route, client, request_id, extra_headers, deny, websocket=True
            )
            url = up.target(target)
            return await self._websocket(request, route, url, headers)

        headers = self.request_headers(request, route, client, request_id, extra_headers, deny)
        # The client's headers pass as they are and no client library adds its
        # own. Without Accept-Encoding an upstream may compress as it likes
        # (RFC 9110, 12.5.3): a client that never asked would get it undecoded.
        if "Accept-Encoding" not in headers:
            headers["Accept-Encoding"] = "identity"
        host = headers.popone("Host", None)  # preserve_host, or a route's own value
        declared = request.content_length
        headers.popall("Content-Length", None)  # the body's framing is set when sending
        limit = route.max_body_bytes
        if declared is not None and declared > limit:
            raise BodyTooLarge(f"content-length {declared} > {limit}")
        data: AsyncIterator[bytes] | bytes | None = body
        state = _BodyState()
        if body is None:
            if request.body_exists:
                data = _limited(request.content, limit, state)
            elif declared is not None:
                data = b""  # keep an explicit "Content-Length: 0" (some servers need it)
        started = time.perf_counter()
        try:
            upstream = await self.client.request(
                up.origin_key,
                request.method,
                up.target_path(target),
                headers.items(),
                host=host,
                body=data,
                content_length=declared,
                connect_timeout=route.timeouts.connect,
                read_timeout=route.timeouts.read,
            )
        except RequestBodyError as exc:
            if state.too_large or isinstance(exc.cause, BodyTooLarge):
                raise BodyTooLarge("streamed body over the limit") from exc
            raise BadRequest("request body ended early") from exc
        except UpstreamError as exc:
            self.metrics.upstream_errors.labels(route.name, exc.kind).inc()
            if exc.kind == "timeout":
                raise UpstreamTimeout(f"{route.name}: timeout: {exc.detail}") from exc
            raise UpstreamUnavailable(f"{route.name}: {exc.kind}: {exc.detail}") from exc
        except InvalidHeader as exc:
            raise HeaderValueNotAllowed(str(exc)) from exc
        plan.timing["upstream"] = elapsed = time.perf_counter() - started
        self.metrics.observe_upstream(route.name, elapsed)
        try:
            return await self._stream_back(request, route, up, upstream, client, request_id)
        finally:
            upstream.release()

    async def _stream_back(
        self,
        request: web.Request,
        route: RouteSettings,
        up: Upstream,
        upstream: UpstreamResponse,
        client: ClientView,
        request_id: str,
    ) -> web.StreamResponse:
        # An answer that is already here whole (most pages) leaves in one write:
        # headers and body together. Anything else streams, headers first.
        whole = upstream.complete
        resp = (OneWriteResponse if whole else web.StreamResponse)(
            status=upstream.status, reason=upstream.reason
        )
        out = resp.headers
        listed = upstream.headers.get("Connection")
        drop = _and_listed(HOP_BY_HOP, listed) if listed else HOP_BY_HOP
        for name, value in upstream.headers.items():
            low = name.lower()
            if low in drop:
                continue
            if low == "set-cookie" and is_gateway_cookie(
                value.split("=", 1)[0].strip(), self.cookie_prefixes
            ):
                # The upstream must not overwrite (or fixate) the gateway's session.
                continue
            if low == "location":
                value = up.public_location(value, client.public_origin)
            out.add(name, value)
        ops = route.response_headers
        for name in ops.remove:
            out.popall(name, None)
        for name, value in ops.set.items():
            out[name] = value
        out[self.server.request_id_header] = request_id
        no_body = request.method == "HEAD" or upstream.status in (204, 304)
        if no_body:
            out.popall("Transfer-Encoding", None)
        try:
            await resp.prepare(request)
            if no_body:
                await resp.write_eof()
                return resp
            if whole:
                await resp.write_eof(upstream.take_buffered())
                return resp
        except ConnectionError:
            return self._client_gone(request, resp, route)
        while True:
            try:
                chunk = await upstream.read_chunk()
            except (UpstreamError, RequestBodyError) as exc:
                # Headers are gone already: the only honest signal left is to cut the
                # client's connection so it sees an incomplete response.
                kind = exc.kind if isinstance(exc, UpstreamError) else "reset"
                self.metrics.upstream_errors.labels(route.name, kind).inc()
                log.warning("upstream_failed_mid_body", route=route.name, kind=kind)
                resp.force_close()
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if not chunk:
                break
            try:
                await resp.write(chunk)
            except ConnectionError:
                return self._client_gone(request, resp, route)
        try:
            await resp.write_eof()
        except ConnectionError:
            return self._client_gone(request, resp, route)
        return resp

    @staticmethod
    def _client_gone(
        request: web.Request, resp: web.StreamResponse, route: RouteSettings
    ) -> web.StreamResponse:
        """The client went away mid-answer: not an error of ours or the upstream's."""
        log.info("client_disconnected", route=route.name)
        resp.force_close()
        return resp

    async def _websocket(
        self, request: web.Request, route: RouteSettings, url: URL, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        try:
            async with self.client.place(route.timeouts.connect):
                return await self._websocket_exchange(request, route, url, headers)
        except UpstreamError as exc:  # no free place within the connect timeout
            self.metrics.upstream_errors.labels(route.name, exc.kind).inc()
            if exc.kind == "timeout":
                raise UpstreamTimeout(f"{route.name}: websocket: {exc.detail}") from exc
            raise UpstreamUnavailable(f"{route.name}: websocket: {exc.detail}") from exc

    async def _websocket_exchange(
        self, request: web.Request, route: RouteSettings, url: URL, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        try:
            upstream_ws = await self.session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                autoclose=False,
                max_msg_size=route.max_body_bytes or 4 * 1024 * 1024,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            self.metrics.upstream_errors.labels(route.name, "timeout").inc()
            raise UpstreamTimeout(f"{route.name}: websocket timeout") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.metrics.upstream_errors.labels(route.name, "connect").inc()
            raise UpstreamUnavailable(f"{route.name}: websocket: {type(exc).__name__}") from exc
        client_ws = web.WebSocketResponse(
            protocols=(upstream_ws.protocol,) if upstream_ws.protocol else (),
            autoclose=False,
            max_msg_size=route.max_body_bytes or 4 * 1024 * 1024,
        )
        try:
            await client_ws.prepare(request)
            pumps = [
                asyncio.create_task(_pump(client_ws, upstream_ws)),
                asyncio.create_task(_pump(upstream_ws, client_ws)),
            ]
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            await upstream_ws.close()
            await client_ws.close()
        return client_ws


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in src:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        else:  # CLOSE, CLOSING, ERROR: the conversation is over
            break
    if not dst.closed:
        await dst.close(code=src.close_code or aiohttp.WSCloseCode.OK)


class OneWriteResponse(web.StreamResponse):
    """A response whose headers wait for the body, so both leave in one write.

    For answers already complete when the upstream's headers arrive; anything
    that streams sends its headers at once (a slow first chunk must not hold
    them back). ``_send_headers_immediately`` is aiohttp's own switch, used by
    its ``web.Response``; it is private, so ``test_upstream_client`` checks on
    every aiohttp version that it still holds the headers back.
    """

    _send_headers_immediately = False


class _BodyState:
    __slots__ = ("too_large",)

    def __init__(self) -> None:
        self.too_large = False


async def _limited(
    content: aiohttp.StreamReader, limit: int, state: _BodyState
) -> AsyncIterator[bytes]:
    """Stream the request body upstream, stopping once it exceeds ``limit`` bytes."""
    total = 0
    async for chunk in content.iter_any():
        total += len(chunk)
        if total > limit:
            state.too_large = True
            raise BodyTooLarge(f"streamed body over {limit} bytes")
        yield chunk


FORWARDER = web.AppKey("forwarder", Forwarder)
