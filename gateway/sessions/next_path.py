"""``safe_next_path``: where a user may be sent after login (open-redirect defence).

Only a same-origin absolute path is accepted; anything else becomes ``/``. The
check is deliberately stricter than URL syntax, because browsers "fix" input:
they treat ``\\`` as ``/`` (``/\\evil.example`` is protocol-relative), strip tabs
and newlines (``/\\t/evil.example``), and some servers decode ``%2F`` before
routing. So we refuse, rather than clean up:

- anything not starting with exactly one ``/`` (schemes, ``//host``, relative paths);
- any raw character outside printable ASCII (controls, spaces, non-ASCII, DEL);
- any backslash;
- after percent-decoding (up to three rounds: ``%252F``): a leading ``//``, a
  backslash or a control character (``/%2F%2Fevil``, ``/%5Cevil``, ``%0d%0a``);
  decoded spaces and non-ASCII text are fine;
- configured prefixes the gateway serves itself (e.g. ``/_gateway/``) to avoid loops;
- more than ``max_length`` characters.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

DEFAULT = "/"


def _raw_ok(value: str) -> bool:
    if not value.startswith("/") or value.startswith("//"):
        return False
    if any(not 0x21 <= ord(c) <= 0x7E for c in value) or "\\" in value:
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


def _decoded_ok(value: str) -> bool:
    # Decoded text may hold spaces or non-ASCII (``%20``, ``%C3%A9`` in a query are
    # fine); what it may not hold is a second slash at the start, a backslash or a
    # control character (``%0d%0a`` would split a header downstream).
    if value.startswith("//") or "\\" in value:
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def safe_next_path(
    value: str | None,
    *,
    forbidden_prefixes: tuple[str, ...] = (),
    max_length: int = 2048,
) -> str:
    """``value`` if it is a safe same-origin path, else ``"/"``."""
    if not value or len(value) > max_length or not _raw_ok(value):
        return DEFAULT
    current = value
    for _ in range(3):
        decoded = unquote(current, errors="replace")
        if decoded == current:
            break
        if not _decoded_ok(decoded):
            return DEFAULT
        current = decoded
    else:
        if unquote(current, errors="replace") != current:
            return DEFAULT  # still encoded after three rounds: refuse rather than guess
    path = urlsplit(value).path
    if any(path.startswith(p) or unquote(path).startswith(p) for p in forbidden_prefixes):
        return DEFAULT
    return value
