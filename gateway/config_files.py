"""Every file a configuration names, opened and parsed the way the gateway will use it.

``gateway check-config`` and ``gateway serve`` (before it starts) run
``check_files`` on a configuration that is already valid on its own. It reads
each key, certificate, secret, CA bundle, mandate file and metadata file;
checks that each key and certificate belong together; and refuses what the
gateway would fail on at start or at its first login. Certificates that
expire within ``EXPIRY_WARNING`` are warnings (the gateway still starts);
expired ones are problems.

Any ``Path`` setting without a specific check below (a key someone adds
later) is still opened and read, so a typo in a new file setting cannot pass.
Nothing here logs or returns file contents: messages name the file and the
kind of failure only.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel

from gateway.config_source import format_loc, line_of
from gateway.errors import ConfigInvalid, ConfigProblem, GatewayError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.mandates.settings import MandateSettings
    from gateway.saml.settings import KeyPairFiles, SamlSettings
    from gateway.store.factory import StoreSettings
    from gateway.tokens.settings import TokenSettings

EXPIRY_WARNING = dt.timedelta(days=30)
# Secrets compared or used as HMAC keys: shorter ones are guessable.
MIN_SECRET_BYTES = 16

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FileFinding:
    """One thing wrong (or about to go wrong) with a file the configuration names."""

    loc: Loc
    message: str


@dataclass
class FileReport:
    """Problems refuse the configuration; warnings are printed and logged, nothing more."""

    problems: list[FileFinding] = field(default_factory=list)
    warnings: list[FileFinding] = field(default_factory=list)
    checked: set[Loc] = field(default_factory=set)

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append(FileFinding(loc, message))

    def warn(self, loc: Loc, message: str) -> None:
        self.warnings.append(FileFinding(loc, message))


def check_files(config: GatewayConfig, *, now: dt.datetime | None = None) -> FileReport:
    """Open and parse every file ``config`` names; see the module docstring."""
    now = now or dt.datetime.now(dt.UTC)
    report = FileReport()
    if config.saml is not None:
        _saml(report, config.saml, now)
    if config.tokens is not None:
        _tokens(report, config.tokens)
    if config.mandates is not None:
        _mandates(report, config.mandates, now)
    _store(report, config.store, now)
    if config.sessions.ref_secret_file is not None:
        _secret(report, ("sessions", "ref_secret_file"), config.sessions.ref_secret_file)
    if config.admin is not None:
        _secret(report, ("admin", "token_file"), config.admin.token_file)
    for loc, path in path_settings(config):
        if loc not in report.checked:
            _readable(report, loc, path)
    return report


def path_settings(model: BaseModel, loc: Loc = ()) -> Iterator[tuple[Loc, Path]]:
    """Every ``Path`` value in a settings tree, with where it sits."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        here = (*loc, name)
        if isinstance(value, Path):
            yield here, value
        elif isinstance(value, BaseModel):
            yield from path_settings(value, here)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from path_settings(item, (*here, i))
                elif isinstance(item, Path):
                    yield (*here, i), item


# ---------------------------------------------------------------- sections


def _saml(report: FileReport, saml: SamlSettings, now: dt.datetime) -> None:
    for name in ("signing", "encryption", "signing_next", "encryption_next"):
        pair: KeyPairFiles | None = getattr(saml, name)
        if pair is not None:
            _key_pair(report, ("saml", name), pair.key_file, pair.cert_file, now, rsa_only=True)
    if saml.tls_client is not None:
        loc: Loc = ("saml", "tls_client")
        files = saml.tls_client
        if _key_pair(report, loc, files.key_file, files.cert_file, now, rsa_only=False):
            _tls_chain(report, loc, files.cert_file, files.key_file)
    if saml.tls_ca_file is not None:
        _ca_bundle(report, ("saml", "tls_ca_file"), saml.tls_ca_file, now)
    cert_pem: bytes | None = None
    if saml.broker_metadata_cert is not None:
        loc = ("saml", "broker_metadata_cert")
        cert = _certificate(report, loc, saml.broker_metadata_cert, now)
        if cert is not None:
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    # The old xmlsec1 path is accepted so older files load, and never used.
    report.checked.add(("saml", "xmlsec_binary"))
    if not saml.broker_metadata.startswith(("https://", "http://")):
        if saml.broker_metadata_cert is not None and cert_pem is None:
            return  # the certificate problem is reported; the signature cannot be checked
        _broker_metadata(report, Path(saml.broker_metadata), saml, cert_pem, now)


def _broker_metadata(
    report: FileReport,
    path: Path,
    saml: SamlSettings,
    cert_pem: bytes | None,
    now: dt.datetime,
) -> None:
    from gateway.saml.metadata import parse_broker_metadata

    loc: Loc = ("saml", "broker_metadata")
    data = _read(report, loc, path)
    if data is None:
        return
    try:
        metadata = parse_broker_metadata(
            data, entity_id=saml.broker_entity_id, signing_cert_pem=cert_pem, now=now
        )
    except (GatewayError, ValueError) as exc:
        reason = exc.detail if isinstance(exc, GatewayError) else type(exc).__name__
        report.problem(loc, f"{path}: not usable broker metadata ({reason})")
        return
    if metadata.valid_until is not None and metadata.valid_until - now < EXPIRY_WARNING:
        report.warn(loc, f"{path}: {_expires(metadata.valid_until, now)} (validUntil)")


def _tokens(report: FileReport, tokens: TokenSettings) -> None:
    from gateway.tokens.keys import KeyFileError, check_algorithm, load_private_key, load_public_key

    loc: Loc = ("tokens", "keys", "current")
    report.checked.add(loc)
    try:
        check_algorithm(load_private_key(tokens.keys.current).public_key(), tokens.algorithm)
    except KeyFileError as exc:
        report.problem(loc, str(exc))
    for role in ("next", "previous"):
        path: Path | None = getattr(tokens.keys, role)
        loc = ("tokens", "keys", role)
        report.checked.add(loc)
        # Optional by design: an absent next/previous key is simply not published.
        if path is None or not path.exists():
            continue
        try:
            check_algorithm(load_public_key(path), tokens.algorithm)
        except KeyFileError as exc:
            report.problem(loc, f"{path}: {exc}" if str(path) not in str(exc) else str(exc))


def _mandates(report: FileReport, mandates: MandateSettings, now: dt.datetime) -> None:
    from gateway.mandates.file_source import parse_mandate_file
    from gateway.mandates.settings import FileSourceSettings

    source = mandates.source
    if isinstance(source, FileSourceSettings):
        loc: Loc = ("mandates", "source", "path")
        report.checked.add(loc)
        try:
            parse_mandate_file(source.path)
        except ConfigInvalid as exc:
            for p in exc.problems:
                # The mandate file's own problems name that file and the record.
                report.problem(loc, f"{p}")
        return
    if source.bearer_token_file is not None:
        _secret(report, ("mandates", "source", "bearer_token_file"), source.bearer_token_file, 1)
    if source.client_cert_file is not None and source.client_key_file is not None:
        loc = ("mandates", "source")
        ok = _key_pair(
            report,
            loc,
            source.client_key_file,
            source.client_cert_file,
            now,
            rsa_only=False,
            names=("client_key_file", "client_cert_file"),
        )
        if ok:
            _tls_chain(report, loc, source.client_cert_file, source.client_key_file)
    if source.ca_file is not None:
        _ca_bundle(report, ("mandates", "source", "ca_file"), source.ca_file, now)


def _store(report: FileReport, store: StoreSettings, now: dt.datetime) -> None:
    for name in ("password_file", "sentinel_password_file"):
        path: Path | None = getattr(store, name)
        if path is not None:
            _secret(report, ("store", name), path, 1)
    if store.tls_ca_file is not None:
        _ca_bundle(report, ("store", "tls_ca_file"), store.tls_ca_file, now)
    cert, key = store.tls_cert_file, store.tls_key_file
    if (cert is None) != (key is None):
        present = "tls_cert_file" if cert is not None else "tls_key_file"
        report.problem(("store", present), "tls_cert_file and tls_key_file go together")
    elif cert is not None and key is not None:
        loc: Loc = ("store",)
        names = ("tls_key_file", "tls_cert_file")
        if _key_pair(report, loc, key, cert, now, rsa_only=False, names=names):
            _tls_chain(report, loc, cert, key)


# ---------------------------------------------------------------- one file


def _read(report: FileReport, loc: Loc, path: Path) -> bytes | None:
    report.checked.add(loc)
    try:
        return path.read_bytes()
    except OSError as exc:
        report.problem(loc, f"{path}: cannot read ({exc.strerror or type(exc).__name__})")
        return None


def _readable(report: FileReport, loc: Loc, path: Path) -> None:
    if path.is_dir():
        report.checked.add(loc)
        return
    _read(report, loc, path)


def _secret(report: FileReport, loc: Loc, path: Path, minimum: int = MIN_SECRET_BYTES) -> None:
    data = _read(report, loc, path)
    if data is None:
        return
    size = len(data.strip())
    if size < minimum:
        if minimum == 1:
            report.problem(loc, f"{path}: is empty")
        else:
            report.problem(loc, f"{path}: must hold at least {minimum} bytes (it has {size})")


def _private_key(report: FileReport, loc: Loc, path: Path) -> Any:
    data = _read(report, loc, path)
    if data is None:
        return None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        what = "encrypted" if "encrypted" in str(exc).lower() else "not a PEM private key"
        report.problem(loc, f"{path}: {what} ({type(exc).__name__})")
        return None


def _certificate(
    report: FileReport, loc: Loc, path: Path, now: dt.datetime
) -> x509.Certificate | None:
    data = _read(report, loc, path)
    if data is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        report.problem(loc, f"{path}: not a PEM X.509 certificate")
        return None
    _validity(report, loc, path, cert, now, strict=True)
    return cert


def _validity(
    report: FileReport,
    loc: Loc,
    path: Path,
    cert: x509.Certificate,
    now: dt.datetime,
    *,
    strict: bool,
) -> None:
    subject = cert.subject.rfc4514_string() or "(no subject)"
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if after <= now:
        message = f"{path}: certificate {subject} expired on {after:%Y-%m-%d}"
        (report.problem if strict else report.warn)(loc, message)
    elif before > now:
        message = f"{path}: certificate {subject} is not valid before {before:%Y-%m-%d %H:%M} UTC"
        (report.problem if strict else report.warn)(loc, message)
    elif after - now < EXPIRY_WARNING:
        report.warn(loc, f"{path}: certificate {subject} {_expires(after, now)}")


def _expires(when: dt.datetime, now: dt.datetime) -> str:
    days = (when - now).days
    return f"expires in {days} day{'s' if days != 1 else ''} ({when:%Y-%m-%d})"


def _key_pair(
    report: FileReport,
    loc: Loc,
    key_file: Path,
    cert_file: Path,
    now: dt.datetime,
    *,
    rsa_only: bool,
    names: tuple[str, str] = ("key_file", "cert_file"),
) -> bool:
    """Key and certificate readable, parsable, current and belonging together."""
    key_loc, cert_loc = (*loc, names[0]), (*loc, names[1])
    key = _private_key(report, key_loc, key_file)
    cert = _certificate(report, cert_loc, cert_file, now)
    if key is None or cert is None:
        return False
    if rsa_only and not isinstance(key, rsa.RSAPrivateKey):
        report.problem(key_loc, f"{key_file}: eHerkenning keys must be RSA")
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        report.problem(cert_loc, f"{cert_file}: certificate does not match the key {key_file}")
        return False
    return True


def _tls_chain(report: FileReport, loc: Loc, cert_file: Path, key_file: Path) -> None:
    """The pair loads as a TLS client identity (what the HTTP and Redis clients do)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, OSError) as exc:
        report.problem(loc, f"{cert_file}: not usable as a TLS client certificate ({exc})")


def _ca_bundle(report: FileReport, loc: Loc, path: Path, now: dt.datetime) -> None:
    data = _read(report, loc, path)
    if data is None:
        return
    try:
        certs = x509.load_pem_x509_certificates(data)
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (ValueError, ssl.SSLError, UnicodeDecodeError):
        report.problem(loc, f"{path}: not a PEM bundle of CA certificates")
        return
    for cert in certs:
        # A bundle may carry an old certificate next to its successor: warn only.
        _validity(report, loc, path, cert, now, strict=False)


def as_config_problems(
    findings: list[FileFinding], file: str, node: yaml.Node | None
) -> list[ConfigProblem]:
    """The findings as ``ConfigProblem``s of ``file`` (with YAML lines from ``node``)."""
    out = []
    for finding in findings:
        line = line_of(node, finding.loc)
        prefix = f"line {line}: " if line else ""
        out.append(ConfigProblem(file, format_loc(finding.loc), prefix + finding.message))
    return out
