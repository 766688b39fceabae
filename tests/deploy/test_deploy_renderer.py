"""The offline kustomize renderer and config checker that the other deploy tests rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.errors import ConfigInvalid
from tests.support.deploy import (
    KUSTOMIZE,
    DockerIgnore,
    UnsupportedKustomization,
    check_gateway_config,
    kustomize_build,
    load_one,
    strategic_merge,
)

CONFIG = """
server: {host: 0.0.0.0}
routes:
  - {name: p, match: {path: /}, upstream: "http://portal:8080", policy: public}
"""


def test_strategic_merge_merges_named_lists_and_replaces_others() -> None:
    """Containers and env merge by name, other lists are replaced, null deletes a key."""
    base = {
        "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["serve"]}],
        "keep": 1,
        "drop": 2,
        "egress": [{"to": 1}],
    }
    patch = {
        "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["other"]}],
        "drop": None,
        "egress": [{"to": 2}],
    }
    merged = strategic_merge(base, patch)
    assert merged == {
        "containers": [
            {
                "name": "a",
                "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                "args": ["other"],
            }
        ],
        "keep": 1,
        "egress": [{"to": 2}],
    }
    assert base["drop"] == 2, "the base is left unchanged"


def test_patch_directives_are_refused() -> None:
    """A $patch directive (not implemented here) fails instead of being misapplied."""
    with pytest.raises(UnsupportedKustomization):
        strategic_merge({"a": {"b": 1}}, {"a": {"$patch": "delete"}})


def test_unsupported_kustomization_fields_are_refused(tmp_path: Path) -> None:
    """A kustomization using a feature outside the renderer's subset fails to render."""
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: []\ncommonLabels: {a: b}\n"
    )
    with pytest.raises(UnsupportedKustomization):
        kustomize_build(tmp_path)


def test_overlay_patches_reach_the_rendered_deployment() -> None:
    """Rendering the overlay applies its namespace, image tag and patches to the base."""
    overlay = load_one(KUSTOMIZE / "overlays" / "production" / "kustomization.yaml")
    objects = kustomize_build(KUSTOMIZE / "overlays" / "production")
    assert {o["metadata"]["namespace"] for o in objects} == {overlay["namespace"]}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":" + overlay["images"][0]["newTag"])
    env = {e["name"] for e in container["env"]}
    assert {"GATEWAY_CONFIG", "GATEWAY__STORE__URL"} <= env, "base and patch env both kept"
    assert {m["name"] for m in container["volumeMounts"]} >= {"config", "tmp", "saml"}


def test_unknown_environment_override_is_an_error() -> None:
    """A GATEWAY__ variable naming no config key fails the check, as it fails the gateway."""
    with pytest.raises(ConfigInvalid):
        check_gateway_config(CONFIG, {"GATEWAY__SERVER__PORTT": "1"}, "t")
    with pytest.raises(AssertionError):
        check_gateway_config(CONFIG, {"GATEWAY__SERVR__PORT": "1"}, "t")


def test_environment_override_applies() -> None:
    """A valid override changes the checked configuration, as in the running gateway."""
    checked = check_gateway_config(CONFIG, {"GATEWAY__SERVER__PORT": "9000"}, "t")
    assert checked.config.server.port == 9000


def test_invalid_section_values_fail() -> None:
    """A bad value inside a component section is reported."""
    text = CONFIG + "store: {url: 'redis://:secret@redis:6379'}\n"
    with pytest.raises((ConfigInvalid, ValidationError)):
        check_gateway_config(text, {}, "t")


def test_dockerignore_last_match_wins() -> None:
    """A later exception re-includes a path, and a later exclusion removes it again."""
    ignore = DockerIgnore.parse("*\n!gateway/\n**/*.pem\n")
    assert ignore.ignored("README.md")
    assert not ignore.ignored("gateway/app.py")
    assert ignore.ignored("gateway/keys/dev.pem")
