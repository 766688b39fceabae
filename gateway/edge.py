"""The edge: what every request gets, whichever handler answers it.

- a request id: the client's own ``server.request_id_header`` when it looks
  like one (8-128 of ``[A-Za-z0-9._:-]``), else 128 random bits; it is on the
  answer, on every log line of the request and on the error page;
- error mapping: a ``GatewayError`` becomes its page (``gateway.pages``);
  aiohttp's own answers from a handler become the matching error; anything
  unexpected is a 500 page with the traceback in the log, never in the answer.
  A client that left is logged as 499 and sent nothing; a client that stopped
  sending its body gets 408; running out of file descriptors is a 503;
- the access line (``logging.access_log``) and the request metrics.

The catch-all route's handler is ``edge`` itself (route, policy, forward:
``gateway.plan`` then ``gateway.proxy``); the gateway's own endpoints are
wrapped with ``edged``. There is no aiohttp middleware: every suspension while
waiting for the upstream resumes through each coroutine in the await chain, so
the proxy path keeps that chain as short as a bare proxy's plus one.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import Callable
from functools import partial

import structlog
from aiohttp import web, web_urldispatcher

from gateway.connections import EdgeProtocol, descriptor_exhaustion
from gateway.context import REQUEST_ID, ROUTE_NAME, TIMING, Handler
from gateway.errors import GatewayError, Overloaded, RequestTimeout, for_http_status
from gateway.logs import PRECHECKED, AccessLog, redact_path, safe_query
from gateway.metrics import METRICS
from gateway.pages import error_response
from gateway.plan import plan
from gateway.proxy import FORWARDER
from gateway.runtime import RUNTIME

log = structlog.get_logger("gateway.edge")

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")

# nginx's "client closed request": the client went away before its answer was sent.
CLIENT_CLOSED = 499

# Bound once per app: a lazy module-level logger would re-bind on every request.
ACCESS_LOG = web.AppKey("access_log", AccessLog)


async def edge(request: web.Request, handler: Handler | None = None) -> web.StreamResponse:
    """Per-request cross-cutting work in one place: id, timing, errors, access log, metrics.

    ``handler`` None: the catch-all route (plan, then forward); else a gateway
    endpoint (see ``edged``).
    """
    started = time.perf_counter()
    runtime = request.app[RUNTIME]
    metrics = request.app[METRICS]
    header = runtime.current.config.server.request_id_header
    incoming = request.headers.get(header, "")
    # 128 random bits as 32 hex characters, like uuid4().hex at a fifth of the cost.
    request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    timing: dict[str, float] = {}
    request[TIMING] = timing
    metrics.request_started()
    status = 500
    resp: web.StreamResponse | None = None
    try:
        try:
            if handler is not None:
                resp = await handler(request)
            else:
                planned = await plan(request)
                if isinstance(planned, web.StreamResponse):
                    resp = planned
                else:
                    resp = await request.app[FORWARDER].forward(request, planned)
        except GatewayError as err:
            resp = _error_answer(request, err, request_id)
        except web.HTTPException as exc:
            # aiohttp's own answers from a handler (e.g. a bad form body).
            resp = _error_answer(request, for_http_status(exc.status, exc.reason), request_id)
        except asyncio.CancelledError:
            # The client left (its proxied request is cancelled then, see
            # gateway.connections), or shutdown ended a request past its grace.
            status = CLIENT_CLOSED if request.transport is None else 503
            raise
        except Exception as exc:
            resp = _crash_answer(request, exc, request_id)
        if not resp.prepared:
            resp.headers.setdefault(header, request_id)
            if handler is not None and request.transport is None:
                resp = _client_gone()  # an own page nobody is left to read
        status = resp.status
        return resp
    finally:
        elapsed = time.perf_counter() - started
        route = request.get(ROUTE_NAME, "-")
        metrics.observe_request(route, request.method, status, elapsed)
        access = request.app[ACCESS_LOG]
        if access.enabled and runtime.current.config.logging.access_log:
            access.emit(
                "request_handled",
                {
                    PRECHECKED: True,  # every field below is safe by construction
                    "request_id": request_id,
                    "route": route,
                    "method": request.method,
                    "path": _logged(redact_path, request.path),
                    "query": _logged(safe_query, request.query_string),
                    "status": status,
                    "bytes": _bytes_sent(request, resp),
                    "duration_ms": round(elapsed * 1000, 2),
                    "upstream_ms": (
                        round(timing["upstream"] * 1000, 2) if "upstream" in timing else None
                    ),
                    "client": request.remote,
                },
            )


@functools.lru_cache(maxsize=4096)
def _logged_short(clean: Callable[[str], str], value: str) -> str:
    return clean(value)


def _logged(clean: Callable[[str], str], value: str) -> str:
    """``clean(value)`` for the access line, remembered for short values: a page's
    path and query come again and again, and cleaning them is a pure function."""
    return _logged_short(clean, value) if len(value) <= 256 else clean(value)


def edged(handler: Handler) -> Handler:
    """A gateway endpoint with the edge's id, errors, access log and metrics around it."""
    wrapped: Handler = partial(edge, handler=handler)
    return wrapped


def _client_gone() -> web.Response:
    """What ``edge`` returns for a client that has gone: never sent, logged as 499."""
    resp = web.Response(status=CLIENT_CLOSED)
    resp.force_close()
    return resp


def _error_answer(request: web.Request, err: GatewayError, request_id: str) -> web.Response:
    """The answer for ``err``, after asking whether the client's connection caused it.

    A client that left, or stopped sending its body, makes the request fail in
    whatever step was reading: that step's error (400 for a short body, say) is
    replaced by the client's own failure (499, 408). A step that ran out of
    file descriptors is the gateway's overload (503), not the upstream's fault.
    """
    if request.transport is None:
        return _client_gone()
    if getattr(request.protocol, "body_timed_out", False) and not isinstance(err, RequestTimeout):
        err = RequestTimeout(f"request body stalled ({err.code})")
    exhausted = descriptor_exhaustion(err)
    if exhausted is not None:
        _report_exhaustion(request, exhausted)
        err = Overloaded(f"out of descriptors: {err.detail}")
    elif err.status >= 500:
        log.warning("request_failed", code=err.code, detail=err.detail, request_id=request_id)
    resp = error_response(request, err, request_id)
    if err.status == 408:
        resp.force_close()  # the rest of the body will never come
    return resp


def _crash_answer(request: web.Request, exc: Exception, request_id: str) -> web.Response:
    """The answer for an error nobody expected: 500, unless the client or descriptors caused it."""
    if request.transport is None:
        return _client_gone()  # e.g. reading the body of a client that left
    exhausted = descriptor_exhaustion(exc)
    if exhausted is not None:
        _report_exhaustion(request, exhausted)
        return error_response(request, Overloaded("out of descriptors"), request_id)
    log.exception("request_crashed", request_id=request_id)
    return error_response(request, GatewayError("unexpected"), request_id)


def _report_exhaustion(request: web.Request, exc: OSError) -> None:
    protocol = request.protocol
    if isinstance(protocol, EdgeProtocol):
        protocol.guard.exhausted("request", exc)  # throttled: a burst writes one traceback
    else:
        log.error("descriptors_exhausted", where="request", exc_info=exc)


def _bytes_sent(request: web.BaseRequest, resp: web.StreamResponse | None) -> int:
    """Body bytes of the answer: counted while streaming, or the size of a ready body."""
    if resp is None:
        return 0
    if resp.prepared:
        # body_length is only set once the answer ended; a client that left
        # mid-answer got what the writer wrote so far.
        return resp.body_length or request.writer.output_size
    return resp.content_length or 0  # returned, not yet written (the gateway's own pages)


class EveryTarget(web_urldispatcher.PlainResource):
    """Takes every request target that the catch-all path route cannot.

    aiohttp's router only matches paths: the asterisk form ``*`` (RFC 9112
    3.2.4), the authority form of CONNECT and a path whose decoded form holds a
    line break would get aiohttp's own bare 404 before the edge saw them. This
    resource sits last under "/" in the router's index, where every such lookup
    ends, and hands them to the edge, which answers ``OPTIONS *`` itself and
    refuses the rest with the 400 page (``gateway.target``).
    """

    def __init__(self) -> None:
        web_urldispatcher.Resource.__init__(self)
        self._path = "/"

    def _match(self, path: str) -> dict[str, str] | None:
        return {}

    def raw_match(self, path: str) -> bool:
        return False


async def flush_access_log(app: web.Application) -> None:
    """Quiet periods must not leave access lines (or metric figures) waiting."""
    while True:
        await asyncio.sleep(0.25)
        app[ACCESS_LOG].sink.flush()
        app[METRICS].flush()
