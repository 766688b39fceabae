"""Every error the gateway turns into a response, and what the user reads.

Each error knows its HTTP status, a stable machine code and a message in Dutch
(first) and English. One place (``gateway.edge``, rendering with
``gateway.pages``) turns them into an HTML page for browsers or JSON for API
clients and logs them; nothing else renders errors, and no traceback ever
reaches a client.

The tree::

    GatewayError                      base; never raised itself
    ├── NotFound              404     no route matches, or an unknown gateway path
    ├── MethodNotAllowed      405     the route exists but not for this method
    ├── NotAuthenticated      401     an ``authenticated`` route without a session
    ├── Forbidden             403     the session may not do this
    │   ├── AccessDenied              a request on a route the session may not make
    │   │   ├── EmployerNotAllowed    the employer in the request is not in the allowed set
    │   │   ├── ScopeMissing          the route needs a mandate scope the session lacks
    │   │   ├── RouteLevelTooLow      the route needs a higher assurance level than the login's
    │   │   └── MandateWithdrawn      a chain login's one employer withdrew its mandate
    │   └── CsrfFailed                a state-changing gateway form without a valid token
    ├── BadRequest            400     malformed input the gateway itself parses
    │   └── HeaderValueNotAllowed     a header value the upstream request head cannot carry
    ├── BodyTooLarge          413     request body over the route's limit
    ├── NotImplementedHere    501     a transfer coding the gateway does not apply (RFC 9112 6.1)
    ├── VersionNotSupported   505     an HTTP version other than 1.x on the request line
    ├── TooManyLogins         429     this address started too many logins; wait and retry
    ├── RequestTimeout        408     the client stopped sending its request body
    ├── LoginFailed           4xx     the eHerkenning login could not complete
    │   ├── SamlInvalid       400     a SAML message failed a check (audited with the reason)
    │   ├── LoginCancelled    400     the user cancelled at the broker
    │   ├── LoginNotAuthorised 403    the broker says the user may not use this service
    │   ├── LevelTooLow       403     assurance level below the configured minimum
    │   ├── LoginExpired      400     the pre-login state is gone (too slow, or another browser)
    │   └── MandateMissing    403     chain login without a mandate at the fund
    ├── UpstreamUnavailable   502     the portal refused or could not be reached
    ├── UpstreamTimeout       504     the portal did not answer in time
    └── ServiceUnavailable    503     a dependency is down; fail closed
        ├── StoreUnavailable          Redis (or the configured store) is unreachable
        ├── RegistryUnavailable       the fund's mandate registry is unreachable
        ├── BrokerUnavailable         the eHerkenning broker is unreachable
        ├── LoginsBusy                the deployment's login-start limit is reached
        ├── LoginWorkerFailed         the SAML worker process running a login was killed
        └── Overloaded                too many connections, or no file descriptors left

``LoginFailed`` is raised while logging in; ``AccessDenied`` on requests of a
session that exists. Where both can happen for one reason (the level, a chain
mandate), each side has its own class with the same code and text, so a
handler catching one branch never catches the other.

``ConfigInvalid`` is separate: it is raised while loading configuration, never
while serving, and carries every problem found (file, path, message).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Action:
    """The way on from an error page: a link, labelled in Dutch and English."""

    url: str
    nl: str
    en: str


class GatewayError(Exception):
    """Base of every error that becomes a response page.

    An error carries its own context: ``action`` is the link its page offers
    (log in again, back to the client list) and ``login_url`` the login an API
    client is told about; whoever raises it knows them, and the page renders
    exactly what the error holds.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title_nl: ClassVar[str] = "Er ging iets mis"
    title_en: ClassVar[str] = "Something went wrong"
    default_text_nl: ClassVar[str] = "Probeer het later opnieuw."
    default_text_en: ClassVar[str] = "Please try again later."

    def __init__(
        self,
        detail: str = "",
        *,
        text_nl: str | None = None,
        text_en: str | None = None,
        action: Action | None = None,
        login_url: str | None = None,
    ):
        # ``detail`` is for logs and audit events only; it is never shown to users
        # because it may name internals (hosts, SAML IDs).
        super().__init__(detail or self.code)
        self.detail = detail
        self.text_nl: str = self.default_text_nl if text_nl is None else text_nl
        self.text_en: str = self.default_text_en if text_en is None else text_en
        self.action = action
        self.login_url = login_url

    def offering(self, action: Action) -> GatewayError:
        """This error, offering ``action`` unless whoever raised it chose one already."""
        if self.action is None:
            self.action = action
        return self


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    title_nl = "Pagina niet gevonden"
    title_en = "Page not found"
    default_text_nl = "Deze pagina bestaat niet. Controleer het adres."
    default_text_en = "This page does not exist. Please check the address."


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"
    title_nl = "Actie niet toegestaan"
    title_en = "Method not allowed"
    default_text_nl = "Deze actie is op deze pagina niet mogelijk."
    default_text_en = "This action is not possible on this page."


class NotAuthenticated(GatewayError):
    status = 401
    code = "not_authenticated"
    title_nl = "Inloggen vereist"
    title_en = "Login required"
    default_text_nl = "U moet inloggen met eHerkenning om deze pagina te bekijken."
    default_text_en = "You need to log in with eHerkenning to view this page."


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    title_nl = "Geen toegang"
    title_en = "Access denied"
    default_text_nl = "U heeft geen toegang tot deze pagina."
    default_text_en = "You do not have access to this page."


class AccessDenied(Forbidden):
    """A request on a route that the session (which exists) may not make."""

    code = "access_denied"


class EmployerNotAllowed(AccessDenied):
    code = "employer_not_allowed"
    default_text_nl = (
        "U kunt alleen zaken regelen voor werkgevers die u gemachtigd hebben bij het "
        "pensioenfonds. Deze werkgever hoort daar niet bij."
    )
    default_text_en = (
        "You can only act for employers who authorised you at the pension fund. "
        "This employer is not one of them."
    )


class ScopeMissing(AccessDenied):
    code = "scope_missing"
    default_text_nl = "Uw machtiging geeft geen toegang tot dit onderdeel van het portaal."
    default_text_en = "Your mandate does not give access to this part of the portal."


class CsrfFailed(Forbidden):
    code = "csrf_failed"
    default_text_nl = "Het formulier is verlopen of ongeldig. Ga terug en probeer het opnieuw."
    default_text_en = "The form has expired or is invalid. Go back and try again."


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    title_nl = "Ongeldig verzoek"
    title_en = "Bad request"
    default_text_nl = "Het verzoek kon niet worden verwerkt."
    default_text_en = "The request could not be processed."


class HeaderValueNotAllowed(BadRequest):
    """A header value that cannot go into the upstream request head (a line break)."""


class BodyTooLarge(GatewayError):
    status = 413
    code = "body_too_large"
    title_nl = "Bestand of formulier te groot"
    title_en = "Upload too large"
    default_text_nl = "Wat u verstuurt is groter dan hier is toegestaan."
    default_text_en = "What you are sending is larger than allowed here."


class NotImplementedHere(GatewayError):
    status = 501
    code = "not_implemented"
    title_nl = "Niet ondersteund"
    title_en = "Not supported"
    default_text_nl = "Dit soort verzoek wordt hier niet ondersteund."
    default_text_en = "This kind of request is not supported here."


class VersionNotSupported(GatewayError):
    status = 505
    code = "http_version_not_supported"
    title_nl = "HTTP-versie niet ondersteund"
    title_en = "HTTP version not supported"
    default_text_nl = "Uw programma gebruikt een HTTP-versie die hier niet wordt ondersteund."
    default_text_en = "Your software uses an HTTP version that is not supported here."


class TooManyLogins(GatewayError):
    status = 429
    code = "login_rate_limited"
    title_nl = "Te veel inlogpogingen"
    title_en = "Too many login attempts"
    default_text_nl = (
        "Vanaf uw internetadres zijn in korte tijd te veel inlogpogingen gestart. "
        "Wacht even en probeer het dan opnieuw."
    )
    default_text_en = (
        "Too many logins were started from your internet address in a short time. "
        "Please wait a moment and try again."
    )


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    title_nl = "Verzoek duurde te lang"
    title_en = "Request took too long"
    default_text_nl = (
        "Het verzoek duurde te lang: er kwamen te lang geen gegevens meer binnen. "
        "Controleer uw verbinding en probeer het opnieuw."
    )
    default_text_en = (
        "The request took too long: no more data arrived for too long. "
        "Check your connection and try again."
    )


class LoginFailed(GatewayError):
    status = 400
    code = "login_failed"
    title_nl = "Inloggen is niet gelukt"
    title_en = "Login failed"
    default_text_nl = "Inloggen met eHerkenning is niet gelukt. Probeer het opnieuw."
    default_text_en = "Logging in with eHerkenning did not succeed. Please try again."


class SamlInvalid(LoginFailed):
    code = "saml_invalid"


class LoginCancelled(LoginFailed):
    code = "login_cancelled"
    title_nl = "Inloggen geannuleerd"
    title_en = "Login cancelled"
    default_text_nl = "U heeft het inloggen afgebroken. U kunt opnieuw inloggen wanneer u wilt."
    default_text_en = "You cancelled the login. You can log in again whenever you like."


class LoginNotAuthorised(LoginFailed):
    status = 403
    code = "login_not_authorised"
    default_text_nl = (
        "Uw eHerkenning geeft geen toegang tot deze dienst. Vraag de machtigingenbeheerder "
        "van uw organisatie om u te machtigen voor de dienst 'Werkgeversportaal'."
    )
    default_text_en = (
        "Your eHerkenning does not grant access to this service. Ask your organisation's "
        "authorisation manager to authorise you for the 'Employer portal' service."
    )


class LevelTooLow(LoginFailed):
    status = 403
    code = "level_too_low"
    title_nl = "Betrouwbaarheidsniveau te laag"
    title_en = "Assurance level too low"
    default_text_nl = (
        "Voor dit portaal heeft u eHerkenning nodig met betrouwbaarheidsniveau EH3 of hoger. "
        "Heeft u al eHerkenning met niveau EH1 of EH2? Vraag dan geen nieuwe aan, maar neem "
        "contact op met uw eHerkenning-leverancier om het niveau te verhogen naar EH3."
    )
    default_text_en = (
        "This portal requires eHerkenning at assurance level EH3 or higher. If you already "
        "have eHerkenning at EH1 or EH2, do not apply for a new one: ask your eHerkenning "
        "supplier to raise the level to EH3."
    )


class LoginExpired(LoginFailed):
    code = "login_expired"
    title_nl = "Inlogpoging verlopen"
    title_en = "Login attempt expired"
    default_text_nl = "Deze inlogpoging is verlopen of al gebruikt. Begin opnieuw met inloggen."
    default_text_en = "This login attempt has expired or was already used. Please start again."


class MandateMissing(LoginFailed):
    status = 403
    code = "mandate_missing"
    title_nl = "Machtiging bij het pensioenfonds ontbreekt"
    title_en = "Mandate at the pension fund missing"
    default_text_nl = (
        "U heeft ingelogd met een ketenmachtiging, maar deze klant heeft u (nog) niet "
        "gemachtigd bij het pensioenfonds. Naast de ketenmachtiging moet uw klant u ook bij "
        "ons machtigen. Uw klant kan de machtiging aanvragen via onze website."
    )
    default_text_en = (
        "You logged in with a chain authorisation, but this client has not (yet) authorised "
        "you at the pension fund. Besides the chain authorisation, your client must also "
        "authorise you with us. Your client can request this on our website."
    )


class RouteLevelTooLow(AccessDenied):
    """A session whose login's level is below the route's ``min_loa`` (API clients only:
    browsers are sent to a step-up login instead)."""

    code = LevelTooLow.code
    title_nl = LevelTooLow.title_nl
    title_en = LevelTooLow.title_en
    default_text_nl = LevelTooLow.default_text_nl
    default_text_en = LevelTooLow.default_text_en


class MandateWithdrawn(AccessDenied):
    """A chain login whose one employer withdrew its mandate at the fund during the session."""

    code = MandateMissing.code
    title_nl = MandateMissing.title_nl
    title_en = MandateMissing.title_en
    default_text_nl = MandateMissing.default_text_nl
    default_text_en = MandateMissing.default_text_en


class UpstreamUnavailable(GatewayError):
    status = 502
    code = "upstream_unavailable"
    title_nl = "Portaal niet bereikbaar"
    title_en = "Portal unavailable"
    default_text_nl = (
        "Het portaal is op dit moment niet bereikbaar. Probeer het over enkele minuten opnieuw."
    )
    default_text_en = "The portal cannot be reached right now. Please try again in a few minutes."


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    title_nl = "Portaal reageert niet"
    title_en = "Portal not responding"
    default_text_nl = "Het portaal reageerde niet op tijd. Probeer het over enkele minuten opnieuw."
    default_text_en = "The portal did not respond in time. Please try again in a few minutes."


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"
    title_nl = "Tijdelijk niet beschikbaar"
    title_en = "Temporarily unavailable"
    default_text_nl = "Deze dienst is tijdelijk niet beschikbaar. Probeer het later opnieuw."
    default_text_en = "This service is temporarily unavailable. Please try again later."


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class RegistryUnavailable(ServiceUnavailable):
    code = "registry_unavailable"
    default_text_nl = (
        "Wij kunnen uw machtigingen op dit moment niet controleren. Probeer het over "
        "enkele minuten opnieuw."
    )
    default_text_en = "We cannot check your mandates right now. Please try again in a few minutes."


class BrokerUnavailable(ServiceUnavailable):
    code = "broker_unavailable"
    default_text_nl = "eHerkenning is op dit moment niet bereikbaar. Probeer het later opnieuw."
    default_text_en = "eHerkenning cannot be reached right now. Please try again later."


class LoginsBusy(ServiceUnavailable):
    code = "login_capacity_reached"
    title_nl = "Tijdelijk te druk"
    title_en = "Temporarily too busy"
    default_text_nl = "Er wordt op dit moment erg veel ingelogd. Probeer het zo opnieuw."
    default_text_en = "A great many people are logging in right now. Please try again shortly."


class LoginWorkerFailed(ServiceUnavailable):
    code = "login_worker_failed"
    default_text_nl = "Door een storing kon het inloggen niet worden afgerond. Probeer het opnieuw."
    default_text_en = "A fault stopped the login from completing. Please try again."


class Overloaded(ServiceUnavailable):
    code = "overloaded"
    default_text_nl = (
        "Het portaal is op dit moment erg druk. Probeer het over enkele minuten opnieuw."
    )
    default_text_en = "The portal is very busy right now. Please try again in a few minutes."


def for_http_status(status: int, reason: str) -> GatewayError:
    """The error page for an answer aiohttp itself raised in a handler (a bad form body)."""
    if status == 405:
        return MethodNotAllowed()
    if status == 404:
        return NotFound()
    return BadRequest(reason)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration file."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '<root>'}: {self.message}"


class ConfigInvalid(Exception):
    """Configuration could not be loaded; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
