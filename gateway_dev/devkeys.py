"""Development and test key material, generated on demand and never committed.

Production keys are PKIoverheid certificates supplied by the fund; these
helpers make throw-away equivalents for the demo, the simulator and tests.
Identity-token signing keys are not development-only: ``gateway keys tokens``
makes them with ``gateway.tokens.rotation.signing_key_pem``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class KeyPair:
    """A PEM private key with its self-signed certificate."""

    key_pem: bytes
    cert_pem: bytes

    def write(self, key_path: Path, cert_path: Path) -> None:
        """Write both files; the key is readable by the owner only."""
        key_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.touch(mode=0o600, exist_ok=True)
        key_path.chmod(0o600)
        key_path.write_bytes(self.key_pem)
        cert_path.write_bytes(self.cert_pem)


def rsa_keypair(common_name: str, *, bits: int = 2048, days: int = 365) -> KeyPair:
    """An RSA key and a self-signed certificate, as SAML signing/encryption and TLS use."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if "." in common_name or common_name == "localhost":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(common_name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(key, hashes.SHA256())
    return KeyPair(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )
