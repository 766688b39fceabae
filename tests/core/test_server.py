"""The gateway as ops run it: real processes, signals, workers, the demo."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.support.processes import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def processes() -> AsyncIterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(args: list[str], **kw: object) -> GatewayProcess:
        proc = GatewayProcess(args, **kw)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def _config(tmp_path: Path, upstream: TestServer, **server: object) -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / "gateway.yaml"
    base = str(upstream.make_url("/")).rstrip("/")
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port, "config_poll_seconds": 0, **server},
                "logging": {"format": "json"},
                "routes": [
                    {"name": "all", "match": {"path": "/"}, "upstream": base, "policy": "public"}
                ],
            }
        )
    )
    return cfg, port


async def test_sigterm_lets_in_flight_requests_finish(
    tmp_path: Path, upstream: TestServer, processes: Callable[..., GatewayProcess]
) -> None:
    """On SIGTERM an in-flight request completes, new connections are refused, exit code 0."""
    cfg, port = _config(tmp_path, upstream, shutdown_grace_seconds=10)
    gw = processes(["serve", "--config", str(cfg)])
    await gw.wait_http(f"http://127.0.0.1:{port}/_gateway/healthz")
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/slow?seconds=1&tag=t"))
        await asyncio.sleep(0.3)
        gw.signal(signal.SIGTERM)
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "slow done t"
        assert await gw.wait_exit() == 0
    assert '"gateway_stopped"' in gw.output()


async def test_sighup_reloads_config(
    tmp_path: Path, upstream: TestServer, processes: Callable[..., GatewayProcess]
) -> None:
    """SIGHUP makes a running gateway pick up a changed routes file."""
    cfg, port = _config(tmp_path, upstream)
    gw = processes(["serve", "--config", str(cfg)])
    url = f"http://127.0.0.1:{port}"
    await gw.wait_http(url + "/_gateway/healthz")
    data = yaml.safe_load(cfg.read_text())
    data["routes"][0]["match"]["path"] = "/only-this"
    cfg.write_text(yaml.safe_dump(data))
    gw.signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.get(url + "/elsewhere") as resp:
                if resp.status == 404:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 404
        async with session.get(url + "/only-this") as resp:
            assert resp.status == 200
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit() == 0


async def test_several_workers_share_the_port(
    tmp_path: Path, upstream: TestServer, processes: Callable[..., GatewayProcess]
) -> None:
    """With workers: 2, two processes answer on one port and metrics add up across them."""
    cfg, port = _config(tmp_path, upstream, workers=2)
    gw = processes(["serve", "--config", str(cfg)])
    url = f"http://127.0.0.1:{port}"
    await gw.wait_http(url + "/_gateway/healthz")
    assert len(set(await _worker_pids(gw, 2))) == 2  # two processes started
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(40):
            async with session.get(url + "/echo") as resp:
                assert resp.status == 200
        # Each worker moves its figures into the shared files a few times a second.
        for _ in range(100):
            async with session.get(url + "/_gateway/metrics") as resp:
                text = await resp.text()
            if 'gateway_requests_total{method="GET",route="all",status="200"} 40.0' in text:
                break
            await asyncio.sleep(0.05)
    assert 'gateway_requests_total{method="GET",route="all",status="200"} 40.0' in text
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit() == 0


async def test_serve_refuses_invalid_config(
    tmp_path: Path, processes: Callable[..., GatewayProcess]
) -> None:
    """serve exits 2 and prints every problem when the config is invalid."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("routes: []\nserver: {port: -1}\n")
    gw = processes(["serve", "--config", str(cfg)])
    assert await gw.wait_exit() == 2
    out = gw.output()
    assert "bad.yaml: server.port" in out and "bad.yaml: routes" in out


async def test_demo_serves_sample_portal(processes: Callable[..., GatewayProcess]) -> None:
    """The demo command starts the gateway in front of the sample portal and prints the URL."""
    port, portal = free_port(), free_port()
    gw = processes(["demo", "--port", str(port), "--portal-port", str(portal)], cwd=ROOT)
    await gw.wait_http(f"http://127.0.0.1:{port}/_gateway/healthz")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/headers") as resp:
            assert resp.status == 200
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-request-id" in seen
    assert f"http://localhost:{port}/" in gw.output()
    gw.signal(signal.SIGINT)
    assert await gw.wait_exit() == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_simulator_command_serves_metadata_on_its_port(
    processes: Callable[..., GatewayProcess], stop_signal: signal.Signals
) -> None:
    """`gateway simulator --port N` runs the broker simulator standalone with URLs on port N;
    Ctrl-C and SIGTERM (what a process manager sends) both stop it cleanly."""
    port = free_port()
    sim = processes(["simulator", "--port", str(port)], cwd=ROOT)
    await sim.wait_http(f"http://127.0.0.1:{port}/saml/metadata")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/saml/metadata") as resp:
            assert resp.status == 200
            metadata = await resp.text()
    assert f'Location="http://127.0.0.1:{port}/saml/ars"' in metadata
    assert "ArtifactResolutionService" in metadata
    sim.signal(stop_signal)
    assert await sim.wait_exit() == 0
    assert "sim_stopped" in sim.output()


async def test_workers_exit_when_supervisor_is_killed(
    tmp_path: Path, upstream: TestServer, processes: Callable[..., GatewayProcess]
) -> None:
    """A SIGKILLed supervisor does not leave orphaned workers holding the port."""
    cfg, port = _config(tmp_path, upstream, workers=2)
    gw = processes(["serve", "--config", str(cfg)])
    await gw.wait_http(f"http://127.0.0.1:{port}/_gateway/healthz")
    pids = await _worker_pids(gw, 2)
    assert len(pids) == 2
    gw.proc.kill()  # the supervisor only, not its process group
    for _ in range(100):
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert alive == []


async def _worker_pids(gw: GatewayProcess, count: int) -> list[int]:
    """PIDs of the workers that logged their start, waiting (bounded) for ``count`` of them."""
    pids: list[int] = []
    for _ in range(400):  # under load a worker can take seconds to start
        pids = [
            int(line.split('"pid":')[1].split(",")[0].split("}")[0])
            for line in gw.output().splitlines()
            if '"gateway_started"' in line
        ]
        if len(pids) >= count:
            break
        await asyncio.sleep(0.05)
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"
