"""The "Registering with a broker" walkthrough in docs/login.md works as written.

The YAML a reader copies into the ``saml`` section passes ``check-config``, and
every ``gateway`` command shown there runs and produces what the text says.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from tests.support.login_world import gateway_config, rsa_keypair
from tests.support.schemas import catalogue_schema, metadata_schema, schema_errors

LOGIN_MD = Path(__file__).resolve().parents[2] / "docs" / "login.md"


def _walkthrough() -> str:
    text = LOGIN_MD.read_text()
    start = text.index("## Registering with a broker")
    return text[start : text.index("\n## ", start + 1)]


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _walkthrough(), re.DOTALL)


def _lay_out_files(tmp_path: Path, saml: dict[str, Any]) -> dict[str, Any]:
    """The files the snippet names, made here (generated keys), and the snippet pointed at them.

    check-config opens every file a configuration names, as ``serve`` would: a
    reader's copy works once their files are in place, and so does this one.
    """
    saml = dict(saml)
    files = tmp_path / "broker-files"
    if "tls_client" in saml:
        client = rsa_keypair("tls-client")
        client.write(files / "tls.key", files / "tls.crt")
        saml["tls_client"] = {
            "key_file": str(files / "tls.key"),
            "cert_file": str(files / "tls.crt"),
        }
    for key in ("tls_ca_file", "broker_metadata_cert"):
        if key in saml:
            pair = rsa_keypair(key)
            pair.write(files / f"{key}.key", files / f"{key}.pem")
            saml[key] = str(files / f"{key}.pem")
    return saml


def _config(tmp_path: Path, saml: dict[str, Any]) -> Path:
    saml = _lay_out_files(tmp_path, saml)
    mandates = tmp_path / "mandates.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(tmp_path, 8080, "http://127.0.0.1:9", "x", mandates)
    data["saml"].pop("insecure_dev_http")
    data["saml"].pop("broker_oin")
    data["saml"].update(saml)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_walkthrough_yaml_passes_check_config(tmp_path: Path) -> None:
    """The broker settings from step 4, merged into a config, pass check-config."""
    (snippet,) = _blocks("yaml")
    saml = yaml.safe_load(snippet)["saml"]
    assert {"broker_metadata", "broker_entity_id", "broker_metadata_cert"} <= set(saml)
    assert main(["check-config", str(_config(tmp_path, saml))]) == 0


def test_walkthrough_commands_run_and_give_schema_valid_files(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Each ``gateway`` command of the walkthrough runs; the two files pass their schemas."""
    (snippet,) = _blocks("yaml")
    path = _config(tmp_path, yaml.safe_load(snippet)["saml"])
    commands = [
        line for block in _blocks("sh") for line in block.splitlines() if line.startswith("gateway")
    ]
    assert len(commands) == 3
    outputs: dict[str, bytes] = {}
    for command in commands:
        argv = shlex.split(command.split(">")[0])[1:]
        argv = [str(path) if a == "/etc/gateway/gateway.yaml" else a for a in argv]
        assert main(argv) == 0, command
        outputs[argv[0]] = capsysbinary.readouterr().out
    assert schema_errors(metadata_schema(), outputs["sp-metadata"]) == []
    assert schema_errors(catalogue_schema(), outputs["service-catalogue"]) == []
    assert b"OK" in outputs["check-config"]
