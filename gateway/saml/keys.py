"""Our own key material, loaded once from the files named in ``SamlSettings``."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.saml.settings import KeyPairFiles, SamlSettings


@dataclass(frozen=True)
class KeyPair:
    """A loaded private key with its PEM forms (for libxmlsec) and certificate."""

    key: rsa.RSAPrivateKey
    key_pem: bytes
    cert_pem: bytes
    cert: x509.Certificate

    @property
    def cert_b64(self) -> str:
        """Base64 DER, as ``ds:X509Certificate`` wants it."""
        der = self.cert.public_bytes(serialization.Encoding.DER)
        return base64.b64encode(der).decode("ascii")

    @property
    def key_name(self) -> str:
        """SHA-256 fingerprint (hex): a stable ``ds:KeyName`` for this certificate."""
        return self.cert.fingerprint(hashes.SHA256()).hex()


def load_key_pair(files: KeyPairFiles) -> KeyPair:
    """Read and check one key pair; ``ValueError`` if the key is not RSA or does not match."""
    key_pem = Path(files.key_file).read_bytes()
    cert_pem = Path(files.cert_file).read_bytes()
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{files.key_file}: eHerkenning keys must be RSA")
    cert = x509.load_pem_x509_certificate(cert_pem)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError(f"{files.cert_file}: certificate does not match {files.key_file}")
    # Normalise to PKCS#8 so libxmlsec loads it whatever the file's flavour.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return KeyPair(key=key, key_pem=key_pem, cert_pem=cert_pem, cert=cert)


@dataclass(frozen=True)
class SpKeys:
    """Signing and encryption keys, current and (during rollover) next."""

    signing: KeyPair
    encryption: KeyPair
    signing_next: KeyPair | None = None
    encryption_next: KeyPair | None = None

    @property
    def decryption_keys(self) -> tuple[rsa.RSAPrivateKey, ...]:
        """Current first, then next: what EncryptedKeys are tried with."""
        keys = [self.encryption.key]
        if self.encryption_next is not None:
            keys.append(self.encryption_next.key)
        return tuple(keys)


def load_sp_keys(settings: SamlSettings) -> SpKeys:
    """Load every key pair the settings name."""
    return SpKeys(
        signing=load_key_pair(settings.signing),
        encryption=load_key_pair(settings.encryption),
        signing_next=load_key_pair(settings.signing_next) if settings.signing_next else None,
        encryption_next=(
            load_key_pair(settings.encryption_next) if settings.encryption_next else None
        ),
    )
