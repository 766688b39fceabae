"""Key files and rotation: the functions behind ``gateway keys ...`` (cli.py calls them).

Layout of a keys directory (``TokenKeyFiles.in_dir``)::

    current.pem    signs now
    next.pem       published now, signs after the next rotation
    previous.pem   signed before the last rotation, published for verification only

Rotation (``rotate``) is ``previous ← current ← next ← new key``, done with file
moves inside one directory so every intermediate state is a valid key set: a
reload that happens halfway still finds a current key. Afterwards every replica
reloads (SIGHUP).

The timing rule, enforced by ``rotate`` through the age of ``next.pem``:

* a next key is published at least one JWKS cache lifetime (``jwks_max_age``,
  plus the backends' own JWKS cache, at most the same) before it signs, so every
  backend already holds it when the first token with its kid arrives;
* a previous key stays published at least one token lifetime (plus leeway) after
  it stops signing, so tokens it signed keep verifying until they expire.

Both hold when rotations are at least ``min_rotation_interval`` apart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from gateway.devkeys import signing_key_pem
from gateway.tokens.keys import KeyFileError, algorithm_for_key, load_private_key
from gateway.tokens.settings import Algorithm, TokenSettings

_log = structlog.get_logger("gateway.tokens")

CURRENT = "current.pem"
NEXT = "next.pem"
PREVIOUS = "previous.pem"


def min_rotation_interval(settings: TokenSettings, *, backend_leeway: int = 30) -> int:
    """Seconds between two rotations (and between publishing a next key and using it).

    Twice the JWKS max-age covers our cache header plus a backend cache of the
    same length; the token lifetime plus leeway covers the previous key's duty.
    """
    return max(2 * settings.jwks_max_age_seconds, settings.lifetime_seconds + backend_leeway)


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


def generate_key(path: Path, algorithm: Algorithm = "ES256", *, overwrite: bool = False) -> Path:
    """Create a new private key file (PKCS#8 PEM, mode 0600) for the token algorithm.

    Refuses to overwrite an existing key unless asked: losing the current key
    means every backend must re-fetch the JWKS, and tokens in flight fail.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, signing_key_pem(algorithm))
    _log.info("token_key_generated", path=str(path), algorithm=algorithm)
    return path


def init_keys_dir(keys_dir: Path, algorithm: Algorithm = "ES256") -> None:
    """First setup: a current and a next key (nothing to rotate yet)."""
    generate_key(keys_dir / CURRENT, algorithm)
    generate_key(keys_dir / NEXT, algorithm)


def rotate(
    keys_dir: Path,
    *,
    min_next_age: float = 600.0,
    algorithm: Algorithm | None = None,
    now: float | None = None,
) -> None:
    """Promote ``next`` to ``current``, keep the old current as ``previous``, make a new ``next``.

    ``min_next_age`` (seconds; default 600 = twice the default JWKS max-age; pass
    ``min_rotation_interval(settings)`` from the CLI, 0 to force) refuses a
    rotation when ``next.pem`` is younger than that: its age is an upper bound on
    how long it has been published, so a younger next key may still be unknown to
    backends. The new next key has the algorithm of the current one unless
    ``algorithm`` says otherwise.
    """
    current, nxt, previous = keys_dir / CURRENT, keys_dir / NEXT, keys_dir / PREVIOUS
    if not current.exists():
        raise KeyFileError(f"{current} missing: run the initial key setup first")
    if not nxt.exists():
        raise KeyFileError(f"{nxt} missing: generate and publish a next key before rotating")
    age = (time.time() if now is None else now) - nxt.stat().st_mtime
    if age < min_next_age:
        raise KeyFileError(
            f"{nxt} is {int(age)} s old; it must be published at least {int(min_next_age)} s "
            "before it signs (backends cache the JWKS)"
        )
    # Check both keys load before touching anything: a broken next key must not
    # become the signing key.
    algo = algorithm or algorithm_for_key(load_private_key(current))
    load_private_key(nxt)
    new_next = signing_key_pem(algo)

    # Each step leaves a valid set (current always present):
    # 1. previous := copy of current   (current, next, previous=current)
    _write_private(previous, current.read_bytes())
    # 2. current := next                (current=next, no next)
    os.replace(nxt, current)
    # 3. next := new key
    _write_private(nxt, new_next)
    _fsync_dir(keys_dir)
    _log.info("token_keys_rotated", keys_dir=str(keys_dir), algorithm=algo)


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


def _fsync_dir(directory: Path) -> None:
    # Make the renames durable before ops signal the replicas to reload.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
