"""The base of every section of the gateway's configuration file."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from gateway.identity import Loa


class Model(BaseModel):
    """Base for every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _loa(value: object) -> object:
    return Loa.parse(value) if isinstance(value, str) else value


LoaSetting = Annotated[Loa, BeforeValidator(_loa)]
"""A level of assurance in the file: its name (``eh3``, ``loa3``, ...) or the level itself."""
