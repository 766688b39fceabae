"""Mandates: who may act for which employer, from the fund's registry.

* ``model``: the ``Mandate`` value and the record format sources share;
* ``rules``: the pure rules (``allowed_employers`` → ``Decision``);
* ``source``, ``file_source``, ``http_source``, ``breaker``: the registry;
* ``freshness``: the one rule for how old an answer may be (``Freshness``);
* ``service``: cached, single-flight lookups and revocation push;
* ``settings``: ``MandateSettings``.
"""

from gateway.mandates.freshness import Freshness, MandateCheck
from gateway.mandates.model import Mandate, MandateRecord, MandateStatus, is_kvk
from gateway.mandates.rules import Decision, RefusalReason, allowed_employers, fund_today
from gateway.mandates.service import (
    INVALIDATION_CHANNEL,
    InvalidateRequest,
    MandateService,
    MandateSet,
)
from gateway.mandates.settings import FileSourceSettings, HttpSourceSettings, MandateSettings
from gateway.mandates.source import MandateSource, build_source

__all__ = [
    "INVALIDATION_CHANNEL",
    "Decision",
    "FileSourceSettings",
    "Freshness",
    "HttpSourceSettings",
    "InvalidateRequest",
    "Mandate",
    "MandateCheck",
    "MandateRecord",
    "MandateService",
    "MandateSet",
    "MandateSettings",
    "MandateSource",
    "MandateStatus",
    "RefusalReason",
    "allowed_employers",
    "build_source",
    "fund_today",
    "is_kvk",
]
