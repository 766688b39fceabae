"""A small stand-in for the fund's legacy *werkgeversportaal*, for the demo and tests.

It verifies the gateway's identity token as docs/backends.md says and shows
what the token says on every page. ``build_portal_app(PortalSettings(...))``.
"""

from gateway_dev.portal.app import build_portal_app
from gateway_dev.portal.settings import PortalSettings

__all__ = ["PortalSettings", "build_portal_app"]
