"""The SAML service provider core: everything eHerkenning/SAML except HTTP handlers.

Public API (see ``docs/login.md``)::

    sp = ServiceProvider(SamlSettings(...)); await sp.start(); ...; await sp.close()
    request_id, http = sp.build_authn_request(relay_state)      # or await sp.authn_request()
    login = await sp.consume_artifact(samlart, sp.expectation(request_id))
    login = await sp.consume_post_response(saml_response_b64, sp.expectation(request_id))
    sp.sp_metadata_xml(); sp.service_catalogue_xml()
    # single logout (``single_logout: true``; gateway.saml.logout):
    sp.single_logout_skip_reason(identity)       # None: a LogoutRequest can be sent
    http = await sp.logout_request(identity, relay_state)   # .request_id, .url
    await sp.verify_logout_response(raw_query, http.request_id)

``login`` is a ``VerifiedLogin`` (identity, assertion_id, not_on_or_after,
in_response_to, issuer, session_not_on_or_after). Failures raise only
``SamlInvalid``, ``LoginCancelled``, ``LoginNotAuthorised``, ``LevelTooLow``
or ``BrokerUnavailable`` (all ``GatewayError``).
"""

from gateway.saml.authn_request import AuthnRequestHttp
from gateway.saml.metadata import BrokerMetadata
from gateway.saml.provider import ServiceProvider
from gateway.saml.settings import KeyPairFiles, SamlSettings, ServiceSettings
from gateway.saml.verify import Expectation, VerifiedLogin

__all__ = [
    "AuthnRequestHttp",
    "BrokerMetadata",
    "Expectation",
    "KeyPairFiles",
    "SamlSettings",
    "ServiceProvider",
    "ServiceSettings",
    "VerifiedLogin",
]
