"""The ArtifactResolutionService: SOAP 1.1 in, signed ArtifactResponse out.

Checks, in order: TLS client certificate (when mutual TLS is configured),
SOAP shape, Issuer = the SP, the ArtifactResolve signature against the SP
metadata, Destination, artifact format and SourceID. Only then is the
artifact taken from the store (so a forged request cannot burn someone's
artifact). SAML-level failures are answered as a signed ArtifactResponse
with a Requester status, never a 500; an unknown, used or expired artifact
gets a Success ArtifactResponse with no message in it (SAML core 3.5.2).
"""

from __future__ import annotations

import ssl

import structlog
from aiohttp import web
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway_dev.simulator.artifacts import parse_artifact, source_id
from gateway_dev.simulator.control import HTTP_SESSION, SIMULATOR, Simulator
from gateway_dev.simulator.idpmetadata import ARS_PATH
from gateway_dev.simulator.messages import SUCCESS, Status, artifact_response_envelope, soap_fault
from gateway_dev.simulator.scenarios import STATUS_REQUEST_DENIED, STATUS_REQUESTER
from gateway_dev.simulator.spmetadata import MetadataUnavailable
from gateway_dev.simulator.xmlcrypto import SignatureInvalid, verify_enveloped
from gateway_dev.simulator.xmlutil import SAML, SAMLP, SOAP, XmlRejected, parse_xml, q

log = structlog.get_logger("gateway_dev.simulator")

_XML = "text/xml"


class _Denied(Exception):
    def __init__(self, reason: str, in_response_to: str | None) -> None:
        super().__init__(reason)
        self.in_response_to = in_response_to


def _peer_cert(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


def _reply(
    sim: Simulator,
    in_response_to: str | None,
    inner: etree._Element | None,
    status: Status,
    *,
    real_broker_shape: bool | None = None,
) -> web.Response:
    # A stored Response dictates the shape (its namespaces must match the envelope's);
    # answers without a message follow the settings.
    if real_broker_shape is None:
        real_broker_shape = sim.settings.real_broker_shape
    body = artifact_response_envelope(
        sim.settings.entity_id,
        in_response_to,
        inner,
        status,
        sim.keys.broker,
        sim.now(),
        real_broker_shape=real_broker_shape,
    )
    return web.Response(body=body, content_type=_XML, charset="utf-8")


async def handle(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        sp = await sim.sp_metadata(request.app[HTTP_SESSION])
    except MetadataUnavailable as exc:
        log.warning("sim_sp_metadata_unavailable", reason=str(exc))
        return web.Response(
            body=soap_fault("SP metadata unavailable"), status=503, content_type=_XML
        )

    mtls = sim.settings.mtls
    if (
        mtls is not None
        and mtls.require_client_cert
        and not sim.client_cert_matches(_peer_cert(request), sp)
    ):
        log.info("sim_artifact_resolve_refused", reason="client certificate")
        return web.Response(
            body=soap_fault("a client certificate from the SP metadata is required"),
            status=403,
            content_type=_XML,
        )

    try:
        envelope = parse_xml(await request.read())
    except XmlRejected as exc:
        return web.Response(body=soap_fault(str(exc)), status=400, content_type=_XML)
    resolve = envelope.find(f"{q(SOAP, 'Body')}/{q(SAMLP, 'ArtifactResolve')}")
    if envelope.tag != q(SOAP, "Envelope") or resolve is None:
        return web.Response(
            body=soap_fault("expected a SOAP 1.1 envelope with an ArtifactResolve"),
            status=400,
            content_type=_XML,
        )
    request_id = resolve.get("ID")
    try:
        artifact = _check(sim, resolve, sp.entity_id, sp.signing_certs, request)
    except _Denied as exc:
        log.info("sim_artifact_resolve_refused", request_id=request_id, reason=str(exc))
        return _reply(sim, request_id, None, (STATUS_REQUESTER, STATUS_REQUEST_DENIED, str(exc)))

    stored = sim.artifacts.take(artifact)
    if stored is None:
        log.info("sim_artifact_unknown", request_id=request_id)
        return _reply(sim, request_id, None, SUCCESS)
    if stored.sp_entity_id != sp.entity_id:
        log.info("sim_artifact_resolve_refused", request_id=request_id, reason="other SP")
        return _reply(
            sim, request_id, None, (STATUS_REQUESTER, STATUS_REQUEST_DENIED, "artifact not yours")
        )
    log.info("sim_artifact_resolved", request_id=request_id)
    return _reply(
        sim,
        request_id,
        parse_xml(stored.response_xml),
        SUCCESS,
        real_broker_shape=stored.real_broker_shape,
    )


def _check(
    sim: Simulator,
    resolve: etree._Element,
    sp_entity_id: str,
    certs: tuple[bytes, ...],
    request: web.Request,
) -> str:
    request_id = resolve.get("ID")
    issuer = resolve.find(q(SAML, "Issuer"))
    if issuer is None or (issuer.text or "").strip() != sp_entity_id:
        raise _Denied("ArtifactResolve Issuer is not the SP", request_id)
    try:
        verify_enveloped(resolve, certs)
    except SignatureInvalid as exc:
        raise _Denied(f"ArtifactResolve signature: {exc}", request_id) from exc
    destination = resolve.get("Destination")
    expected = sim.base_url(str(request.url.origin())) + ARS_PATH
    if destination is not None and destination != expected:
        raise _Denied("ArtifactResolve Destination is not this service", request_id)
    art = resolve.find(q(SAMLP, "Artifact"))
    text = (art.text or "").strip() if art is not None else ""
    try:
        parsed = parse_artifact(text)
    except ValueError as exc:
        raise _Denied(str(exc), request_id) from exc
    if parsed.source_id != source_id(sim.settings.entity_id):
        raise _Denied("artifact SourceID is not this broker", request_id)
    return text
