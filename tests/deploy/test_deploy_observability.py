"""deploy/observability: alert rules, their unit tests, the PodMonitor and the Grafana dashboard.

The rules and every dashboard query go through ``promtool`` (the Debian
``prometheus`` package, installed by ``./dev test``): the rule groups of the
PrometheusRule with ``promtool check rules``, the alert unit tests with
``promtool test rules``, and each dashboard query as a recording rule, so its
PromQL is parsed by Prometheus itself. Every metric name any of them uses must
be one the gateway really exports: a login world is started, driven through a
login and an authenticated request, and scraped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.metrics_endpoint import ScrapeGuard, metrics_app
from tests.support.deploy import REPO, only
from tests.support.login_world import LoginWorld, login_world

OBSERVABILITY = REPO / "deploy" / "observability"
RULE = OBSERVABILITY / "prometheusrule.yaml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
PODMONITOR = OBSERVABILITY / "podmonitor.yaml"

# The alerts that page someone or guard a deadline: each has promtool unit tests.
KEY_ALERTS = {
    "GatewayHighErrorRatio",
    "GatewayLoginsFailing",
    "GatewayRegistryCircuitOpen",
    "GatewayStoreErrors",
    "GatewayCertificateExpiresSoon",
    "GatewayBrokerMetadataExpiring",
    "GatewayTokenKeyRotationDue",
}
_METRIC = re.compile(r"\bgateway_[a-z0-9_]+\b")


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool missing: ./dev test installs the Debian package prometheus"
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _rule() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULE.read_text(encoding="utf-8"))
    return data


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _rule()["spec"]["groups"] for r in g["rules"] if "alert" in r]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus receives it (Grafana's variables filled in)."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__range", "6h")
        .replace("$__interval", "1m")
        .replace("$route", ".*")
    )


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain rule file, with the unit tests beside it."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": _rule()["spec"]["groups"]}))
    shutil.copyfile(RULE_TESTS, tmp_path / "alerts.test.yaml")
    return tmp_path


def test_prometheus_rule_is_an_operator_resource_with_documented_alerts() -> None:
    """A PrometheusRule whose alerts each carry a severity and a summary and description."""
    rule = _rule()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= KEY_ALERTS
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert {"summary", "description"} <= set(alert["annotations"]), alert["alert"]


def test_promtool_accepts_the_rule_groups(rules_dir: Path) -> None:
    """`promtool check rules` parses every expression and template of the rule groups."""
    result = _run("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_alert_unit_tests_pass_and_cover_the_key_alerts(rules_dir: Path) -> None:
    """`promtool test rules` runs alerts.test.yaml; it tests every key alert firing."""
    result = _run("test", "rules", "alerts.test.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired >= KEY_ALERTS


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each dashboard query, variables filled in, parses as a Prometheus recording rule."""
    exprs = [t["expr"] for p in _dashboard_panels() for t in p["targets"]]
    assert len(exprs) >= 20
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _grafana_to_promql(e)}
        for i, e in enumerate(exprs)
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = _run("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_importable_grafana_json() -> None:
    """Unique panel ids, every query on the datasource variable, panels within the 24 columns."""
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def _deployment() -> dict[str, Any]:
    from tests.support.deploy import KUSTOMIZE, kustomize_build

    return only(kustomize_build(KUSTOMIZE / "base"), "Deployment")


def test_podmonitor_scrapes_the_gateways_metrics_listener() -> None:
    """Port name, path and selector of the PodMonitor match the Deployment and the listener."""
    monitor = yaml.safe_load(PODMONITOR.read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    deployment = _deployment()
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    labels = template["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    served = metrics_app(Metrics(), ScrapeGuard(None), "/_gateway/metrics").router.resources()
    assert endpoint["path"] in {r.canonical for r in served}


# -- every name the rules, their tests and the dashboard use is exported ----------------


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[LoginWorld]:
    from gateway.tokens import init_keys_dir

    init_keys_dir(tmp_path / "token-keys")
    keys = {n: str(tmp_path / "token-keys" / f"{n}.pem") for n in ("current", "next")}
    async with login_world(tmp_path / "world", tokens={"keys": keys}) as w:
        yield w


def _exported_series(text: str) -> set[str]:
    """Every sample name the scrape's families can carry (counters: _total, histograms: ...)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        base = family.name
        if family.type == "counter":
            names |= {base + "_total", base + "_created"}
        elif family.type == "histogram":
            names |= {base + s for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(base)
        names |= {s.name for s in family.samples}
    return names


def _names_used() -> dict[str, set[str]]:
    dashboard = _dashboard()
    used = {
        "prometheusrule.yaml": set(_METRIC.findall(RULE.read_text())),
        "alerts.test.yaml": set(_METRIC.findall(RULE_TESTS.read_text())),
        "grafana-dashboard.json": set(
            _METRIC.findall(
                json.dumps([p.get("targets", []) for p in dashboard["panels"]])
                + json.dumps(dashboard["templating"])
            )
        ),
    }
    for where, names in used.items():
        assert names, where
    return used


async def test_every_metric_named_in_rules_and_dashboard_is_exported(world: LoginWorld) -> None:
    """After a login and a proxied request, the gateway's scrape names every metric used."""
    browser = world.browser()
    resp, _ = await world.login(browser, "direct")
    assert resp.status == 200
    async with browser.get(world.url("/dashboard")) as r:
        assert r.status == 200
    async with aiohttp.ClientSession() as http, http.get(world.url("/_gateway/metrics")) as r:
        assert r.status == 200
        exported = _exported_series(await r.text())
    for where, names in _names_used().items():
        assert names <= exported, f"{where}: {sorted(names - exported)}"
