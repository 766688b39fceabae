"""Parsed XML-signature keys are kept per process: reused, and never mistaken for another.

Signing and verifying parse each PEM key once (``_signing_key``,
``_verification_key``); these tests show the reuse and, above all, that the
cache cannot make a signature verify with a key that is not in the trusted
list, or sign with a key other than the one asked for (a rotated key, a
refreshed broker certificate).
"""

from __future__ import annotations

import pytest
from lxml import etree

from gateway.errors import SamlInvalid
from gateway.saml import signature
from gateway.saml.signature import sign_enveloped, verify_enveloped
from gateway.saml.xml import NS, q
from gateway_dev.devkeys import KeyPair, rsa_keypair

ALGS = {
    "signature_algorithms": frozenset({"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"}),
    "digest_algorithms": frozenset({"http://www.w3.org/2001/04/xmlenc#sha256"}),
}


@pytest.fixture(scope="module")
def old() -> KeyPair:
    return rsa_keypair("old signing key")


@pytest.fixture(scope="module")
def new() -> KeyPair:
    return rsa_keypair("new signing key")


def _signed(pair: KeyPair, element_id: str) -> etree._Element:
    root = etree.Element(
        q("samlp", "ArtifactResolve"),
        {"ID": element_id, "Version": "2.0"},
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]},
    )
    etree.SubElement(root, q("saml", "Issuer")).text = "urn:test:sp"
    sign_enveloped(root, pair.key_pem, pair.cert_pem, insert_at=1)
    # As the receiver sees it: serialised and parsed again.
    return etree.fromstring(etree.tostring(root))


def _embedded_cert(root: etree._Element) -> str:
    cert = root.find(f".//{q('ds', 'X509Certificate')}")
    assert cert is not None and cert.text
    return "".join(cert.text.split())


def _pem_body(pem: bytes) -> str:
    return "".join(pem.decode().strip().splitlines()[1:-1])


def test_signing_parses_the_key_once_and_each_signature_verifies(old: KeyPair) -> None:
    signature._signing_key.cache_clear()
    first = _signed(old, "_a1")
    second = _signed(old, "_a2")
    info = signature._signing_key.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    for root in (first, second):
        verify_enveloped(root, [old.cert_pem], what="resolve", **ALGS)
        assert _embedded_cert(root) == _pem_body(old.cert_pem)


def test_a_rotated_signing_key_signs_at_once(old: KeyPair, new: KeyPair) -> None:
    _signed(old, "_b1")  # the old key is parsed and kept
    rotated = _signed(new, "_b2")
    verify_enveloped(rotated, [new.cert_pem], what="resolve", **ALGS)
    assert _embedded_cert(rotated) == _pem_body(new.cert_pem)
    with pytest.raises(SamlInvalid, match="resolve_signature_invalid"):
        verify_enveloped(rotated, [old.cert_pem], what="resolve", **ALGS)


def test_a_kept_verification_key_never_verifies_outside_the_trusted_list(
    old: KeyPair, new: KeyPair
) -> None:
    signature._verification_key.cache_clear()
    by_old, by_new = _signed(old, "_c1"), _signed(new, "_c2")
    # Both certificates parsed and kept ...
    verify_enveloped(by_old, [new.cert_pem, old.cert_pem], what="response", **ALGS)
    verify_enveloped(by_new, [new.cert_pem, old.cert_pem], what="response", **ALGS)
    assert signature._verification_key.cache_info().misses == 2
    # ... and still only the listed ones count: a refreshed metadata without the
    # old certificate refuses what the old key signed.
    with pytest.raises(SamlInvalid, match="response_signature_invalid"):
        verify_enveloped(by_old, [new.cert_pem], what="response", **ALGS)
    with pytest.raises(SamlInvalid, match="response_signature_invalid"):
        verify_enveloped(by_new, [old.cert_pem], what="response", **ALGS)
    assert signature._verification_key.cache_info().misses == 2


def test_a_broken_certificate_is_skipped_every_time(old: KeyPair) -> None:
    root = _signed(old, "_d1")
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    for _ in range(2):
        verify_enveloped(root, [broken, old.cert_pem], what="response", **ALGS)
        with pytest.raises(SamlInvalid, match="response_signature_invalid"):
            verify_enveloped(root, [broken], what="response", **ALGS)
