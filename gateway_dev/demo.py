"""The demo: gateway, broker simulator and sample portal in one process group.

``./dev demo`` (= ``gateway demo``) runs this. Nothing to install: the store is
in memory, mandates come from a file, and development keys are generated on
the first run into the state folder (``var/demo/``, git-ignored)::

    var/demo/keys/      SP signing + encryption pairs, token key, session-ref secret, admin token
    var/demo/mandates.yaml   the registry file (regenerated at every start; /demo edits it)
    var/demo/gateway.yaml    the effective gateway config (config/demo.yaml + what is filled in)

``--redis URL`` keeps the state in Redis instead; ``--replicas N`` (needs
Redis) runs N ``gateway serve`` child processes behind a round-robin TCP
splitter (``gateway_dev/demo_splitter.py``) on the public port, so sessions are
visibly shared. Ctrl-C (or SIGTERM) stops everything and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from cryptography import x509

from gateway.app import build_app
from gateway.config import GatewayConfig, parse_config
from gateway.errors import ConfigInvalid, ConfigProblem
from gateway.logs import configure_logging
from gateway.saml.keys import load_sp_keys
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway.tokens.rotation import signing_key_pem
from gateway_dev.demo_splitter import RoundRobinSplitter, free_port
from gateway_dev.devkeys import rsa_keypair
from gateway_dev.portal import PortalSettings, build_portal_app
from gateway_dev.portal.demo_data import write_demo_mandates
from gateway_dev.simulator import Simulator, SimulatorSettings, running_simulator

# What each demo scenario shows; printed at start and listed on /demo.
GUIDE: tuple[tuple[str, str], ...] = (
    ("direct", "eigen eHerkenning, groot kantoor: 352 klanten, zoeken en kiezen op het overzicht"),
    ("direct-small", "klein kantoor met 2 klanten: trek er een in op /demo en zie hem verdwijnen"),
    ("direct-none", "kantoor zonder klanten: het overzicht legt uit hoe machtigen werkt"),
    ("chain", "ketenmachtiging met machtiging bij het fonds: precies een werkgever"),
    ("chain-no-mandate", "ketenmachtiging zonder machtiging bij het fonds: uitleg en weigering"),
    ("direct-eh2", "niveau EH2: te laag, de gateway vraagt om EH3"),
    ("cancel", "annuleren bij de makelaar: terug naar een pagina om opnieuw in te loggen"),
)


@dataclass(frozen=True)
class DemoOptions:
    """Everything ``gateway demo`` can be told on its command line."""

    config: Path = Path("config/demo.yaml")
    port: int = 8080
    portal_port: int = 9081
    simulator_port: int = 0
    state_dir: Path = Path("var/demo")
    redis_url: str | None = None
    replicas: int = 1


@dataclass(frozen=True)
class StateFiles:
    """The generated files in the state folder."""

    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def mandates(self) -> Path:
        return self.root / "mandates.yaml"

    @property
    def admin_token(self) -> Path:
        return self.keys / "admin.token"


def ensure_keys(files: StateFiles) -> list[str]:
    """Create whatever development key or secret is missing; returns what was created."""
    keys = files.keys
    keys.mkdir(parents=True, exist_ok=True)
    keys.chmod(0o700)
    made = []
    for name in ("sp-signing", "sp-encryption"):
        key, crt = keys / f"{name}.key", keys / f"{name}.crt"
        if not (key.exists() and crt.exists()) or _expires_soon(crt):
            rsa_keypair(f"demo {name}", bits=2048, days=365).write(key, crt)
            made.append(name)
    secret_files: dict[str, Callable[[], bytes]] = {
        "token-current.pem": lambda: signing_key_pem("ES256"),
        "session-ref.secret": lambda: secrets.token_urlsafe(32).encode(),
        "admin.token": lambda: secrets.token_urlsafe(32).encode(),
    }
    for name, make in secret_files.items():
        path = keys / name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_bytes(make())
            made.append(name)
    return made


def _expires_soon(cert_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=7)


def demo_config(
    base: dict[str, Any], opts: DemoOptions, files: StateFiles, broker_metadata: str
) -> dict[str, Any]:
    """``config/demo.yaml`` with the run's ports, URLs, files and store filled in."""
    cfg: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    public = f"http://localhost:{opts.port}"
    keys = files.keys.resolve()
    portal = f"http://127.0.0.1:{opts.portal_port}"
    cfg["server"].update(port=opts.port, public_url=public)
    cfg.setdefault("sessions", {})["ref_secret_file"] = str(keys / "session-ref.secret")
    saml = cfg["saml"]
    saml["acs_url"] = f"{public}/_gateway/saml/acs"
    saml["broker_metadata"] = broker_metadata
    for part in ("signing", "encryption"):
        saml[part] = {
            "key_file": str(keys / f"sp-{part}.key"),
            "cert_file": str(keys / f"sp-{part}.crt"),
        }
    cfg["mandates"]["source"]["path"] = str(files.mandates.resolve())
    cfg["tokens"]["issuer"] = public
    cfg["tokens"]["keys"] = {"current": str(keys / "token-current.pem")}
    cfg["admin"] = {"token_file": str(files.admin_token.resolve())}
    if opts.redis_url:
        cfg["store"] = {"url": opts.redis_url, "key_prefix": "gwdemo:"}
    for route in cfg["routes"]:
        route["upstream"] = portal
    return cfg


def _parse(cfg: dict[str, Any], path: Path) -> GatewayConfig:
    text = yaml.safe_dump(cfg, sort_keys=False)
    config = parse_config(text, file=str(path), environ=dict(os.environ))
    path.write_text(
        "# Generated by `gateway demo` from config/demo.yaml at every start: edit that file.\n"
        + text
    )
    return config


def _check_options(opts: DemoOptions) -> None:
    if opts.replicas > 1 and not opts.redis_url:
        raise ConfigInvalid(
            [
                ConfigProblem(
                    "gateway demo",
                    "--replicas",
                    "needs --redis URL: replicas share sessions and logins through Redis",
                )
            ]
        )
    if opts.replicas < 1:
        raise ConfigInvalid([ConfigProblem("gateway demo", "--replicas", "must be at least 1")])


async def _start_runner(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _wait_healthy(url: str, procs: list[asyncio.subprocess.Process], within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            if any(p.returncode is not None for p in procs):
                raise RuntimeError("a gateway replica exited during start-up (see its output)")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {within:.0f} s")


def _banner(opts: DemoOptions, config: GatewayConfig, sim: Simulator, replicas: list[int]) -> str:
    public = f"http://localhost:{opts.port}"
    width = max(len(s) for s, _ in GUIDE)
    lines = [
        "",
        "  eHerkenning gateway demo",
        f"  Open {public}/ in your browser.",
        "",
        "  At the (simulated) eHerkenning broker, pick a scenario:",
        *(f"    {sid.ljust(width)}  {text}" for sid, text in GUIDE),
        "",
        f"  Revoke a mandate live: {public}/demo"
        f" (sessions re-check every {config.sessions.mandate_recheck_interval.seconds} s)",
        f"  Broker simulator: {sim.base_url()}/  ·  keys and data: {opts.state_dir}/",
    ]
    if replicas:
        lines.append(
            f"  {len(replicas)} gateway replicas (ports {', '.join(map(str, replicas))}) behind a"
            f" round-robin splitter on {opts.port}, sessions in {opts.redis_url}"
        )
    elif opts.redis_url:
        lines.append(f"  Sessions and logins in Redis: {opts.redis_url}")
    lines += ["  Stop with Ctrl-C.", ""]
    return "\n".join(lines)


async def _run(opts: DemoOptions) -> None:
    _check_options(opts)
    files = StateFiles(opts.state_dir)
    ensure_keys(files)
    config_dir = opts.config.resolve().parent
    write_demo_mandates(config_dir / "demo-mandates.yaml", files.mandates)
    base = yaml.safe_load(opts.config.read_text(encoding="utf-8"))
    configure_logging(base["logging"]["format"], base["logging"]["level"])
    stop = asyncio.Event()
    received: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stopper(stop, received, sig))

    sim_settings = SimulatorSettings(
        scenarios_file=config_dir / "demo-scenarios.yaml",
        title="eHerkenning-simulator (demo)",
    )
    async with running_simulator(sim_settings, "127.0.0.1", opts.simulator_port) as sim:
        sim_port = int(sim.base_url().rsplit(":", 1)[1])
        sim.set_base_url(f"http://localhost:{sim_port}")  # localhost everywhere (cookies)
        cfg = demo_config(base, opts, files, f"http://localhost:{sim_port}/saml/metadata")
        config = _parse(cfg, files.root / "gateway.yaml")
        assert config.saml is not None  # config/demo.yaml has a saml section
        keys = load_sp_keys(config.saml)
        sim.set_sp_metadata(sp_metadata_xml(config.saml, keys))
        # The broker learns ServiceUUIDs and requested attributes from our catalogue.
        sim.set_service_catalogue(service_catalogue_xml(config.saml, keys))
        public = f"http://localhost:{opts.port}"
        portal_settings = PortalSettings(
            jwks_url=f"{public}/.well-known/jwks.json",
            issuer=public,
            audience="portal",
            demo_mandates_file=files.mandates.resolve(),
            demo_admin_token_file=files.admin_token.resolve(),
            demo_gateway_url=public,
            demo_recheck_seconds=config.sessions.mandate_recheck_interval.total_seconds(),
            demo_guide=GUIDE,
        )
        runners = [
            await _start_runner(build_portal_app(portal_settings), "127.0.0.1", opts.portal_port)
        ]
        procs: list[asyncio.subprocess.Process] = []
        splitter: RoundRobinSplitter | None = None
        replica_ports: list[int] = []
        try:
            if opts.replicas == 1:
                app = build_app(config, configure_logs=False)
                runners.append(await _start_runner(app, config.server.host, opts.port))
            else:
                for n in range(1, opts.replicas + 1):
                    rport = free_port()
                    replica_ports.append(rport)
                    rcfg = yaml.safe_load(yaml.safe_dump(cfg))
                    rcfg["server"]["port"] = rport
                    for route in rcfg["routes"]:  # the portal shows which replica served it
                        route["request_headers"] = {"set": {"X-Demo-Replica": str(n)}}
                    path = files.root / f"gateway-replica-{n}.yaml"
                    _parse(rcfg, path)
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable, "-m", "gateway", "serve", "--config", str(path)
                        )
                    )
                for rport in replica_ports:
                    await _wait_healthy(f"http://127.0.0.1:{rport}/_gateway/healthz", procs, 30)
                splitter = RoundRobinSplitter([("127.0.0.1", p) for p in replica_ports])
                await splitter.start(config.server.host, opts.port)
            print(_banner(opts, config, sim, replica_ports), flush=True)
            waiter = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                await asyncio.wait([waiter], timeout=1)
                if any(p.returncode is not None for p in procs):
                    print("gateway demo: a replica exited; stopping", file=sys.stderr, flush=True)
                    break
        finally:
            if splitter is not None:
                await splitter.close()
            # A terminal's Ctrl-C reaches the whole process group, replicas included:
            # give them a moment to stop by themselves before a SIGTERM of ours lands
            # in the middle of their shutdown. Any other stop is forwarded at once.
            await _stop_children(procs, forward_now=received != [signal.SIGINT])
            for runner in reversed(runners):
                await runner.cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _stopper(
    stop: asyncio.Event, received: list[signal.Signals], sig: signal.Signals
) -> Callable[[], None]:
    def handler() -> None:
        received.append(sig)
        stop.set()

    return handler


async def _stop_children(procs: list[asyncio.subprocess.Process], *, forward_now: bool) -> None:
    if not procs:
        return
    waits = [asyncio.ensure_future(p.wait()) for p in procs]

    def send(sig: signal.Signals) -> None:
        for p in procs:
            if p.returncode is None:
                p.send_signal(sig)

    if forward_now or (await asyncio.wait(waits, timeout=5))[1]:
        send(signal.SIGTERM)
    if (await asyncio.wait(waits, timeout=15))[1]:
        send(signal.SIGKILL)
    await asyncio.gather(*waits)


def run_demo(
    config_path: Path,
    port: int,
    portal_port: int,
    *,
    simulator_port: int = 0,
    state_dir: Path = Path("var/demo"),
    redis_url: str | None = None,
    replicas: int = 1,
) -> int:
    """Run the demo until Ctrl-C / SIGTERM; 0 on a clean stop."""
    opts = DemoOptions(
        config=config_path,
        port=port,
        portal_port=portal_port,
        simulator_port=simulator_port,
        state_dir=state_dir,
        redis_url=redis_url,
        replicas=replicas,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the handlers were installed
        asyncio.run(_run(opts))
    print("gateway demo stopped", flush=True)
    return 0
