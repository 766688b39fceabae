"""The key and registration commands ops run: keys, sp-metadata, service-catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from tests.support.login_world import gateway_config


def test_token_keys_init_rotate_retire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """init makes current+next; rotate refuses a young next key, then rotates; retire drops it."""
    keys = tmp_path / "tokens"
    assert main(["keys", "tokens", "init", "--dir", str(keys)]) == 0
    assert sorted(p.name for p in keys.iterdir()) == ["current.pem", "next.pem"]
    next_before = (keys / "next.pem").read_bytes()
    assert main(["keys", "tokens", "rotate", "--dir", str(keys)]) == 1
    assert "published at least" in capsys.readouterr().err
    assert main(["keys", "tokens", "rotate", "--dir", str(keys), "--min-next-age", "0"]) == 0
    # The same key, now stamped as signing since the rotation.
    assert (keys / "current.pem").read_bytes().endswith(next_before.split(b"\n", 1)[1])
    assert b"Gateway-Key-Signing-Since: " in (keys / "current.pem").read_bytes()
    assert (keys / "previous.pem").exists()
    assert main(["keys", "tokens", "retire", "--dir", str(keys)]) == 0
    assert not (keys / "previous.pem").exists()
    assert (keys / "current.pem").stat().st_mode & 0o077 == 0


def test_saml_dev_keys_and_secret(tmp_path: Path) -> None:
    """keys saml writes two key pairs; keys secret writes a private secret and never overwrites."""
    assert main(["keys", "saml", "--dir", str(tmp_path / "saml")]) == 0
    names = sorted(p.name for p in (tmp_path / "saml").iterdir())
    assert names == ["encryption.crt", "encryption.key", "signing.crt", "signing.key"]
    secret = tmp_path / "s" / "admin.token"
    assert main(["keys", "secret", str(secret)]) == 0
    first = secret.read_text()
    assert len(first.strip()) >= 32
    assert secret.stat().st_mode & 0o077 == 0
    assert main(["keys", "secret", str(secret)]) == 1
    assert secret.read_text() == first


def test_sp_metadata_and_catalogue_commands(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """sp-metadata and service-catalogue print signed XML for the configured services."""
    mandates = tmp_path / "mandates.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(tmp_path, 8080, "http://portal:8080", "http://broker/md", mandates)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["sp-metadata", "--config", str(cfg)]) == 0
    metadata = capsysbinary.readouterr().out.decode()
    assert "EntityDescriptor" in metadata and "SignatureValue" in metadata
    assert "urn:etoegang:DV:00000001234567890000:services:0" in metadata
    assert "NameIDFormat" not in metadata
    assert main(["service-catalogue", "--config", str(cfg)]) == 0
    catalogue = capsysbinary.readouterr().out.decode()
    assert "urn:etoegang:1.13:service-catalog" in catalogue
    assert "ServiceDefinition" in catalogue and "ServiceInstance" in catalogue
