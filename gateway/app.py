"""Wiring: builds the aiohttp application from a configuration. No decisions live here.

The request path (``design.md``) is: the edge middleware (request id, timing,
error pages, access log, metrics) → the gateway's own endpoints under the
reserved prefix, or the proxy handler: safe-path check → route match → policy
(``gateway.policy``) → forward (``gateway.proxy``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl

import structlog
from aiohttp import web, web_urldispatcher

from gateway.audit import audit
from gateway.backend_api import backend_routes
from gateway.config import GatewayConfig, RouteSettings, load_config
from gateway.connections import EdgeProtocol, descriptor_exhaustion
from gateway.context import REQUEST_ID, ROUTE_NAME, TIMING, Handler
from gateway.errors import (
    BadRequest,
    ConfigInvalid,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    RequestTimeout,
    for_http_status,
)
from gateway.forward_auth import forward_auth_routes
from gateway.gate import authorize, request_facts
from gateway.health import DependencyMonitor, login_checks, upstream_dns_check
from gateway.login import login_routes
from gateway.logs import (
    PRECHECKED,
    AccessLog,
    access_logger,
    configure_logging,
    redact_path,
    safe_query,
)
from gateway.metrics import Metrics, ScrapeGuard, metrics_handler, metrics_listener_ctx
from gateway.overview import overview_routes
from gateway.pages import error_response, see_other
from gateway.policy import Pairs, Redirect
from gateway.proxy import ClientView, Forwarder, client_view
from gateway.routing import NoMatch, Router
from gateway.services import SERVICES, services_ctx
from gateway.sessions.cookies import read_session_cookie
from gateway.target import BadTarget, Target, check_message, parse_target

log = structlog.get_logger("gateway.app")

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")


@dataclass
class Generation:
    """One loaded configuration and what is compiled from it; replaced whole on reload."""

    config: GatewayConfig
    router: Router
    deny_headers: frozenset[str]
    number: int


def _compile(config: GatewayConfig, number: int) -> Generation:
    # Identity headers are always denied, whatever the deny-list says: nothing
    # behind the gateway may ever see a client-made identity.
    deny = {h.lower() for h in config.server.deny_headers} | config.identity_headers()
    return Generation(config, Router(config.routes), frozenset(deny), number)


@dataclass
class Runtime:
    """Mutable process state: the current configuration generation and lifecycle flags."""

    path: Path | None
    current: Generation
    environ: dict[str, str] | None = None
    draining: bool = False
    _stamp: tuple[int, int, int] | None = None
    # Called after every reload attempt (SIGHUP or file change): e.g. token keys.
    on_reload: list[Callable[[], None]] = field(default_factory=list)

    def reload(self, metrics: Metrics) -> bool:
        """Load the file again; switch to it only if valid. In-flight requests keep theirs."""
        for hook in self.on_reload:
            hook()
        if self.path is None:
            return False
        try:
            config = load_config(self.path, self.environ)
        except ConfigInvalid as exc:
            metrics.config_reloads.labels("rejected").inc()
            log.error(
                "config_reload_rejected",
                file=str(self.path),
                problems=[str(p) for p in exc.problems],
                kept_generation=self.current.number,
            )
            return False
        old = self.current.config
        if any(
            getattr(config, section) != getattr(old, section)
            for section in ("store", "sessions", "saml", "mandates", "tokens", "admin")
        ):
            log.warning(
                "config_login_sections_changed",
                detail="store, sessions, saml, mandates, tokens and admin apply after a restart",
            )
        if config.server != old.server:
            log.warning(
                "config_server_section_changed",
                detail="listen address, workers and prefix apply after a restart",
            )
        self.current = _compile(config, self.current.number + 1)
        self._stamp = _file_stamp(self.path)
        metrics.config_reloads.labels("applied").inc()
        log.info("config_reloaded", file=str(self.path), generation=self.current.number)
        return True

    def changed_on_disk(self) -> bool:
        if self.path is None:
            return False
        stamp = _file_stamp(self.path)
        if self._stamp is None:
            self._stamp = stamp
            return False
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)
FORWARDER = web.AppKey("forwarder", Forwarder)
# Bound once per app: a lazy module-level logger would re-bind on every request.
ACCESS_LOG = web.AppKey("access_log", AccessLog)
DEPENDENCIES = web.AppKey("dependencies", DependencyMonitor)


def request_id_of(request: web.BaseRequest) -> str:
    return str(request.get(REQUEST_ID, "-"))


async def edge(request: web.Request, handler: Handler | None = None) -> web.StreamResponse:
    """Per-request cross-cutting work in one place: id, timing, errors, access log, metrics.

    It is the catch-all route's handler itself (``handler`` None: route, apply
    the policy, forward), and wraps the gateway's own endpoints through
    ``functools.partial`` (see ``edged``). No aiohttp middleware: every
    suspension while waiting for the upstream resumes through each coroutine
    in the await chain, so the proxy path keeps that chain as short as the
    bare proxy's plus one.
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
                plan = await _plan(request)
                if isinstance(plan, web.StreamResponse):
                    resp = plan
                else:
                    resp = await request.app[FORWARDER].forward(request, *plan)
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
                    "path": redact_path(request.path),
                    "query": safe_query(request.query_string),
                    "status": status,
                    "bytes": _bytes_sent(request, resp),
                    "duration_ms": round(elapsed * 1000, 2),
                    "upstream_ms": (
                        round(timing["upstream"] * 1000, 2) if "upstream" in timing else None
                    ),
                    "client": request.remote,
                },
            )


# nginx's "client closed request": the client went away before its answer was sent.
CLIENT_CLOSED = 499


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


def edged(handler: Handler) -> Handler:
    """A gateway endpoint with the edge's id, errors, access log and metrics around it."""
    wrapped: Handler = partial(edge, handler=handler)
    return wrapped


ForwardPlan = tuple[
    Target,
    RouteSettings,
    ClientView,
    str,
    dict[str, str],
    dict[str, float],
    frozenset[str],
    bytes | None,
]

# What ``OPTIONS *`` (a request about the server, not a resource) is told.
_SERVER_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


async def _plan(request: web.Request) -> web.StreamResponse | ForwardPlan:
    """Everything outside the reserved prefix: route and apply the policy.

    Returns a response to send as it is (a redirect to the login), or the
    arguments for ``Forwarder.forward``.
    """
    generation = request.app[RUNTIME].current  # in-flight requests keep this generation
    config = generation.config
    raw = request.raw_path
    try:
        check_message(request)
        if raw == "*" and request.method == "OPTIONS":
            return web.Response(
                status=200, headers={"Allow": _SERVER_METHODS, "Content-Length": "0"}
            )
        try:
            target = parse_target(raw)
        except BadTarget as exc:
            raise BadRequest(str(exc)) from None
    except GatewayError as err:
        # A refused shape is what probing looks like: each one is on the audit
        # trail with its reason (never the target itself: it may carry secrets).
        audit(
            "request_refused",
            reason=err.detail,
            status=err.status,
            method=request.method[:16],
            request_id=request[REQUEST_ID],
            client=request.remote,
        )
        raise
    path = target.path
    if path.startswith(config.server.reserved_prefix):
        raise NotFound(f"no gateway endpoint {path}")
    match = generation.router.resolve(request.host, path, request.method)
    if isinstance(match, NoMatch):
        raise MethodNotAllowed() if match.path_matched else NotFound(f"no route for {path}")
    route = match.route.settings
    request[ROUTE_NAME] = route.name
    extra: dict[str, str] = {}
    body: bytes | None = None
    if route.policy == "authenticated":
        form: Pairs | None = None
        if any(s.location == "form" for s in route.employer_scope):
            body = await _small_form(request, route.max_body_bytes)
            if body is not None:
                form = tuple(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        services = request.app[SERVICES]
        facts = request_facts(route, request.method, target, match.params, request.headers, form)
        session_id = read_session_cookie(request, services.config.sessions)
        decision = await authorize(services, route, facts, session_id, request[REQUEST_ID])
        if isinstance(decision, Redirect):
            return see_other(decision.location)
        extra = decision.headers
    client = client_view(
        request,
        config.server.trusted_proxies,
        str(config.server.public_url).rstrip("/") if config.server.public_url else None,
    )
    return (
        target,
        route,
        client,
        request[REQUEST_ID],
        extra,
        request[TIMING],
        generation.deny_headers,
        body,
    )


# Employer-scope checks on form fields read the body first; only small
# urlencoded forms qualify, everything else still streams.
_FORM_LIMIT = 64 * 1024


async def _small_form(request: web.Request, route_limit: int) -> bytes | None:
    if request.content_type != "application/x-www-form-urlencoded" or not request.body_exists:
        return None
    length = request.content_length
    if length is None or length > min(_FORM_LIMIT, route_limit):
        raise BadRequest("form too large for an employer-scope check")
    return await request.read()


async def healthz(request: web.Request) -> web.Response:
    """Process alive: answers as long as the event loop runs."""
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    """This replica can serve: config loaded, listening (it answers), not draining.

    Shared dependencies (store, broker, registry, upstream DNS) are deliberately
    not part of it: they fail for every replica at once, and a load balancer
    would then drop them all together (see ``gateway.health``).
    """
    runtime = request.app[RUNTIME]
    checks: dict[str, dict[str, object]] = {
        "config": {"ok": True, "detail": f"generation {runtime.current.number}"},
        "draining": {
            "ok": not runtime.draining,
            "detail": "shutting down" if runtime.draining else "serving",
        },
    }
    ok = not runtime.draining
    return web.json_response(
        {"status": "ready" if ok else "not_ready", "checks": checks},
        status=200 if ok else 503,
        headers={"Cache-Control": "no-store"},
    )


async def dependencies(request: web.Request) -> web.Response:
    """Shared dependencies: 200 when all are up, else 503 with details (monitoring only)."""
    report = await request.app[DEPENDENCIES].report()
    return web.json_response(
        report.as_json(time.monotonic()),
        status=200 if report.all_up else 503,
        headers={"Cache-Control": "no-store"},
    )


def build_app(
    config: GatewayConfig,
    *,
    config_path: Path | None = None,
    environ: dict[str, str] | None = None,
    configure_logs: bool = True,
) -> web.Application:
    """The gateway application for ``config``; ``config_path`` enables reload."""
    if configure_logs:
        configure_logging(config.logging.format, config.logging.level)
    app = web.Application(client_max_size=1024**2)
    runtime = Runtime(config_path, _compile(config, 1), environ)
    if config_path is not None:
        runtime.changed_on_disk()  # remember the stamp of the file we loaded
    metrics = Metrics()
    monitor = DependencyMonitor(
        [("upstreams", upstream_dns_check(lambda: runtime.current.config))], metrics.registry
    )
    app[DEPENDENCIES] = monitor
    forwarder = Forwarder(config.server, metrics)
    app[RUNTIME] = runtime
    app[METRICS] = metrics
    app[FORWARDER] = forwarder
    app[ACCESS_LOG] = access_logger(config.logging.level)

    async def forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
        await forwarder.start()
        yield
        await forwarder.close()

    async def watch_ctx(app: web.Application) -> AsyncIterator[None]:
        interval = config.server.config_poll_seconds
        tasks = [asyncio.create_task(_flush_access_log(app))]
        if config_path is not None and interval > 0:
            tasks.append(asyncio.create_task(_watch(runtime, metrics, interval)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _flush_now(app)

    app.cleanup_ctx.append(forwarder_ctx)
    app.cleanup_ctx.append(watch_ctx)

    prefix = config.server.reserved_prefix
    if config.login_enabled:
        assert config.tokens is not None
        app.cleanup_ctx.append(partial(services_ctx, config=config))
        monitor.extend(login_checks(app))
        endpoints = [
            *login_routes(prefix),
            *overview_routes(prefix),
            *backend_routes(prefix, config.tokens.employers_path),
        ]
        for method, path, handler in endpoints:
            if method == "GET":
                app.router.add_get(path, edged(handler))  # HEAD too
            else:
                app.router.add_route(method, path, edged(handler))
    if config.forward_auth.enabled:
        current = lambda: (runtime.current.config, runtime.current.router)  # noqa: E731
        for method, path, handler in forward_auth_routes(prefix, current):
            app.router.add_route(method, path, edged(handler))
    app.router.add_get(prefix + "healthz", edged(healthz))
    app.router.add_get(prefix + "readyz", edged(readyz))
    app.router.add_get(prefix + "dependencies", edged(dependencies))
    scrape = ScrapeGuard(config.metrics.token_file)  # a bad token file stops startup here
    if config.metrics.port is None:
        app.router.add_get(prefix + "metrics", edged(metrics_handler(metrics, scrape)))
    else:  # its own listener (e.g. reachable by Prometheus only); not on the main one
        app.cleanup_ctx.append(
            partial(
                metrics_listener_ctx,
                metrics=metrics,
                guard=scrape,
                path=prefix + "metrics",
                host=config.metrics.host or config.server.host,
                port=config.metrics.port,
                reuse_port=config.server.workers > 1,
            )
        )
    app.router.add_route("*", "/{tail:.*}", edge)

    async def monitor_ctx(app: web.Application) -> AsyncIterator[None]:
        # Appended last: the login services exist before the first check.
        task = asyncio.create_task(monitor.run(), name="dependency-checks")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app.cleanup_ctx.append(monitor_ctx)
    every_target = _EveryTarget()
    every_target.add_route("*", edge)
    app.router.register_resource(every_target)
    return app


class _EveryTarget(web_urldispatcher.PlainResource):
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


def _flush_now(app: web.Application) -> None:
    app[ACCESS_LOG].sink.flush()


async def _flush_access_log(app: web.Application) -> None:
    """Quiet periods must not leave access lines (or metric figures) waiting."""
    while True:
        await asyncio.sleep(0.25)
        _flush_now(app)
        app[METRICS].flush()


async def _watch(runtime: Runtime, metrics: Metrics, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if runtime.changed_on_disk():
            runtime.reload(metrics)
