"""eHerkenning identity gateway: login, mandates and a signed identity for a legacy portal."""

__version__ = "0.1.0"
