"""How the configuration writes a duration: seconds, or an ISO 8601 duration.

``idle_timeout: 900`` and ``idle_timeout: PT15M`` mean the same. Only these
two spellings are accepted (pydantic alone would also take ``"1 day"`` or
``"15:00"``), so the JSON Schema of the configuration can say exactly what
the loader takes: a number, or a string matching ``ISO_8601_DURATION``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, TypeAdapter, WithJsonSchema

# RFC 3339 appendix A without years and months (their length varies): weeks,
# or days and/or a time part, each number whole except the seconds.
ISO_8601_DURATION = (
    r"^P(?:\d+W|(?=\d|T\d)(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?)$"
)
_ISO = re.compile(ISO_8601_DURATION)
_TIMEDELTA = TypeAdapter(dt.timedelta)


def _parse(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or an ISO 8601 duration, not yes/no")
    if isinstance(value, int | float):
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        if not _ISO.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a duration: write seconds (900) or ISO 8601 "
                "(PT15M, P1D, PT1H30M)"
            )
        # Converted here, so the strict validation pass sees a timedelta either way.
        return _TIMEDELTA.validate_python(value)
    return value  # a timedelta from code


Duration = Annotated[
    dt.timedelta,
    BeforeValidator(_parse),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "description": "seconds"},
                {"type": "string", "pattern": ISO_8601_DURATION, "description": "ISO 8601"},
            ]
        }
    ),
]
"""A ``timedelta`` written as seconds (``900``) or ISO 8601 (``PT15M``) in the configuration."""
