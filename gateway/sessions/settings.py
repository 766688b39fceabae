"""``SessionSettings``: lifetimes, cookies, cache and mandate re-check timing."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.durations import Duration

_log = structlog.get_logger("gateway.sessions")

HOST_PREFIX = "__Host-"
PRELOGIN_TTL_MAX = dt.timedelta(minutes=15)


class LoginLimits(BaseModel):
    """How much login state anyone can make the gateway keep (``gateway.sessions.login_limits``).

    Every started login is a pending-login entry in the store until it completes
    or expires, so starting logins is limited per client address (a token bucket
    shared by all replicas through the store), for the whole deployment, and per
    browser; ``next`` is limited in length.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_address_burst: int = Field(default=30, ge=1, le=100_000)
    """Logins one client address may start at once. One office behind one NAT address
    is one address, so leave room for its staff logging in at the start of the day."""
    per_address_per_minute: float = Field(default=30.0, gt=0, le=1_000_000)
    """After the burst, this many more per minute from that address."""
    total_burst: int = Field(default=300, ge=1, le=1_000_000)
    """Logins the whole deployment (all replicas) starts at once."""
    total_per_second: float = Field(default=20.0, gt=0, le=100_000)
    """After that burst, this many per second for the whole deployment. With
    ``prelogin_ttl`` it bounds the pending logins in the store (docs/state.md)."""
    ipv6_prefix_length: int = Field(default=64, ge=32, le=128)
    """IPv6 clients count per network of this length: a customer line gets a whole /64
    (or more) and can use any address in it."""
    pending_per_browser: int = Field(default=5, ge=1, le=50)
    """Pending logins one browser (pre-login cookie) may have, e.g. in several tabs;
    starting one more drops the oldest."""
    next_max_length: int = Field(default=1024, ge=1, le=2048)
    """Longest ``next`` (the page to return to) a login keeps; a longer one is replaced
    by ``/`` (never cut short: a truncated path or query can mean another page)."""


class SessionSettings(BaseModel):
    """Sessions, pre-login state and the replay cache. Defaults are production-safe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_timeout: Duration = dt.timedelta(minutes=15)
    """A session unused this long ends (seconds or ISO 8601 duration in config)."""
    absolute_lifetime: Duration = dt.timedelta(hours=8)
    """A session ends this long after login, however active it is."""
    touch_interval: Duration = dt.timedelta(seconds=60)
    """``last_seen`` is written at most this often per session (not on every request), so
    the effective idle timeout is between ``idle_timeout - touch_interval`` and ``idle_timeout``."""
    cookie_name: str = Field(default="__Host-gw_session", pattern=r"^[A-Za-z0-9_-]+$")
    """Session cookie name; the ``__Host-`` prefix pins it to our host, path / and HTTPS."""
    prelogin_cookie_name: str = Field(default="__Host-gw_login", pattern=r"^[A-Za-z0-9_-]+$")
    """Cookie binding a pending login to the browser that started it."""
    insecure_dev_cookies: bool = False
    """DEVELOPMENT ONLY, NEVER IN PRODUCTION: send cookies without ``Secure`` (and so
    without the ``__Host-`` prefix) so a plain-HTTP demo on localhost works. With it,
    cookies travel in clear text and can be set by other hosts."""
    cache_seconds: float = Field(default=60.0, ge=0, le=300)
    """How long a replica may serve a session from its in-process cache (0 = no cache).
    Changes elsewhere reach it by pub/sub at once; when messages may have been lost (the
    subscription broke and came back) the whole cache is dropped, so this is only the
    bound for a loss nobody noticed. Beyond ``touch_interval`` it changes little: a
    session is re-read from the store at its next touch anyway."""
    cache_max_entries: int = Field(default=10_000, ge=1)
    """Bound on the in-process session cache (least recently used entries are dropped)."""
    mandate_recheck_interval: Duration = dt.timedelta(seconds=60)
    """R: a registry answer about mandates is used (by logins and sessions) for at most this
    long after the registry was asked, so a revocation reaches every session within R."""
    mandate_max_staleness: Duration = dt.timedelta(minutes=15)
    """With the registry down, a session may use its last known mandates this long after
    they were asked for; then deny."""
    refresh_lock_seconds: float = Field(default=10.0, gt=0, le=120)
    """Lifetime of the per-session lock that lets one request (on one replica) re-check."""
    prelogin_ttl: Duration = dt.timedelta(minutes=5)
    """How long a started login may take before the pending state expires (at most 15
    minutes: a login at the broker takes a few minutes at most, and a longer wait
    only keeps abandoned state around)."""
    login_limits: LoginLimits = Field(default_factory=LoginLimits)
    """Limits on starting logins (per address, in total, per browser; ``next`` length)."""
    replay_clock_skew: Duration = dt.timedelta(seconds=60)
    """Assertion IDs are remembered until NotOnOrAfter plus this skew."""
    ref_secret_file: Path | None = None
    """File with the secret for session references (logs, audit, token ``sid``). Required
    with several replicas, so every replica computes the same reference; without it each
    process uses a random secret (fine for one process only)."""

    @model_validator(mode="after")
    def _check(self) -> SessionSettings:
        for name in ("idle_timeout", "absolute_lifetime", "touch_interval", "prelogin_ttl"):
            if getattr(self, name) <= dt.timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.prelogin_ttl > PRELOGIN_TTL_MAX:
            raise ValueError("prelogin_ttl must be at most 15 minutes (900 seconds)")
        if self.idle_timeout > self.absolute_lifetime:
            raise ValueError("idle_timeout must not exceed absolute_lifetime")
        if self.touch_interval >= self.idle_timeout:
            raise ValueError("touch_interval must be shorter than idle_timeout")
        if self.mandate_max_staleness < self.mandate_recheck_interval:
            raise ValueError("mandate_max_staleness must be at least mandate_recheck_interval")
        if not self.insecure_dev_cookies:
            for name in ("cookie_name", "prelogin_cookie_name"):
                if not getattr(self, name).startswith(HOST_PREFIX):
                    raise ValueError(f"{name} must start with {HOST_PREFIX} (secure cookies)")
        return self

    def effective_cookie_name(self, name: str) -> str:
        """The cookie name as sent: without ``__Host-`` in insecure dev mode (browsers
        reject a ``__Host-`` cookie that is not ``Secure``)."""
        if self.insecure_dev_cookies and name.startswith(HOST_PREFIX):
            return name[len(HOST_PREFIX) :]
        return name

    def load_ref_secret(self) -> bytes:
        """The session-reference secret from ``ref_secret_file``, or a per-process random one."""
        if self.ref_secret_file is not None:
            secret = self.ref_secret_file.read_bytes().strip()
            if len(secret) < 16:
                raise ValueError("session ref secret must be at least 16 bytes")
            return secret
        _log.warning("session_ref_secret_generated", reason="ref_secret_file not configured")
        return secrets.token_bytes(32)
