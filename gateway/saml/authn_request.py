"""Outbound AuthnRequests: Redirect (query-string signature) or POST (XML signature).

Both are signed with RSA-SHA256 as the eHerkenning profile requires, carry
``ForceAuthn``, ask for the response by the Artifact binding and select the
registered service by ``AttributeConsumingServiceIndex``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import secrets
import zlib
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote_plus, urlencode, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree  # type: ignore[import-untyped, unused-ignore]

from gateway.identity import Loa
from gateway.saml.keys import KeyPair
from gateway.saml.metadata import BINDING_ARTIFACT, BINDING_POST, BINDING_REDIRECT, BrokerMetadata
from gateway.saml.settings import SIG_RSA_SHA256, SamlSettings
from gateway.saml.signature import sign_enveloped
from gateway.saml.xml import NS, instant, q

MAX_RELAY_STATE_BYTES = 80


@dataclass(frozen=True)
class AuthnRequestHttp:
    """How to send the browser to the broker.

    ``binding == "redirect"``: answer 302/303 with ``Location: url``.
    ``binding == "post"``: answer 200 with ``post_form_html()``, which posts
    ``form`` to ``url``.
    """

    binding: Literal["redirect", "post"]
    url: str
    form: dict[str, str] | None = None

    def post_form_html(self, *, script_nonce: str | None = None) -> str:
        """An auto-submitting form page (with a button for browsers without script)."""
        if self.form is None:
            raise ValueError("not a POST binding request")
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in self.form.items()
        )
        nonce = f' nonce="{html.escape(script_nonce)}"' if script_nonce else ""
        return (
            '<!DOCTYPE html><html lang="nl"><head><meta charset="utf-8">'
            "<title>Doorsturen naar eHerkenning / Redirecting to eHerkenning</title></head>"
            '<body><form id="saml" method="post" action="'
            + html.escape(self.url)
            + '">'
            + fields
            + '<noscript><button type="submit">Doorgaan / Continue</button></noscript>'
            + "</form><script"
            + nonce
            + '>document.getElementById("saml").submit();</script></body></html>'
        )


def new_id() -> str:
    """A fresh SAML ID: an NCName with 128 bits of randomness."""
    return "_" + secrets.token_hex(16)


def authn_request_xml(
    settings: SamlSettings,
    destination: str,
    request_id: str,
    now: dt.datetime,
) -> etree._Element:
    """The unsigned AuthnRequest element."""
    req = etree.Element(
        q("samlp", "AuthnRequest"),
        nsmap={"samlp": NS["samlp"], "saml": NS["saml"]},
        ID=request_id,
        Version="2.0",
        IssueInstant=instant(now),
        Destination=destination,
        ForceAuthn="true" if settings.force_authn else "false",
        ProtocolBinding=BINDING_ARTIFACT,
        AssertionConsumerServiceURL=settings.acs_url,
        AttributeConsumingServiceIndex=str(settings.requested_service_index),
    )
    etree.SubElement(req, q("saml", "Issuer")).text = settings.entity_id
    if settings.requested_authn_context is not None:
        rac = etree.SubElement(req, q("samlp", "RequestedAuthnContext"), Comparison="minimum")
        loa: Loa = settings.requested_authn_context
        etree.SubElement(rac, q("saml", "AuthnContextClassRef")).text = loa.value
    return req


def signed_redirect_url(
    destination: str,
    parameter: str,
    message: etree._Element,
    relay_state: str | None,
    signing: KeyPair,
) -> str:
    """``destination`` with ``message`` DEFLATEd in ``parameter`` and an RSA-SHA256 query
    signature (HTTP-Redirect binding, SAML bindings 3.4.4.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(etree.tostring(message)) + compressor.flush()
    params = [(parameter, base64.b64encode(deflated).decode("ascii"))]
    if relay_state is not None:
        params.append(("RelayState", relay_state))
    params.append(("SigAlg", SIG_RSA_SHA256))
    # The signature covers the URL-encoded parameters in this exact order.
    signed = urlencode(params, quote_via=quote_plus).encode("ascii")
    signature = signing.key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    params.append(("Signature", base64.b64encode(signature).decode("ascii")))
    sep = "&" if urlsplit(destination).query else "?"
    return destination + sep + urlencode(params, quote_via=quote_plus)


def build_authn_request(
    settings: SamlSettings,
    metadata: BrokerMetadata,
    signing: KeyPair,
    relay_state: str | None,
    *,
    now: dt.datetime | None = None,
) -> tuple[str, AuthnRequestHttp]:
    """A signed AuthnRequest ready to send; returns ``(request_id, how_to_send)``."""
    if relay_state is not None and len(relay_state.encode()) > MAX_RELAY_STATE_BYTES:
        raise ValueError("RelayState longer than 80 bytes")
    now = now or dt.datetime.now(dt.UTC)
    request_id = new_id()
    if settings.request_binding == "redirect":
        destination = metadata.sso_urls.get(BINDING_REDIRECT)
        if not destination:
            raise ValueError("broker metadata has no HTTP-Redirect SingleSignOnService")
        req = authn_request_xml(settings, destination, request_id, now)
        url = signed_redirect_url(destination, "SAMLRequest", req, relay_state, signing)
        return request_id, AuthnRequestHttp(binding="redirect", url=url)
    destination = metadata.sso_urls.get(BINDING_POST)
    if not destination:
        raise ValueError("broker metadata has no HTTP-POST SingleSignOnService")
    req = authn_request_xml(settings, destination, request_id, now)
    sign_enveloped(req, signing.key_pem, signing.cert_pem, insert_at=1)
    form = {"SAMLRequest": base64.b64encode(etree.tostring(req)).decode("ascii")}
    if relay_state is not None:
        form["RelayState"] = relay_state
    return request_id, AuthnRequestHttp(binding="post", url=destination, form=form)
