"""The Kubernetes gateway as a running system: its ConfigMap, its Secrets, real peers.

No cluster runs here, so this does what the Deployment does, by hand:

- the ConfigMap's ``gateway.yaml`` is mounted where ``GATEWAY_CONFIG`` points,
  unchanged; each file it names under ``/etc/gateway/secrets/`` is made under
  a root directory (``lay_out_files``), with the contents the real peers need
  (the Redis password and CA, the broker's metadata-signing certificate, the
  registry token, the TLS client certificate the broker knows);
- the container's ``args`` run as ``python -m gateway`` with its ``env``, plus
  a test overlay of ``GATEWAY__*`` variables that, like the production
  overlay, only sets addresses: loopback ports for Redis, the broker, the
  registry and the legacy portal, and the CA files of the test peers;
- the peers are real: ``redis-server`` over TLS with a password, the broker
  simulator over HTTPS with mutual TLS at its ArtifactResolutionService and
  signed metadata, the registry service over HTTPS with a bearer token, and
  an HTTP application standing in for the legacy portal.

The gateway keeps the ConfigMap's two workers, shared Redis state and
production cookies (``__Host-``, ``Secure``).
"""

from __future__ import annotations

import ssl
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from aiohttp import web

from gateway_dev.devkeys import KeyPair, rsa_keypair
from tests.support.deploy import KUSTOMIZE, REPO, kustomize_build, lay_out_files, only
from tests.support.processes import GatewayProcess, free_port
from tests.support.redis import RedisServer, TlsFiles
from tests.support.registry import RegistryServer
from tests.support.upstream import UPSTREAM_LOG, UpstreamLog, build_upstream_app

SCENARIOS = REPO / "config" / "scenarios.example.yaml"


class KubernetesWorld:
    """The base rendering's gateway with real peers; ``await start()``, then ``await stop()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = kustomize_build(KUSTOMIZE / "base")
        deployment = only(self.objects, "Deployment")
        (self.container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in self.container.get("env", [])}
        self.config_path = PurePosixPath(env["GATEWAY_CONFIG"])
        self.container_env = env
        configmap = only(self.objects, "ConfigMap")
        self.config_text: str = configmap["data"][self.config_path.name]
        self.config: dict[str, Any] = yaml.safe_load(self.config_text)
        self.port = free_port()
        self.registry_token = "registry-bearer-token-0123456789"
        self.redis_password = "redis-password-0123456789"
        self.redis: RedisServer | None = None
        self.registry: RegistryServer | None = None
        self.upstream: web.AppRunner | None = None
        self.upstream_port = 0
        self.processes: list[GatewayProcess] = []
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def simulator_url(self) -> str:
        return f"https://127.0.0.1:{self.simulator_port}"

    @property
    def upstream_log(self) -> UpstreamLog:
        assert self.upstream is not None
        return self.upstream.app[UPSTREAM_LOG]

    def browser_ssl(self) -> ssl.SSLContext:
        """What a browser needs to trust the simulator's (test) HTTPS certificate."""
        return ssl.create_default_context(cafile=str(self.root / "peers" / "simulator.crt"))

    def _write(self, name: str, pair: KeyPair) -> tuple[Path, Path]:
        peers = self.root / "peers"
        pair.write(peers / f"{name}.key", peers / f"{name}.crt")
        return peers / f"{name}.key", peers / f"{name}.crt"

    async def start(self) -> None:
        # Peer key material: the broker's metadata-signing key, TLS for each HTTPS
        # peer (certificates valid for 127.0.0.1 and localhost).
        broker = rsa_keypair("broker-signing")
        simulator_tls = rsa_keypair("simulator.localhost")
        redis_tls = rsa_keypair("redis.localhost")
        registry_tls = rsa_keypair("registry.localhost")
        sp = rsa_keypair("sp-signing")  # also the TLS client certificate at the broker
        broker_key, broker_crt = self._write("broker", broker)
        sim_key, sim_crt = self._write("simulator", simulator_tls)
        redis_key, redis_crt = self._write("redis", redis_tls)
        _, registry_crt = self._write("registry", registry_tls)
        _, sp_crt = self._write("sp", sp)

        contents = {
            "store.password_file": self.redis_password.encode(),
            "store.tls_ca_file": redis_tls.cert_pem,
            "saml.signing.key_file": sp.key_pem,
            "saml.signing.cert_file": sp.cert_pem,
            "saml.tls_client.key_file": sp.key_pem,
            "saml.tls_client.cert_file": sp.cert_pem,
            "saml.broker_metadata_cert": broker.cert_pem,
            "mandates.source.bearer_token_file": self.registry_token.encode(),
        }
        laid = lay_out_files(self.config, self.root / "mounted", contents=contents)
        # Only the secret paths move (into the root); everything else is the ConfigMap's.
        config_file = self.root / "mounted" / str(self.config_path).lstrip("/")
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(laid, sort_keys=False))

        self.redis = RedisServer(
            extra_args=["--requirepass", self.redis_password],
            tls=TlsFiles(cert_file=redis_crt, key_file=redis_key, ca_file=redis_crt),
        )
        self.redis.start()

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(registry_crt, self.root / "peers" / "registry.key")
        self.registry = RegistryServer(token=self.registry_token, ssl_context=context)
        await self.registry.start()

        app = build_upstream_app()
        self.upstream = web.AppRunner(app, handle_signals=False)
        await self.upstream.setup()
        self.upstream_port = free_port()
        await web.TCPSite(self.upstream, "127.0.0.1", self.upstream_port).start()

        self.simulator_port = free_port()
        upstream = f"http://127.0.0.1:{self.upstream_port}"
        overlay = {
            # Where the container listens and what users type.
            "GATEWAY__SERVER__HOST": "127.0.0.1",
            "GATEWAY__SERVER__PORT": str(self.port),
            "GATEWAY__SERVER__PUBLIC_URL": self.url,
            "GATEWAY__SAML__ACS_URL": f"{self.url}/_gateway/saml/acs",
            "GATEWAY__TOKENS__ISSUER": self.url,
            # The dependencies' addresses, and the CAs of their test certificates.
            "GATEWAY__STORE__URL": self.redis.url,
            "GATEWAY__SAML__BROKER_METADATA": f"{self.simulator_url}/saml/metadata",
            "GATEWAY__SAML__TLS_CA_FILE": str(sim_crt),
            "GATEWAY__MANDATES__SOURCE__URL_TEMPLATE": self.registry.url_template,
            "GATEWAY__MANDATES__SOURCE__CA_FILE": str(registry_crt),
            **{
                f"GATEWAY__ROUTES__{i}__UPSTREAM": upstream
                for i in range(len(self.config["routes"]))
            },
        }
        self.env = {**self.container_env, **overlay, "GATEWAY_CONFIG": str(config_file)}

        # What the fund registers with the broker before the first login
        # (docs/login.md): the signed SP metadata, made by `gateway sp-metadata`.
        sp_metadata = self.root / "peers" / "sp-metadata.xml"
        registered = GatewayProcess(["sp-metadata"], env=self.env, cwd=self.root)
        assert await registered.wait_exit(60) == 0, registered.output()
        sp_metadata.write_text(registered.output())
        registered.stop()

        services = self.config["saml"]["services"]
        simulator = {
            # The simulator plays the broker the ConfigMap names (its entityID).
            "entity_id": self.config["saml"]["broker_entity_id"],
            "base_url": self.simulator_url,
            "signing_key_file": str(broker_key),
            "signing_cert_file": str(broker_crt),
            "sp_metadata": str(sp_metadata),
            "scenarios_file": str(SCENARIOS),
            "service_uuids": {s["service_id"]: s["service_uuid"] for s in services},
            # The broker trusts the client certificate the fund registered with it
            # (the simulator otherwise learns it only from the SP metadata's first use).
            "mtls": {
                "cert_file": str(sim_crt),
                "key_file": str(sim_key),
                "client_ca_file": str(sp_crt),
            },
        }
        sim_config = self.root / "peers" / "simulator.yaml"
        sim_config.write_text(yaml.safe_dump(simulator))
        self.processes.append(
            GatewayProcess(
                [
                    "simulator",
                    "--config",
                    str(sim_config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.simulator_port),
                ]
            )
        )

        gateway = GatewayProcess(list(self.container["args"]), env=self.env, cwd=self.root)
        self.processes.append(gateway)
        await gateway.wait_http(f"{self.url}/_gateway/readyz", timeout=120)

    async def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self.registry is not None:
            await self.registry.close()
        if self.upstream is not None:
            await self.upstream.cleanup()
        if self.redis is not None:
            self.redis.cleanup()
