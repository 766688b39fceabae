"""`check-config` is the gate: files opened and parsed, headers checked, and `serve` agrees.

Every configuration here is a complete login configuration with real key
files (``tests/support/login_world.gateway_config``); each test breaks one
thing and checks that ``check-config`` refuses it with a line naming the file
and the key, and that ``serve`` refuses the same thing at start with exit 2
and no traceback.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.cli import main
from gateway_dev.devkeys import rsa_keypair
from tests.support.login_world import gateway_config
from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A complete, valid login configuration with real files, changed by ``edit``."""
    mandates = tmp_path / "mandates.yaml"
    mandates.write_text("version: 1\nmandates: []\n")
    data = gateway_config(
        tmp_path, free_port(), "http://127.0.0.1:9", "http://127.0.0.1:9/md", mandates
    )
    data["server"]["host"] = "127.0.0.1"
    if edit is not None:
        edit(data)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check-config", *args, str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _serve(path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gateway serve`` as ops start it, in its own process; it must end by itself."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=path.parent,
        check=False,
    )


def _assert_one_line_refusal(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if all(n in line for n in needles)]
    assert lines, done.stderr


def test_a_complete_configuration_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base configuration of these tests is valid, files and all (exit 0, routes listed)."""
    code, out, err = _check(_config(tmp_path), capsys)
    assert code == 0, err
    assert "OK" in out and "employer-pages" in out


def _missing_signing_key(data: dict[str, Any]) -> None:
    data["saml"]["signing"]["key_file"] = str(
        Path(data["saml"]["signing"]["key_file"]).parent / "gone.key"
    )


def _garbage_token_key(data: dict[str, Any]) -> None:
    path = Path(data["tokens"]["keys"]["current"])
    path.write_text("this is not a key\n")


def _garbage_signing_cert(data: dict[str, Any]) -> None:
    Path(data["saml"]["signing"]["cert_file"]).write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")


def _short_ref_secret(data: dict[str, Any]) -> None:
    Path(data["sessions"]["ref_secret_file"]).write_text("short\n")


def _missing_admin_token(data: dict[str, Any]) -> None:
    data["admin"]["token_file"] = "/nonexistent/admin-token"


def _broken_mandates_file(data: dict[str, Any]) -> None:
    Path(data["mandates"]["source"]["path"]).write_text(
        "version: 1\nmandates:\n  - administrator_kvk: '1234'\n"
    )


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (_missing_signing_key, "saml.signing.key_file"),
        (_garbage_token_key, "tokens.keys.current"),
        (_garbage_signing_cert, "saml.signing.cert_file"),
        (_short_ref_secret, "sessions.ref_secret_file"),
        (_missing_admin_token, "admin.token_file"),
        (_broken_mandates_file, "mandates[0]"),
    ],
)
def test_check_config_opens_every_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict[str, Any]], None],
    key: str,
) -> None:
    """A missing, unparsable or too short file is a problem naming the key; exit 2."""
    path = _config(tmp_path, edit)
    code, _, err = _check(path, capsys)
    assert code == 2, err
    assert key in err
    assert "Traceback" not in err


def test_skip_files_checks_the_file_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-files validates without the named files (CI without the secrets)."""
    path = _config(tmp_path, _missing_signing_key)
    code, out, err = _check(path, capsys, "--skip-files")
    assert code == 0, err
    assert "the files it names were not opened" in out


def _pair_with_validity(
    common_name: str, not_before: dt.datetime, not_after: dt.datetime
) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _replace_encryption_pair(days_left: float) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        now = dt.datetime.now(dt.UTC)
        key_pem, cert_pem = _pair_with_validity(
            "expiring", now - dt.timedelta(days=300), now + dt.timedelta(days=days_left)
        )
        Path(data["saml"]["encryption"]["key_file"]).write_bytes(key_pem)
        Path(data["saml"]["encryption"]["cert_file"]).write_bytes(cert_pem)

    return edit


def test_certificate_expiring_within_30_days_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate with 10 days left passes with a warning naming the key and the date."""
    code, _, err = _check(_config(tmp_path, _replace_encryption_pair(10)), capsys)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "saml.encryption.cert_file" in line]
    assert line.startswith("warning:")
    assert "expires in 9 days" in line or "expires in 10 days" in line


def test_expired_certificate_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate past its notAfter is refused."""
    code, _, err = _check(_config(tmp_path, _replace_encryption_pair(-1)), capsys)
    assert code == 2
    assert "saml.encryption.cert_file" in err and "expired" in err


def test_key_and_certificate_must_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A certificate of another key next to a key file is refused, naming both keys."""

    def edit(data: dict[str, Any]) -> None:
        other = rsa_keypair("other")
        Path(data["saml"]["signing"]["cert_file"]).write_bytes(other.cert_pem)

    code, _, err = _check(_config(tmp_path, edit), capsys)
    assert code == 2
    assert "saml.signing" in err and "does not match" in err


def _route(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in data["routes"] if r["name"] == name)


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (
            lambda d: _route(d, "portal").update(identity_header="Host"),
            "routes[7].identity_header",
            "Host",
        ),
        (
            lambda d: _route(d, "portal").update(
                request_headers={"set": {"X-Tenant": "pme\r\nX-Admin: yes"}}
            ),
            "routes[7].request_headers.set",
            "CR",
        ),
        (
            lambda d: _route(d, "portal").update(response_headers={"set": {"X Frame": "DENY"}}),
            "routes[7].response_headers.set",
            "token",
        ),
        (
            lambda d: _route(d, "portal").update(request_headers={"remove": ["Content-Length"]}),
            "routes[7].request_headers.remove",
            "framing",
        ),
        (
            lambda d: d["server"].update(deny_headers=["Connection"]),
            "server.deny_headers",
            "hop-by-hop",
        ),
        (
            lambda d: d["server"].update(request_id_header="X Request"),
            "server.request_id_header",
            "token",
        ),
        (
            lambda d: _route(d, "portal").update(
                request_headers={"set": {"X-Gateway-Identity": "forged"}}
            ),
            "routes[7].request_headers",
            "identity",
        ),
    ],
)
def test_header_names_and_values_are_checked(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict[str, Any]], None],
    key: str,
    reason: str,
) -> None:
    """Header names are RFC 9110 tokens, not hop-by-hop, framing or Host; values have no CR/LF."""
    code, _, err = _check(_config(tmp_path, edit), capsys)
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if key in line]
    assert reason in line


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_missing_signing_key, "saml.signing.key_file"),
        (_garbage_token_key, "tokens.keys.current"),
        (lambda d: _route(d, "portal").update(identity_header="Host"), "identity_header"),
    ],
)
def test_serve_refuses_at_start_in_one_line(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], needle: str
) -> None:
    """`serve` exits 2 with a line naming the file and the key, never a traceback."""
    path = _config(tmp_path, edit)
    _assert_one_line_refusal(_serve(path), str(path), needle)


def test_serve_with_workers_refuses_at_start_in_one_line(tmp_path: Path) -> None:
    """With a supervisor and workers the same refusal happens before any worker starts."""

    def edit(data: dict[str, Any]) -> None:
        _garbage_token_key(data)
        data["server"]["workers"] = 2
        data["store"] = {"url": "redis://127.0.0.1:9/0"}

    path = _config(tmp_path, edit)
    _assert_one_line_refusal(_serve(path), str(path), "tokens.keys.current")


def test_serve_reports_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    """A listen address already taken is one line naming server.port; exit 2."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = _config(tmp_path, lambda d: d["server"].update(port=port))
        done = _serve(path)
    _assert_one_line_refusal(done, str(path), "server.port")


def test_supervisor_reports_an_address_it_cannot_bind_before_forking(tmp_path: Path) -> None:
    """Workers > 1 on an address this machine does not have: one line, exit 2, no workers."""

    def edit(data: dict[str, Any]) -> None:
        data["server"].update(workers=2, host="192.0.2.1")  # TEST-NET-1: never local
        data["store"] = {"url": "redis://127.0.0.1:9/0"}

    path = _config(tmp_path, edit)
    done = _serve(path)
    _assert_one_line_refusal(done, str(path), "server.port", "192.0.2.1")
    assert "supervisor_started" not in done.stdout + done.stderr
