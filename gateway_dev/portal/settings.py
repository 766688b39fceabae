"""``PortalSettings``: how the sample portal checks the gateway's token, and demo extras."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class PortalSettings(BaseModel):
    """The sample portal's configuration. Without ``jwks_url`` it checks no token (and says so)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jwks_url: str | None = None
    """The gateway's JWKS, e.g. ``https://portaal.example/.well-known/jwks.json``."""
    issuer: str | None = None
    """The gateway's public URL exactly (the token's ``iss``); required with ``jwks_url``."""
    audience: str = "portal"
    """The audience of the routes in front of this portal (the token's ``aud``)."""
    algorithms: tuple[str, ...] = ("ES256",)
    """Allowed signing algorithms, from configuration, never from the token."""
    header_name: str = "X-Gateway-Identity"
    """The one header the token arrives in."""
    show_employers: int = Field(default=25, ge=1, le=1000)
    """How many entries of the allowed set a page lists (the count is always shown)."""
    demo_mandates_file: Path | None = None
    """Demo only: the registry file the /demo page may rewrite (revoke/restore live)."""
    demo_admin_token_file: Path | None = None
    """Demo only: the gateway's admin token, for the optional revocation push."""
    demo_gateway_url: str | None = None
    """Demo only: where to send the revocation push (the gateway's own URL)."""
    demo_recheck_seconds: float = 15.0
    """Demo only: the gateway's mandate re-check interval, shown in the guide."""
    demo_guide: tuple[tuple[str, str], ...] = ()
    """Demo only: (scenario id, what it shows) pairs listed on the /demo page."""
