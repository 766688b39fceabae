"""Reading the production-shape files offline: YAML, kustomize, Dockerfile, .dockerignore.

No Docker engine or kubectl runs here, so the tests in ``tests/deploy/`` read
the files themselves:

- ``kustomize_build`` renders a kustomization with the subset of kustomize the
  repository uses (``resources``, ``namespace``, ``images``, ``patches`` given
  as files holding strategic-merge patches). Anything else is refused rather
  than silently ignored, so the rendering cannot differ from kustomize's
  without a test noticing.
- ``parse_dockerfile`` splits a Dockerfile into instructions (continuations,
  comments, JSON and shell forms), ``DockerIgnore`` applies ``.dockerignore``
  with Docker's rules (last match wins, a pattern also covers what lies below
  a matched directory).
- ``check_gateway_config`` validates a gateway configuration as the running
  gateway would (``gateway.config.parse_config`` with the manifest's
  ``GATEWAY__*`` variables). Sections that the root config does not have yet
  are validated against their component's settings model, and named in
  ``pending`` so the report can list them.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel

from gateway.config import GatewayConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"


# ---------------------------------------------------------------- YAML


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``path`` (each must be a mapping)."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: a document is not a mapping")
    return docs


def load_one(path: Path) -> dict[str, Any]:
    """The single YAML document in ``path``."""
    docs = load_documents(path)
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one document, found {len(docs)}")
    return docs[0]


# ---------------------------------------------------------------- kustomize

KUSTOMIZATION_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
)
CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
)
# Strategic-merge keys of the Kubernetes lists this repository patches (from
# the API's patchMergeKey tags). Other lists are replaced, as kustomize does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this offline renderer does not implement."""


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Apply a strategic-merge ``patch`` to ``base`` (both left unchanged)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(str(k).startswith("$") for k in patch):
            raise UnsupportedKustomization(f"patch directive in {sorted(patch)}")
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = MERGE_KEYS.get(key or "")
        if key == "ports" and all(isinstance(i, dict) for i in base + patch):
            merge_key = "containerPort" if any("containerPort" in i for i in base) else "port"
        if merge_key is None:
            return copy.deepcopy(patch)
        merged = copy.deepcopy(base)
        for item in patch:
            for i, existing in enumerate(merged):
                if existing.get(merge_key) == item.get(merge_key):
                    merged[i] = strategic_merge(existing, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _ident(obj: Mapping[str, Any]) -> tuple[str, str]:
    return str(obj["kind"]), str(obj["metadata"]["name"])


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """Render ``directory``'s kustomization (the supported subset, see the module docstring)."""
    k = load_one(directory / "kustomization.yaml")
    unsupported = sorted(set(k) - KUSTOMIZATION_FIELDS)
    if unsupported:
        raise UnsupportedKustomization(f"{directory}: {unsupported}")
    objects: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        path = (directory / resource).resolve()
        objects.extend(kustomize_build(path) if path.is_dir() else load_documents(path))
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: patch entry {entry}")
        patch = load_one(directory / entry["path"])
        targets = [i for i, o in enumerate(objects) if _ident(o) == _ident(patch)]
        if len(targets) != 1:
            raise UnsupportedKustomization(f"{entry['path']}: {len(targets)} targets")
        if objects[targets[0]]["apiVersion"] != patch["apiVersion"]:
            raise UnsupportedKustomization(f"{entry['path']}: apiVersion differs")
        objects[targets[0]] = strategic_merge(objects[targets[0]], patch)
    for image in k.get("images", []):
        if set(image) - {"name", "newName", "newTag", "digest"}:
            raise UnsupportedKustomization(f"{directory}: image entry {image}")
        for container in all_containers(objects):
            name, tag = split_image(container["image"])
            if name == image["name"]:
                new = image.get("newName", name)
                if "digest" in image:
                    container["image"] = f"{new}@{image['digest']}"
                else:
                    container["image"] = f"{new}:{image.get('newTag', tag)}"
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def split_image(image: str) -> tuple[str, str]:
    """``registry/name:tag`` into name and tag (a port in the registry is not a tag)."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, "latest"
    return name, tag


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The pod spec of every workload object."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield spec["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield spec


def all_containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for pod in pod_specs(objects):
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------- the gateway command


@functools.cache
def is_subcommand(name: str) -> bool:
    """``gateway NAME --help`` succeeds in a real process."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", name, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    return done.returncode == 0 and f"usage: gateway {name}" in done.stdout


def command_problem(args: list[str]) -> str | None:
    """Why ``gateway *args`` would be refused at start-up, or ``None`` if it parses.

    A development command (``gateway.cli.DEV_COMMANDS``) is parsed by
    ``gateway_dev``'s parser, the one ``gateway`` hands it to.
    """
    # the real parsers: a typo in a flag fails here
    from gateway.cli import DEV_COMMANDS, _parser
    from gateway_dev.cli import parser as dev_parser

    if not args or not is_subcommand(args[0]):
        return f"{args}: not a gateway subcommand"
    dev = any(tuple(args[: len(words)]) == words for words in DEV_COMMANDS)
    try:
        (dev_parser() if dev else _parser()).parse_args(args)
    except SystemExit:
        return f"{args}: rejected by the gateway's argument parser"
    return None


# ---------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case), its raw text, first line number."""

    keyword: str
    text: str
    line: int

    def flags(self) -> dict[str, str]:
        """Leading ``--name=value`` flags (``COPY --from=builder``, ``HEALTHCHECK --interval``)."""
        out: dict[str, str] = {}
        for word in shlex.split(self.text):
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            out[name] = value
        return out

    def body(self) -> str:
        """The text after the flags."""
        text = self.text
        while text.startswith("--"):
            text = text.split(None, 1)[1] if " " in text else ""
        return text

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or ``None`` for the shell form."""
        body = self.body().strip()
        if not body.startswith("["):
            return None
        value = json.loads(body)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comment lines (also inside continuations) are dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, rest = joined.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip(), start))
    if pending:
        raise ValueError("Dockerfile ends inside a line continuation")
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped per build stage (each group starts with its FROM)."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """``ARG`` defaults declared before the first ``FROM`` (usable in ``FROM`` lines)."""
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.text.partition("=")
            args[name.strip()] = default.strip()
    return args


def expand(text: str, args: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` and ``$NAME`` with ``args``."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text
    )


@dataclass
class DockerIgnore:
    """``.dockerignore`` rules; ``ignored(path)`` answers as Docker's build context would."""

    rules: list[tuple[bool, re.Pattern[str]]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = str(PurePosixPath("/" + line.lstrip("!").strip())).lstrip("/")
            rules.append((keep, re.compile(_glob_to_regex(pattern))))
        return cls(rules)

    def ignored(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for keep, regex in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                result = not keep
        return result


def _glob_to_regex(pattern: str) -> str:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return out


# ---------------------------------------------------------------- gateway configuration


def _pending_models() -> dict[str, type[BaseModel] | None]:
    """Sections the root config is getting, with the component model that will back each.

    ``None``: no settings model exists yet anywhere (only the shape is checked).
    """
    from gateway.mandates.settings import MandateSettings
    from gateway.saml.settings import SamlSettings
    from gateway.sessions.settings import SessionSettings
    from gateway.store.factory import StoreSettings
    from gateway.tokens.settings import TokenSettings

    return {
        "store": StoreSettings,
        "sessions": SessionSettings,
        "saml": SamlSettings,
        "mandates": MandateSettings,
        "tokens": TokenSettings,
        "admin": None,
    }


@dataclass
class CheckedConfig:
    """A configuration as the gateway would see it, plus what could not be checked yet."""

    config: GatewayConfig
    sections: dict[str, Any]
    """Every root section after environment overrides: validated models where possible."""
    pending: list[str]
    """Sections used by the file that the root configuration does not define yet."""
    unverified: list[str]
    """Pending sections with no settings model at all (shape unchecked)."""

    def file_paths(self) -> list[PurePosixPath]:
        """Every file the configuration names (``Path`` fields, and ``*_file`` of raw sections)."""
        found: list[PurePosixPath] = []
        for value in self.sections.values():
            found.extend(_paths_in(value, None))
        return found


def _paths_in(value: Any, key: str | None) -> Iterator[PurePosixPath]:
    if isinstance(value, Path):
        yield PurePosixPath(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _paths_in(getattr(value, name), name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, str) and str(k).endswith("_file"):
                yield PurePosixPath(v)
            else:
                yield from _paths_in(v, str(k))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _paths_in(item, key)


def _env_parts(name: str) -> list[str]:
    return [p.lower() for p in name[len("GATEWAY__") :].split("__") if p]


def _override(data: dict[str, Any], parts: list[str], raw: str) -> None:
    """``gateway.config``'s override rule for mappings (pending sections have no lists)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    target = data
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value


def check_gateway_config(text: str, environ: Mapping[str, str], file: str) -> CheckedConfig:
    """Validate like the gateway does; raises ``ConfigInvalid`` or ``AssertionError``."""
    data = yaml.safe_load(text) or {}
    assert isinstance(data, dict), f"{file}: not a mapping"
    known = set(GatewayConfig.model_fields)
    models = _pending_models()
    env = {n: v for n, v in environ.items() if n.upper().startswith("GATEWAY__")}
    for name in env:
        parts = _env_parts(name)
        assert parts and (parts[0] in known or parts[0] in models), f"{name}: no such section"
    strange = sorted(set(data) - known - set(models))
    assert not strange, f"{file}: unknown root sections {strange}"

    known_data = {k: v for k, v in data.items() if k in known}
    known_env = {n: v for n, v in env.items() if _env_parts(n)[0] in known}
    config = parse_config(yaml.safe_dump(known_data), file=file, environ=known_env)

    sections: dict[str, Any] = {k: getattr(config, k) for k in known}
    pending: list[str] = []
    unverified: list[str] = []
    for section in sorted(set(data) - known):
        pending.append(section)
        raw = copy.deepcopy(data[section])
        assert isinstance(raw, dict), f"{file}: {section} is not a mapping"
        for name, value in env.items():
            parts = _env_parts(name)
            if parts[0] == section:
                _override(raw, parts[1:], value)
        model = models[section]
        if model is None:
            unverified.append(section)
            sections[section] = raw
        else:
            sections[section] = model.model_validate(raw)
    return CheckedConfig(config, sections, pending, unverified)


# ---------------------------------------------------------------- the files a configuration names

CONFIG_DIR = REPO / "config"


def shipped_yaml_files() -> list[Path]:
    """Every YAML file under config/ and deploy/: found by globbing, so a new one is covered."""
    found = {p for root in (CONFIG_DIR, DEPLOY) for p in root.rglob("*.y*ml")}
    return sorted(found)


def _set_at(data: Any, loc: tuple[str | int, ...], value: Any) -> None:
    for part in loc[:-1]:
        data = data[part] if isinstance(data, list) else data.setdefault(part, {})
    data[loc[-1]] = value


def _pair_role(loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str, str] | None:
    """(pair id, role, prefix) for a key or certificate of a key pair, else None."""
    name = str(loc[-1])
    for prefix in ("", "tls_", "client_"):
        for role in ("key", "cert"):
            if name == f"{prefix}{role}_file":
                return (*loc[:-1], prefix), role, prefix
    return None


def lay_out_files(
    data: Mapping[str, Any],
    root: Path,
    *,
    environ: Mapping[str, str] | None = None,
    contents: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Create every file the configuration names under ``root``; return it pointing there.

    What a deployment mounts, made up for a test: RSA key pairs for key and
    certificate settings (both halves of a pair match), token keys of the
    configured algorithm (``current`` and ``next``, as ``gateway keys tokens
    init`` leaves them), self-signed certificates for CA and metadata-signing
    certificates, the example registry for a mandate file, a random secret for
    anything else. ``contents`` (dotted key -> bytes) replaces a generated file,
    for real peers that must agree with it (a Redis password, a CA).
    """
    from gateway.config_files import path_settings
    from gateway.config_source import format_loc
    from gateway.tokens.rotation import signing_key_pem
    from gateway_dev.devkeys import rsa_keypair

    config = parse_config(yaml.safe_dump(dict(data)), file="<lay-out>", environ=environ or {})
    out = copy.deepcopy(dict(data))
    pairs: dict[tuple[str | int, ...], Any] = {}
    for loc, path in path_settings(config):
        target = root / str(path).lstrip("/")
        _set_at(out, loc, str(target))
        key = format_loc(loc)
        if contents and key in contents:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents[key])
            continue
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        pair = _pair_role(loc)
        name = str(loc[-1])
        if pair is not None:
            ident, role, _ = pair
            if ident not in pairs:
                pairs[ident] = rsa_keypair(f"test-{'-'.join(map(str, ident))}".strip("-"))
            target.write_bytes(pairs[ident].key_pem if role == "key" else pairs[ident].cert_pem)
        elif loc[:2] == ("tokens", "keys"):
            assert config.tokens is not None
            if name == "previous":
                _set_at(out, loc, str(target))  # configured, absent: not published yet
                continue
            target.write_bytes(signing_key_pem(config.tokens.algorithm))
        elif name.endswith("ca_file") or name == "broker_metadata_cert":
            target.write_bytes(rsa_keypair(f"test-{name}").cert_pem)
        elif loc == ("mandates", "source", "path"):
            example = CONFIG_DIR / f"mandates.example{target.suffix or '.yaml'}"
            target.write_bytes(example.read_bytes())
        else:
            import secrets

            target.write_text(secrets.token_urlsafe(32) + "\n")
    return out


# ---------------------------------------------------------------- compose, as plain files


def compose_binds(service: Mapping[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    """(source, target, read_only) of each short-syntax volume entry of a compose service."""
    out = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        out.append((source, PurePosixPath(target), mode == ["ro"]))
    return out


def lay_out_mounts(service: Mapping[str, Any], root: Path) -> dict[PurePosixPath, Path]:
    """Copy the service's bind-mounted files and folders to ``root``/<container path>.

    Returns the mapping. Named volumes are created as empty directories (what
    compose starts them as); a mounted folder is copied without caches.
    """
    import shutil

    placed: dict[PurePosixPath, Path] = {}
    for source, target, _ in compose_binds(service):
        dest = root / target.relative_to("/")
        if source.startswith(".") and (COMPOSE / source).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(COMPOSE / source, dest, ignore=ignore, dirs_exist_ok=True)
        elif source.startswith("."):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(COMPOSE / source, dest)
        else:
            dest.mkdir(parents=True, exist_ok=True)
        placed[target] = dest
    return placed


def compose_mount_of(path: Path) -> tuple[str, PurePosixPath] | None:
    """(service, container path) where compose mounts the repository file ``path``."""
    compose = load_one(COMPOSE / "compose.yaml")
    for name, service in compose["services"].items():
        for source, target, _ in compose_binds(service):
            if source.startswith(".") and (COMPOSE / source).resolve() == path.resolve():
                return name, target
    return None
