"""EncryptedID decryption (how eHerkenning sends KvK, RSIN and the pseudonym).

Each identifier attribute value is a ``saml:EncryptedID``: an ``EncryptedData``
(AES-GCM or AES-CBC, a fresh key per element) plus one ``EncryptedKey`` per
recipient (RSA-OAEP). We pick the EncryptedKey addressed to our entityID (and
named by the data's ``KeyName``/``CarriedKeyName`` when present), unwrap it
with our current encryption key or, during a rollover, the next one, and
parse the plaintext ``NameID`` with the hardened parser. Only allow-listed
algorithms are accepted: RSA-1.5 is refused because its padding errors form a
decryption oracle. Every failure is the same ``SamlInvalid`` reason so a
caller cannot learn which step failed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.errors import SamlInvalid
from gateway.saml import settings as alg
from gateway.saml.xml import NS, only_child, optional_child, parse_xml, q, strict_text

_BLOCK_KEY_SIZES = {
    alg.ENC_AES128_GCM: 16,
    alg.ENC_AES192_GCM: 24,
    alg.ENC_AES256_GCM: 32,
    alg.ENC_AES128_CBC: 16,
    alg.ENC_AES192_CBC: 24,
    alg.ENC_AES256_CBC: 32,
}
_OAEP_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "http://www.w3.org/2000/09/xmldsig#sha1": hashes.SHA1,
    alg.DIGEST_SHA256: hashes.SHA256,
    alg.DIGEST_SHA384: hashes.SHA384,
    alg.DIGEST_SHA512: hashes.SHA512,
}
_MGF_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "http://www.w3.org/2009/xmlenc11#mgf1sha1": hashes.SHA1,
    "http://www.w3.org/2009/xmlenc11#mgf1sha256": hashes.SHA256,
    "http://www.w3.org/2009/xmlenc11#mgf1sha384": hashes.SHA384,
    "http://www.w3.org/2009/xmlenc11#mgf1sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class NameId:
    """A decrypted (or plain) NameID: the identifier and the type its qualifier names."""

    value: str
    name_qualifier: str


@dataclass(frozen=True)
class Decrypter:
    """Our encryption keys (current first, then next) and the accepted algorithms."""

    entity_id: str
    keys: Sequence[rsa.RSAPrivateKey]
    key_transport_algorithms: frozenset[str]
    block_algorithms: frozenset[str]
    max_bytes: int

    def decrypt_name_id(self, encrypted_id: etree._Element) -> NameId:
        """Decrypt one ``saml:EncryptedID`` into its NameID."""
        data = only_child(encrypted_id, q("xenc", "EncryptedData"), "encrypted_data")
        method = only_child(data, q("xenc", "EncryptionMethod"), "encryption_method")
        block_uri = method.get("Algorithm", "")
        if block_uri not in self.block_algorithms or block_uri not in _BLOCK_KEY_SIZES:
            raise SamlInvalid("block_algorithm_not_allowed")
        wanted_name = _data_key_name(data)
        candidates = [
            ek
            for ek in _encrypted_keys(encrypted_id, data)
            if ek.get("Recipient") in (None, self.entity_id)
            and (wanted_name is None or _carried_key_name(ek) in (None, wanted_name))
        ]
        # Prefer keys addressed to us by name; an unaddressed key is a last resort.
        candidates.sort(key=lambda ek: ek.get("Recipient") != self.entity_id)
        if not candidates:
            raise SamlInvalid("encrypted_key_for_us_missing")
        session_key: bytes | None = None
        for ek in candidates:
            session_key = self._unwrap(ek, _BLOCK_KEY_SIZES[block_uri])
            if session_key is not None:
                break
        if session_key is None:
            raise SamlInvalid("encrypted_id_undecryptable")
        cipher_value = _cipher_value(data)
        plaintext = _decrypt_block(block_uri, session_key, cipher_value)
        return self._name_id(plaintext, encrypted_id)

    def _unwrap(self, ek: etree._Element, key_size: int) -> bytes | None:
        method = only_child(ek, q("xenc", "EncryptionMethod"), "key_transport_method")
        uri = method.get("Algorithm", "")
        if uri not in self.key_transport_algorithms:
            raise SamlInvalid("key_transport_algorithm_not_allowed")
        digest_el = optional_child(method, q("ds", "DigestMethod"), "oaep_digest")
        digest_uri = (
            digest_el.get("Algorithm", "")
            if digest_el is not None
            else "http://www.w3.org/2000/09/xmldsig#sha1"
        )
        if digest_uri not in _OAEP_DIGESTS:
            raise SamlInvalid("oaep_digest_not_allowed")
        mgf_digest: type[hashes.HashAlgorithm] = hashes.SHA1
        if uri == alg.KT_RSA_OAEP:
            mgf_el = optional_child(method, q("xenc11", "MGF"), "oaep_mgf")
            if mgf_el is not None:
                mgf_uri = mgf_el.get("Algorithm", "")
                if mgf_uri not in _MGF_DIGESTS:
                    raise SamlInvalid("oaep_mgf_not_allowed")
                mgf_digest = _MGF_DIGESTS[mgf_uri]
        label: bytes | None = None
        params = optional_child(method, q("xenc", "OAEPparams"), "oaep_params")
        if params is not None:
            label = _b64(strict_text(params, "oaep_params"))
        wrapped = _cipher_value(ek)
        oaep = OAEP(
            mgf=MGF1(algorithm=mgf_digest()), algorithm=_OAEP_DIGESTS[digest_uri](), label=label
        )
        for key in self.keys:
            try:
                session_key = key.decrypt(wrapped, oaep)
            except ValueError:
                continue
            if len(session_key) != key_size:
                raise SamlInvalid("encrypted_id_undecryptable")
            return session_key
        return None

    def _name_id(self, plaintext: bytes, encrypted_id: etree._Element) -> NameId:
        # The plaintext is an element serialised out of its document: its
        # prefixes may rely on declarations of the EncryptedID's ancestors, so
        # parse it inside a wrapper that declares them.
        nsdecl = b" ".join(
            (f'xmlns:{p}="{u}"' if p else f'xmlns="{u}"').encode()
            for p, u in {**NS, **encrypted_id.nsmap}.items()
        )
        wrapper = parse_xml(b"<w " + nsdecl + b">" + plaintext + b"</w>", max_bytes=self.max_bytes)
        children = [c for c in wrapper if isinstance(c.tag, str)]
        if len(children) != 1 or children[0].tag != q("saml", "NameID"):
            raise SamlInvalid("encrypted_id_not_name_id")
        if len(wrapper) != 1 or (wrapper.text or "").strip() or (children[0].tail or "").strip():
            raise SamlInvalid("encrypted_id_not_name_id")
        return read_name_id(children[0])


def read_name_id(el: etree._Element) -> NameId:
    """A plain NameID element (strict text, qualifier required)."""
    qualifier = el.get("NameQualifier")
    if not qualifier:
        raise SamlInvalid("name_qualifier_missing")
    value = strict_text(el, "name_id")
    if not value:
        raise SamlInvalid("name_id_empty")
    return NameId(value=value, name_qualifier=qualifier)


def _encrypted_keys(encrypted_id: etree._Element, data: etree._Element) -> list[etree._Element]:
    found = list(encrypted_id.findall(q("xenc", "EncryptedKey")))
    key_info = data.find(q("ds", "KeyInfo"))
    if key_info is not None:
        found.extend(key_info.findall(q("xenc", "EncryptedKey")))
    return found


def _data_key_name(data: etree._Element) -> str | None:
    key_info = data.find(q("ds", "KeyInfo"))
    if key_info is None:
        return None
    name = key_info.find(q("ds", "KeyName"))
    return strict_text(name, "key_name") if name is not None else None


def _carried_key_name(ek: etree._Element) -> str | None:
    name = ek.find(q("xenc", "CarriedKeyName"))
    return strict_text(name, "carried_key_name") if name is not None else None


def _cipher_value(el: etree._Element) -> bytes:
    cipher_data = only_child(el, q("xenc", "CipherData"), "cipher_data")
    value = only_child(cipher_data, q("xenc", "CipherValue"), "cipher_value")
    return _b64(strict_text(value, "cipher_value"))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SamlInvalid("base64_malformed") from None


def _decrypt_block(uri: str, key: bytes, data: bytes) -> bytes:
    try:
        if uri.endswith("-gcm"):
            # xmlenc11 AES-GCM: 12-byte IV, ciphertext, 16-byte tag.
            if len(data) < 12 + 16:
                raise SamlInvalid("encrypted_id_undecryptable")
            return AESGCM(key).decrypt(data[:12], data[12:], None)
        # AES-CBC: 16-byte IV first; xmlenc padding is ISO 10126 (last byte = length).
        if len(data) < 32 or len(data) % 16:
            raise SamlInvalid("encrypted_id_undecryptable")
        decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
        padded = decryptor.update(data[16:]) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= 16:
            raise SamlInvalid("encrypted_id_undecryptable")
        return padded[:-pad]
    except InvalidTag:
        raise SamlInvalid("encrypted_id_undecryptable") from None
