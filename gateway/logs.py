"""Structured logs: JSON for machines, console for people, secrets never included.

Every log line passes the redaction processor, which blanks values under
sensitive keys (cookies, authorisation, tokens, SAML messages, keys, passwords)
and any value that looks like a JWT or a base64 SAML message, wherever it
appears. Query strings are logged with sensitive parameter values removed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode

import orjson
import structlog

REDACTED = "[redacted]"

_SENSITIVE_KEY = re.compile(
    r"cookie|authori[sz]ation|token|jwt|saml|assertion|artifact|password|passwd|secret|"
    r"private|credential|signature|relay_?state|csrf|session_id|bearer",
    re.IGNORECASE,
)
# eyJ... = base64url of '{"' (a JWS/JWT); PD94/PHNh/PHNhbW = base64 of '<?x' / '<sa'.
_SENSITIVE_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|PD94bWwg|PHNhbWw|PHNhbWxw|<saml|<samlp|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
_SENSITIVE_PARAMS = frozenset(
    {
        "samlart",
        "samlrequest",
        "samlresponse",
        "relaystate",
        "signature",
        "sigalg",
        "token",
        "access_token",
        "id_token",
        "code",
        "state",
        "password",
        "session",
        "csrf",
    }
)


# Cheap pre-check (one C-level scan): the full regex only runs on strings that could match.
_VALUE_HINT = re.compile("eyJ|PD94|PHNh|<saml|-----BEGIN")


_PARAM_HINT = re.compile("|".join(sorted(_SENSITIVE_PARAMS)), re.IGNORECASE)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        if _VALUE_HINT.search(value) is None:
            return value
        return REDACTED if _SENSITIVE_VALUE.search(value) else value
    if isinstance(value, bytes):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: (REDACTED if _sensitive_key(k) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


_key_cache: dict[str, bool] = {}


def _sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    hit = _key_cache.get(key)
    if hit is None:
        hit = bool(_SENSITIVE_KEY.search(key))
        if len(_key_cache) < 4096:  # field names are few; never let this grow unbounded
            _key_cache[key] = hit
    return hit


PRECHECKED = "_prechecked"


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove secrets from every field of every event.

    The access log (one line per request, the hot path) builds its fields from
    safe parts and marks the event ``_prechecked``; its free-text fields (path,
    query) went through ``redact_text``/``safe_query`` already.
    """
    if event_dict.pop(PRECHECKED, False):
        return event_dict
    for key in list(event_dict):
        value = event_dict[key]
        if key == "event":
            event_dict[key] = _redact_value(value)
        elif _sensitive_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def redact_text(value: str) -> str:
    """One free-text value, redacted if it looks like a token, SAML message or key."""
    return _redact_value(value)  # type: ignore[no-any-return]


def safe_query(query_string: str) -> str:
    """The query string with values of sensitive parameters replaced."""
    if not query_string:
        return ""
    if _PARAM_HINT.search(query_string) is None:
        return query_string
    pairs = parse_qsl(query_string, keep_blank_values=True)
    return urlencode(
        [(k, REDACTED if k.lower() in _SENSITIVE_PARAMS else v) for k, v in pairs], safe="[]"
    )


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class _UtcTimestamp:
    """ISO-8601 UTC timestamps with milliseconds; the date part is formatted once a second.

    structlog's TimeStamper costs about 9 us per line here, a third of a whole
    access-log line; this gives the same format for about 1 us.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1000):03d}Z"
        return event_dict


class LineLogger:
    """A structlog logger that writes each line with one ``write`` call, then flushes.

    With several worker processes on one stdout (and ``PYTHONUNBUFFERED``, as in
    containers), ``print`` writes the message and the newline separately, so
    two workers' lines can run together; one write per line keeps them whole.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed stdout: nothing to do
            self._stream.write(message + "\n")
            self._stream.flush()

    info = debug = warning = error = critical = exception = fatal = failure = log = msg


# Pipes write at most this much atomically: a batch larger than this could be
# split between two workers' writes, so batches are cut at line ends below it.
_ATOMIC_WRITE = 4096


class BufferedLineLogger:
    """A structlog logger for the access log: lines are batched, not written one by one.

    One write (a system call) per request line is measurable at thousands of
    requests per second; access lines wait at most ``interval`` seconds (the
    next line, or ``flush()``, which the app calls on a timer and at shutdown,
    writes them). Batches never split a line and stay within the pipe's atomic
    write size, so workers sharing stdout never mix their lines.
    """

    def __init__(self, stream: TextIO, interval: float = 0.25) -> None:
        self._stream = stream
        self._interval = interval
        self._flushed = time.monotonic()
        self._lines: list[str] = []
        self._size = 0

    def msg(self, message: str) -> None:
        self._lines.append(message + "\n")
        self._size += len(message) + 1
        now = time.monotonic()
        if self._size >= _ATOMIC_WRITE or now - self._flushed >= self._interval:
            self.flush(now)

    info = debug = warning = error = critical = exception = fatal = failure = log = msg

    def flush(self, now: float | None = None) -> None:
        self._flushed = time.monotonic() if now is None else now
        lines, self._lines, self._size = self._lines, [], 0
        batch: list[str] = []
        size = 0
        with contextlib.suppress(OSError, ValueError):  # closed stdout: nothing to do
            for line in lines:
                if batch and size + len(line) > _ATOMIC_WRITE:
                    self._stream.write("".join(batch))
                    batch, size = [], 0
                batch.append(line)
                size += len(line)
            if batch:
                self._stream.write("".join(batch))
            self._stream.flush()


_stream: TextIO | None = None


def _format_exc_info_if_any(
    logger: Any, name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog's format_exc_info, skipped (one dict lookup) for the usual event without one."""
    if "exc_info" not in event_dict:
        return event_dict
    return structlog.processors.format_exc_info(logger, name, event_dict)


class AccessLog:
    """Writes the one access-log line per request, on the hot path.

    It runs the configured structlog processors itself (the same list object,
    so ``structlog.testing.capture_logs`` sees access lines too) and skips the
    bound-logger machinery, which cost more than the line's content.
    """

    def __init__(self, sink: BufferedLineLogger, enabled: bool) -> None:
        self.sink = sink
        self.enabled = enabled
        self._processors = structlog.get_config()["processors"]

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        rendered: Any = fields
        try:
            for processor in self._processors:
                rendered = processor(None, "info", rendered)
        except structlog.DropEvent:
            return
        if isinstance(rendered, str):
            self.sink.msg(rendered)


def access_logger(level: str = "info") -> AccessLog:
    """The access log for one app: the configured processors, a batched writer."""
    enabled = getattr(logging, level.upper(), logging.INFO) <= logging.INFO
    return AccessLog(BufferedLineLogger(_stream or sys.stdout), enabled)


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog once per process (call again to change format or level)."""
    global _stream
    stream = stream or sys.stdout
    _stream = stream
    lvl = getattr(logging, level.upper(), logging.INFO)
    # No merge_contextvars: nothing binds context variables, and it costs a
    # context copy on every line.
    shared: list[Any] = [
        structlog.processors.add_log_level,
        _UtcTimestamp(),
    ]
    renderer: Any
    if fmt == "console":
        shared.append(redact)
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        # Tracebacks become text before redaction, so their text is checked too.
        shared += [_format_exc_info_if_any, redact]
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=lambda *args: LineLogger(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (aiohttp, pysaml2) go through the same
    # renderer, at warning and above, so nothing bypasses redaction.
    logging.basicConfig(
        level=logging.WARNING, handlers=[_StructlogHandler()], force=True, format="%(message)s"
    )


class _StructlogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a broken library log call must not break us
            msg = str(record.msg)
        fields: dict[str, Any] = {"logger": record.name, "message": msg}
        if record.exc_info and record.exc_info[1] is not None:
            # Keep the traceback (aiohttp's "Error handling request", asyncio's
            # accept() failures): without it such a line says nothing useful.
            fields["exc_info"] = record.exc_info
        structlog.get_logger(record.name).log(record.levelno, "library_logged", **fields)
