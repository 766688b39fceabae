"""The demo: the gateway in front of the sample portal, in one process, nothing to install.

``./dev demo`` runs this. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from gateway.app import build_app
from gateway.config import load_config
from gateway.portal import build_portal_app
from gateway.server import run_app_until_stopped


async def _run(config_path: Path, port: int, portal_port: int) -> None:
    environ = {"GATEWAY__SERVER__PORT": str(port)}
    # Point every route at the sample portal on the port chosen for this run.
    for i, _ in enumerate(load_config(config_path, environ).routes):
        environ[f"GATEWAY__ROUTES__{i}__UPSTREAM"] = f"http://127.0.0.1:{portal_port}"
    config = load_config(config_path, environ)
    portal = web.AppRunner(build_portal_app(), access_log=None)
    await portal.setup()
    await web.TCPSite(portal, "127.0.0.1", portal_port).start()

    def started(bound: int) -> None:
        print(
            "\n  eHerkenning gateway demo\n"
            f"  Open http://localhost:{bound}/ in your browser.\n"
            f"  The sample portal behind it runs on http://127.0.0.1:{portal_port}/.\n"
            f"  Gateway health: http://localhost:{bound}/_gateway/healthz"
            f"  metrics: http://localhost:{bound}/_gateway/metrics\n"
            "  Stop with Ctrl-C.\n",
            flush=True,
        )

    try:
        app = build_app(config, config_path=config_path, environ=environ)
        await run_app_until_stopped(app, config, on_started=started)
    finally:
        await portal.cleanup()


def run_demo(config_path: Path, port: int, portal_port: int) -> int:
    asyncio.run(_run(config_path, port, portal_port))
    return 0
