"""Audit events: who logged in, was refused, selected an employer, was denied.

Audit events go to their own structlog logger (``gateway.audit``) so ops can
route them to a separate sink. Callers pass only references that are safe to
keep: the request id, a session *reference* (a hash, never the cookie), KvK
numbers and the acting-subject pseudonym; never SAML messages or tokens.
"""

from __future__ import annotations

from typing import Any

import structlog

_audit = structlog.get_logger("gateway.audit")


def audit(event: str, **fields: Any) -> None:
    """Write one audit event named in snake_case past tense (``login_succeeded``)."""
    _audit.info(event, audit=True, **fields)
