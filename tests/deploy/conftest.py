"""Fixtures for the deploy tests: the rendered manifests, the Dockerfile, the compose file."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.deploy import (
    COMPOSE,
    KUSTOMIZE,
    REPO,
    Instruction,
    kustomize_build,
    load_one,
    parse_dockerfile,
)


@pytest.fixture(scope="session")
def base_objects() -> list[dict[str, Any]]:
    return kustomize_build(KUSTOMIZE / "base")


@pytest.fixture(scope="session")
def production_objects() -> list[dict[str, Any]]:
    return kustomize_build(KUSTOMIZE / "overlays" / "production")


@pytest.fixture(scope="session")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_one(COMPOSE / "compose.yaml")
