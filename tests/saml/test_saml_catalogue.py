"""What the fund registers with a broker validates against the schemas brokers use.

The dienstcatalogus must validate against the eHerkenning 1.13 service-catalogue
XSD and the SP metadata against the OASIS SAML 2.0 metadata XSD (both vendored
in ``tests/data``, loaded offline). The catalogue is taken from the shipped
example configuration and from the ``gateway service-catalogue`` command, as
ops would produce it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigInvalid
from gateway.saml.keys import load_sp_keys
from gateway.saml.settings import SamlSettings
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway.saml.xml import NS
from gateway_dev.devkeys import rsa_keypair
from tests.support.schemas import catalogue_schema, metadata_schema, schema_errors

CONFIG = Path(__file__).resolve().parents[2] / "config"
ESC = {"esc": NS["esc"], "md": NS["md"], "saml": NS["saml"]}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def _with_keys(saml: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The example's saml section with throw-away key files in place of /run/secrets."""
    out = dict(saml)
    for name in ("signing", "encryption", "signing_next", "encryption_next", "tls_client"):
        if name in out:
            pair = rsa_keypair(name)
            key, cert = directory / f"{name}.key", directory / f"{name}.crt"
            pair.write(key, cert)
            out[name] = {"key_file": str(key), "cert_file": str(cert)}
    out.pop("broker_metadata_cert", None)
    out.pop("tls_ca_file", None)
    return out


def example_saml(directory: Path, name: str = "gateway.example.yaml") -> SamlSettings:
    data = yaml.safe_load((CONFIG / name).read_text())
    return SamlSettings.model_validate(_with_keys(data["saml"], directory))


def test_catalogue_of_the_example_config_validates_against_the_eherkenning_schema(
    tmp_path: Path,
) -> None:
    """``config/gateway.example.yaml`` gives a dienstcatalogus the 1.13 XSD accepts."""
    settings = example_saml(tmp_path)
    document = service_catalogue_xml(settings, load_sp_keys(settings))
    assert schema_errors(catalogue_schema(), document) == []


def test_catalogue_names_the_broker_and_requests_the_attributes_the_gateway_uses(
    tmp_path: Path,
) -> None:
    """HerkenningsmakelaarId in definition and instance; company names requested, in nl and en."""
    settings = example_saml(tmp_path)
    root = etree.fromstring(service_catalogue_xml(settings, load_sp_keys(settings)))
    assert settings.herkenningsmakelaar_id == "00000003520354760000"  # from broker_entity_id
    ids = root.findall(".//esc:HerkenningsmakelaarId", ESC)
    assert [i.text for i in ids] == ["00000003520354760000"] * 2 * len(settings.services)
    definition = root.find(".//esc:ServiceDefinition", ESC)
    assert {n.get(XML_LANG) for n in definition.findall("esc:ServiceName", ESC)} == {"nl", "en"}
    assert {n.get(XML_LANG) for n in definition.findall("esc:ServiceDescription", ESC)} == {
        "nl",
        "en",
    }
    requested = {r.get("Name"): r for r in definition.findall("esc:RequestedAttribute", ESC)}
    assert set(requested) == {
        "urn:etoegang:1.11:attribute-represented:CompanyName",
        "urn:etoegang:1.13:attribute-intermediate:CompanyName",
    }
    for attribute in requested.values():
        assert attribute.get("isRequired") == "false"
        purposes = {p.get(XML_LANG) for p in attribute.findall("esc:PurposeStatement", ESC)}
        assert purposes == {"nl", "en"}
    assert [r.text for r in definition.findall("esc:ServiceRestrictionsAllowed", ESC)] == [
        "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"
    ]


@pytest.mark.parametrize(
    "service",
    [
        {"requested_attributes": [], "service_restrictions_allowed": []},
        {
            "requested_attributes": [
                {
                    "name": "urn:etoegang:1.11:attribute-represented:CompanyName",
                    "required": True,
                    "purpose": {"nl": "Naam tonen", "en": "Show the name"},
                }
            ],
            "name_en": None,
            "description_en": None,
        },
    ],
    ids=["nothing-requested", "one-required-dutch-only"],
)
def test_catalogue_variants_still_validate(tmp_path: Path, service: dict[str, Any]) -> None:
    """No requested attributes, or a required one and Dutch-only names: still schema-valid."""
    data = yaml.safe_load((CONFIG / "gateway.example.yaml").read_text())
    saml = _with_keys(data["saml"], tmp_path)
    saml["services"] = [{**saml["services"][0], **service}]
    settings = SamlSettings.model_validate(saml)
    document = service_catalogue_xml(settings, load_sp_keys(settings))
    assert schema_errors(catalogue_schema(), document) == []


def test_catalogue_from_the_cli_validates(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """``gateway service-catalogue --config`` prints a catalogue the 1.13 XSD accepts."""
    config = _runnable_config(tmp_path)
    assert main(["service-catalogue", "--config", str(config)]) == 0
    assert schema_errors(catalogue_schema(), capsysbinary.readouterr().out) == []


def test_sp_metadata_validates_against_the_saml_metadata_schema(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """``gateway sp-metadata`` (and with single logout and next keys) passes the OASIS XSD."""
    config = _runnable_config(tmp_path)
    assert main(["sp-metadata", "--config", str(config)]) == 0
    assert schema_errors(metadata_schema(), capsysbinary.readouterr().out) == []
    data = yaml.safe_load((CONFIG / "gateway.example.yaml").read_text())
    saml = _with_keys(
        {**data["saml"], "signing_next": {}, "encryption_next": {}, "single_logout": True},
        tmp_path,
    )
    settings = SamlSettings.model_validate(saml)
    document = sp_metadata_xml(settings, load_sp_keys(settings))
    assert schema_errors(metadata_schema(), document) == []


def _runnable_config(directory: Path) -> Path:
    """A complete gateway config file (as the login tests run it) on disk."""
    from tests.support.login_world import gateway_config

    mandates = directory / "mandates.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(
        directory, 8080, "http://127.0.0.1:9", "https://broker.example.nl/md", mandates
    )
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _config_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        load_config(path, environ={})
    return [str(p) for p in info.value.problems]


def test_check_config_fails_when_the_broker_oin_cannot_be_derived(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without broker_oin or a parseable broker_entity_id, check-config exits 2 and says why."""
    path = _runnable_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["saml"].pop("broker_oin", None)
    data["saml"].pop("broker_entity_id", None)
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gateway.yaml: saml" in err
    assert "HerkenningsmakelaarId" in err and "broker_oin" in err
    data["saml"]["broker_entity_id"] = "urn:etoegang:HM:00000003520354760000:entities:9632"
    path.write_text(yaml.safe_dump(data))
    assert main(["check-config", str(path)]) == 0
    data["saml"].pop("broker_entity_id")
    data["saml"]["broker_oin"] = "1234"
    path.write_text(yaml.safe_dump(data))
    assert any("broker_oin" in p and "20 digits" in p for p in _config_problems(path))
