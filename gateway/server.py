"""Running the gateway: one event loop per worker, signals, graceful shutdown.

- SIGTERM/SIGINT: readiness turns 503, the gateway keeps accepting for
  ``drain_delay_seconds`` (so a load balancer stops sending), then stops
  accepting, closes idle keep-alive connections and gives in-flight requests
  ``shutdown_grace_seconds`` to finish, then exits 0. While draining, every
  response says ``Connection: close``, so keep-alive clients move to another
  replica between requests instead of having an idle connection closed under
  them at the end of the drain.
- SIGHUP: reload the configuration file (also done when the file changes).
- ``server.workers`` > 1: a supervisor forks that many workers that share the
  port (SO_REUSEPORT, the kernel spreads connections), forwards signals to
  them, and restarts a worker that dies unexpectedly. One worker per core is
  the rule (the aiohttp HTTP code is the bottleneck, see docs/operations.md).
- Client connections get deadlines and caps (``gateway.connections``): each
  worker raises its descriptor limit to the hard limit, sizes its connection
  cap from it, and logs the figures as ``client_connection_limits``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from gateway.app import build_app
from gateway.config import GatewayConfig, ServerSettings
from gateway.connections import AcceptGuard, ConnectionGuard, EdgeRunner, raise_descriptor_limit
from gateway.edge import edge
from gateway.errors import ConfigInvalid
from gateway.metrics import METRICS, enable_multiprocess, mark_worker_dead
from gateway.runtime import RUNTIME, Runtime

log = structlog.get_logger("gateway.server")

# A worker that cannot start exits with this code; the supervisor then stops
# everything instead of restarting it for ever.
EXIT_STARTUP_FAILED = 3


class StartupFailed(Exception):
    """The gateway could not start: its address is taken, or a part refused to start.

    ``str()`` is one line naming the setting and the problem, for the caller to
    print after the configuration file's name.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)


def _startup_failure(exc: BaseException, server: ServerSettings) -> StartupFailed:
    """One line for what went wrong while starting (never a traceback)."""
    if isinstance(exc, StartupFailed):
        return exc
    if isinstance(exc, ConfigInvalid):
        return StartupFailed("", "; ".join(str(p) for p in exc.problems))
    if isinstance(exc, OSError) and exc.errno in (
        errno.EADDRINUSE,
        errno.EADDRNOTAVAIL,
        errno.EACCES,
    ):
        return StartupFailed(
            "server.port", f"cannot listen on {server.host}:{server.port}: {exc.strerror}"
        )
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return StartupFailed(
        "", f"could not start: {type(exc).__name__}{': ' if detail else ''}{detail}"
    )


async def run_app_until_stopped(
    app: web.Application,
    config: GatewayConfig,
    *,
    reuse_port: bool = False,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and stop gracefully."""
    server = config.server
    runtime = app[RUNTIME]
    app.on_response_prepare.append(_close_connection_when_draining(runtime))
    guard = ConnectionGuard(
        server, app[METRICS], raise_descriptor_limit(), cancel_when_gone=_is_proxied
    )
    loop = asyncio.get_running_loop()
    accept_guard = AcceptGuard(guard)
    accept_guard.install(loop)
    runner = EdgeRunner(
        app,
        guard,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=server.shutdown_grace_seconds,
        keepalive_timeout=server.client_keepalive_seconds,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port, backlog=1024)
        await site.start()
    except Exception as exc:
        # Stop what did start (worker pools, connections) before reporting.
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise _startup_failure(exc, server) from exc
    port = _bound_port(runner)
    log.info("gateway_started", host=server.host, port=port, pid=os.getpid())
    log.info(
        "client_connection_limits",
        descriptor_limit=guard.descriptor_limit,
        max_connections=guard.max_connections,
        max_connections_per_client=guard.per_client,
        keepalive_seconds=server.client_keepalive_seconds,
        header_timeout_seconds=server.client_header_timeout_seconds,
        body_timeout_seconds=server.client_body_timeout_seconds,
    )
    # Each client connection may hold one upstream connection, up to the pool size.
    upstream = min(server.upstream_pool_size, guard.max_connections)
    if guard.max_connections + upstream > guard.descriptor_limit:
        log.warning(
            "descriptor_limit_low",
            detail="max_connections plus upstream_pool_size exceed the descriptor limit: "
            "under load, requests get 503 pages when descriptors run out",
            descriptor_limit=guard.descriptor_limit,
        )
    if on_started is not None:
        on_started(port)

    stop = asyncio.Event()
    metrics = app[METRICS]
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: runtime.reload(metrics))
    try:
        await stop.wait()
        runtime.draining = True
        log.info("gateway_draining", delay_seconds=server.drain_delay_seconds)
        if server.drain_delay_seconds:
            await asyncio.sleep(server.drain_delay_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        started = time.monotonic()
        await runner.cleanup()
        accept_guard.close()
        log.info("gateway_stopped", drained_seconds=round(time.monotonic() - started, 3))


def _is_proxied(request: web.BaseRequest) -> bool:
    """A request on its way to an upstream (not one of the gateway's own endpoints).

    Only these are cancelled when their client leaves: an own endpoint (a login
    completing, a logout) always finishes what it started.
    """
    if not isinstance(request, web.Request):
        return False
    match_info = request.match_info  # None until routed
    return match_info is not None and match_info.handler is edge


def _close_connection_when_draining(
    runtime: Runtime,
) -> Callable[[web.BaseRequest, web.StreamResponse], Awaitable[None]]:
    """A response hook: while draining, end each keep-alive connection after its response.

    Without it, a client's idle keep-alive connection stays pinned to a draining
    replica (the load balancer only steers NEW connections) until shutdown
    closes it, and a request sent at that moment gets no answer at all. The
    header is set here because aiohttp writes headers after this hook runs.
    """

    async def hook(request: web.BaseRequest, response: web.StreamResponse) -> None:
        if runtime.draining and response.status != 101:  # an upgrade owns its connection
            response.force_close()
            response.headers["Connection"] = "close"

    return hook


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return 0


def _new_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    if use_uvloop:
        try:
            import uvloop

            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
        except ImportError:
            log.info("uvloop_unavailable", detail="install gateway[speed] for uvloop")
    return asyncio.new_event_loop


def run_worker(config: GatewayConfig, config_path: Path | None, *, reuse_port: bool) -> None:
    """Run one worker process's event loop until it is stopped."""
    app = build_app(config, config_path=config_path)
    settle_garbage_collector()
    with asyncio.Runner(loop_factory=_new_loop_factory(config.server.uvloop)) as runner:
        runner.run(run_app_until_stopped(app, config, reuse_port=reuse_port))


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector's full passes short (they hold the event loop).

    A worker starts with some 80,000 objects from its libraries, its
    configuration and its compiled routes and pages, none of which will ever
    be garbage; a full collection walks all of them, about 50 ms on the
    benchmark machine, and every request of the worker waits meanwhile.
    ``gc.freeze`` moves them out of the collector's sight (reference counting
    still frees them; only cycles among them would stay), so a full pass walks
    what requests and sessions created since: about 11 ms with 10,000 cached
    sessions. The first generation's threshold goes from 700 to 7,000
    allocations, so the young collections a request triggers run a tenth as
    often.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(7_000, second, third)


def serve(config: GatewayConfig, config_path: Path | None) -> int:
    """Entry point of ``gateway serve``: one process, or a supervisor of several."""
    workers = config.server.workers
    if workers == 1:
        run_worker(config, config_path, reuse_port=False)
        return 0
    if config.server.port == 0:
        # Workers can only share a port that is known before they start.
        with socket.socket() as s:
            s.bind((config.server.host, 0))
            port = s.getsockname()[1]
        config = config.model_copy(
            update={"server": config.server.model_copy(update={"port": port})}
        )
    _check_listen(config.server)
    if config.metrics.port == 0:  # the same for a separate metrics listener
        with socket.socket() as s:
            s.bind((config.metrics.host or config.server.host, 0))
            port = s.getsockname()[1]
        config = config.model_copy(
            update={"metrics": config.metrics.model_copy(update={"port": port})}
        )
    return _supervise(config, config_path, workers)


def _check_listen(server: ServerSettings) -> None:
    """Bind once as the workers will (SO_REUSEPORT): a taken address fails before any fork."""
    try:
        probe = socket.create_server((server.host, server.port), reuse_port=True)
    except OSError as exc:
        raise _startup_failure(exc, server) from exc
    probe.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the supervisor dies (even by SIGKILL).

    Without it, a killed supervisor leaves workers holding the port. Elsewhere
    this is a no-op; the supervisor's normal shutdown still stops its workers.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _supervise(config: GatewayConfig, config_path: Path | None, workers: int) -> int:
    # Metrics from all workers are aggregated through files in this directory.
    prom_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    enable_multiprocess(prom_dir)
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # worker
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _die_with_parent()
            code = 0
            try:
                run_worker(config, config_path, reuse_port=True)
            except StartupFailed as exc:  # the parent stops everything
                print(f"{config_path}: {exc}", file=sys.stderr)
                code = EXIT_STARTUP_FAILED
            except BaseException:  # the parent restarts us; say why first
                log.exception("worker_crashed", slot=slot)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        children[pid] = slot

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for slot in range(workers):
        spawn(slot)
    log.info("supervisor_started", workers=workers, port=config.server.port, pid=os.getpid())
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        mark_worker_dead(pid)
        if code == EXIT_STARTUP_FAILED and not stopping:
            # A worker that cannot start would not start when restarted either.
            log.error("worker_start_failed", slot=slot, pid=pid, action="stopping")
            stopping = True
            exit_code = 2
            forward(signal.SIGTERM, None)
        elif not stopping:
            log.error("worker_exited", slot=slot, pid=pid, code=code, action="restarting")
            time.sleep(0.5)
            spawn(slot)
        elif code != 0 and exit_code == 0:
            exit_code = 1
    with contextlib.suppress(OSError):
        for f in Path(prom_dir).iterdir():
            f.unlink()
        Path(prom_dir).rmdir()
    log.info("supervisor_stopped", code=exit_code)
    return exit_code
