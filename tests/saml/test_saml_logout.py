"""Single logout at the SP: the LogoutRequest we send and the LogoutResponse checks."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import zlib
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from gateway.errors import SamlInvalid
from gateway.identity import Identity, Loa
from gateway.saml.keys import load_sp_keys
from gateway.saml.logout import (
    LogoutExpectation,
    build_logout_request,
    slo_skip_reason,
    verify_logout_response,
)
from gateway.saml.metadata import BINDING_REDIRECT, BrokerMetadata, parse_broker_metadata
from gateway.saml.settings import SamlSettings
from gateway.saml.sp_metadata import sp_metadata_xml
from gateway.saml.verify import VerifyContext, verify_response
from gateway.saml.xml import NS, instant, q
from gateway.sessions.pending import PendingLogout, PendingLogouts
from gateway.sessions.record import Session, decode_session, encode_session
from gateway.store.memory import MemoryStore
from gateway_dev.devkeys import KeyPair
from tests.saml.conftest import expect
from tests.support.saml import BROKER_ID, SP_ID, ResponseSpec, SamlWorld, sign, to_bytes

BROKER_SLO = "https://broker.example.nl/slo"
OUR_SLO = "https://gateway.example.nl/_gateway/saml/slo"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)

IDENTITY = Identity(
    acting_subject="s00000000:ABCDEF",
    legal_subject_kvk="12345678",
    loa=Loa.EH3,
    service_id="urn:etoegang:DV:00000001234567890000:services:0",
    login_time=T0,
    name_id="3f1d-transient",
    name_id_format=TRANSIENT,
    name_id_qualifier="urn:etoegang:EB:00000003520354760000:entities:9009",
    name_id_sp_qualifier=SP_ID,
    session_index="_session-42",
)


@pytest.fixture(scope="module")
def slo_settings(world: SamlWorld) -> SamlSettings:
    return world.settings(single_logout=True)


@pytest.fixture(scope="module")
def metadata(world: SamlWorld) -> BrokerMetadata:
    md = parse_broker_metadata(world.broker_metadata())
    return dataclasses.replace(md, slo_urls={BINDING_REDIRECT: BROKER_SLO})


# -- the LogoutRequest -------------------------------------------------------------


def test_logout_request_is_signed_and_names_the_login_exactly(
    slo_settings: SamlSettings, metadata: BrokerMetadata
) -> None:
    """Redirect LogoutRequest: RSA-SHA256 by our SP key over the query; NameID copied with all
    its qualifiers, SessionIndex, Destination = broker SLO, short NotOnOrAfter."""
    keys = load_sp_keys(slo_settings)
    http = build_logout_request(slo_settings, metadata, keys.signing, IDENTITY, "rs-1", now=T0)
    split = urlsplit(http.url)
    assert http.url.startswith(BROKER_SLO + "?")
    raw = dict(p.split("=", 1) for p in split.query.split("&"))
    signed = (
        f"SAMLRequest={raw['SAMLRequest']}&RelayState={raw['RelayState']}&SigAlg={raw['SigAlg']}"
    )
    params = {k: v[0] for k, v in parse_qs(split.query).items()}
    assert params["SigAlg"] == RSA_SHA256
    public = keys.signing.cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(
        base64.b64decode(params["Signature"]), signed.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    req = etree.fromstring(zlib.decompress(base64.b64decode(params["SAMLRequest"]), -15))
    assert req.tag == q("samlp", "LogoutRequest")
    assert req.get("ID") == http.request_id
    assert req.get("Destination") == BROKER_SLO
    assert req.get("IssueInstant") == instant(T0)
    assert req.get("NotOnOrAfter") == instant(T0 + dt.timedelta(minutes=2))
    assert req.find(q("saml", "Issuer")).text == SP_ID
    name_id = req.find(q("saml", "NameID"))
    assert name_id.text == IDENTITY.name_id
    assert dict(name_id.attrib) == {
        "Format": TRANSIENT,
        "NameQualifier": IDENTITY.name_id_qualifier,
        "SPNameQualifier": SP_ID,
    }
    assert [el.text for el in req.findall(q("samlp", "SessionIndex"))] == ["_session-42"]


def test_logout_request_only_when_enabled_offered_and_addressable(
    settings: SamlSettings, slo_settings: SamlSettings, metadata: BrokerMetadata
) -> None:
    """No LogoutRequest when SLO is off, the broker has no Redirect SLO, or no NameID is known."""
    no_slo = dataclasses.replace(metadata, slo_urls={})
    unnamed = dataclasses.replace(IDENTITY, name_id=None)
    assert slo_skip_reason(settings, metadata, IDENTITY) == "single_logout_disabled"
    assert slo_skip_reason(slo_settings, no_slo, IDENTITY) == "broker_has_no_single_logout_service"
    assert slo_skip_reason(slo_settings, metadata, unnamed) == "name_id_unknown"
    assert slo_skip_reason(slo_settings, metadata, IDENTITY) is None
    keys = load_sp_keys(slo_settings)
    with pytest.raises(ValueError, match="name_id_unknown"):
        build_logout_request(slo_settings, metadata, keys.signing, unnamed, None)


def test_sp_metadata_publishes_single_logout_only_when_enabled(
    settings: SamlSettings, slo_settings: SamlSettings
) -> None:
    """Our SP metadata carries a Redirect SingleLogoutService at <base>/_gateway/saml/slo
    only with single_logout on."""
    keys = load_sp_keys(settings)
    off = etree.fromstring(sp_metadata_xml(settings, keys))
    on = etree.fromstring(sp_metadata_xml(slo_settings, keys))
    path = f"{q('md', 'SPSSODescriptor')}/{q('md', 'SingleLogoutService')}"
    assert off.findall(path) == []
    (slo,) = on.findall(path)
    assert (slo.get("Binding"), slo.get("Location")) == (BINDING_REDIRECT, OUR_SLO)


def test_slo_url_needs_configuring_when_it_cannot_be_derived(world: SamlWorld) -> None:
    """With single_logout and an ACS URL not ending in /acs, slo_url must be set."""
    with pytest.raises(ValueError, match="slo_url"):
        world.settings(single_logout=True, acs_url="https://gateway.example.nl/assertions")
    explicit = world.settings(
        single_logout=True,
        acs_url="https://gateway.example.nl/assertions",
        slo_url="https://gateway.example.nl/logout-return",
    )
    assert explicit.single_logout_url == "https://gateway.example.nl/logout-return"


# -- NameID and SessionIndex come from the verified outer assertion only -----------


def _with_logout_ids(
    world: SamlWorld, spec: ResponseSpec, *, outer_index: str | None
) -> etree._Element:
    """A response whose outer assertion has an SPNameQualifier (and optionally a SessionIndex),
    and whose Advice assertion has its own NameID and SessionIndex as decoys."""
    response = world.response(dataclasses.replace(spec, sign_assertion=False))
    outer = response.find(q("saml", "Assertion"))
    outer.find(f"{q('saml', 'Subject')}/{q('saml', 'NameID')}").set("SPNameQualifier", SP_ID)
    advice = outer.find(f"{q('saml', 'Advice')}/{q('saml', 'Assertion')}")
    etree.SubElement(advice, q("saml", "AuthnStatement"), SessionIndex="_advice-session")
    if outer_index is not None:
        outer.find(q("saml", "AuthnStatement")).set("SessionIndex", outer_index)
    sign(outer, world.broker, after=outer.find(q("saml", "Issuer")))
    return response


def test_name_id_and_session_index_come_from_the_outer_assertion(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """The identity carries the outer Subject NameID (value and attributes) and the outer
    AuthnStatement's SessionIndex, never the Advice assertion's."""
    response = _with_logout_ids(world, spec, outer_index="_outer-session")
    outer_name_id = response.find(
        f"{q('saml', 'Assertion')}/{q('saml', 'Subject')}/{q('saml', 'NameID')}"
    )
    advice_name_id = response.find(
        f"{q('saml', 'Assertion')}/{q('saml', 'Advice')}/{q('saml', 'Assertion')}"
        f"/{q('saml', 'Subject')}/{q('saml', 'NameID')}"
    )
    assert outer_name_id.text != advice_name_id.text
    identity = verify_response(to_bytes(response), expect(spec), ctx).identity
    assert identity.name_id == outer_name_id.text
    assert identity.name_id_format == TRANSIENT
    assert identity.name_id_qualifier == outer_name_id.get("NameQualifier")
    assert identity.name_id_sp_qualifier == SP_ID
    assert identity.session_index == "_outer-session"


def test_session_index_only_in_advice_is_not_used(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """An outer assertion without SessionIndex gives none, even if an Advice assertion has one."""
    response = _with_logout_ids(world, spec, outer_index=None)
    identity = verify_response(to_bytes(response), expect(spec), ctx).identity
    assert identity.session_index is None
    assert identity.name_id is not None


def test_comment_in_subject_name_id_is_refused(
    world: SamlWorld, ctx: VerifyContext, spec: ResponseSpec
) -> None:
    """A NameID split by a comment (read differently by different parsers) fails the login."""
    response = world.response(dataclasses.replace(spec, sign_assertion=False))
    outer = response.find(q("saml", "Assertion"))
    name_id = outer.find(f"{q('saml', 'Subject')}/{q('saml', 'NameID')}")
    name_id.append(etree.Comment("x"))
    sign(outer, world.broker, after=outer.find(q("saml", "Issuer")))
    with pytest.raises(SamlInvalid) as info:
        verify_response(to_bytes(response), expect(spec), ctx)
    assert info.value.detail == "subject_name_id_has_children"


# -- the LogoutResponse ------------------------------------------------------------


def _logout_response(
    *,
    in_response_to: str = "_lr1",
    destination: str | None = OUR_SLO,
    issuer: str = BROKER_ID,
    status: str = SUCCESS,
    issued: dt.datetime = T0,
    tag: str = "LogoutResponse",
    prefix: bytes = b"",
) -> bytes:
    root = etree.Element(
        q("samlp", tag),
        ID="_resp1",
        Version="2.0",
        IssueInstant=instant(issued),
        InResponseTo=in_response_to,
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]},
    )
    if destination is not None:
        root.set("Destination", destination)
    etree.SubElement(root, q("saml", "Issuer")).text = issuer
    st = etree.SubElement(root, q("samlp", "Status"))
    etree.SubElement(st, q("samlp", "StatusCode"), Value=status)
    return prefix + etree.tostring(root)


def _query(
    xml: bytes,
    signer: KeyPair | None,
    *,
    sigalg: str = RSA_SHA256,
    relay_state: str | None = "rs-1",
    tamper: bool = False,
) -> str:
    """A Redirect-binding query, signed here independently of the gateway's code."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    query = "SAMLResponse=" + quote_plus(
        base64.b64encode(deflater.compress(xml) + deflater.flush()).decode()
    )
    if relay_state is not None:
        query += "&RelayState=" + quote_plus(relay_state)
    if signer is None:
        return query
    query += "&SigAlg=" + quote_plus(sigalg)
    key = serialization.load_pem_private_key(signer.key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    digest = hashes.SHA256() if sigalg == RSA_SHA256 else hashes.SHA1()  # noqa: S303 - refusal test
    signature = key.sign(query.encode(), padding.PKCS1v15(), digest)
    if tamper:
        query = query.replace("RelayState=rs-1", "RelayState=rs-2")
    return query + "&Signature=" + quote_plus(base64.b64encode(signature).decode())


def _check(query: str, settings: SamlSettings, metadata: BrokerMetadata) -> None:
    expected = LogoutExpectation(request_id="_lr1", slo_url=OUR_SLO, now=T0)
    verify_logout_response(query, expected, settings, metadata)


def test_valid_logout_response_passes(
    world: SamlWorld, slo_settings: SamlSettings, metadata: BrokerMetadata
) -> None:
    """A broker-signed Success LogoutResponse for our request and SLO URL is accepted."""
    _check(_query(_logout_response(), world.broker), slo_settings, metadata)
    _check(_query(_logout_response(), world.broker, relay_state=None), slo_settings, metadata)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda w: _query(_logout_response(), None), "logout_response_signature_missing"),
        (
            lambda w: _query(_logout_response(), w.broker, sigalg=RSA_SHA1),
            "logout_response_signature_algorithm_not_allowed",
        ),
        (lambda w: _query(_logout_response(), w.attacker), "logout_response_signature_invalid"),
        (
            lambda w: _query(_logout_response(), w.broker, tamper=True),
            "logout_response_signature_invalid",
        ),
        (
            lambda w: _query(_logout_response(), w.broker) + "&RelayState=x",
            "logout_response_parameter_duplicated",
        ),
        (
            lambda w: _query(_logout_response(in_response_to="_other"), w.broker),
            "logout_response_in_response_to_mismatch",
        ),
        (
            lambda w: _query(_logout_response(destination="https://evil.example/slo"), w.broker),
            "logout_response_destination_mismatch",
        ),
        (
            lambda w: _query(_logout_response(destination=None), w.broker),
            "logout_response_destination_mismatch",
        ),
        (
            lambda w: _query(_logout_response(issuer="urn:other"), w.broker),
            "logout_response_issuer_mismatch",
        ),
        (
            lambda w: _query(
                _logout_response(status="urn:oasis:names:tc:SAML:2.0:status:Responder"), w.broker
            ),
            "logout_status:Responder/",
        ),
        (
            lambda w: _query(_logout_response(issued=T0 + dt.timedelta(minutes=5)), w.broker),
            "logout_response_issued_in_future",
        ),
        (
            lambda w: _query(_logout_response(tag="LogoutRequest"), w.broker),
            "not_a_logout_response",
        ),
        (
            lambda w: _query(_logout_response(prefix=b"<!DOCTYPE x>"), w.broker),
            "doctype_forbidden",
        ),
        (lambda w: "RelayState=rs-1", "logout_response_missing"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_logout_response_check_refuses(
    world: SamlWorld,
    slo_settings: SamlSettings,
    metadata: BrokerMetadata,
    make: object,
    reason: str,
) -> None:
    """Each LogoutResponse that fails exactly one check is refused with that check's reason."""
    query = make(world)  # type: ignore[operator]
    with pytest.raises(SamlInvalid) as info:
        _check(query, slo_settings, metadata)
    assert info.value.detail == reason


# -- pending logout state and the session record -----------------------------------


async def test_pending_logout_is_single_use_and_bound_to_the_browser() -> None:
    """A pending LogoutRequest is found only with this browser's cookie and RelayState, once."""
    store = MemoryStore()
    try:
        pending = PendingLogouts(store, 60)
        cookie, other = "a" * 43, "b" * 43
        await pending.begin(cookie, "rs-1", PendingLogout("_lr1", "ref-1", "12345678", "p"))
        with pytest.raises(SamlInvalid, match="logout_not_pending"):
            await pending.take(other, "rs-1")
        with pytest.raises(SamlInvalid, match="logout_not_pending"):
            await pending.take(cookie, "rs-2")
        assert (await pending.take(cookie, "rs-1")).request_id == "_lr1"
        with pytest.raises(SamlInvalid, match="logout_not_pending"):
            await pending.take(cookie, "rs-1")
        with pytest.raises(SamlInvalid, match="logout_browser_cookie_missing"):
            await pending.take(None, "rs-1")
    finally:
        await store.close()


def _session(identity: Identity) -> Session:
    return Session(
        id="x" * 43,
        identity=identity,
        allowed=(),
        active_employer=None,
        created_at=T0,
        last_seen=T0,
        last_mandate_check=T0,
        mandate_check_ok_at=T0,
        csrf_secret="c",
        ref="ref",
    )


def test_session_record_keeps_logout_fields_and_reads_old_records() -> None:
    """NameID, its qualifiers and SessionIndex survive the session store; records written
    before they existed still decode (and then cannot single-logout)."""
    session = _session(IDENTITY)
    assert decode_session("x" * 43, "ref", encode_session(session)) == session
    old = json.loads(encode_session(session)[1:])
    for name in ("name_id", "name_id_format", "name_id_qualifier", "name_id_sp_qualifier"):
        del old["id"][name]
    del old["id"]["session_index"]
    decoded = decode_session("x" * 43, "ref", b"J" + json.dumps(old).encode())
    assert decoded.identity == dataclasses.replace(
        IDENTITY,
        name_id=None,
        name_id_format=None,
        name_id_qualifier=None,
        name_id_sp_qualifier=None,
        session_index=None,
    )
