"""The ``MandateSource`` protocol: where the fund's registry answers come from.

Implementations: ``FileMandateSource`` (YAML/CSV, the demo default) and
``HttpMandateSource`` (the fund's registry service). ``build_source`` picks one
from settings.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.mandates.model import Mandate
from gateway.mandates.settings import FileSourceSettings, HttpSourceSettings


@runtime_checkable
class MandateSource(Protocol):
    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        """Every mandate (any status) naming this administrator; ``[]`` if none.

        Raises :class:`gateway.errors.RegistryUnavailable` on any failure, never
        a library error, so callers fail closed with one ``except``.
        """

    async def close(self) -> None:
        """Release connections and files; the source is unusable afterwards."""


def build_source(settings: FileSourceSettings | HttpSourceSettings) -> MandateSource:
    """The configured source (the HTTP source opens its session on first use)."""
    if isinstance(settings, FileSourceSettings):
        from gateway.mandates.file_source import FileMandateSource

        return FileMandateSource(settings.path, check_interval=settings.check_interval)
    from gateway.mandates.http_source import HttpMandateSource

    return HttpMandateSource(settings)
