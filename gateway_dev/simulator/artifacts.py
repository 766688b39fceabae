"""SAML type 0x0004 artifacts and the single-use store behind the ARS.

An artifact is ``TypeCode (0x0004) | EndpointIndex (2 bytes) | SourceID
(SHA-1 of the issuer entityID, 20 bytes) | MessageHandle (20 random bytes)``,
base64-encoded (SAML bindings 3.6.4). The store lives in process memory: fine
for a simulator (one process), and documented as a difference from a real
broker.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

TYPE_CODE = b"\x00\x04"


@dataclass(frozen=True)
class ParsedArtifact:
    endpoint_index: int
    source_id: bytes
    handle: bytes


def source_id(entity_id: str) -> bytes:
    """SourceID: SHA-1 of the issuer's entityID (an identifier, not a security use)."""
    return hashlib.sha1(entity_id.encode()).digest()  # noqa: S324 - mandated by SAML bindings


def make_artifact(entity_id: str, endpoint_index: int = 0) -> str:
    """A fresh artifact for ``entity_id``'s ArtifactResolutionService ``endpoint_index``."""
    raw = (
        TYPE_CODE
        + endpoint_index.to_bytes(2, "big")
        + source_id(entity_id)
        + secrets.token_bytes(20)
    )
    return base64.b64encode(raw).decode()


def parse_artifact(text: str) -> ParsedArtifact:
    """Decode and check the 0x0004 layout; raises ``ValueError`` otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise ValueError("artifact is not base64") from exc
    if len(raw) != 44 or raw[:2] != TYPE_CODE:
        raise ValueError("not a SAML type 0x0004 artifact")
    return ParsedArtifact(int.from_bytes(raw[2:4], "big"), raw[4:24], raw[24:])


@dataclass(frozen=True)
class StoredMessage:
    """What an artifact stands for: the Response and who may fetch it."""

    response_xml: bytes
    sp_entity_id: str
    expires_at: float
    real_broker_shape: bool = False
    """Sign the ArtifactResponse in the real-broker shape too (KeyName-only, prefix list)."""


class ArtifactStore:
    """Artifact -> message, each resolvable once and only before it expires."""

    def __init__(self, lifetime: float, clock: Callable[[], float]) -> None:
        self._lifetime = lifetime
        self._clock = clock
        self._items: dict[str, StoredMessage] = {}

    def put(
        self,
        artifact: str,
        response_xml: bytes,
        sp_entity_id: str,
        *,
        real_broker_shape: bool = False,
    ) -> None:
        self._sweep()
        self._items[artifact] = StoredMessage(
            response_xml, sp_entity_id, self._clock() + self._lifetime, real_broker_shape
        )

    def take(self, artifact: str) -> StoredMessage | None:
        """Remove and return the message; ``None`` if unknown, used or expired."""
        item = self._items.pop(artifact, None)
        if item is None or self._clock() >= item.expires_at:
            return None
        return item

    def __len__(self) -> int:
        return len(self._items)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, v in self._items.items() if now >= v.expires_at]:
            del self._items[key]
