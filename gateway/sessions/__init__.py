"""Sessions, pending logins and the assertion replay cache, on top of the store protocol.

Modules: ``settings`` (``SessionSettings``), ``record`` (``Session`` and its
encoding), ``manager`` (``SessionManager``), ``cookies`` (cookie helpers),
``pending`` (``LoginStateStore``, ``PendingLogouts``), ``replay`` (``ReplayCache``),
``next_path`` (``safe_next_path``), ``keys`` (every store key and its TTL).
"""

from gateway.sessions.cookies import (
    clear_prelogin_cookie,
    clear_session_cookie,
    prelogin_cookie_name,
    read_prelogin_cookie,
    read_session_cookie,
    session_cookie_name,
    set_prelogin_cookie,
    set_session_cookie,
)
from gateway.sessions.manager import SessionManager, new_session_id
from gateway.sessions.next_path import safe_next_path
from gateway.sessions.pending import (
    LoginStateStore,
    PendingLogin,
    new_relay_state,
    new_request_id,
)
from gateway.sessions.record import Session, decode_session, encode_session
from gateway.sessions.replay import ReplayCache
from gateway.sessions.settings import SessionSettings

__all__ = [
    "LoginStateStore",
    "PendingLogin",
    "ReplayCache",
    "Session",
    "SessionManager",
    "SessionSettings",
    "clear_prelogin_cookie",
    "clear_session_cookie",
    "decode_session",
    "encode_session",
    "new_relay_state",
    "new_request_id",
    "new_session_id",
    "prelogin_cookie_name",
    "read_prelogin_cookie",
    "read_session_cookie",
    "safe_next_path",
    "session_cookie_name",
    "set_prelogin_cookie",
    "set_session_cookie",
]
