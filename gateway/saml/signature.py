"""Enveloped XML signatures: strict verification (XSW-proof) and signing.

Verification is deliberately narrow. A signature counts only when it is a
direct child of the element it protects, its SignedInfo has exactly one
Reference whose URI is ``#`` + that element's own ID, it uses only
allow-listed algorithms and the two transforms SAML needs, and it verifies
with a key from the broker's metadata: any KeyInfo in the message is ignored,
because a key chosen by the sender proves nothing. Callers first reject
documents with duplicate IDs (``xml.check_unique_ids``); together this means
the element the caller goes on to read is exactly the element that was
signed, which defeats every signature-wrapping variant.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import xmlsec
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import SamlInvalid
from gateway.saml import settings as alg
from gateway.saml.xml import only_child, q

# ``xmlsec.constants`` is an attribute of the C extension, not an importable module.
_C = xmlsec.constants

ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"

_SIGNATURE_TRANSFORMS = {
    alg.SIG_RSA_SHA256: _C.TransformRsaSha256,
    alg.SIG_RSA_SHA384: _C.TransformRsaSha384,
    alg.SIG_RSA_SHA512: _C.TransformRsaSha512,
    alg.SIG_ECDSA_SHA256: _C.TransformEcdsaSha256,
    alg.SIG_ECDSA_SHA384: _C.TransformEcdsaSha384,
    alg.SIG_ECDSA_SHA512: _C.TransformEcdsaSha512,
}
_DIGEST_TRANSFORMS = {
    alg.DIGEST_SHA256: _C.TransformSha256,
    alg.DIGEST_SHA384: _C.TransformSha384,
    alg.DIGEST_SHA512: _C.TransformSha512,
}


@functools.lru_cache(maxsize=64)
def _verification_key(cert_pem: bytes) -> xmlsec.Key:
    """A trusted certificate's key, parsed once per process (``xmlsec.Error`` if it is not one).

    Parsing a PEM certificate costs libxmlsec a few hundred microseconds, a
    noticeable part of a login; the key object itself is never handed to a
    context (assigning ``SignatureContext.key`` copies it), so one parsed key
    serves every verification. Keyed by the certificate's bytes: a metadata
    refresh with new certificates gets new keys, never an old one.
    """
    return xmlsec.Key.from_memory(cert_pem, _C.KeyDataFormatCertPem)


@functools.lru_cache(maxsize=8)
def _signing_key(key_pem: bytes, cert_pem: bytes) -> xmlsec.Key:
    """Our private key with its certificate, parsed once per process (see ``_verification_key``)."""
    key = xmlsec.Key.from_memory(key_pem, _C.KeyDataFormatPem)
    key.load_cert_from_memory(cert_pem, _C.KeyDataFormatCertPem)
    return key


def has_signature(element: etree._Element) -> bool:
    """Whether the element carries a direct-child ds:Signature."""
    return element.find(q("ds", "Signature")) is not None


def verify_enveloped(
    element: etree._Element,
    certs_pem: Sequence[bytes],
    *,
    signature_algorithms: frozenset[str],
    digest_algorithms: frozenset[str],
    what: str,
) -> None:
    """Verify the enveloped signature of ``element`` with one of ``certs_pem``.

    Raises ``SamlInvalid`` (reason prefixed by ``what``) unless the signature is
    present, well-formed, references ``element`` itself and verifies.
    """
    element_id = element.get("ID")
    if not element_id:
        raise SamlInvalid(f"{what}_id_missing")
    sigs = element.findall(q("ds", "Signature"))
    if not sigs:
        raise SamlInvalid(f"{what}_signature_missing")
    if len(sigs) > 1:
        raise SamlInvalid(f"{what}_signature_duplicated")
    sig = sigs[0]
    signed_info = only_child(sig, q("ds", "SignedInfo"), f"{what}_signed_info")
    c14n = only_child(signed_info, q("ds", "CanonicalizationMethod"), f"{what}_c14n")
    if c14n.get("Algorithm") != EXC_C14N:
        raise SamlInvalid(f"{what}_c14n_not_allowed")
    method = only_child(signed_info, q("ds", "SignatureMethod"), f"{what}_signature_method")
    method_uri = method.get("Algorithm", "")
    if method_uri not in signature_algorithms or method_uri not in _SIGNATURE_TRANSFORMS:
        raise SamlInvalid(f"{what}_signature_algorithm_not_allowed")
    refs = signed_info.findall(q("ds", "Reference"))
    if len(refs) != 1:
        raise SamlInvalid(f"{what}_reference_count_{len(refs)}")
    ref = refs[0]
    # The one Reference must point at the element that encloses the signature:
    # a signature over some other element proves nothing about this one.
    if ref.get("URI") != f"#{element_id}":
        raise SamlInvalid(f"{what}_reference_not_enclosing_element")
    transforms = ref.find(q("ds", "Transforms"))
    for t in [] if transforms is None else list(transforms):
        if not isinstance(t.tag, str):
            continue
        if t.tag != q("ds", "Transform") or t.get("Algorithm") not in (ENVELOPED, EXC_C14N):
            raise SamlInvalid(f"{what}_transform_not_allowed")
    digest = only_child(ref, q("ds", "DigestMethod"), f"{what}_digest_method")
    digest_uri = digest.get("Algorithm", "")
    if digest_uri not in digest_algorithms or digest_uri not in _DIGEST_TRANSFORMS:
        raise SamlInvalid(f"{what}_digest_algorithm_not_allowed")
    if not certs_pem:
        raise SamlInvalid(f"{what}_no_trusted_keys")

    for cert in certs_pem:
        ctx = xmlsec.SignatureContext()
        # Defence in depth: libxmlsec itself refuses any other algorithm.
        ctx.enable_signature_transform(_C.TransformExclC14N)
        ctx.enable_signature_transform(_SIGNATURE_TRANSFORMS[method_uri])
        ctx.enable_reference_transform(_C.TransformEnveloped)
        ctx.enable_reference_transform(_C.TransformExclC14N)
        ctx.enable_reference_transform(_DIGEST_TRANSFORMS[digest_uri])
        # Only this element is resolvable by ID, so the Reference cannot land elsewhere.
        ctx.register_id(element, "ID")
        try:
            # A preset key makes libxmlsec skip KeyInfo: the sender never picks the key.
            ctx.key = _verification_key(cert)
            ctx.verify(sig)
        except xmlsec.Error:
            continue
        return
    raise SamlInvalid(f"{what}_signature_invalid")


def sign_enveloped(
    element: etree._Element,
    key_pem: bytes,
    cert_pem: bytes,
    *,
    insert_at: int = 1,
) -> None:
    """Add an RSA-SHA256 / SHA-256 / exclusive-c14n enveloped signature to ``element``.

    ``insert_at`` is the child position (SAML wants the Signature right after Issuer).
    """
    element_id = element.get("ID")
    if not element_id:
        raise ValueError("element to sign needs an ID")
    sig = xmlsec.template.create(element, _C.TransformExclC14N, _C.TransformRsaSha256, ns="ds")
    element.insert(insert_at, sig)
    ref = xmlsec.template.add_reference(sig, _C.TransformSha256, uri=f"#{element_id}")
    xmlsec.template.add_transform(ref, _C.TransformEnveloped)
    xmlsec.template.add_transform(ref, _C.TransformExclC14N)
    key_info = xmlsec.template.ensure_key_info(sig)
    xmlsec.template.add_x509_data(key_info)
    ctx = xmlsec.SignatureContext()
    ctx.key = _signing_key(key_pem, cert_pem)
    ctx.register_id(element, "ID")
    ctx.sign(sig)
