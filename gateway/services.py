"""The long-lived parts behind login and authenticated routes, created once per process.

Everything here is built from the configuration in the application's
``cleanup_ctx`` (teardown runs only if setup succeeded) and reached through
one typed ``AppKey``. When login is not configured (only public routes), none
of it exists and nothing connects to Redis, the broker or the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import structlog
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import RegistryUnavailable, StoreUnavailable
from gateway.mandates import MandateService
from gateway.mandates.file_source import FileMandateSource
from gateway.metrics import Metrics, TimedMandateSource, TimedStore
from gateway.metrics_states import ServiceStates
from gateway.saml import ServiceProvider
from gateway.sessions import LoginStateStore, ReplayCache, SessionManager
from gateway.sessions.login_limits import LoginStartLimiter
from gateway.sessions.manager import utcnow
from gateway.store import Store
from gateway.store.factory import create_store
from gateway.tokens import KeySet, TokenMinter

log = structlog.get_logger("gateway.services")


@dataclass
class Services:
    """What the login flow and the authenticated-route policy use."""

    config: GatewayConfig
    store: Store
    sessions: SessionManager
    logins: LoginStateStore
    replay: ReplayCache
    sp: ServiceProvider
    mandates: MandateService
    keys: KeySet
    minter: TokenMinter
    login_limiter: LoginStartLimiter
    metrics: Metrics = field(default_factory=Metrics)
    admin_token: bytes | None = None
    # administrator KvK -> when a revocation push arrived on this replica; sessions
    # of that administrator checked before then are re-checked on their next request.
    invalidated: dict[str, dt.datetime] = field(default_factory=dict)

    def forbidden_next_prefixes(self) -> tuple[str, ...]:
        return (self.config.server.reserved_prefix,)


SERVICES = web.AppKey("services", Services)


def _read_secret(path: Path) -> bytes:
    data = path.read_bytes().strip()
    if len(data) < 16:
        raise ValueError(f"{path}: the secret must be at least 16 bytes")
    return data


async def services_ctx(
    app: web.Application,
    *,
    config: GatewayConfig,
    metrics: Metrics,
    on_reload: list[Callable[[], None]],
    clock: Callable[[], dt.datetime] | None = None,
) -> AsyncIterator[None]:
    """Create the login services for ``config``; close them on shutdown.

    ``metrics`` are the application's; a hook that re-reads the token keys is
    added to ``on_reload`` (run on every configuration reload). ``clock`` is the
    time sessions and mandate answers are dated and judged by (default: the
    system clock); revocation pushes are dated by it too.
    """
    # The config check guarantees all three when login is enabled.
    assert config.saml is not None
    assert config.mandates is not None
    assert config.tokens is not None
    store = TimedStore(create_store(config.store), metrics)
    keys = KeySet.from_settings(config.tokens)
    sp = ServiceProvider(config.saml)
    sessions = SessionManager(
        store,
        config.sessions,
        ref_secret=config.sessions.load_ref_secret(),
        clock=clock or utcnow,
    )
    # One freshness rule for sessions, logins and the mandate cache.
    mandates = MandateService.from_settings(store, config.mandates, sessions.freshness)
    if isinstance(mandates.source, FileMandateSource):
        mandates.source.load()  # a broken registry file stops startup, with its problems
    mandates.source = TimedMandateSource(mandates.source, metrics)
    services = Services(
        config=config,
        store=store,
        sessions=sessions,
        logins=LoginStateStore(store, config.sessions),
        replay=ReplayCache(store, clock_skew=config.sessions.replay_clock_skew),
        sp=sp,
        mandates=mandates,
        keys=keys,
        minter=TokenMinter(config.tokens, keys),
        login_limiter=LoginStartLimiter(store, config.sessions.login_limits),
        metrics=metrics,
        admin_token=_read_secret(config.admin.token_file) if config.admin else None,
    )
    await sp.start()
    await sessions.start()
    on_reload.append(partial(_reload_keys, keys))
    stop_watching = metrics.watch(ServiceStates(metrics, services))
    listener = asyncio.create_task(_listen_for_revocations(services), name="mandate-revocations")
    app[SERVICES] = services
    try:
        yield
    finally:
        stop_watching()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        services.login_limiter.close()
        await sessions.aclose()
        await mandates.close()
        await sp.close()
        await store.close()


def _reload_keys(keys: KeySet) -> None:
    """SIGHUP re-reads the token key files (rotation without restart); bad files are kept out."""
    try:
        keys.reload()
    except Exception as exc:  # KeySet keeps the old keys and logs; never crash the reload
        log.error("token_keys_reload_failed", error=type(exc).__name__)


async def _listen_for_revocations(services: Services) -> None:
    """Remember pushed revocations so every replica re-checks the affected sessions."""
    while True:
        try:
            async for kvk in services.mandates.invalidations():
                services.invalidated[kvk] = services.sessions.freshness.now()
                if len(services.invalidated) > 100_000:  # bounded: oldest pushes go first
                    oldest = min(services.invalidated, key=services.invalidated.__getitem__)
                    del services.invalidated[oldest]
                log.info("mandate_revocation_received", administrator_kvk=kvk)
        except (StoreUnavailable, RegistryUnavailable):
            await asyncio.sleep(1.0)
