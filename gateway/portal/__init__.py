"""A small stand-in for the fund's legacy *werkgeversportaal*, for the demo and tests."""

from gateway.portal.app import build_portal_app

__all__ = ["build_portal_app"]
