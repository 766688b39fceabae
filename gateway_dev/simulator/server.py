"""Running the simulator: standalone (``gateway simulator``) or embedded on a free port.

:func:`running_simulator` starts the app on a host/port (port 0 picks a free
one), binds the simulator's base URL to the real address and yields the
control API; :func:`serve_simulator` runs until cancelled and
:func:`run_simulator` is the blocking entry point for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from gateway_dev.simulator.app import build_simulator_app
from gateway_dev.simulator.control import SIMULATOR, Simulator
from gateway_dev.simulator.settings import SimulatorSettings

log = structlog.get_logger("gateway_dev.simulator")


@contextlib.asynccontextmanager
async def running_simulator(
    settings: SimulatorSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Simulator]:
    """Serve the simulator until the block exits; yields its control API.

    With ``settings.base_url`` unset, the base URL becomes
    ``http(s)://<host>:<bound port>`` so metadata and artifacts name the real address.
    """
    app = build_simulator_app(settings, clock=clock)
    sim = app[SIMULATOR]
    # A test tool: idle keep-alive connections must not hold its stop for a minute.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        site = web.SockSite(runner, sock, ssl_context=sim.tls_context)
        await site.start()
        bound = sock.getsockname()[1]
        if settings.base_url is None:
            scheme = "https" if sim.tls_context is not None else "http"
            shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
            shown = f"[{shown}]" if ":" in shown else shown
            sim.set_base_url(f"{scheme}://{shown}:{bound}")
        log.info("sim_started", base_url=sim.base_url(), entity_id=settings.entity_id)
        yield sim
    finally:
        await runner.cleanup()


async def serve_simulator(
    settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 8081
) -> None:
    """Serve until SIGINT or SIGTERM (or until cancelled), then stop.

    The signals are handled by the loop itself (as the gateway does): they wake it
    through its own descriptor whichever thread the kernel hands them to, so a
    signal is never left waiting for the loop's next wake-up.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_simulator(settings, host, port):
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        log.info("sim_stopped")


def run_simulator(settings: SimulatorSettings, host: str = "127.0.0.1", port: int = 8081) -> None:
    """Blocking entry point: serve until Ctrl-C / SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_simulator(settings, host, port))
