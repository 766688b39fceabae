"""Mutual TLS at the ArtifactResolutionService: only the SP's certificate may resolve."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from gateway_dev.devkeys import KeyPair, rsa_keypair
from gateway_dev.simulator import MtlsSettings
from tests.support.simulator import NS, MiniSp, acs_params, artifact_response, start_simulator


def _client_ctx(server_cert: Path, tmp_path: Path, pair: KeyPair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server_cert))
    if pair is not None:
        pair.write(tmp_path / "client.key", tmp_path / "client.crt")
        ctx.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    return ctx


async def test_ars_requires_the_sp_client_certificate(tmp_path: Path) -> None:
    """No client cert: 403; a foreign cert: refused; the SP metadata's cert: the Response."""
    server = rsa_keypair("localhost")
    server.write(tmp_path / "server.key", tmp_path / "server.crt")
    sp = MiniSp()
    sp_pair = KeyPair(key_pem=sp.key_pem, cert_pem=sp.cert_pem)
    mtls = MtlsSettings(cert_file=tmp_path / "server.crt", key_file=tmp_path / "server.key")
    plain = _client_ctx(tmp_path / "server.crt", tmp_path)
    good = _client_ctx(tmp_path / "server.crt", tmp_path / "good", sp_pair)
    bad = _client_ctx(tmp_path / "server.crt", tmp_path / "bad", rsa_keypair("intruder"))

    async with start_simulator(sp_metadata=sp.metadata(), mtls=mtls) as sim:
        assert sim.base_url().startswith("https://")
        async with aiohttp.ClientSession() as s:
            _, url = sp.redirect_url(sim.sso_url)
            sim.use_scenario("direct")
            async with s.get(url, ssl=plain, allow_redirects=False) as resp:  # browser: no cert
                artifact = acs_params(resp.headers["Location"])["SAMLart"]

            status, _ = await sp.resolve(s, sim, artifact, ssl=plain)
            assert status == 403

            with pytest.raises(aiohttp.ClientError):
                await sp.resolve(s, sim, artifact, ssl=bad)

            status, body = await sp.resolve(s, sim, artifact, ssl=good)
    assert status == 200
    assert artifact_response(body).find("samlp:Response", NS) is not None
