"""The Node.js verifier in docs/backends.md, run as written with the locked ``jose``.

The ```js block of the "Node.js (jose)" section is written to a module with
only the gateway URL replaced by the tiny token gateway's (real JWKS over
loopback HTTP), and node verifies real gateway tokens and forged, expired,
misdirected and incomplete ones. ``jose`` comes from ``tests/node``
(package.json + package-lock.json), installed by ``./dev test`` with ``npm ci``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization

from gateway.tokens import (
    KeySet,
    TokenKeyFiles,
    TokenMinter,
    TokenSubject,
    build_claims,
    generate_key,
    rotate,
)

if TYPE_CHECKING:
    from tests.tokens.conftest import TokenGateway

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "node"
DOC_URL = "https://werkgevers.pme.example"

StartGateway = Callable[..., Awaitable["TokenGateway"]]
SubjectFactory = Callable[..., TokenSubject]

# Reads one JSON request per line ({"token", "audience"}), answers one JSON line each.
HARNESS = """
import { createInterface } from "node:readline";
import { verify } from "./verify.mjs";

for await (const line of createInterface({ input: process.stdin })) {
  const { token, audience } = JSON.parse(line);
  try {
    const claims = await verify(token, audience);
    console.log(JSON.stringify({ ok: true, claims }));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, code: err.code ?? err.name }));
  }
}
"""


def _doc_snippet() -> str:
    text = (REPO / "docs" / "backends.md").read_text(encoding="utf-8")
    section = text.split("## Node.js (jose)", 1)[1].split("\n## ", 1)[0]
    return section.split("```js\n", 1)[1].split("```", 1)[0]


def _node() -> str:
    node = shutil.which("node")
    assert node is not None, "node missing: ./dev test installs nodejs"
    assert (NODE_DIR / "node_modules" / "jose" / "package.json").exists(), (
        "jose missing: ./dev test runs npm ci in tests/node"
    )
    return node


class NodeVerifier:
    """The documented module under node, asked one (token, audience) at a time."""

    def __init__(self, workdir: Path, gateway_url: str) -> None:
        snippet = _doc_snippet()
        assert DOC_URL in snippet
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "verify.mjs").write_text(snippet.replace(DOC_URL, gateway_url))
        (workdir / "check.mjs").write_text(HARNESS)
        (workdir / "node_modules").symlink_to(NODE_DIR / "node_modules")
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> NodeVerifier:
        self.proc = await asyncio.create_subprocess_exec(
            _node(),
            "check.mjs",
            cwd=self.workdir,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), timeout=10)

    async def verify(self, token: str, audience: str = "portal") -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps({"token": token, "audience": audience}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=15)
        assert line, "node exited"
        answer: dict[str, Any] = json.loads(line)
        return answer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    parts = [json.dumps(header).encode(), json.dumps(claims).encode()]
    return ".".join(_b64(p) for p in parts) + "."


async def test_documented_node_verifier_accepts_genuine_and_refuses_the_rest(
    token_gateway: StartGateway, make_subject: SubjectFactory, tmp_path: Path
) -> None:
    """Real tokens verify under node; forged, expired, misdirected and incomplete ones do not."""
    gw = await token_gateway("ES256")
    subject = make_subject(3, active="10000001")
    genuine = gw.mint(subject, "portal")
    now = int(time.time())
    claims = build_claims(subject, "portal", now, settings=gw.settings)
    kid = gw.keys.kid
    expired = TokenMinter(gw.settings, gw.keys, clock=lambda: time.time() - 600).mint(
        subject, "portal"
    )
    signing = gw.keys.signing_key
    incomplete = jwt.encode(
        {k: v for k, v in claims.items() if k != "mode"},
        signing,
        algorithm="ES256",
        headers={"kid": kid},
    )
    foreign_issuer = jwt.encode(
        {**claims, "iss": "https://elsewhere.example"}, signing, "ES256", headers={"kid": kid}
    )
    stranger_key = KeySet(TokenKeyFiles(current=generate_key(tmp_path / "s.pem")), "ES256")
    stranger = jwt.encode(claims, stranger_key.signing_key, "ES256", headers={"kid": kid})
    public_pem = gw.keys.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    confused = f"{header}.{body}.{_b64(mac)}"
    none = _unsigned(claims, {"alg": "none", "kid": kid})

    requests = [
        (genuine, "portal"),
        (genuine, "portal-api"),
        (expired, "portal"),
        (incomplete, "portal"),
        (foreign_issuer, "portal"),
        (stranger, "portal"),
        (confused, "portal"),
        (none, "portal"),
    ]
    async with NodeVerifier(tmp_path / "node", gw.url) as node:
        answers = [await node.verify(token, audience) for token, audience in requests]
    ok = answers[0]
    assert ok["ok"] is True
    assert ok["claims"]["sub"] == "pseudo-abc123" and ok["claims"]["iss"] == gw.url
    assert [e["kvk"] for e in ok["claims"]["employers"]] == ["10000000", "10000001", "10000002"]
    codes = [a.get("code") for a in answers[1:]]
    assert all(a["ok"] is False for a in answers[1:]), answers
    assert codes == [
        "ERR_JWT_CLAIM_VALIDATION_FAILED",  # audience
        "ERR_JWT_EXPIRED",
        "ERR_JWT_CLAIM_VALIDATION_FAILED",  # mode missing
        "ERR_JWT_CLAIM_VALIDATION_FAILED",  # issuer
        "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
        "ERR_JOSE_ALG_NOT_ALLOWED",
        "ERR_JOSE_ALG_NOT_ALLOWED",
    ], answers


async def test_node_verifier_follows_a_key_rotation_from_its_cached_jwks(
    token_gateway: StartGateway, make_subject: SubjectFactory, tmp_path: Path
) -> None:
    """The new key's tokens verify from the JWKS cached before the rotation (next was in it)."""
    gw = await token_gateway("ES256")
    subject = make_subject(2)
    before = gw.mint(subject, "portal")
    async with NodeVerifier(tmp_path, gw.url) as node:
        assert (await node.verify(before))["ok"] is True
        fetched = gw.jwks_requests
        rotate(gw.settings.keys.current.parent, min_next_age=0)
        gw.keys.reload()
        after = TokenMinter(gw.settings, gw.keys).mint(subject, "portal")
        assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
        assert (await node.verify(after))["ok"] is True
        assert (await node.verify(before))["ok"] is True  # the old key is still published
    assert gw.jwks_requests == fetched == 1  # no refetch was needed
