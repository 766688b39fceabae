"""The development commands: ``gateway demo``, ``simulator``, ``portal`` and ``keys saml``.

``gateway`` (``gateway/cli.py``) lists these and hands them here when this
package is installed (``./dev`` installs the repository); the production wheel
does not contain it, so there they stop with one line saying so.
``python -m gateway_dev COMMAND ...`` runs them directly.

Exit codes as for ``gateway``: 0 success, 1 runtime failure, 2 usage or an
invalid configuration (one line per problem, naming the file).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.cli import print_problems
from gateway.errors import ConfigInvalid


def parser(prog: str = "gateway") -> argparse.ArgumentParser:
    """The development commands' argument parser (``prog``: how the usage line names it)."""
    p = argparse.ArgumentParser(
        prog=prog, description="Development commands of the eHerkenning identity gateway."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the demo: gateway + sample portal, nothing to install")
    d.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    d.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    d.add_argument("--portal-port", type=int, default=9081, help="sample portal port")
    d.add_argument("--simulator-port", type=int, default=0, help="broker simulator (0: any)")
    d.add_argument("--state-dir", type=Path, default=Path("var/demo"), help="keys and data")
    d.add_argument("--redis", default=None, metavar="URL", help="keep state in Redis")
    d.add_argument("--replicas", type=int, default=1, help="gateway processes (needs --redis)")

    sim = sub.add_parser("simulator", help="run the eHerkenning broker simulator")
    sim.add_argument("--config", type=Path, default=Path("config/simulator.example.yaml"))
    sim.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=None, help="port (default 8081)")
    sim.add_argument(
        "--public-url",
        default=None,
        help="base URL browsers and the gateway use to reach the simulator "
        "(default: base_url from the file, else http://HOST:PORT)",
    )

    pt = sub.add_parser("portal", help="run only the sample legacy portal")
    pt.add_argument("--host", default="127.0.0.1")
    pt.add_argument("--port", type=int, default=9081)

    keys = sub.add_parser("keys", help="throw-away key material")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="KIND")
    ks = ksub.add_parser("saml", help="self-signed SP signing + encryption key pairs (dev only)")
    ks.add_argument("--dir", type=Path, required=True)
    ks.add_argument("--common-name", default="gateway-dev")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "gateway") -> int:
    args = parser(prog).parse_args(argv)
    cmd = args.command
    if cmd == "demo":
        from gateway_dev.demo import run_demo

        return _config_errors_to_exit(
            lambda: run_demo(
                args.config,
                args.port,
                args.portal_port,
                simulator_port=args.simulator_port,
                state_dir=args.state_dir,
                redis_url=args.redis,
                replicas=args.replicas,
            )
        )
    if cmd == "simulator":
        return _config_errors_to_exit(
            lambda: _simulator(args.config, args.host, args.port, args.public_url)
        )
    if cmd == "portal":
        from aiohttp import web

        from gateway_dev.portal import build_portal_app

        web.run_app(build_portal_app(), host=args.host, port=args.port, access_log=None)
        return 0
    if cmd == "keys":
        return _saml_keys(args.dir, args.common_name)
    raise AssertionError(cmd)  # argparse rejects unknown commands


def _config_errors_to_exit(run: Callable[[], int | None]) -> int:
    try:
        result = run()
    except ConfigInvalid as exc:
        print_problems(exc)
        return 2
    return int(result or 0)


def _saml_keys(directory: Path, common_name: str) -> int:
    import sys

    from gateway_dev.devkeys import rsa_keypair

    try:
        for use in ("signing", "encryption"):
            pair = rsa_keypair(f"{common_name}-{use}", bits=3072)
            pair.write(directory / f"{use}.key", directory / f"{use}.crt")
    except OSError as exc:
        print(f"gateway keys saml: {exc}", file=sys.stderr)
        return 1
    print(f"wrote signing.key/.crt and encryption.key/.crt to {directory} (dev only)")
    return 0


def _simulator(path: Path, host: str | None, port: int | None, public_url: str | None) -> int:
    from gateway.logs import configure_logging
    from gateway_dev.simulator import load_simulator_settings
    from gateway_dev.simulator.server import run_simulator

    settings = load_simulator_settings(path)
    if public_url is not None:
        settings = settings.model_copy(update={"base_url": public_url.rstrip("/")})
    elif settings.base_url is None:
        # The URLs the simulator publishes follow where it actually listens.
        base = f"http://{host or '127.0.0.1'}:{port or 8081}"
        settings = settings.model_copy(update={"base_url": base})
    configure_logging("console", "info")
    print(f"eHerkenning broker simulator on {settings.base_url}/")
    run_simulator(settings, host or "127.0.0.1", port or 8081)
    return 0
