"""Structured logs: JSON for machines, console for people, secrets never included.

Every log line passes the redaction processor, which removes secrets two ways:

- by field name: values under sensitive keys (cookies, authorisation, tokens,
  SAML messages, keys, passwords) are replaced whole;
- by shape, wherever they appear (messages, query strings, paths, header
  values, nested structures, formatted tracebacks): JWTs (``eyJ...``), SAML
  artifacts (base64 of type code 0x0004, ``AAQ...``), base64 SAML/XML messages, long
  opaque base64 blobs (deflated Redirect-binding messages have no other
  mark), and 256-bit base64url values (session IDs, CSRF secrets, pre-login
  cookies) are cut out of the text; a value that holds SAML XML in clear or
  a PEM private key is replaced whole.

Public values of the same shape as a session ID stay readable where the
field says what they are: key IDs (``kid``, ``kids``, RFC 7638 thumbprints).
Query strings are logged with sensitive parameter values removed by name and
every other value checked by shape (after percent-decoding).
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

# Secrets recognised by their shape, cut out of any text. Character classes only (no
# repeated alternations: Python's re is slow on those); ``%`` is in the base64 classes
# so percent-encoded values (%2B, %2F, %3D) copied from URLs are caught too.
_JWT = r"eyJ[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*){1,4}"  # JWS/JWE compact: base64url '{"'
_ARTIFACT = r"AAQ[A-Za-z0-9+/][A-Za-z0-9+/=%]{40,}"  # SAML 2.0 artifact: type 0x0004, 60 chars
_B64_XML = r"(?:PD94bWwg|PHNhbW|PG1kO|PGRzO)[A-Za-z0-9+/=%]*"  # '<?xml ', '<saml', '<md:', '<ds:'
_SESSION_ID = r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"  # 256 bits, base64url


def _shapes(blob_class: str) -> re.Pattern[str]:
    # A long opaque blob: deflated Redirect-binding SAML messages carry no other mark.
    return re.compile("|".join((_JWT, _ARTIFACT, _B64_XML, blob_class + "{160,}", _SESSION_ID)))


_SECRET_SHAPES = _shapes("[A-Za-z0-9+/=_%-]")
# In a path "/" separates segments, so a long path is not one long blob.
_PATH_SHAPES = _shapes("[A-Za-z0-9+=_%-]")
# A value holding one of these is replaced whole: where SAML XML or a PEM key ends
# cannot be told from inside a message.
_WHOLE_VALUE = re.compile(
    r"<(?:saml2?p?|md|ds|xenc|soap-?env):|<\?xml|-----BEGIN [A-Z ]*PRIVATE KEY-----",
    re.IGNORECASE,
)
# Cheap pre-checks (C-level scans): a value without any of these marks and without a
# 43-character run of base64 characters holds no secret shape.
_VALUE_HINT = re.compile("eyJ|AAQ|PD94|PHNh|PG1k|PGRz|<|-----BEGIN")
_SHORTEST_MARKLESS = 43
# Without "/": segments of a long path are short, and any base64 blob of 160 characters
# or more has a 43-character stretch without "/" (a "/" is 1 in 64 of its characters).
_LONG_RUN = re.compile(r"[A-Za-z0-9+=_%-]{43}")

# Fields whose values are public thumbprints of the session-ID shape.
_PUBLIC_THUMBPRINT_KEYS = frozenset({"kid", "kids"})

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


# Matched against the lower-cased query (cheaper than a case-insensitive pattern).
_PARAM_HINT = re.compile("|".join(sorted(_SENSITIVE_PARAMS)))


def _clean(value: str) -> bool:
    """True when ``value`` certainly holds no secret shape (the common case, kept cheap)."""
    return _VALUE_HINT.search(value) is None and (
        len(value) < _SHORTEST_MARKLESS or _LONG_RUN.search(value) is None
    )


def _redact_str(value: str) -> str:
    if _clean(value):
        return value
    if _WHOLE_VALUE.search(value) is not None:
        return REDACTED
    return _SECRET_SHAPES.sub(REDACTED, value)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_str(value)
    if isinstance(value, bytes):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: _redact_field(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _redact_field(key: object, value: Any) -> Any:
    if _sensitive_key(key):
        return REDACTED
    if key in _PUBLIC_THUMBPRINT_KEYS:
        return value
    return _redact_value(value)


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
    query) went through ``redact_path``/``safe_query`` already.
    """
    if event_dict.pop(PRECHECKED, False):
        return event_dict
    for key in list(event_dict):
        value = event_dict[key]
        if key == "event":
            event_dict[key] = _redact_value(value)
        else:
            event_dict[key] = _redact_field(key, value)
    return event_dict


def redact_text(value: str) -> str:
    """One free-text value with every secret-shaped part cut out (see the module docstring)."""
    return _redact_str(value)


def redact_path(path: str) -> str:
    """A URL path with every secret-shaped part cut out ("/" separates, never joins, blobs)."""
    if _clean(path):
        return path
    if _WHOLE_VALUE.search(path) is not None:
        return REDACTED
    return _PATH_SHAPES.sub(REDACTED, path)


def safe_query(query_string: str) -> str:
    """The query string with sensitive parameters' values and every secret-shaped value removed.

    Values are checked raw (a JWT or an artifact with literal ``+``) and decoded
    (percent-encoded ones); names too, since a bare ``?<token>`` is a name.
    """
    if not query_string:
        return ""
    if _clean(query_string) and _PARAM_HINT.search(query_string.lower()) is None:
        return query_string
    raw = _SECRET_SHAPES.sub(REDACTED, query_string)
    changed = raw != query_string
    pairs: list[tuple[str, str]] = []
    for name, value in parse_qsl(raw, keep_blank_values=True):
        safe_name = _redact_str(name)
        safe_value = REDACTED if name.lower() in _SENSITIVE_PARAMS else _redact_str(value)
        changed = changed or safe_name != name or safe_value != value
        pairs.append((safe_name, safe_value))
    # Nothing to hide: log the query exactly as it came (re-encoding would alter it).
    return urlencode(pairs, safe="[]") if changed else query_string


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
# The processors of the JSON format as ``configure_logging`` set them up last
# (None: another format): level, timestamp, exc_info, redaction, renderer.
_json_chain: tuple[Any, ...] | None = None


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
        # The JSON chain ``configure_logging`` set up, element by element: while
        # the configured list still holds exactly it, a line is rendered here
        # in one step with the same output (see ``emit``).
        self._json_chain = list(_json_chain) if _json_chain else None
        self._timestamp = _json_chain[1] if _json_chain else _UtcTimestamp()

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        """Write one access line. ``fields`` must be safe already (``PRECHECKED``)."""
        fields["event"] = event
        if self._processors == self._json_chain:
            # What the chain does with a pre-checked event without exc_info, in its
            # order: level, timestamp, the marker dropped (redact), JSON.
            fields["level"] = "info"
            self._timestamp(None, "info", fields)
            fields.pop(PRECHECKED, None)
            self.sink.msg(orjson.dumps(fields, default=str).decode())
            return
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
    # Tracebacks are formatted before redaction: an exception message can carry a
    # token or an artifact like any other text.
    shared: list[Any] = [
        structlog.processors.add_log_level,
        _UtcTimestamp(),
        _format_exc_info_if_any,
        redact,
    ]
    renderer: Any
    global _json_chain
    if fmt == "console":
        shared.append(redact)
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        _json_chain = None
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        _json_chain = (*shared, renderer)
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
