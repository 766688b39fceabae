"""The Artifact binding: parse ``SAMLart``, resolve it by SOAP, verify the answer.

The artifact is checked before any network call (type 0x0004, SourceID =
SHA-1 of the broker's entityID, a known endpoint index), so a forged or
foreign artifact never makes us talk to anyone. The ``ArtifactResolve`` is
signed; the ``ArtifactResponse`` signature is verified on the bytes exactly as
received (re-serialising, as pysaml2 does, breaks signatures from brokers
that use other namespace prefixes), then its InResponseTo, Issuer and Status
are checked and the inner Response goes through ``verify_response``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ssl
from dataclasses import dataclass

import aiohttp
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import BrokerUnavailable, SamlInvalid
from gateway.saml.keys import KeyPair
from gateway.saml.settings import SamlSettings
from gateway.saml.signature import sign_enveloped, verify_enveloped
from gateway.saml.verify import (
    STATUS,
    Expectation,
    VerifiedLogin,
    VerifyContext,
    saml_guard,
    verify_response,
)
from gateway.saml.xml import (
    NS,
    check_unique_ids,
    instant,
    only_child,
    parse_xml,
    q,
    strict_text,
)

ARTIFACT_TYPE = 0x0004
SOAP_ACTION = "http://www.oasis-open.org/committees/security"


@dataclass(frozen=True)
class Artifact:
    """A parsed SAML 2.0 type 0x0004 artifact."""

    value: str
    endpoint_index: int
    source_id: bytes
    message_handle: bytes


def parse_artifact(samlart: str, broker_entity_id: str) -> Artifact:
    """Check type and SourceID (before any network call); ``SamlInvalid`` if foreign."""
    if not samlart or len(samlart) > 200:
        raise SamlInvalid("artifact_malformed")
    try:
        raw = base64.b64decode(samlart.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SamlInvalid("artifact_malformed") from None
    if len(raw) != 44:
        raise SamlInvalid("artifact_malformed")
    if int.from_bytes(raw[0:2], "big") != ARTIFACT_TYPE:
        raise SamlInvalid("artifact_type_unsupported")
    # SHA-1 here is the SAML binding's fixed SourceID derivation, not a signature.
    expected_source = hashlib.sha1(broker_entity_id.encode()).digest()  # noqa: S324
    if raw[4:24] != expected_source:
        raise SamlInvalid("artifact_source_unknown")
    return Artifact(
        value=samlart.strip(),
        endpoint_index=int.from_bytes(raw[2:4], "big"),
        source_id=raw[4:24],
        message_handle=raw[24:44],
    )


def artifact_resolve_envelope(
    settings: SamlSettings,
    signing: KeyPair,
    artifact: Artifact,
    destination: str,
    resolve_id: str,
    now: dt.datetime,
) -> bytes:
    """A SOAP 1.1 envelope with a signed ArtifactResolve."""
    soap = NS["soap"]
    env = etree.Element(f"{{{soap}}}Envelope", nsmap={"soapenv": soap})
    body = etree.SubElement(env, f"{{{soap}}}Body")
    resolve = etree.SubElement(
        body,
        q("samlp", "ArtifactResolve"),
        ID=resolve_id,
        Version="2.0",
        IssueInstant=instant(now),
        Destination=destination,
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]},
    )
    etree.SubElement(resolve, q("saml", "Issuer")).text = settings.entity_id
    etree.SubElement(resolve, q("samlp", "Artifact")).text = artifact.value
    sign_enveloped(resolve, signing.key_pem, signing.cert_pem, insert_at=1)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def verify_artifact_response(
    data: bytes, resolve_id: str, expected: Expectation, ctx: VerifyContext
) -> VerifiedLogin:
    """Verify the SOAP ArtifactResponse and then the Response inside it."""
    with saml_guard():
        settings, metadata = ctx.settings, ctx.metadata
        env = parse_xml(data, max_bytes=settings.max_message_bytes)
        check_unique_ids(env)
        if env.tag != f"{{{NS['soap']}}}Envelope":
            raise SamlInvalid("soap_envelope_missing")
        body = only_child(env, f"{{{NS['soap']}}}Body", "soap_body")
        children = [c for c in body if isinstance(c.tag, str)]
        if len(children) != 1:
            raise SamlInvalid("soap_body_content")
        ar = children[0]
        if ar.tag == f"{{{NS['soap']}}}Fault":
            raise SamlInvalid("soap_fault")
        if ar.tag != q("samlp", "ArtifactResponse"):
            raise SamlInvalid("artifact_response_missing")
        verify_enveloped(
            ar,
            metadata.signing_certs,
            signature_algorithms=settings.signature_algorithms,
            digest_algorithms=settings.digest_algorithms,
            what="artifact_response",
        )
        if ar.get("Version") != "2.0":
            raise SamlInvalid("artifact_response_version")
        if ar.get("InResponseTo") != resolve_id:
            raise SamlInvalid("artifact_response_in_response_to_mismatch")
        issuer = only_child(ar, q("saml", "Issuer"), "artifact_response_issuer")
        if strict_text(issuer, "artifact_response_issuer") != metadata.entity_id:
            raise SamlInvalid("artifact_response_issuer_mismatch")
        status = only_child(ar, q("samlp", "Status"), "artifact_response_status")
        code = only_child(status, q("samlp", "StatusCode"), "artifact_response_status_code")
        if code.get("Value") != STATUS + "Success":
            raise SamlInvalid("artifact_response_status_not_success")
        inner = [
            c
            for c in ar
            if isinstance(c.tag, str)
            and c.tag not in (q("saml", "Issuer"), q("ds", "Signature"), q("samlp", "Status"))
        ]
        if len(inner) != 1 or inner[0].tag != q("samlp", "Response"):
            # An empty ArtifactResponse means the artifact was unknown or already used.
            raise SamlInvalid("artifact_response_without_response")
        return verify_response(inner[0], expected, ctx)


def client_ssl_context(settings: SamlSettings) -> ssl.SSLContext:
    """TLS for the ArtifactResolutionService: system or configured CAs, optional client cert."""
    context = ssl.create_default_context(
        cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None
    )
    if settings.tls_client is not None:
        context.load_cert_chain(
            str(settings.tls_client.cert_file), str(settings.tls_client.key_file)
        )
    return context


class ArtifactResolver:
    """Posts ArtifactResolve messages to the broker; owns one ``ClientSession``."""

    def __init__(self, settings: SamlSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None

    async def start(self) -> None:
        self._ssl = client_ssl_context(self._settings)
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(
                total=self._settings.artifact_read_timeout_seconds,
                sock_connect=self._settings.artifact_connect_timeout_seconds,
            ),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ArtifactResolver.start() was not called")
        return self._session

    async def post(self, url: str, envelope: bytes) -> bytes:
        """POST the SOAP envelope; network trouble, timeouts and 5xx are ``BrokerUnavailable``."""
        limit = self._settings.max_message_bytes
        if self._settings.artifact_resolve_content_type == "application/soap+xml":
            # SOAP 1.2 style: the action travels as a media-type parameter.
            headers = {
                "Content-Type": f'application/soap+xml; charset=utf-8; action="{SOAP_ACTION}"'
            }
        else:
            headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION}
        try:
            async with self.session.post(
                url,
                data=envelope,
                headers=headers,
                ssl=self._ssl or True,
                allow_redirects=False,
            ) as resp:
                if resp.status >= 500:
                    raise BrokerUnavailable(f"artifact_resolve_http_{resp.status}")
                if resp.status != 200:
                    raise SamlInvalid(f"artifact_resolve_http_{resp.status}")
                body = await resp.content.read(limit + 1)
                if len(body) > limit:
                    raise SamlInvalid("message_too_large")
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"artifact_resolve_failed:{type(exc).__name__}") from None

    async def fetch(self, url: str) -> bytes:
        """GET a document (broker metadata) with the same session and timeouts."""
        try:
            async with self.session.get(url, ssl=self._ssl or True) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OSError(type(exc).__name__) from None
