"""Kubernetes manifests: valid against the API schemas, secure, and in step with the code."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.app import build_app
from gateway.metrics import Metrics
from gateway.metrics_endpoint import ScrapeGuard, metrics_app
from gateway.store.factory import parse_store_url
from tests.support.deploy import (
    KUSTOMIZE,
    CheckedConfig,
    by_kind,
    check_gateway_config,
    command_problem,
    only,
)

# The oldest Kubernetes the manifests support (matchLabelKeys, unhealthyPodEvictionPolicy)
# and the newest the installed schemas know.
SCHEMA_VERSIONS = ("1.30", kubernetes_validate.latest_version())
RENDERINGS = ("base_objects", "production_objects")


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod(objects)["containers"]
    assert isinstance(container, dict)
    return container


def _effective(objects: list[dict[str, Any]]) -> CheckedConfig:
    """The configuration the gateway container would load: ConfigMap file plus its env."""
    container = _container(objects)
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    config_path = PurePosixPath(env["GATEWAY_CONFIG"])
    mount = next(
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config_path.parent
    )
    volume = next(v for v in _pod(objects)["volumes"] if v["name"] == mount["name"])
    cm_name = volume["configMap"]["name"]
    item = next(i for i in volume["configMap"]["items"] if i["path"] == config_path.name)
    cm = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"] == cm_name)
    return check_gateway_config(cm["data"][item["key"]], env, f"ConfigMap {cm_name}")


def test_every_manifest_file_parses() -> None:
    """Every YAML file under deploy/kubernetes is valid YAML with apiVersion and kind."""
    files = sorted(KUSTOMIZE.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            assert {"apiVersion", "kind"} <= set(doc), path


@pytest.mark.parametrize("rendering", RENDERINGS)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_objects_validate_against_the_kubernetes_schemas(
    rendering: str, version: str, request: pytest.FixtureRequest
) -> None:
    """Each rendered object passes the official JSON schema (strict: no unknown fields)."""
    objects = request.getfixturevalue(rendering)
    kinds = {o["kind"] for o in objects}
    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_production_runs_at_least_three_replicas(production_objects: list[dict[str, Any]]) -> None:
    """Production starts with three replicas, the autoscaler never goes below three."""
    assert only(production_objects, "Deployment")["spec"]["replicas"] >= 3
    hpa = only(production_objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 3
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert (
        hpa["scaleTargetRef"]["name"] == only(production_objects, "Deployment")["metadata"]["name"]
    )
    rollout = only(production_objects, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_selectors_select_the_gateway_pods(rendering: str, request: pytest.FixtureRequest) -> None:
    """Service, PodDisruptionBudget and NetworkPolicy select exactly the Deployment's pod labels."""
    objects = request.getfixturevalue(rendering)
    deployment = only(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert only(objects, "Service")["spec"]["selector"] == labels
    assert only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    assert only(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == labels
    port_names = {p["name"] for p in _container(objects)["ports"]}
    assert {p["targetPort"] for p in only(objects, "Service")["spec"]["ports"]} <= port_names


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_pod_security(rendering: str, request: pytest.FixtureRequest) -> None:
    """Non-root, read-only root, no capabilities or escalation, RuntimeDefault seccomp, no token."""
    objects = request.getfixturevalue(rendering)
    pod = _pod(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert only(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]
    sc = _container(objects)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert not sc.get("privileged", False)


def test_production_sizes_and_spreads_pods(production_objects: list[dict[str, Any]]) -> None:
    """Requests and limits are set, workers fit the CPU limit, replicas spread over nodes/zones."""
    resources = _container(production_objects)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    cpu_limit = float(str(resources["limits"]["cpu"]).removesuffix("m")) / (
        1000 if str(resources["limits"]["cpu"]).endswith("m") else 1
    )
    workers = _effective(production_objects).config.server.workers
    assert workers <= math.ceil(cpu_limit), "one worker per core of the limit"
    pod = _pod(production_objects)
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys
    assert pod["affinity"]["podAntiAffinity"]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_termination_grace_exceeds_the_gateways_drain(
    rendering: str, request: pytest.FixtureRequest
) -> None:
    """terminationGracePeriodSeconds > drain_delay + shutdown_grace of the mounted config."""
    objects = request.getfixturevalue(rendering)
    server = _effective(objects).config.server
    grace = _pod(objects)["terminationGracePeriodSeconds"]
    assert grace > server.drain_delay_seconds + server.shutdown_grace_seconds
    assert server.drain_delay_seconds > 0, "endpoints need time to drop a terminating pod"
    assert not _container(objects).get("lifecycle"), "no preStop: the gateway drains itself"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_config_and_environment_validate(rendering: str, request: pytest.FixtureRequest) -> None:
    """The ConfigMap's file with every GATEWAY__ variable of the manifest is a valid config."""
    checked = _effective(request.getfixturevalue(rendering))
    assert checked.config.server.host in {"0.0.0.0", "::"}, "probes reach the pod IP"
    assert not checked.unverified, checked.unverified


def test_production_uses_a_highly_available_external_redis(
    production_objects: list[dict[str, Any]],
) -> None:
    """Production's store is Redis Sentinel or Cluster over TLS, with a password file."""
    store = _effective(production_objects).sections["store"]
    target = parse_store_url(store.url)
    assert target.kind in {"sentinel", "cluster"}
    assert target.tls
    assert len(target.hosts) >= 3
    assert store.password_file is not None
    assert not by_kind(production_objects, "StatefulSet"), "Redis is not run as a pod here"


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_probes_use_registered_gateway_routes(
    rendering: str, request: pytest.FixtureRequest
) -> None:
    """Probe paths are routes of the app built from the mounted config, on the config's port."""
    objects = request.getfixturevalue(rendering)
    checked = _effective(objects)
    app = build_app(checked.config, configure_logs=False)
    routes = {r.canonical for r in app.router.resources()}
    container = _container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    prefix = checked.config.server.reserved_prefix
    expected = {
        "livenessProbe": prefix + "healthz",
        "readinessProbe": prefix + "readyz",
        "startupProbe": prefix + "healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["path"] in routes
        assert ports[get["port"]] == checked.config.server.port
    annotations = only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    metrics = checked.config.metrics
    if metrics.port is None:
        assert annotations["prometheus.io/path"] in routes
        assert int(annotations["prometheus.io/port"]) == checked.config.server.port
    else:  # a listener of its own: its app serves the path, the main app does not
        guard = ScrapeGuard(None)
        own = metrics_app(Metrics(), guard, prefix + "metrics")
        assert annotations["prometheus.io/path"] in {r.canonical for r in own.router.resources()}
        assert annotations["prometheus.io/path"] not in routes
        assert int(annotations["prometheus.io/port"]) == metrics.port == ports["metrics"]
    saml = checked.sections.get("saml")
    if saml is not None and "saml" in type(checked.config).model_fields:
        assert urlsplit(saml.acs_url).path in routes


@pytest.mark.integration  # command_problem runs `gateway COMMAND --help` as a process
@pytest.mark.parametrize("rendering", RENDERINGS)
def test_container_command_is_a_real_gateway_command(
    rendering: str, request: pytest.FixtureRequest
) -> None:
    """The container's args are accepted by the gateway's own argument parser."""
    container = _container(request.getfixturevalue(rendering))
    assert "command" not in container, "the image's ENTRYPOINT is `gateway`"
    assert command_problem(container["args"]) is None


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_secret_files_come_from_secret_references(
    rendering: str, request: pytest.FixtureRequest
) -> None:
    """Each file the config names is a read-only Secret item; each Secret item is used."""
    objects = request.getfixturevalue(rendering)
    assert not by_kind(objects, "Secret"), "Secrets are created out of band, never committed"
    pod = _pod(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {PurePosixPath(m["mountPath"]): m for m in _container(objects)["volumeMounts"]}
    assert not [m for m in mounts.values() if "subPath" in m], "subPath mounts never update"
    used: set[tuple[str, str]] = set()
    for path in _effective(objects).file_paths():
        mount = mounts.get(path.parent)
        assert mount is not None, f"{path}: no volume mounted at {path.parent}"
        secret = volumes[mount["name"]].get("secret")
        assert secret is not None, f"{path}: not from a Secret"
        assert mount["readOnly"] is True
        items = secret.get("items")
        if items is not None:
            assert path.name in {i["path"] for i in items}, f"{path}: not an item of the Secret"
        used.add((mount["name"], path.name))
    for name, volume in volumes.items():
        for item in volume.get("secret", {}).get("items", []):
            assert (name, item["path"]) in used, f"Secret item {name}/{item['key']} is unused"
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440


def test_egress_allows_every_dependency_port(production_objects: list[dict[str, Any]]) -> None:
    """NetworkPolicy egress opens DNS and the port of Redis, broker, registry and each upstream."""
    checked = _effective(production_objects)
    policy = only(production_objects, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {(p.get("protocol", "TCP"), p["port"]) for r in policy["egress"] for p in r["ports"]}
    needed = {("UDP", 53), ("TCP", 53)}
    needed |= {("TCP", port) for _, port in parse_store_url(checked.sections["store"].url).hosts}
    urls = [str(r.upstream) for r in checked.config.routes]
    urls.append(checked.sections["saml"].broker_metadata)
    urls.append(checked.sections["mandates"].source.url_template.replace("{kvk}", "1"))
    for url in urls:
        parts = urlsplit(url)
        needed.add(("TCP", parts.port or (443 if parts.scheme == "https" else 80)))
    assert needed <= allowed, needed - allowed
    ingress_ports = {p["port"] for r in policy["ingress"] for p in r["ports"]}
    assert ingress_ports == {"http", "metrics"}


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_metrics_reach_prometheus_only(rendering: str, request: pytest.FixtureRequest) -> None:
    """Metrics are on their own port, open to the monitoring namespace only, not in the Service."""
    objects = request.getfixturevalue(rendering)
    metrics = _effective(objects).config.metrics
    assert metrics.port is not None, "the Kubernetes config serves metrics on their own port"
    ports = {p["name"]: p["containerPort"] for p in _container(objects)["ports"]}
    assert ports["metrics"] == metrics.port != ports["http"]
    policy = only(objects, "NetworkPolicy")["spec"]
    for rule in policy["ingress"]:
        sources = {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for peer in rule["from"]
        }
        names = {p["port"] for p in rule["ports"]}
        assert ("metrics" in names) == (sources == {"monitoring"}), rule
    service = only(objects, "Service")["spec"]
    assert {p["targetPort"] for p in service["ports"]} == {"http"}


def test_image_is_pinned(production_objects: list[dict[str, Any]]) -> None:
    """The production image has an explicit tag or digest, never latest."""
    image = _container(production_objects)["image"]
    assert "@sha256:" in image or (
        ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
    )
