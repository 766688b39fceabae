"""Real signed eHerkenning-shaped SAML messages for tests, and forgers for attacks.

``SamlWorld`` holds a throw-away broker (signing key, metadata) and SP (keys,
settings). ``ResponseSpec`` describes one broker Response; every field that a
consumer check looks at can be changed so a negative test fails exactly one
check. The builders sign with python-xmlsec and encrypt identifiers the way
brokers do (RSA-OAEP key transport, AES-GCM data, fresh key per element,
``EncryptedKey/@Recipient``). The forgers (``xsw_*``) rearrange an already
signed Response the way signature-wrapping attacks do.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

from gateway.identity import Loa
from gateway.saml.settings import KeyPairFiles, SamlSettings, ServiceSettings
from gateway.saml.xml import NS, instant, q
from gateway_dev.devkeys import KeyPair, rsa_keypair

_C = xmlsec.constants
BROKER_ID = "urn:etoegang:HM:00000003520354760000:entities:9632"
SP_ID = "urn:etoegang:DV:00000001234567890000:entities:0"
SERVICE_ID = "urn:etoegang:DV:00000001234567890000:services:0"
SERVICE_UUID = "6f1e1a9c-2c43-4f0e-9d38-2a8c0e9a1b11"
INSTANCE_UUID = "0b7a3c1e-5d7f-4f6b-a2a1-0e6c9d8b7a21"
ACS_URL = "https://gateway.example.nl/_gateway/saml/acs"
Q_KVK = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
Q_RSIN = "urn:etoegang:1.9:EntityConcernedID:RSIN"
Q_PSEUDO = "urn:etoegang:1.9:EntityConcernedID:Pseudo"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
SHA1_SIG = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_1_5 = "http://www.w3.org/2001/04/xmlenc#rsa-1_5"
OAEP_MGF1P = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p"
AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
AES128_CBC = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"

_SIG_TRANSFORMS = {
    "rsa-sha256": (_C.TransformRsaSha256, _C.TransformSha256),
    "rsa-sha1": (_C.TransformRsaSha1, _C.TransformSha1),
    "rsa-sha256/sha1-digest": (_C.TransformRsaSha256, _C.TransformSha1),
}


def write_pair(pair: KeyPair, directory: Path, name: str) -> KeyPairFiles:
    """Write a key pair to files (tests get settings with real paths)."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    pair.write(key, cert)
    return KeyPairFiles(key_file=key, cert_file=cert)


def cert_b64(cert_pem: bytes) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return base64.b64encode(der).decode("ascii")


def sign(
    element: etree._Element,
    pair: KeyPair,
    *,
    algorithm: str = "rsa-sha256",
    after: etree._Element | None = None,
    reference_id: str | None = None,
) -> etree._Element:
    """Enveloped signature over ``element`` (or over ``reference_id`` for forgeries)."""
    sig_t, digest_t = _SIG_TRANSFORMS[algorithm]
    sig = xmlsec.template.create(element, _C.TransformExclC14N, sig_t, ns="ds")
    pos = list(element).index(after) + 1 if after is not None else 1
    element.insert(pos, sig)
    target = reference_id or element.get("ID")
    ref = xmlsec.template.add_reference(sig, digest_t, uri=f"#{target}")
    xmlsec.template.add_transform(ref, _C.TransformEnveloped)
    xmlsec.template.add_transform(ref, _C.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(sig))
    ctx = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(pair.key_pem, _C.KeyDataFormatPem)
    key.load_cert_from_memory(pair.cert_pem, _C.KeyDataFormatCertPem)
    ctx.key = key
    ctx.register_id(element, "ID")
    ctx.sign(sig)
    return sig


def encrypt_name_id(
    qualifier: str,
    value: str,
    recipient_cert_pem: bytes,
    *,
    recipient: str = SP_ID,
    key_transport: str = OAEP_MGF1P,
    block: str = AES256_GCM,
    extra_recipient_cert_pem: bytes | None = None,
) -> etree._Element:
    """An eHerkenning EncryptedID: NameID encrypted with a fresh AES key per element."""
    saml, xenc, ds = NS["saml"], NS["xenc"], NS["ds"]
    name_id = etree.Element(q("saml", "NameID"), NameQualifier=qualifier, nsmap={"saml": saml})
    name_id.text = value
    plaintext = etree.tostring(name_id)
    if block == AES256_GCM:
        key = os.urandom(32)
        iv = os.urandom(12)
        data = iv + AESGCM(key).encrypt(iv, plaintext, None)
    else:
        key = os.urandom(16)
        iv = os.urandom(16)
        pad = 16 - len(plaintext) % 16
        padded = plaintext + os.urandom(pad - 1) + bytes([pad])
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        data = iv + enc.update(padded) + enc.finalize()
    data_id = "_" + uuid.uuid4().hex
    key_name = "_" + uuid.uuid4().hex
    eid = etree.Element(q("saml", "EncryptedID"), nsmap={"saml": saml, "xenc": xenc, "ds": ds})
    ed = etree.SubElement(
        eid, q("xenc", "EncryptedData"), Id=data_id, Type="http://www.w3.org/2001/04/xmlenc#Element"
    )
    etree.SubElement(ed, q("xenc", "EncryptionMethod"), Algorithm=block)
    ki = etree.SubElement(ed, q("ds", "KeyInfo"))
    etree.SubElement(ki, q("ds", "KeyName")).text = key_name
    cd = etree.SubElement(ed, q("xenc", "CipherData"))
    etree.SubElement(cd, q("xenc", "CipherValue")).text = base64.b64encode(data).decode()

    targets = []
    if extra_recipient_cert_pem is not None:
        targets.append((BROKER_ID, extra_recipient_cert_pem))
    targets.append((recipient, recipient_cert_pem))
    for who, cert_pem in targets:
        pub = x509.load_pem_x509_certificate(cert_pem).public_key()
        if key_transport == RSA_1_5:
            wrapped = pub.encrypt(key, padding.PKCS1v15())  # type: ignore[union-attr]
        else:
            wrapped = pub.encrypt(  # type: ignore[union-attr]
                key,
                OAEP(mgf=MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303
            )
        ek = etree.SubElement(
            eid, q("xenc", "EncryptedKey"), Id="_" + uuid.uuid4().hex, Recipient=who
        )
        em = etree.SubElement(ek, q("xenc", "EncryptionMethod"), Algorithm=key_transport)
        if key_transport == OAEP_MGF1P:
            etree.SubElement(
                em, q("ds", "DigestMethod"), Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"
            )
        cd = etree.SubElement(ek, q("xenc", "CipherData"))
        etree.SubElement(cd, q("xenc", "CipherValue")).text = base64.b64encode(wrapped).decode()
        rl = etree.SubElement(ek, q("xenc", "ReferenceList"))
        etree.SubElement(rl, q("xenc", "DataReference"), URI=f"#{data_id}")
        etree.SubElement(ek, q("xenc", "CarriedKeyName")).text = key_name
    return eid


@dataclass
class ResponseSpec:
    """One broker Response; defaults give a valid mode-1 login at EH3."""

    request_id: str = "_req0123456789abcdef"
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    kvk: str | None = "12345678"
    rsin: str | None = None
    pseudonym: str = "s00000000:ABCDEF0123456789"
    intermediary_kvk: str | None = None
    intermediary_encrypted: bool = True
    legal_name: str | None = "Werkgever B.V."
    intermediary_name: str | None = None
    branch: str | None = None
    loa: str = Loa.EH3.value
    service_id: str = SERVICE_ID
    service_uuid: str | None = SERVICE_UUID
    issuer: str = BROKER_ID
    response_issuer: str | None = BROKER_ID
    audiences: list[str] | None = field(default_factory=lambda: [SP_ID])
    destination: str | None = ACS_URL
    recipient: str | None = ACS_URL
    in_response_to: str | None = None
    """Response/@InResponseTo; ``None`` means ``request_id``."""
    scd_in_response_to: str | None = None
    method: str = BEARER
    subject: bool = True
    not_before_offset: int = -5
    not_on_or_after_offset: int = 300
    scd_not_on_or_after_offset: int = 300
    signature_algorithm: str = "rsa-sha256"
    key_transport: str = OAEP_MGF1P
    block: str = AES256_GCM
    status: tuple[str, str | None, str | None] | None = None
    advice_kvk: str | None = "87654321"
    """A nested signed assertion in Advice with this LegalSubjectID (a decoy)."""
    sign_assertion: bool = True
    sign_response: bool = False
    extra_recipient: bool = True


@dataclass
class SamlWorld:
    """A throw-away broker and SP with their keys, files and settings."""

    directory: Path
    broker: KeyPair = field(default_factory=lambda: rsa_keypair("broker"))
    attacker: KeyPair = field(default_factory=lambda: rsa_keypair("attacker"))
    sp_signing: KeyPair = field(default_factory=lambda: rsa_keypair("sp-signing"))
    sp_encryption: KeyPair = field(default_factory=lambda: rsa_keypair("sp-encryption"))
    sso_url: str = "https://broker.example.nl/sso"
    ars_url: str = "https://broker.example.nl/ars"

    def settings(self, **overrides: object) -> SamlSettings:
        """SamlSettings for our SP pointing at this broker's metadata file."""
        md = self.directory / "broker-metadata.xml"
        md.write_bytes(self.broker_metadata())
        base: dict[str, object] = {
            "entity_id": SP_ID,
            "acs_url": ACS_URL,
            "signing": write_pair(self.sp_signing, self.directory, "sp-signing"),
            "encryption": write_pair(self.sp_encryption, self.directory, "sp-encryption"),
            "services": (
                ServiceSettings(
                    index=0,
                    service_id=SERVICE_ID,
                    service_uuid=uuid.UUID(SERVICE_UUID),
                    instance_uuid=uuid.UUID(INSTANCE_UUID),
                    name="Werkgeversportaal",
                    description="Pensioenzaken regelen voor werkgevers",
                    default=True,
                ),
            ),
            "broker_metadata": str(md),
            "broker_entity_id": BROKER_ID,
            "insecure_dev_http": True,  # fake brokers on loopback speak plain http
        }
        base.update(overrides)
        return SamlSettings.model_validate(base)

    def broker_metadata(self, *, ars_url: str | None = None, sso_url: str | None = None) -> bytes:
        md = NS["md"]
        ed = etree.Element(
            q("md", "EntityDescriptor"),
            entityID=BROKER_ID,
            ID="_md" + uuid.uuid4().hex,
            nsmap={"md": md, "ds": NS["ds"]},
        )
        idp = etree.SubElement(
            ed,
            q("md", "IDPSSODescriptor"),
            protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol",
        )
        kd = etree.SubElement(idp, q("md", "KeyDescriptor"), use="signing")
        x509d = etree.SubElement(etree.SubElement(kd, q("ds", "KeyInfo")), q("ds", "X509Data"))
        etree.SubElement(x509d, q("ds", "X509Certificate")).text = cert_b64(self.broker.cert_pem)
        etree.SubElement(
            idp,
            q("md", "ArtifactResolutionService"),
            Binding="urn:oasis:names:tc:SAML:2.0:bindings:SOAP",
            Location=ars_url or self.ars_url,
            index="0",
        )
        for binding in ("HTTP-Redirect", "HTTP-POST"):
            etree.SubElement(
                idp,
                q("md", "SingleSignOnService"),
                Binding=f"urn:oasis:names:tc:SAML:2.0:bindings:{binding}",
                Location=sso_url or self.sso_url,
            )
        return etree.tostring(ed)

    # -- messages ---------------------------------------------------------

    def response(self, spec: ResponseSpec | None = None) -> etree._Element:
        """A broker Response element per ``spec`` (assertion signed unless told not to)."""
        s = spec or ResponseSpec()
        saml, samlp = NS["saml"], NS["samlp"]
        root = etree.Element(
            q("samlp", "Response"),
            ID="_r" + uuid.uuid4().hex,
            Version="2.0",
            IssueInstant=instant(s.now),
            InResponseTo=s.in_response_to or s.request_id,
            nsmap={"samlp": samlp, "saml": saml},
        )
        if s.destination is not None:
            root.set("Destination", s.destination)
        if s.response_issuer is not None:
            etree.SubElement(root, q("saml", "Issuer")).text = s.response_issuer
        status = etree.SubElement(root, q("samlp", "Status"))
        top, second, message = s.status or (
            "urn:oasis:names:tc:SAML:2.0:status:Success",
            None,
            None,
        )
        code = etree.SubElement(status, q("samlp", "StatusCode"), Value=top)
        if second:
            etree.SubElement(code, q("samlp", "StatusCode"), Value=second)
        if message:
            etree.SubElement(status, q("samlp", "StatusMessage")).text = message
        if s.status is None:
            root.append(self.assertion(s))
        if s.sign_response:
            sign(root, self.broker, after=root[0])
        return root

    def assertion(self, s: ResponseSpec, *, issuer: str | None = None) -> etree._Element:
        a = etree.Element(
            q("saml", "Assertion"),
            ID="_a" + uuid.uuid4().hex,
            Version="2.0",
            IssueInstant=instant(s.now),
            nsmap={"saml": NS["saml"], "xs": NS["xs"], "xsi": NS["xsi"]},
        )
        issuer_el = etree.SubElement(a, q("saml", "Issuer"))
        issuer_el.text = issuer or s.issuer
        if s.subject:
            subj = etree.SubElement(a, q("saml", "Subject"))
            etree.SubElement(
                subj,
                q("saml", "NameID"),
                Format="urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
                NameQualifier="urn:etoegang:EB:00000003520354760000:entities:9009",
            ).text = str(uuid.uuid4())
            sc = etree.SubElement(subj, q("saml", "SubjectConfirmation"), Method=s.method)
            scd = etree.SubElement(
                sc,
                q("saml", "SubjectConfirmationData"),
                InResponseTo=s.scd_in_response_to or s.request_id,
                NotOnOrAfter=instant(s.now + dt.timedelta(seconds=s.scd_not_on_or_after_offset)),
            )
            if s.recipient is not None:
                scd.set("Recipient", s.recipient)
        cond = etree.SubElement(
            a,
            q("saml", "Conditions"),
            NotBefore=instant(s.now + dt.timedelta(seconds=s.not_before_offset)),
            NotOnOrAfter=instant(s.now + dt.timedelta(seconds=s.not_on_or_after_offset)),
        )
        if s.audiences is not None:
            ar = etree.SubElement(cond, q("saml", "AudienceRestriction"))
            for aud in s.audiences:
                etree.SubElement(ar, q("saml", "Audience")).text = aud
        if s.advice_kvk is not None:
            advice = etree.SubElement(a, q("saml", "Advice"))
            decoy = replace(
                s,
                kvk=s.advice_kvk,
                intermediary_kvk="11223344",
                pseudonym="advice-pseudonym",
                advice_kvk=None,
                legal_name="Advies B.V. (niet gebruiken)",
            )
            advice.append(
                self.assertion(decoy, issuer="urn:etoegang:MR:00000003520354760000:entities:1")
            )
        authn = etree.SubElement(a, q("saml", "AuthnStatement"), AuthnInstant=instant(s.now))
        ctx = etree.SubElement(authn, q("saml", "AuthnContext"))
        etree.SubElement(ctx, q("saml", "AuthnContextClassRef")).text = s.loa
        etree.SubElement(
            ctx, q("saml", "AuthenticatingAuthority")
        ).text = "urn:etoegang:EB:00000003520354760000:entities:9009"
        stmt = etree.SubElement(a, q("saml", "AttributeStatement"))
        self._plain(stmt, "urn:etoegang:core:ServiceID", s.service_id)
        if s.service_uuid:
            self._plain(stmt, "urn:etoegang:core:ServiceUUID", s.service_uuid)
        legal = []
        if s.kvk:
            legal.append(self._enc(s, Q_KVK, s.kvk))
        if s.rsin:
            legal.append(self._enc(s, Q_RSIN, s.rsin))
        if legal:
            self._attr(stmt, "urn:etoegang:core:LegalSubjectID", legal)
        self._attr(stmt, "urn:etoegang:core:ActingSubjectID", [self._enc(s, Q_PSEUDO, s.pseudonym)])
        if s.intermediary_kvk:
            name = "urn:etoegang:1.9:IntermediateEntityID:KvKnr"
            if s.intermediary_encrypted:
                self._attr(stmt, name, [self._enc(s, Q_KVK, s.intermediary_kvk)])
            else:
                self._plain(stmt, name, s.intermediary_kvk)
        if s.intermediary_name:
            self._plain(
                stmt, "urn:etoegang:1.13:attribute-intermediate:CompanyName", s.intermediary_name
            )
        if s.legal_name:
            self._plain(stmt, "urn:etoegang:1.11:attribute-represented:CompanyName", s.legal_name)
        if s.branch:
            self._plain(stmt, "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr", s.branch)
        if s.sign_assertion:
            sign(a, self.broker, algorithm=s.signature_algorithm, after=issuer_el)
        return a

    def _enc(self, s: ResponseSpec, qualifier: str, value: str) -> etree._Element:
        return encrypt_name_id(
            qualifier,
            value,
            self.sp_encryption.cert_pem,
            key_transport=s.key_transport,
            block=s.block,
            extra_recipient_cert_pem=self.broker.cert_pem if s.extra_recipient else None,
        )

    @staticmethod
    def _plain(stmt: etree._Element, name: str, value: str) -> None:
        attr = etree.SubElement(stmt, q("saml", "Attribute"), Name=name)
        v = etree.SubElement(attr, q("saml", "AttributeValue"))
        v.set(q("xsi", "type"), "xs:string")
        v.text = value

    @staticmethod
    def _attr(stmt: etree._Element, name: str, values: list[etree._Element]) -> None:
        attr = etree.SubElement(stmt, q("saml", "Attribute"), Name=name)
        for enc in values:
            etree.SubElement(attr, q("saml", "AttributeValue")).append(enc)

    # -- artifact binding -------------------------------------------------

    def artifact(self, *, type_code: int = 4, index: int = 0, source: str = BROKER_ID) -> str:
        """A SAML 2.0 artifact as the broker would put in ``SAMLart``."""
        raw = (
            type_code.to_bytes(2, "big")
            + index.to_bytes(2, "big")
            + hashlib.sha1(source.encode()).digest()  # noqa: S324 - SAML mandates SHA-1 here
            + os.urandom(20)
        )
        return base64.b64encode(raw).decode("ascii")

    def artifact_response(
        self,
        in_response_to: str,
        inner: etree._Element | None,
        *,
        signer: KeyPair | None = None,
        issuer: str = BROKER_ID,
        status: str = "urn:oasis:names:tc:SAML:2.0:status:Success",
        sign_it: bool = True,
        status_detail: etree._Element | None = None,
        soap_header: etree._Element | None = None,
    ) -> bytes:
        """A SOAP envelope with a signed ArtifactResponse; unusual prefixes on purpose.

        ``status_detail`` goes into the ArtifactResponse's ``Status/StatusDetail``
        (inside the signed message, beside the Response); ``soap_header`` into a
        ``SOAP-ENV:Header`` (outside any signature).
        """
        soap = NS["soap"]
        env = etree.Element(f"{{{soap}}}Envelope", nsmap={"SOAP-ENV": soap})
        body = etree.SubElement(env, f"{{{soap}}}Body")
        ar = etree.SubElement(
            body,
            q("samlp", "ArtifactResponse"),
            ID="_ar" + uuid.uuid4().hex,
            Version="2.0",
            IssueInstant=instant(dt.datetime.now(dt.UTC)),
            InResponseTo=in_response_to,
            nsmap={"saml2p": NS["samlp"], "saml2": NS["saml"]},
        )
        issuer_el = etree.SubElement(ar, q("saml", "Issuer"))
        issuer_el.text = issuer
        st = etree.SubElement(ar, q("samlp", "Status"))
        etree.SubElement(st, q("samlp", "StatusCode"), Value=status)
        if status_detail is not None:
            etree.SubElement(st, q("samlp", "StatusDetail")).append(status_detail)
        if soap_header is not None:
            body.addprevious(etree.Element(f"{{{soap}}}Header"))
            env[0].append(soap_header)
        if inner is not None:
            # Splice the Response in as bytes: appending the element would let lxml
            # re-prefix it to the parent's saml2/saml2p and break the assertion signature.
            etree.SubElement(ar, "splice")
            text = etree.tostring(env).replace(b"<splice/>", etree.tostring(inner))
            env = etree.fromstring(text)
            ar = env.find(f".//{q('samlp', 'ArtifactResponse')}")
            issuer_el = ar.find(q("saml", "Issuer"))
        if sign_it:
            sign(ar, signer or self.broker, after=issuer_el)
        return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def to_bytes(el: etree._Element) -> bytes:
    return etree.tostring(el)


# -- signature-wrapping forgers ---------------------------------------------


def _assertion_of(response: etree._Element) -> etree._Element:
    found = response.find(q("saml", "Assertion"))
    assert found is not None
    return found


def _evil_copy(
    assertion: etree._Element, *, kvk_from: etree._Element | None = None
) -> etree._Element:
    """A copy of the signed assertion with a changed Issuer text (the forged content)."""
    evil = copy.deepcopy(assertion)
    # Fresh IDs for everything nested (Advice assertions, EncryptedData), so each
    # variant exercises the rule aimed at it rather than tripping over copied IDs.
    for el in evil.iter(etree.Element):
        for attr in ("ID", "Id"):
            if el is not evil and el.get(attr):
                el.set(attr, "_copy" + uuid.uuid4().hex)
    sig = evil.find(q("ds", "Signature"))
    if sig is not None:
        evil.remove(sig)
    issuer = evil.find(q("saml", "Issuer"))
    assert issuer is not None
    # Replace the attribute statement's ServiceID value: any change would do.
    for v in evil.iter(q("saml", "AttributeValue")):
        if v.text and v.text.startswith("urn:etoegang:DV:"):
            v.text = v.text + "9"
            break
    return evil


def xsw_evil_first_original_in_advice(response: etree._Element) -> None:
    """XSW: forged assertion in place, the signed original moved into its Advice."""
    original = _assertion_of(response)
    evil = _evil_copy(original)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    sig = copy.deepcopy(original.find(q("ds", "Signature")))
    evil.insert(1, sig)
    advice = evil.find(q("saml", "Advice"))
    assert advice is not None
    response.replace(original, evil)
    advice.append(original)


def xsw_original_in_extensions(response: etree._Element) -> None:
    """XSW: signed original hidden in samlp:Extensions, forged assertion with the same ID."""
    original = _assertion_of(response)
    evil = _evil_copy(original)
    ext = etree.Element(q("samlp", "Extensions"))
    response.insert(1, ext)
    response.replace(original, evil)
    ext.append(original)
    evil.insert(1, copy.deepcopy(original.find(q("ds", "Signature"))))


def xsw_original_in_signature_object(response: etree._Element) -> None:
    """XSW: signed original inside ds:Object of the forged assertion's copied Signature."""
    original = _assertion_of(response)
    evil = _evil_copy(original)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    sig = copy.deepcopy(original.find(q("ds", "Signature")))
    obj = etree.SubElement(sig, q("ds", "Object"))
    evil.insert(1, sig)
    response.replace(original, evil)
    obj.append(original)


def xsw_duplicated_assertion(response: etree._Element) -> None:
    """Two assertions: the signed original and an unsigned forged one before it."""
    original = _assertion_of(response)
    evil = _evil_copy(original)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    response.insert(list(response).index(original), evil)


def xsw_signature_moved(response: etree._Element) -> None:
    """The assertion's signature moved to the Response, the assertion changed."""
    original = _assertion_of(response)
    sig = original.find(q("ds", "Signature"))
    assert sig is not None
    original.remove(sig)
    response.insert(1, sig)
    for v in original.iter(q("saml", "AttributeValue")):
        if v.text and v.text.startswith("urn:etoegang:DV:"):
            v.text = v.text + "9"
            break


def xsw_id_collision(response: etree._Element) -> None:
    """Forged assertion with the same ID as the signed one, the original kept after it."""
    original = _assertion_of(response)
    evil = _evil_copy(original)
    evil.insert(1, copy.deepcopy(original.find(q("ds", "Signature"))))
    response.insert(list(response).index(original), evil)


# -- stray assertions: a genuine signed assertion plus an unsigned forged one ----
#
# Each forger below leaves the genuine, broker-signed assertion in its place
# (so its signature still verifies) and adds a forged, unsigned assertion with
# a fresh ID somewhere else in the document: the shapes of XSW variant 7 and
# its relatives. A consumer that reads "the first Assertion" in document
# order, or any assertion found by a descendant search, would use the forgery.


def forged_assertion(response: etree._Element) -> etree._Element:
    """An unsigned copy of the response's assertion with changed content and a fresh ID."""
    evil = _evil_copy(_assertion_of(response))
    evil.set("ID", "_forged" + uuid.uuid4().hex)
    return evil


def forged_encrypted_assertion() -> etree._Element:
    """An EncryptedAssertion of the shape brokers send (its content is never opened)."""
    xenc = NS["xenc"]
    ea = etree.Element(q("saml", "EncryptedAssertion"), nsmap={"saml": NS["saml"], "xenc": xenc})
    ed = etree.SubElement(
        ea,
        q("xenc", "EncryptedData"),
        Id="_forged" + uuid.uuid4().hex,
        Type="http://www.w3.org/2001/04/xmlenc#Element",
    )
    etree.SubElement(ed, q("xenc", "EncryptionMethod"), Algorithm=AES256_GCM)
    cd = etree.SubElement(ed, q("xenc", "CipherData"))
    etree.SubElement(cd, q("xenc", "CipherValue")).text = base64.b64encode(os.urandom(64)).decode()
    return ea


def _extensions(response: etree._Element) -> etree._Element:
    """The Response's samlp:Extensions (schema position: after Issuer and Signature)."""
    ext = response.find(q("samlp", "Extensions"))
    if ext is None:
        ext = etree.Element(q("samlp", "Extensions"))
        status = response.find(q("samlp", "Status"))
        assert status is not None
        status.addprevious(ext)
    return ext


def stray_in_extensions(response: etree._Element) -> None:
    """XSW variant 7: an unsigned forged Assertion inside samlp:Extensions."""
    _extensions(response).append(forged_assertion(response))


def stray_encrypted_in_extensions(response: etree._Element) -> None:
    """An EncryptedAssertion inside samlp:Extensions."""
    _extensions(response).append(forged_encrypted_assertion())


def stray_sibling_after(response: etree._Element) -> None:
    """A second, unsigned Assertion after the signed one (direct children of the Response)."""
    _assertion_of(response).addnext(forged_assertion(response))


def stray_encrypted_sibling(response: etree._Element) -> None:
    """An EncryptedAssertion next to the signed Assertion."""
    _assertion_of(response).addnext(forged_encrypted_assertion())


def stray_in_status_detail(response: etree._Element) -> None:
    """An unsigned forged Assertion inside Status/StatusDetail (of a Success status)."""
    status = response.find(q("samlp", "Status"))
    assert status is not None
    detail = status.find(q("samlp", "StatusDetail"))
    if detail is None:
        detail = etree.SubElement(status, q("samlp", "StatusDetail"))
    detail.append(forged_assertion(response))


def stray_in_unsigned_wrapper_advice(response: etree._Element) -> None:
    """A forged Assertion inside the Advice of an unsigned wrapper (not the verified one).

    The wrapper is a bare ``saml:Advice`` in Extensions, so the only Assertion in
    the stray subtree sits inside an Advice: a consumer that exempts "anything in
    an Advice" instead of "the verified assertion's own Advice" lets it through.
    """
    wrapper = etree.SubElement(_extensions(response), q("saml", "Advice"))
    wrapper.append(forged_assertion(response))


def stray_in_unsigned_wrapper_assertion_advice(response: etree._Element) -> None:
    """A forged Assertion in the Advice of an unsigned wrapper Assertion in Extensions."""
    wrapper = forged_assertion(response)
    advice = wrapper.find(q("saml", "Advice"))
    if advice is None:
        advice = etree.SubElement(wrapper, q("saml", "Advice"))
    advice.append(forged_assertion(response))
    _extensions(response).append(wrapper)


STRAY_ASSERTIONS = {
    "extensions": stray_in_extensions,
    "extensions-encrypted": stray_encrypted_in_extensions,
    "second-sibling": stray_sibling_after,
    "second-sibling-encrypted": stray_encrypted_sibling,
    "status-detail": stray_in_status_detail,
    "unsigned-advice": stray_in_unsigned_wrapper_advice,
    "unsigned-wrapper-advice": stray_in_unsigned_wrapper_assertion_advice,
}
"""Every position of a stray assertion that tests check, by a short name."""
