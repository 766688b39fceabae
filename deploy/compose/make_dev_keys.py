"""Write throw-away development keys and secrets for the compose setup.

Run by the ``keys`` service of ``compose.yaml`` (once; existing files are
kept so the SP metadata stays stable across restarts)::

    python make_dev_keys.py DIRECTORY [--owner UID:GID]

Never use these files outside a local test: they are generated without any
ceremony, and the compose gateway runs with insecure (plain HTTP) cookies.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from gateway.tokens.rotation import signing_key_pem
from gateway_dev.devkeys import rsa_keypair

# File name -> what the compose gateway.yaml uses it for.
FILES = (
    "saml-signing.key",  # saml.signing.key_file
    "saml-signing.crt",  # saml.signing.cert_file
    "saml-encryption.key",  # saml.encryption.key_file
    "saml-encryption.crt",  # saml.encryption.cert_file
    "token-current.pem",  # tokens.keys.current
    "session-ref-secret",  # sessions.ref_secret_file
    "admin-token",  # admin.token_file
)


def write_keys(directory: Path) -> list[Path]:
    """Create every file of ``FILES`` that is missing in ``directory``; return the new ones."""
    directory.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = directory / name
        if path.exists():
            return
        # Created owner-only before any secret byte is written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        created.append(path)

    for role in ("signing", "encryption"):
        if not (directory / f"saml-{role}.key").exists():
            pair = rsa_keypair(f"compose-sp-{role}")
            put(f"saml-{role}.key", pair.key_pem)
            put(f"saml-{role}.crt", pair.cert_pem)
    put("token-current.pem", signing_key_pem("ES256"))
    put("session-ref-secret", secrets.token_urlsafe(32).encode())
    put("admin-token", secrets.token_urlsafe(32).encode())
    return created


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--owner", help="UID:GID to own the files (the gateway's user)")
    args = parser.parse_args()
    created = write_keys(args.directory)
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        for path in [args.directory, *(args.directory / name for name in FILES)]:
            os.chown(path, int(uid), int(gid or uid))
    print(f"{len(created)} new file(s) in {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
