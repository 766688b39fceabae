"""Key files and rotation: the functions behind ``gateway keys tokens ...`` (cli.py calls them).

Layout of a keys directory (``TokenKeyFiles.in_dir``)::

    current.pem    signs now
    next.pem       published now, signs after the next rotation
    previous.pem   signed before the last rotation, published for verification only

Rotation (``rotate``) is ``previous ← current ← next ← new key``, done with file
moves inside one directory so every intermediate state is a valid key set: a
reload that happens halfway still finds a current key. With ``out`` the
rotated set is written to a new directory instead and the source is only
read: that is how a key set mounted from a Kubernetes Secret (read-only) is
rotated. Afterwards every replica reloads (SIGHUP) or restarts.

The timing rule, enforced by ``rotate`` through the age of ``next.pem``:

* a next key is published at least one JWKS cache lifetime (``jwks_max_age``,
  plus the backends' own JWKS cache, at most the same) before it signs, so every
  backend already holds it when the first token with its kid arrives;
* a previous key stays published at least one token lifetime (plus leeway) after
  it stops signing, so tokens it signed keep verifying until they expire.

Both hold when rotations are at least ``min_rotation_interval`` apart.

Stamps. File times do not survive a Kubernetes Secret (every mount, every
``kubectl`` copy writes the files anew), so the key files carry their own
times as explanatory text above the PEM block (RFC 7468 section 5.2 lets
parsers skip it; OpenSSL and ``cryptography`` do)::

    Gateway-Key-Published-At: 2025-03-01T09:30:00Z
    Gateway-Key-Signing-Since: 2025-03-11T09:30:00Z
    (the PEM block of the key follows)

``Published-At`` is written when the key enters the key set (``init``,
``rotate``): publish it (reload or roll out) right away, as the documented
procedures do. ``Signing-Since`` is written when the key becomes current; the
metrics count a key's remaining lifetime from it. A file without stamps (a key
made elsewhere) is judged by its modification time, as before stamps existed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.tokens.keys import (
    KeyFileError,
    PrivateKey,
    algorithm_for_key,
    derive_kid,
    load_private_key,
    load_public_key,
)
from gateway.tokens.settings import Algorithm, TokenSettings

_log = structlog.get_logger("gateway.tokens")

CURRENT = "current.pem"
NEXT = "next.pem"
PREVIOUS = "previous.pem"

PUBLISHED_AT = "Gateway-Key-Published-At"
SIGNING_SINCE = "Gateway-Key-Signing-Since"
_STAMP_LINE = re.compile(rb"^([A-Za-z-]+): *([0-9T:Z-]+)\r?$")
_PEM_BEGIN = b"-----BEGIN "


def signing_key_pem(algorithm: str = "ES256") -> bytes:
    """A new private key for signing identity tokens, PEM (PKCS#8, unencrypted): ES256
    (P-256), EdDSA (Ed25519) or RS256 (2048 bits). What ``init`` and ``rotate`` write."""
    key: PrivateKey
    if algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unsupported token algorithm {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def min_rotation_interval(settings: TokenSettings, *, backend_leeway: int = 30) -> int:
    """Seconds between two rotations (and between publishing a next key and using it).

    Twice the JWKS max-age covers our cache header plus a backend cache of the
    same length; the token lifetime plus leeway covers the previous key's duty.
    """
    return max(2 * settings.jwks_max_age_seconds, settings.lifetime_seconds + backend_leeway)


@dataclass(frozen=True)
class KeyStamps:
    """The times a key file carries above its PEM block (``None``: not stamped)."""

    published_at: dt.datetime | None = None
    signing_since: dt.datetime | None = None


def _format_time(when: float) -> str:
    return dt.datetime.fromtimestamp(int(when), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def parse_stamps(data: bytes) -> KeyStamps:
    """The stamps in the explanatory text before the first PEM block of ``data``."""
    head = data.split(_PEM_BEGIN, 1)[0] if _PEM_BEGIN in data else b""
    found: dict[bytes, dt.datetime] = {}
    for line in head.splitlines():
        m = _STAMP_LINE.match(line.strip())
        if m is not None:
            parsed = _parse_time(m.group(2).decode("ascii"))
            if parsed is not None:
                found[m.group(1).lower()] = parsed
    return KeyStamps(
        published_at=found.get(PUBLISHED_AT.lower().encode()),
        signing_since=found.get(SIGNING_SINCE.lower().encode()),
    )


def read_stamps(path: Path) -> KeyStamps:
    """The stamps of one key file (empty when it has none or cannot be read)."""
    try:
        return parse_stamps(path.read_bytes())
    except OSError:
        return KeyStamps()


def stamped(data: bytes, stamps: KeyStamps) -> bytes:
    """``data`` (a PEM file) with exactly these stamps above its PEM block."""
    body = data[data.index(_PEM_BEGIN) :] if _PEM_BEGIN in data else data
    lines = []
    if stamps.published_at is not None:
        lines.append(f"{PUBLISHED_AT}: {_format_time(stamps.published_at.timestamp())}\n")
    if stamps.signing_since is not None:
        lines.append(f"{SIGNING_SINCE}: {_format_time(stamps.signing_since.timestamp())}\n")
    return "".join(lines).encode("ascii") + body


def published_at(path: Path) -> tuple[float, str]:
    """When the key in ``path`` was published (epoch seconds) and how that is known.

    The ``Published-At`` stamp if the file has one, else its modification time.
    """
    stamp = read_stamps(path).published_at
    if stamp is not None:
        return stamp.timestamp(), "stamp"
    return path.stat().st_mtime, "file time"


def _write_private(path: Path, data: bytes) -> None:
    """Write a key file readable by the owner only, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _utc(when: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(when), dt.UTC)


def generate_key(
    path: Path,
    algorithm: Algorithm = "ES256",
    *,
    overwrite: bool = False,
    now: float | None = None,
    signing: bool = False,
) -> Path:
    """Create a new private key file (PKCS#8 PEM, mode 0600, stamped) for the token algorithm.

    Refuses to overwrite an existing key unless asked: losing the current key
    means every backend must re-fetch the JWKS, and tokens in flight fail.
    ``signing`` also stamps it as signing from ``now`` (a first current key).
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    when = _utc(time.time() if now is None else now)
    stamps = KeyStamps(published_at=when, signing_since=when if signing else None)
    _write_private(path, stamped(signing_key_pem(algorithm), stamps))
    _log.info("token_key_generated", path=str(path), algorithm=algorithm)
    return path


def init_keys_dir(
    keys_dir: Path, algorithm: Algorithm = "ES256", *, now: float | None = None
) -> None:
    """First setup: a current and a next key (nothing to rotate yet)."""
    generate_key(keys_dir / CURRENT, algorithm, now=now, signing=True)
    generate_key(keys_dir / NEXT, algorithm, now=now)


def rotate(
    keys_dir: Path,
    *,
    out: Path | None = None,
    min_next_age: float = 600.0,
    algorithm: Algorithm | None = None,
    now: float | None = None,
    published_kids: Collection[str] | None = None,
) -> None:
    """Promote ``next`` to ``current``, keep the old current as ``previous``, make a new ``next``.

    ``min_next_age`` (seconds; default 600 = twice the default JWKS max-age; pass
    ``min_rotation_interval(settings)`` from the CLI, 0 to force) refuses a
    rotation when ``next.pem`` was published less than that long ago (its
    ``Published-At`` stamp, else its file time): a younger next key may still
    be unknown to backends. ``published_kids`` (the kids a live JWKS lists)
    also refuses when the next key is not among them: it was never published.
    The new next key has the algorithm of the current one unless ``algorithm``
    says otherwise. ``out`` writes the rotated set there (a new, empty or
    absent directory) and leaves ``keys_dir`` untouched.
    """
    current, nxt = keys_dir / CURRENT, keys_dir / NEXT
    if not current.exists():
        raise KeyFileError(f"{current} missing: run the initial key setup first")
    if not nxt.exists():
        raise KeyFileError(f"{nxt} missing: generate and publish a next key before rotating")
    when = time.time() if now is None else now
    since, source = published_at(nxt)
    age = when - since
    if age < min_next_age:
        raise KeyFileError(
            f"{nxt} is {int(age)} s old (by its {source}); it must be published at least "
            f"{int(min_next_age)} s before it signs (backends cache the JWKS)"
        )
    # Check both keys load before touching anything: a broken next key must not
    # become the signing key.
    algo = algorithm or algorithm_for_key(load_private_key(current))
    next_key = load_private_key(nxt)
    if published_kids is not None:
        kid_full = derive_kid(next_key.public_key(), "rfc7638")
        if not {kid_full, kid_full[:16]} & set(published_kids):
            raise KeyFileError(
                f"{nxt} (kid {kid_full}) is not in the published JWKS: publish it "
                "(apply the key set and reload or restart every replica) before rotating"
            )
    current_data, next_data = current.read_bytes(), nxt.read_bytes()
    new_next = stamped(signing_key_pem(algo), KeyStamps(published_at=_utc(when)))
    promoted = stamped(
        next_data,
        KeyStamps(published_at=_utc(since), signing_since=_utc(when)),
    )
    target = keys_dir if out is None else out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise KeyFileError(f"{out} is not empty; give a new directory for the rotated set")
    # Each step leaves a valid set (current always present):
    # 1. previous := copy of current   (current, next, previous=current)
    _write_private(target / PREVIOUS, current_data)
    # 2. current := next, stamped as signing from now
    _write_private(target / CURRENT, promoted)
    # 3. next := new key
    _write_private(target / NEXT, new_next)
    _fsync_dir(target)
    _log.info("token_keys_rotated", keys_dir=str(target), algorithm=algo)


def retire_previous(keys_dir: Path) -> bool:
    """Stop publishing the previous key (after one token lifetime); whether one existed."""
    previous = keys_dir / PREVIOUS
    try:
        previous.unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(keys_dir)
    _log.info("token_key_retired", keys_dir=str(keys_dir))
    return True


@dataclass(frozen=True)
class KeyFileInfo:
    """What ``gateway keys tokens show`` prints for one key file."""

    role: str
    kid: str
    algorithm: Algorithm
    published_at: float
    published_source: str
    signing_since: dt.datetime | None


def describe_keys_dir(keys_dir: Path) -> list[KeyFileInfo]:
    """Every key file present in ``keys_dir``: role, kid, algorithm and its times."""
    out: list[KeyFileInfo] = []
    for role, name in (("current", CURRENT), ("next", NEXT), ("previous", PREVIOUS)):
        path = keys_dir / name
        if not path.exists():
            if role == "current":
                raise KeyFileError(f"{path} missing: run the initial key setup first")
            continue
        public = load_public_key(path)
        when, source = published_at(path)
        out.append(
            KeyFileInfo(
                role=role,
                kid=derive_kid(public, "rfc7638"),
                algorithm=algorithm_for_key(public),
                published_at=when,
                published_source=source,
                signing_since=read_stamps(path).signing_since,
            )
        )
    return out


def _fsync_dir(directory: Path) -> None:
    # Make the renames durable before ops signal the replicas to reload.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
