"""Logins per second and event-loop stalls: our in-process SAML core vs stock pysaml2.

Run: ``.venv/bin/python -m bench.logins [--logins N] [--concurrency C]``.

The broker simulator runs in a separate process (so its own signing and
encryption do not count against the SP's event loop). Artifacts are minted
first through the simulator's real login page; then a burst of concurrent
logins is pushed through artifact resolution (signed SOAP over loopback),
verification and decryption while "proxied traffic" (HTTP requests to a
local upstream, served and fetched on the same event loop) runs and a ticker
task measures how late the loop wakes it. The same run then verifies the
same kind of messages with stock pysaml2 and its ``xmlsec1`` backend.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from lxml import etree
from yarl import URL

from gateway.saml import SamlSettings, ServiceProvider, ServiceSettings
from gateway.saml.artifact import artifact_resolve_envelope, parse_artifact
from gateway.saml.authn_request import new_id
from gateway.saml.keys import load_sp_keys
from gateway.saml.settings import KeyPairFiles
from gateway.saml.sp_metadata import sp_metadata_xml
from gateway.saml.xml import q
from gateway_dev.devkeys import rsa_keypair

SP_ID = "urn:etoegang:DV:00000001234567890000:entities:0"
SERVICE_ID = "urn:etoegang:DV:00000001234567890000:services:0"
SERVICE_UUID = "6f1e1a9c-2c43-4f0e-9d38-2a8c0e9a1b11"
ACS = "http://127.0.0.1:1/_gateway/saml/acs"

SIM_SCRIPT = """
import sys
from pathlib import Path
from gateway_dev.simulator import SimulatorSettings
from gateway_dev.simulator.server import run_simulator
root = Path(sys.argv[3])
settings = SimulatorSettings(
    base_url=f"http://127.0.0.1:{sys.argv[1]}", sp_metadata=sys.argv[2],
    scenarios_file=root / "config" / "scenarios.example.yaml",
    service_uuids={%r: %r},
)
run_simulator(settings, "127.0.0.1", int(sys.argv[1]))
""".replace("%r: %r", f"{SERVICE_ID!r}: {SERVICE_UUID!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(tmp: Path, broker_metadata: str) -> SamlSettings:
    files = {}
    for name in ("signing", "encryption"):
        pair = rsa_keypair(f"bench-{name}")
        key, cert = tmp / f"{name}.key", tmp / f"{name}.crt"
        if not key.exists():
            pair.write(key, cert)
        files[name] = KeyPairFiles(key_file=key, cert_file=cert)
    return SamlSettings(
        entity_id=SP_ID,
        acs_url=ACS,
        signing=files["signing"],
        encryption=files["encryption"],
        services=(
            ServiceSettings(
                index=0,
                service_id=SERVICE_ID,
                service_uuid=SERVICE_UUID,  # type: ignore[arg-type]
                instance_uuid=SERVICE_UUID,  # type: ignore[arg-type]
                name="Werkgeversportaal",
                description="Bench",
                default=True,
            ),
        ),
        broker_metadata=broker_metadata,
        broker_oin="00000009999999999000",  # the simulator's default entityID
        insecure_dev_http=True,  # the simulator on loopback speaks plain http
        verify_workers=2,
        verify_pool=os.environ.get("BENCH_POOL", "process"),  # type: ignore[arg-type]
    )


async def mint_artifact(sp: ServiceProvider, browser: aiohttp.ClientSession) -> tuple[str, str]:
    """One browser trip through the simulator's login page: (request ID, SAMLart)."""
    rid, http = sp.build_authn_request("bench")
    async with browser.get(URL(http.url, encoded=True)) as resp:
        page = await resp.text()
    token = re.search(r'name="login" value="([^"]+)"', page)
    assert token, page[:500]
    base = http.url.split("/saml/")[0]
    async with browser.post(
        base + "/saml/login",
        data={"login": token.group(1), "scenario": "chain"},
        allow_redirects=False,
    ) as resp:
        location = resp.headers["Location"]
    art = re.search(r"SAMLart=([^&]+)", location)
    assert art
    from urllib.parse import unquote_plus

    return rid, unquote_plus(art.group(1))


class Ticker:
    """Wakes every 5 ms and records how late the event loop let it run."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.perf_counter() - start - 0.005)

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.worst * 1000


async def traffic(url: str, stop: asyncio.Event, counter: list[int]) -> None:
    """Stand-in for proxied traffic: requests served and fetched on this event loop."""
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(url) as r:
                await r.read()
            counter[0] += 1


async def burst(
    jobs: list[Callable[[], Awaitable[object]]], concurrency: int, upstream: str
) -> tuple[float, float, float, int]:
    """Run jobs with bounded concurrency under traffic; (seconds, worst stall ms, p50 ms, reqs)."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with sem:
            t = time.perf_counter()
            await job()
            latencies.append(time.perf_counter() - t)

    stop, counter = asyncio.Event(), [0]
    traffic_tasks = [asyncio.create_task(traffic(upstream, stop, counter)) for _ in range(4)]
    await asyncio.sleep(0.2)
    ticker = Ticker()
    ticker.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(j) for j in jobs))
    elapsed = time.perf_counter() - t0
    stall = await ticker.stop()
    stop.set()
    await asyncio.gather(*traffic_tasks)
    return elapsed, stall, statistics.median(latencies) * 1000, counter[0]


def pysaml2_client(settings: SamlSettings, broker_md: bytes) -> object:
    from saml2 import BINDING_HTTP_ARTIFACT, BINDING_HTTP_POST
    from saml2.client import Saml2Client
    from saml2.config import SPConfig

    conf = {
        "entityid": SP_ID,
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "crypto_backend": "xmlsec1",
        "key_file": str(settings.signing.key_file),
        "cert_file": str(settings.signing.cert_file),
        "encryption_keypairs": [
            {
                "key_file": str(settings.encryption.key_file),
                "cert_file": str(settings.encryption.cert_file),
            }
        ],
        "metadata": {"inline": [broker_md.decode()]},
        "allow_unknown_attributes": True,
        "accepted_time_diff": 60,
        "service": {
            "sp": {
                "endpoints": {
                    # POST too: the inner Response is handed over as if POSTed.
                    "assertion_consumer_service": [
                        (ACS, BINDING_HTTP_ARTIFACT),
                        (ACS, BINDING_HTTP_POST),
                    ]
                },
                "want_assertions_signed": True,
                "want_response_signed": False,
                "only_use_keys_in_metadata": True,
                "allow_unsolicited": False,
            }
        },
    }
    config = SPConfig()
    config.load(conf)
    return Saml2Client(config=config)


async def main_async(n: int, concurrency: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-logins-"))
    base = settings_for(tmp, str(tmp / "none.xml"))
    (tmp / "sp.xml").write_bytes(sp_metadata_xml(base, load_sp_keys(base)))
    port = free_port()
    root = Path(__file__).resolve().parents[1]  # noqa: ASYNC240 - setup, before timing
    # Setup before any timing: a blocking spawn is fine here.
    sim = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", SIM_SCRIPT, str(port), str(tmp / "sp.xml"), str(root)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    md_url = f"http://127.0.0.1:{port}/saml/metadata"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(md_url) as r:
                        if r.status == 200:
                            broker_md = await r.read()
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise SystemExit("simulator did not start")
        settings = base.model_copy(update={"broker_metadata": md_url})
        sp = ServiceProvider(settings)
        await sp.start()
        upstream = web.Application()
        upstream.router.add_get("/", lambda r: web.Response(text="ok"))
        runner = web.AppRunner(upstream, access_log=None)
        await runner.setup()
        up_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", up_port).start()
        up_url = f"http://127.0.0.1:{up_port}/"
        try:
            async with aiohttp.ClientSession() as browser:
                ours = [await mint_artifact(sp, browser) for _ in range(n)]
                stock = [await mint_artifact(sp, browser) for _ in range(n)]

            # Ours: artifact resolution + verification + decryption in the worker pool.
            jobs = [
                (lambda rid=rid, a=a: sp.consume_artifact(a, sp.expectation(rid)))
                for rid, a in ours
            ]
            r_ours = await burst(jobs, concurrency, up_url)

            # Stock pysaml2 (xmlsec1 backend): same resolution with aiohttp, then
            # parse_authn_request_response on the inner Response, as a naive app would.
            client = pysaml2_client(settings, broker_md)
            from saml2 import BINDING_HTTP_POST

            async def stock_login(rid: str, art: str) -> None:
                md = sp.metadata
                parsed = parse_artifact(art, md.entity_id)
                url = md.ars_urls[parsed.endpoint_index]
                resolve_id = new_id()
                env = artifact_resolve_envelope(
                    settings,
                    sp.keys.signing,
                    parsed,
                    url,
                    resolve_id,
                    dt.datetime.now(dt.UTC),
                )
                body = await sp._resolver.post(url, env)
                inner = etree.fromstring(body).find(f".//{q('samlp', 'Response')}")
                b64 = base64.b64encode(etree.tostring(inner)).decode()
                resp = client.parse_authn_request_response(  # type: ignore[attr-defined]
                    b64, BINDING_HTTP_POST, outstanding={rid: "/"}
                )
                if resp is None or resp.assertion is None:
                    raise RuntimeError("pysaml2 refused the response")

            stock_jobs = [(lambda rid=rid, a=a: stock_login(rid, a)) for rid, a in stock]
            r_stock = await burst(stock_jobs, concurrency, up_url)
        finally:
            await sp.close()
            await runner.cleanup()
    finally:
        sim.terminate()
        sim.wait()

    print(f"\n{n} logins, concurrency {concurrency}, {os.cpu_count()} CPUs")
    print(
        f"{'backend':<44} {'logins/s':>9} {'p50 ms':>8} {'worst stall ms':>15} {'traffic req':>12}"
    )
    for name, (secs, stall, p50, reqs) in (
        (f"in-process (lxml + python-xmlsec, {settings.verify_pool} pool)", r_ours),
        ("stock pysaml2, xmlsec1 backend, on loop", r_stock),
    ):
        print(f"{name:<44} {n / secs:>9.1f} {p50:>8.1f} {stall:>15.1f} {reqs:>12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main_async(args.logins, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
