"""The ``gateway`` command: the only place that reads argv or sets an exit code.

Exit codes: 0 success, 1 runtime failure, 2 usage, invalid configuration or a
start-up failure (printed as one line per problem, naming the file; never a
traceback).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import CheckedConfig, check_config, config_json_schema
from gateway.errors import ConfigInvalid

DEFAULT_CONFIG_ENV = "GATEWAY_CONFIG"

# The development commands live in the repository's gateway_dev package (the
# broker simulator, the sample portal, the demo, throw-away SAML keys), which the
# production wheel leaves out. They are listed here so ``gateway --help`` shows
# them; ``main`` hands them over when the package is installed.
DEV_COMMANDS: dict[tuple[str, ...], str] = {
    ("demo",): "run the demo: gateway + broker simulator + sample portal (development only)",
    ("simulator",): "run the eHerkenning broker simulator (development only)",
    ("portal",): "run only the sample legacy portal (development only)",
    ("keys", "saml"): "self-signed SP signing + encryption key pairs (development only)",
}
DEV_ONLY = "development-only: install the repository with ./dev"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway", description="eHerkenning identity gateway for the employer portal."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway from a configuration file")
    s.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(DEFAULT_CONFIG_ENV),
        help=f"configuration file (default: ${DEFAULT_CONFIG_ENV})",
    )

    c = sub.add_parser(
        "check-config",
        help="validate a configuration file and every file it names; list every problem",
    )
    c.add_argument("file", type=Path)
    c.add_argument(
        "--skip-files",
        action="store_true",
        help="check the file alone, without opening the keys, certificates, secrets and "
        "data files it names (CI without the secrets); serve always opens them",
    )

    sub.add_parser("config-schema", help="print the JSON Schema of the configuration file")
    sub.add_parser("version", help="print the version")

    md = sub.add_parser("sp-metadata", help="print our signed SAML SP metadata (for the broker)")
    md.add_argument("--config", type=Path, default=os.environ.get(DEFAULT_CONFIG_ENV))
    cat = sub.add_parser(
        "service-catalogue", help="print the eHerkenning dienstcatalogus XML for our services"
    )
    cat.add_argument("--config", type=Path, default=os.environ.get(DEFAULT_CONFIG_ENV))

    keys = sub.add_parser("keys", help="generate and rotate keys (development and operations)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="KIND")
    ksub.add_parser("saml", help=DEV_COMMANDS[("keys", "saml")])
    kt = ksub.add_parser("tokens", help="identity-token signing keys: init, rotate, retire, show")
    kt.add_argument("action", choices=["init", "rotate", "retire", "show"])
    kt.add_argument("--dir", type=Path, required=True, help="the keys directory")
    kt.add_argument("--algorithm", choices=["ES256", "EdDSA", "RS256"], default="ES256")
    kt.add_argument(
        "--min-next-age",
        type=float,
        default=600.0,
        help="rotate only when next.pem was published at least this long ago (seconds; "
        "default 600, i.e. twice the JWKS max-age, so backends have seen it)",
    )
    kt.add_argument(
        "--out",
        type=Path,
        default=None,
        help="rotate: write the rotated set to this new directory and leave --dir as it is "
        "(a read-only Kubernetes Secret mount, say)",
    )
    kt.add_argument(
        "--jwks-url",
        default=None,
        help="rotate: refuse unless the JWKS served at this URL lists next.pem's kid "
        "(the key really is published)",
    )
    kx = ksub.add_parser("secret", help="a random secret file (session-ref secret, admin token)")
    kx.add_argument("file", type=Path)

    for words, help_text in DEV_COMMANDS.items():
        if len(words) == 1:
            sub.add_parser(words[0], help=help_text)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    dev = next((w for w in DEV_COMMANDS if tuple(words[: len(w)]) == w), None)
    if dev is not None:
        return _dev_command(dev, words)
    args = _parser().parse_args(words)
    cmd = args.command
    if cmd == "version":
        print(f"gateway {__version__}")
        return 0
    if cmd == "config-schema":
        print(json.dumps(config_json_schema(), indent=2))
        return 0
    if cmd == "check-config":
        return _check_config(args.file, files=not args.skip_files)
    if cmd == "serve":
        if args.config is None:
            print(
                f"gateway serve: give --config FILE or set ${DEFAULT_CONFIG_ENV}", file=sys.stderr
            )
            return 2
        return _serve(args.config)
    if cmd in ("sp-metadata", "service-catalogue"):
        return _saml_document(cmd, args.config)
    if cmd == "keys":
        return _keys(args)
    raise AssertionError(cmd)  # argparse rejects unknown commands


def _check_config(path: Path, *, files: bool) -> int:
    try:
        checked = check_config(path, files=files)
    except ConfigInvalid as exc:
        print_problems(exc)
        return 2
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    config = checked.config
    note = "" if checked.files_checked else "; the files it names were not opened"
    print(f"{path}: OK ({len(config.routes)} routes{note})")
    for i, route in enumerate(config.routes):
        m = route.match
        methods = ",".join(m.methods) if m.methods else "*"
        host = m.host or "*"
        print(
            f"  [{i}] {route.name}: {host} {m.type} {m.path} {methods} -> {route.upstream}"
            f" ({route.policy})"
        )
    return 0


def print_problems(exc: ConfigInvalid) -> None:
    """A count line, then one line per problem (naming file and path), on stderr."""
    n = len(exc.problems)
    print(f"configuration invalid: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _dev_command(words: tuple[str, ...], argv: list[str]) -> int:
    """Hand a development command to ``gateway_dev``; without that package, say so in one line."""
    try:
        # By name, not an import statement: production code never depends on
        # gateway_dev (tests/core/test_dev_boundary.py), it only hands over to it.
        dev_cli = importlib.import_module("gateway_dev.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("gateway_dev", "gateway_dev.cli"):
            raise  # a broken development install: show what is missing
        print(f"gateway {' '.join(words)}: {DEV_ONLY}", file=sys.stderr)
        return 2
    return int(dev_cli.main(argv))


def _saml_document(cmd: str, path: Path | None) -> int:
    from gateway.saml.keys import load_sp_keys
    from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml

    if path is None:
        print(f"gateway {cmd}: give --config FILE or set ${DEFAULT_CONFIG_ENV}", file=sys.stderr)
        return 2
    try:
        config = check_config(path).config
    except ConfigInvalid as exc:
        print_problems(exc)
        return 2
    if config.saml is None:
        print(f"{path}: has no saml section", file=sys.stderr)
        return 2
    keys = load_sp_keys(config.saml)
    document = sp_metadata_xml if cmd == "sp-metadata" else service_catalogue_xml
    sys.stdout.buffer.write(document(config.saml, keys))
    return 0


def _keys(args: argparse.Namespace) -> int:
    import secrets

    from gateway.tokens.rotation import init_keys_dir, retire_previous, rotate

    kind = args.keys_command
    try:
        if kind == "secret":
            if args.file.exists():
                print(f"{args.file} exists; not overwriting a secret", file=sys.stderr)
                return 1
            args.file.parent.mkdir(parents=True, exist_ok=True)
            args.file.touch(mode=0o600)
            args.file.write_text(secrets.token_urlsafe(32) + "\n")
            print(f"wrote a new secret to {args.file}")
        elif args.action == "init":
            init_keys_dir(args.dir, args.algorithm)
            print(f"wrote current.pem and next.pem to {args.dir}")
        elif args.action == "rotate":
            kids = _published_kids(args.jwks_url) if args.jwks_url else None
            rotate(args.dir, out=args.out, min_next_age=args.min_next_age, published_kids=kids)
            where = args.out or args.dir
            print(f"rotated into {where}: next -> current -> previous, new next.pem; reload")
        elif args.action == "show":
            _show_keys(args.dir)
        else:
            removed = retire_previous(args.dir)
            print("removed previous.pem" if removed else "no previous.pem to remove")
    except (OSError, ValueError) as exc:
        print(f"gateway keys {kind}: {exc}", file=sys.stderr)
        return 1
    return 0


def _published_kids(url: str) -> list[str]:
    """The kids of the JWKS at ``url`` (what backends see now)."""
    import urllib.request

    if not url.startswith(("https://", "http://")):
        raise ValueError(f"--jwks-url must be an http(s) URL, not {url!r}")
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - scheme checked
        document = json.load(response)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError(f"{url} did not answer with a JWK set")
    return [str(k["kid"]) for k in keys if isinstance(k, dict) and "kid" in k]


def _show_keys(keys_dir: Path) -> None:
    """Print every key of the set: role, kid, algorithm, when published and since when signing."""
    import datetime as dt

    from gateway.tokens.rotation import describe_keys_dir

    now = dt.datetime.now(dt.UTC)
    for info in describe_keys_dir(keys_dir):
        published = dt.datetime.fromtimestamp(info.published_at, dt.UTC)
        age = int((now - published).total_seconds())
        line = (
            f"{info.role:<8} kid={info.kid} alg={info.algorithm} "
            f"published={published:%Y-%m-%dT%H:%M:%SZ} ({age} s ago, by its "
            f"{info.published_source})"
        )
        if info.signing_since is not None:
            line += f" signing-since={info.signing_since:%Y-%m-%dT%H:%M:%SZ}"
        print(line)


def _serve(path: Path) -> int:
    """Start only what ``check-config`` passes; any start-up failure is one line, exit 2."""
    import structlog

    from gateway.logs import configure_logging
    from gateway.server import StartupFailed, serve

    try:
        checked: CheckedConfig = check_config(path)
    except ConfigInvalid as exc:
        print_problems(exc)
        return 2
    config = checked.config
    configure_logging(config.logging.format, config.logging.level)
    log = structlog.get_logger("gateway.cli")
    for warning in checked.warnings:
        log.warning("config_warning", file=warning.file, key=warning.path, problem=warning.message)
    try:
        return serve(config, path)
    except StartupFailed as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
