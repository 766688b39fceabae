"""``ServiceProvider``: the SAML core's one object for the aiohttp layer.

It owns the broker metadata (with its refresh task), the artifact resolver's
``ClientSession`` and the worker pool in which every signature check and
decryption runs (``gateway.saml.worker``), so a burst of logins does not
stall the event loop. The pool is a process pool by default (no GIL
contention with the loop); a thread pool is available for tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.errors import LoginWorkerFailed, SamlInvalid
from gateway.identity import Identity
from gateway.saml import worker
from gateway.saml.artifact import ArtifactResolver, parse_artifact
from gateway.saml.authn_request import AuthnRequestHttp, build_authn_request, new_id
from gateway.saml.keys import SpKeys, load_sp_keys
from gateway.saml.logout import LogoutExpectation, LogoutRequestHttp, slo_skip_reason
from gateway.saml.metadata import BrokerMetadata, BrokerMetadataSource
from gateway.saml.pool import ProcessPool, WorkerLost
from gateway.saml.settings import SamlSettings
from gateway.saml.sp_metadata import service_catalogue_xml, sp_metadata_xml
from gateway.saml.verify import Expectation, VerifiedLogin

T = TypeVar("T")


class ServiceProvider:
    """The gateway's eHerkenning service provider. ``await start()`` before use."""

    def __init__(self, settings: SamlSettings) -> None:
        self.settings = settings
        # Keys are read at construction so a wrong path fails at startup, not at login.
        self.keys: SpKeys = load_sp_keys(settings)
        self._resolver = ArtifactResolver(settings)
        cert = (
            Path(settings.broker_metadata_cert).read_bytes()
            if settings.broker_metadata_cert
            else None
        )
        self.broker = BrokerMetadataSource(
            settings.broker_metadata,
            fetch_url=self._resolver.fetch,
            entity_id=settings.broker_entity_id,
            signing_cert_pem=cert,
            refresh_seconds=settings.broker_metadata_refresh_seconds,
            min_refresh_seconds=settings.broker_metadata_min_refresh_seconds,
            expiry_warning_seconds=settings.broker_metadata_expiry_warning_seconds,
            require_https=not settings.insecure_dev_http,
        )
        self._pool: ProcessPool | ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Open the HTTP session and worker pool, load the broker metadata, start refreshing."""
        n = self.settings.verify_workers
        if self.settings.verify_pool == "process":
            # Started through the forkserver (see gateway.saml.pool): the running event
            # loop's process (threads, sockets) is never forked.
            self._pool = ProcessPool(
                n, functools.partial(worker.init_worker, nice=10), (self.settings,)
            )
            await self._pool.start()
        else:
            worker.init_worker(self.settings, self.keys)
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="saml-verify")
        await self._resolver.start()
        await self.broker.start()

    async def close(self) -> None:
        await self.broker.close()
        await self._resolver.close()
        pool, self._pool = self._pool, None
        if isinstance(pool, ProcessPool):
            await pool.close()
        elif pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def metadata(self) -> BrokerMetadata:
        """Current broker metadata (``BrokerUnavailable`` if none was ever loaded)."""
        return self.broker.current

    def expectation(self, request_id: str, now: dt.datetime | None = None) -> Expectation:
        """What a response for the pending ``request_id`` of this browser must match."""
        return Expectation(
            request_id=request_id,
            acs_url=self.settings.acs_url,
            sp_entity_id=self.settings.entity_id,
            now=now,
        )

    def build_authn_request(self, relay_state: str | None = None) -> tuple[str, AuthnRequestHttp]:
        """A signed AuthnRequest (about 1-2 ms of RSA on the calling thread)."""
        return build_authn_request(self.settings, self.metadata, self.keys.signing, relay_state)

    async def authn_request(self, relay_state: str | None = None) -> tuple[str, AuthnRequestHttp]:
        """``build_authn_request`` in the worker pool (keeps the event loop free)."""
        return await self._run(worker.authn_request, self.metadata, relay_state)

    async def consume_artifact(self, artifact: str, expectation: Expectation) -> VerifiedLogin:
        """Resolve ``SAMLart`` at the broker and verify the result.

        Raises ``SamlInvalid``, ``LoginCancelled``, ``LoginNotAuthorised``,
        ``LevelTooLow`` or ``BrokerUnavailable``; nothing else.
        """
        metadata = self.metadata
        parsed = parse_artifact(artifact, metadata.entity_id)
        url = metadata.ars_urls.get(parsed.endpoint_index)
        if not url:
            raise SamlInvalid("artifact_endpoint_index_unknown")
        resolve_id = new_id()
        envelope = await self._run(
            worker.resolve_envelope, parsed, url, resolve_id, dt.datetime.now(dt.UTC)
        )
        answer = await self._resolver.post(url, envelope)
        try:
            return await self._run(
                worker.verify_artifact, answer, resolve_id, expectation, metadata
            )
        except SamlInvalid as exc:
            # The artifact is spent, but the answer is in hand: when the broker's keys
            # changed (a restart, a rollover), verify the same bytes with the new ones.
            newer = await self._after_signature_failure(exc, metadata)
            if newer is None:
                raise
            return await self._run(worker.verify_artifact, answer, resolve_id, expectation, newer)

    async def consume_post_response(
        self, saml_response_b64: str, expectation: Expectation
    ) -> VerifiedLogin:
        """Verify an HTTP-POST ``SAMLResponse`` (only when ``accept_post_response``)."""
        if not self.settings.accept_post_response:
            raise SamlInvalid("post_binding_disabled")
        if len(saml_response_b64) > self.settings.max_message_bytes * 4 // 3 + 4:
            raise SamlInvalid("message_too_large")
        try:
            data = base64.b64decode("".join(saml_response_b64.split()), validate=True)
        except (binascii.Error, ValueError):
            raise SamlInvalid("base64_malformed") from None
        metadata = self.metadata
        try:
            return await self._run(worker.verify_post, data, expectation, metadata)
        except SamlInvalid as exc:
            newer = await self._after_signature_failure(exc, metadata)
            if newer is None:
                raise
            return await self._run(worker.verify_post, data, expectation, newer)

    async def _after_signature_failure(
        self, exc: SamlInvalid, used: BrokerMetadata
    ) -> BrokerMetadata | None:
        """New broker metadata when a broker signature failed and the keys have changed."""
        if not str(exc.detail).endswith("_signature_invalid"):
            return None
        return await self.broker.refresh_after_signature_failure(used)

    def single_logout_skip_reason(self, identity: Identity) -> str | None:
        """Why logout stays local for this login (``None``: a LogoutRequest can be sent)."""
        return slo_skip_reason(self.settings, self.metadata, identity)

    async def logout_request(
        self, identity: Identity, relay_state: str | None
    ) -> LogoutRequestHttp:
        """A signed LogoutRequest by Redirect (in the worker pool); check the skip reason first."""
        return await self._run(worker.logout_request, self.metadata, identity, relay_state)

    async def verify_logout_response(self, raw_query: str, request_id: str) -> None:
        """Check a LogoutResponse (raw query of the Redirect binding); ``SamlInvalid`` if bad."""
        expected = LogoutExpectation(request_id=request_id, slo_url=self.settings.single_logout_url)
        await self._run(worker.verify_logout, raw_query, expected, self.metadata)

    def sp_metadata_xml(self) -> bytes:
        """Our signed SP metadata."""
        return sp_metadata_xml(self.settings, self.keys)

    def service_catalogue_xml(self) -> bytes:
        """The signed dienstcatalogus."""
        return service_catalogue_xml(self.settings, self.keys)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            raise RuntimeError("ServiceProvider.start() was not called")
        if isinstance(self._pool, ProcessPool):
            try:
                return await self._pool.run(fn, *args)
            except WorkerLost as exc:
                # Killed mid-call (out of memory, an operator): this one login fails
                # with a clear page; the pool has started a replacement already.
                raise LoginWorkerFailed(str(exc)) from exc
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
