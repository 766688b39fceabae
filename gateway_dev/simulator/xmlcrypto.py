"""Signatures and encryption in the eHerkenning shape, done in-process.

Signing uses python-xmlsec (RSA-SHA256, exclusive c14n, enveloped). Checking
the SP's signatures allow-lists algorithms first (no SHA-1) and only ever uses
certificates from the SP metadata, never a key carried in the message.
EncryptedIDs are built with ``cryptography``: a fresh AES key per element,
wrapped with RSA-OAEP for each recipient.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote_plus

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway_dev.simulator.xmlutil import DS, SAML, XENC, XENC11, q

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"

_SIG_ALGS: dict[str, hashes.HashAlgorithm] = {
    RSA_SHA256: hashes.SHA256(),
    RSA_SHA512: hashes.SHA512(),
}
_DIGESTS = {SHA256, SHA512}
_TRANSFORMS = {ENVELOPED, EXC_C14N}

BLOCK_CIPHERS = {
    "aes256-gcm": ("http://www.w3.org/2009/xmlenc11#aes256-gcm", 32),
    "aes128-gcm": ("http://www.w3.org/2009/xmlenc11#aes128-gcm", 16),
    "aes256-cbc": ("http://www.w3.org/2001/04/xmlenc#aes256-cbc", 32),
    "aes128-cbc": ("http://www.w3.org/2001/04/xmlenc#aes128-cbc", 16),
}
RSA_OAEP_MGF1P = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"
RSA_OAEP_11 = "http://www.w3.org/2009/xmlenc11#rsa-oaep"
MGF1_SHA256 = "http://www.w3.org/2009/xmlenc11#mgf1sha256"


class SignatureInvalid(ValueError):
    """A message's signature is missing, uses a refused algorithm, or does not verify."""


@dataclass(frozen=True)
class Signer:
    """A loaded signing key with its certificate (published in KeyInfo)."""

    key_pem: bytes
    cert_pem: bytes

    def _key(self) -> xmlsec.Key:
        key = xmlsec.Key.from_memory(self.key_pem, xmlsec.constants.KeyDataFormatPem)
        key.load_cert_from_memory(self.cert_pem, xmlsec.constants.KeyDataFormatPem)
        return key

    @property
    def key_name(self) -> str:
        """SHA-256 hex of the certificate: the ``KeyName`` real brokers publish."""
        return hashlib.sha256(cert_der(self.cert_pem)).hexdigest()

    def sign(
        self, el: etree._Element, *, after: etree._Element | None, real_broker_shape: bool = False
    ) -> None:
        """Sign ``el`` (enveloped, by its ``ID``), placing the Signature right after
        ``after`` (its Issuer), or first when ``after`` is ``None``.

        ``real_broker_shape``: ``KeyInfo`` holds only a ``KeyName`` (the verifier must
        take the key from metadata), and the exclusive c14n transform carries an
        ``InclusiveNamespaces PrefixList="xacml-saml"``, as some brokers send.
        """
        sig = xmlsec.template.create(
            el, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256, ns="ds"
        )
        if after is None:
            el.insert(0, sig)
        else:
            after.addnext(sig)
        ref = xmlsec.template.add_reference(
            sig, xmlsec.constants.TransformSha256, uri="#" + el.get("ID", "")
        )
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        c14n = xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
        key_info = xmlsec.template.ensure_key_info(sig)
        if real_broker_shape:
            etree.SubElement(
                c14n,
                q(EXC_C14N, "InclusiveNamespaces"),
                {"PrefixList": "xacml-saml"},
                nsmap={"ec": EXC_C14N},
            )
            etree.SubElement(key_info, q(DS, "KeyName")).text = self.key_name
        else:
            xmlsec.template.add_x509_data(key_info)
        xmlsec.tree.add_ids(el.getroottree().getroot(), ["ID"])
        ctx = xmlsec.SignatureContext()
        ctx.key = self._key()
        ctx.sign(sig)


def cert_der(cert: bytes) -> bytes:
    """DER bytes of a PEM or DER certificate."""
    if cert.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    return cert


def verify_enveloped(root: etree._Element, certs: Sequence[bytes]) -> None:
    """Check the enveloped signature over ``root`` against one of ``certs`` (DER).

    Only a Signature that is a direct child of ``root`` and references
    ``root``'s own ID counts (no wrapping), with allow-listed algorithms, and
    that ID must occur once in the document.
    """
    sigs = root.findall(q(DS, "Signature"))
    if len(sigs) != 1:
        raise SignatureInvalid("message is not signed" if not sigs else "several signatures")
    sig = sigs[0]
    root_id = root.get("ID")
    if not root_id:
        raise SignatureInvalid("signed element has no ID")
    info = sig.find(q(DS, "SignedInfo"))
    if info is None:
        raise SignatureInvalid("no SignedInfo")
    c14n = info.find(q(DS, "CanonicalizationMethod"))
    method = info.find(q(DS, "SignatureMethod"))
    refs = info.findall(q(DS, "Reference"))
    if c14n is None or c14n.get("Algorithm") != EXC_C14N:
        raise SignatureInvalid("canonicalisation must be exclusive c14n")
    if method is None or method.get("Algorithm") not in _SIG_ALGS:
        raise SignatureInvalid("signature algorithm refused (RSA-SHA256/512 only)")
    if len(refs) != 1 or refs[0].get("URI") != "#" + root_id:
        raise SignatureInvalid("signature does not reference the message")
    digest = refs[0].find(q(DS, "DigestMethod"))
    if digest is None or digest.get("Algorithm") not in _DIGESTS:
        raise SignatureInvalid("digest algorithm refused (SHA-256/512 only)")
    for transform in refs[0].iterfind(f"{q(DS, 'Transforms')}/{q(DS, 'Transform')}"):
        if transform.get("Algorithm") not in _TRANSFORMS:
            raise SignatureInvalid("transform refused")
    doc = root.getroottree().getroot()
    if len(doc.xpath("//*[@ID=$id]", id=root_id)) != 1:
        raise SignatureInvalid("duplicate ID")
    xmlsec.tree.add_ids(doc, ["ID"])
    for der in certs:
        ctx = xmlsec.SignatureContext()
        ctx.key = xmlsec.Key.from_memory(der, xmlsec.constants.KeyDataFormatCertDer)
        try:
            ctx.verify(sig)
        except xmlsec.Error:
            continue
        return
    raise SignatureInvalid("signature does not verify with the SP metadata certificates")


def verify_redirect(raw_query: str, certs: Sequence[bytes], *, message: str) -> None:
    """Check an HTTP-Redirect binding signature over the raw, still-encoded query.

    The signed octets are ``message=..&RelayState=..&SigAlg=..`` exactly as
    the SP encoded them (SAML bindings 3.4.4.1), so we must not re-encode.
    """
    raw: dict[str, str] = {}
    for pair in raw_query.split("&"):
        name, _, value = pair.partition("=")
        if name in raw:
            raise SignatureInvalid(f"duplicate query parameter {name}")
        raw[name] = value
    if "Signature" not in raw or "SigAlg" not in raw:
        raise SignatureInvalid("message is not signed")
    algorithm = _SIG_ALGS.get(unquote_plus(raw["SigAlg"]))
    if algorithm is None:
        raise SignatureInvalid("signature algorithm refused (RSA-SHA256/512 only)")
    names = [message, "RelayState", "SigAlg"] if "RelayState" in raw else [message, "SigAlg"]
    # First the octets exactly as received; then the same decoded values
    # re-encoded the two common ways, because HTTP clients (aiohttp, some
    # proxies) re-quote URLs in transit. The signature still covers the same
    # decoded values, so this does not widen what verifies.
    variants = [
        "&".join(f"{n}={raw.get(n, '')}" for n in names),
        "&".join(f"{n}={quote_plus(unquote_plus(raw.get(n, '')), safe='')}" for n in names),
        "&".join(f"{n}={quote(unquote_plus(raw.get(n, '')), safe='')}" for n in names),
    ]
    try:
        signature = base64.b64decode(unquote_plus(raw["Signature"]), validate=True)
    except ValueError as exc:
        raise SignatureInvalid("signature is not base64") from exc
    for der in certs:
        public = x509.load_der_x509_certificate(der).public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            continue
        for signed in dict.fromkeys(variants):
            try:
                public.verify(signature, signed.encode(), asym_padding.PKCS1v15(), algorithm)
            except InvalidSignature:
                continue
            return
    raise SignatureInvalid("signature does not verify with the SP metadata certificates")


def sign_redirect(query: str, signer: Signer) -> str:
    """Append ``SigAlg`` (RSA-SHA256) and ``Signature`` to an already encoded query.

    ``query`` is ``SAMLResponse=..[&RelayState=..]`` exactly as it will be sent:
    the signature covers those octets plus the SigAlg parameter.
    """
    signed = query + "&SigAlg=" + quote_plus(RSA_SHA256)
    key = serialization.load_pem_private_key(signer.key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the broker signing key must be RSA")
    signature = key.sign(signed.encode(), asym_padding.PKCS1v15(), hashes.SHA256())
    return signed + "&Signature=" + quote_plus(base64.b64encode(signature).decode())


@dataclass(frozen=True)
class Recipient:
    """Who can open an EncryptedID: an entityID and its encryption certificate (DER)."""

    entity_id: str
    cert_der: bytes


def encrypt_id(
    name_id: etree._Element,
    recipients: Sequence[Recipient],
    *,
    block_cipher: str,
    key_transport: str,
    key_name_digest: str = "sha256",
) -> etree._Element:
    """Wrap a standalone ``saml:NameID`` into a ``saml:EncryptedID``.

    A fresh AES key per element; one EncryptedKey per recipient, each with
    ``Recipient`` and a ``CarriedKeyName`` that the EncryptedData's KeyName
    points at (how eHerkenning consumers pick their key). Each EncryptedKey's
    ``KeyName`` is the ``key_name_digest`` (``sha256`` or ``sha1``) hex of the
    recipient's certificate.
    """
    algorithm, key_len = BLOCK_CIPHERS[block_cipher]
    key = secrets.token_bytes(key_len)
    plaintext = etree.tostring(name_id, encoding="UTF-8")
    if block_cipher.endswith("gcm"):
        iv = os.urandom(12)
        cipher_value = iv + AESGCM(key).encrypt(iv, plaintext, None)
    else:
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()  # a valid instance of XML-Enc padding
        padded = padder.update(plaintext) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        cipher_value = iv + enc.update(padded) + enc.finalize()

    data_id = "_ed" + secrets.token_hex(16)
    key_name = "_k" + secrets.token_hex(16)
    out = etree.Element(q(SAML, "EncryptedID"), nsmap={"saml": SAML})
    data = etree.SubElement(
        out,
        q(XENC, "EncryptedData"),
        {"Id": data_id, "Type": XENC + "Element"},
        nsmap={"xenc": XENC},
    )
    etree.SubElement(data, q(XENC, "EncryptionMethod"), {"Algorithm": algorithm})
    info = etree.SubElement(data, q(DS, "KeyInfo"), nsmap={"ds": DS})
    etree.SubElement(info, q(DS, "KeyName")).text = key_name
    _cipher_data(data, cipher_value)

    for recipient in recipients:
        ek = etree.SubElement(
            out,
            q(XENC, "EncryptedKey"),
            {"Id": "_ek" + secrets.token_hex(16), "Recipient": recipient.entity_id},
            nsmap={"xenc": XENC},
        )
        method = etree.SubElement(ek, q(XENC, "EncryptionMethod"))
        if key_transport == "rsa-oaep":
            method.set("Algorithm", RSA_OAEP_11)
            etree.SubElement(method, q(DS, "DigestMethod"), {"Algorithm": SHA256}, nsmap={"ds": DS})
            etree.SubElement(
                method, q(XENC11, "MGF"), {"Algorithm": MGF1_SHA256}, nsmap={"xenc11": XENC11}
            )
            oaep = asym_padding.OAEP(asym_padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        else:
            method.set("Algorithm", RSA_OAEP_MGF1P)
            etree.SubElement(method, q(DS, "DigestMethod"), {"Algorithm": SHA1}, nsmap={"ds": DS})
            oaep = asym_padding.OAEP(asym_padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 - OAEP-SHA1 is the XML-Enc 1.0 default, not a signature
        ek_info = etree.SubElement(ek, q(DS, "KeyInfo"), nsmap={"ds": DS})
        # KeyName = a digest of the certificate, so an SP with a current and a
        # next certificate knows which private key to use. Brokers use SHA-256 or,
        # older ones, SHA-1 (a name, not a security mechanism).
        etree.SubElement(ek_info, q(DS, "KeyName")).text = hashlib.new(
            key_name_digest, recipient.cert_der
        ).hexdigest()
        public = x509.load_der_x509_certificate(recipient.cert_der).public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("the SP encryption certificate must hold an RSA key")
        _cipher_data(ek, public.encrypt(key, oaep))
        refs = etree.SubElement(ek, q(XENC, "ReferenceList"))
        etree.SubElement(refs, q(XENC, "DataReference"), {"URI": "#" + data_id})
        etree.SubElement(ek, q(XENC, "CarriedKeyName")).text = key_name
    return out


def _cipher_data(parent: etree._Element, value: bytes) -> None:
    cd = etree.SubElement(parent, q(XENC, "CipherData"))
    etree.SubElement(cd, q(XENC, "CipherValue")).text = base64.b64encode(value).decode()
