"""config/gateway.example.yaml lists every key of the configuration model with its real default.

The keys are not listed here: the test walks the pydantic models from
``GatewayConfig`` down (``tests/support/config_models.py``), so a key added to
any settings model fails this test until the example shows it, with its
default and a comment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import parse_config
from tests.support.config_models import (
    Loc,
    all_models,
    example_documents,
    locations,
    model_types,
    value_at,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"
TEXT = EXAMPLE.read_text(encoding="utf-8")
DOCUMENTS = example_documents(TEXT)

# Keys the model has but a gateway configuration must not set, and why.
NOT_IN_A_GATEWAY_FILE = {
    ("MandateSettings", "max_staleness"): "follows sessions.mandate_max_staleness (one limit)",
    ("MandateSettings", "cache_ttl"): "removed: sessions.mandate_recheck_interval is the one limit",
}
# Keys with a default that no working file keeps: the example shows a value, and its
# comment says the default (like a list entry's example value).
ONE_OF_REQUIRED = {
    ("SamlSettings", "broker_entity_id"): "broker_entity_id or broker_oin must be set",
}


class Document:
    """One example document: its text lines, data, loaded configuration and YAML nodes."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines = text.splitlines()
        self.data: dict[str, Any] = yaml.safe_load(text)
        self.config = parse_config(text, file=name, environ={})
        self.node = yaml.compose(text, Loader=yaml.SafeLoader)

    def line(self, loc: Loc) -> int:
        """The 1-based line of the key (or list entry) at ``loc``."""
        node, line = self.node, 0
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                key, node = next((k, v) for k, v in node.value if k.value == part)
                line = key.start_mark.line + 1
            else:
                assert isinstance(node, yaml.SequenceNode) and isinstance(part, int)
                node = node.value[part]
                line = node.start_mark.line + 1
        return line

    def commented(self, loc: Loc) -> bool:
        """The key's line has a comment, or the line above is one."""
        number = self.line(loc)
        return bool(_comment(self.lines[number - 1])) or self.lines[number - 2].lstrip().startswith(
            "#"
        )


def _loaded() -> list[Document]:
    return [Document(name, text) for name, text in DOCUMENTS]


LOADED = _loaded()


def _occurrences() -> dict[tuple[str, str], list[tuple[Document, Loc]]]:
    found: dict[tuple[str, str], list[tuple[Document, Loc]]] = {}
    for doc in LOADED:
        for loc, model, field in locations(doc.data):
            found.setdefault((model.__name__, field), []).append((doc, loc))
    return found


OCCURRENCES = _occurrences()


def test_the_example_has_a_variant_for_each_union_setting() -> None:
    """Both kinds of mandate source are shown: the service live, the file as a `# |` block."""
    assert len(DOCUMENTS) == 2
    kinds = {doc.data["mandates"]["source"]["kind"] for doc in LOADED}
    assert kinds == {"http", "file"}


def test_every_key_of_the_model_is_in_the_example() -> None:
    """Each field of each settings model appears in the example (or its `# |` variant)."""
    missing = []
    for model in all_models():
        for field in model.model_fields:
            key = (model.__name__, field)
            if key in NOT_IN_A_GATEWAY_FILE:
                assert key not in OCCURRENCES, f"{key}: {NOT_IN_A_GATEWAY_FILE[key]}"
                continue
            if key not in OCCURRENCES:
                missing.append(f"{model.__name__}.{field}")
    assert not missing, f"keys missing from {EXAMPLE.name}: {missing}"


def _default(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].get_default(call_default_factory=True)


def _rendered(value: Any) -> str:
    """A default as the example's comments write it: ``null``, ``false``, ``[]``, ``{}``."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _comment(line: str) -> str:
    quoted = False
    for i, char in enumerate(line):
        if char in "\"'":
            quoted = not quoted
        elif char == "#" and not quoted and (i == 0 or line[i - 1] == " "):
            return line[i + 1 :]
    return ""


def _models_by_name() -> dict[str, type[BaseModel]]:
    return {m.__name__: m for m in all_models()}


def _is_container(model: type[BaseModel], field: str) -> bool:
    """A section (a model, not a list of them): its own keys are checked instead."""
    annotation = model.model_fields[field].annotation
    origin = getattr(annotation, "__origin__", None)
    return bool(model_types(annotation)) and origin not in (list, tuple)


@pytest.mark.parametrize(
    "key",
    sorted(k for k in OCCURRENCES if k not in NOT_IN_A_GATEWAY_FILE),
    ids=lambda k: f"{k[0]}.{k[1]}",
)
def test_every_key_shows_its_real_default(key: tuple[str, str]) -> None:
    """A key with a default shows exactly it; in a list entry a `default: X` comment may say it.

    Sections (server, saml, ...) and required keys (entity_id, routes, ...) have
    no default to show; their own keys are checked one by one.
    """
    model = _models_by_name()[key[0]]
    field = key[1]
    info = model.model_fields[field]
    if info.is_required() or _is_container(model, field):
        return
    default = _default(model, field)
    wrong = []
    for doc, loc in OCCURRENCES[key]:
        value = value_at(doc.config, loc)
        if value == default:
            return  # shown with its default somewhere
        in_list = any(isinstance(part, int) for part in loc)
        comment = _comment(doc.lines[doc.line(loc) - 1])
        if (in_list or key in ONE_OF_REQUIRED) and f"default: {_rendered(default)}" in comment:
            return  # a list entry showing an example value, its default in the comment
        where = ".".join(map(str, loc))
        wrong.append(f"{doc.name}: {where} = {value!r}, default {default!r}")
    pytest.fail("; ".join(wrong))


def test_every_key_has_a_comment() -> None:
    """Each key is explained where the example shows it (on its line, or in a comment above)."""
    bare = []
    for (model_name, field), found in sorted(OCCURRENCES.items()):
        if _is_container(_models_by_name()[model_name], field):
            continue
        if not any(doc.commented(loc) for doc, loc in found):
            bare.append(f"{model_name}.{field}")
    assert not bare, bare


@pytest.mark.parametrize(("name", "text"), DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_each_example_document_passes_check_config(
    name: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example and its variants are valid configurations (without their secret files)."""
    from gateway.cli import main

    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    assert main(["check-config", "--skip-files", str(path)]) == 0, capsys.readouterr().err


def test_the_header_states_the_rule_this_test_enforces() -> None:
    """The example says that every key shows its default, which is what the tests above check."""
    head = TEXT.split("\n\n", 1)[0]
    assert "Every key that has a default shows exactly that default" in head
