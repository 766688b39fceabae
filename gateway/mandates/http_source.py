"""The fund's registry service over HTTP(S): timeouts, bounded retries, a circuit breaker.

One ``GET url_template.format(kvk=...)`` per lookup (``docs/mandates.md`` has
the contract). Only transient failures are retried (connection errors and
resets, timeouts, 502/503/504), with full-jitter exponential back-off inside a
total time budget; a 4xx or a malformed body is a deterministic answer and is
not retried. Every attempt reports to a ``CircuitBreaker``; while it is open
lookups fail at once without touching the network. Whatever goes wrong, the
caller sees ``RegistryUnavailable`` and a log event, never a library error.

The bearer token file is re-read when it changes (rotation without restart);
the client certificate is loaded once when the session is created.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import RegistryUnavailable
from gateway.mandates.breaker import CircuitBreaker
from gateway.mandates.model import KVK_PATTERN, Mandate, MandateRecord, describe_errors, is_kvk
from gateway.mandates.settings import HttpSourceSettings

log = structlog.get_logger("gateway.mandates")

RETRYABLE_STATUSES = frozenset({502, 503, 504})


class RegistryResponse(BaseModel):
    """The JSON body of a 200 answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    administrator_kvk: Annotated[str, Field(pattern=KVK_PATTERN)]
    mandates: list[MandateRecord]


class _Transient(Exception):
    """An attempt failed in a way a retry may fix."""


class _Permanent(Exception):
    """An attempt got an answer that a retry would not change."""


class HttpMandateSource:
    """A ``MandateSource`` backed by the fund's registry service."""

    def __init__(
        self,
        settings: HttpSourceSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold, settings.breaker_cooldown, clock=clock
        )
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_sig: tuple[int, int, int] | None = None
        self.network_attempts = 0
        """Requests actually sent (tests use it to see that an open breaker sends none)."""

    async def start(self) -> None:
        """Create the HTTP session (also done lazily by the first lookup)."""
        if self._session is None:
            s = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl_context(), limit=32),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout
                ),
                # A registry has no business setting cookies on the gateway.
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl_context(self) -> ssl.SSLContext | bool:
        s = self.settings
        if not s.url_template.startswith("https://"):
            return not s.allow_plain_http
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if s.client_cert_file is not None and s.client_key_file is not None:
            ctx.load_cert_chain(str(s.client_cert_file), str(s.client_key_file))
        return ctx

    async def mandates_for(self, administrator_kvk: str) -> list[Mandate]:
        """GET the administrator's mandates; 404 means "no mandates" (an empty list)."""
        if not is_kvk(administrator_kvk):
            # Never let a malformed value shape the URL path.
            raise RegistryUnavailable("administrator KvK is not 8 digits")
        try:
            await self.start()
        except (OSError, ValueError) as exc:  # unreadable CA/cert/key files (SSLError is OSError)
            log.error("registry_client_setup_failed", error=type(exc).__name__)
            raise RegistryUnavailable("registry client setup failed") from None
        s = self.settings
        url = s.url_template.replace("{kvk}", quote(administrator_kvk, safe=""))
        deadline = self._clock() + s.total_timeout
        attempt = 0
        while True:
            attempt += 1
            if not self.breaker.allow():
                log.warning(
                    "registry_lookup_short_circuited",
                    administrator_kvk=administrator_kvk,
                    breaker=self.breaker.state,
                )
                raise RegistryUnavailable("registry circuit open")
            try:
                mandates = await self._attempt(url, administrator_kvk, deadline)
            except _Transient as exc:
                self._failed(administrator_kvk, attempt, str(exc))
                delay = self._rng() * min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1))
                if attempt >= s.max_attempts or self._clock() + delay >= deadline:
                    raise RegistryUnavailable(
                        f"registry failed after {attempt} attempt(s): {exc}"
                    ) from None
                log.info("registry_retry_scheduled", attempt=attempt, delay=round(delay, 3))
                await self._sleep(delay)
                continue
            except _Permanent as exc:
                self._failed(administrator_kvk, attempt, str(exc))
                raise RegistryUnavailable(f"registry answer unusable: {exc}") from None
            previous = self.breaker.state
            self.breaker.record_success()
            if previous != "closed":
                log.info("registry_circuit_closed")
            return mandates

    def _failed(self, administrator_kvk: str, attempt: int, reason: str) -> None:
        before = self.breaker.state
        after = self.breaker.record_failure()
        log.warning(
            "registry_request_failed",
            administrator_kvk=administrator_kvk,
            attempt=attempt,
            reason=reason,
        )
        if after == "open" and before != "open":
            log.error(
                "registry_circuit_opened",
                failures=self.breaker.consecutive_failures,
                cooldown=self.breaker.cooldown,
            )

    async def _attempt(self, url: str, administrator_kvk: str, deadline: float) -> list[Mandate]:
        assert self._session is not None
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise _Transient("time budget exhausted")
        headers = {"Accept": "application/json"}
        token = self._bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.network_attempts += 1
        try:
            async with asyncio.timeout(remaining):
                async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status == 404:
                        # Contract: unknown administrator. Logged, because a wrong
                        # url_template would also look like this (for everyone).
                        log.info(
                            "registry_administrator_not_found", administrator_kvk=administrator_kvk
                        )
                        return []
                    if resp.status in RETRYABLE_STATUSES:
                        raise _Transient(f"status {resp.status}")
                    if resp.status != 200:
                        raise _Permanent(f"status {resp.status}")
                    body = await self._read_limited(resp)
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Transient(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise _Permanent(type(exc).__name__) from None
        return self._parse(body, administrator_kvk)

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.settings.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise _Permanent("response too large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise _Permanent("response too large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, body: bytes, administrator_kvk: str) -> list[Mandate]:
        try:
            doc = RegistryResponse.model_validate_json(body)
        except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
            problems = (
                describe_errors(exc)
                if isinstance(exc, ValidationError)
                else [("", type(exc).__name__)]
            )
            # Paths and messages only: the body holds business data, not for logs.
            log.error(
                "registry_response_invalid",
                administrator_kvk=administrator_kvk,
                problems=[f"{p}: {m}" for p, m in problems[:10]],
                problem_count=len(problems),
            )
            raise _Permanent("malformed response body") from None
        wrong = doc.administrator_kvk != administrator_kvk or any(
            r.administrator_kvk not in (None, administrator_kvk) for r in doc.mandates
        )
        if wrong:
            # A registry answering for someone else is a bug we must not act on.
            log.error(
                "registry_response_invalid",
                administrator_kvk=administrator_kvk,
                problems=["administrator_kvk: does not match the request"],
                problem_count=1,
            )
            raise _Permanent("response names another administrator")
        return [r.to_mandate(administrator_kvk) for r in doc.mandates]

    def _bearer_token(self) -> str | None:
        path = self.settings.bearer_token_file
        if path is None:
            return None
        try:
            st = os.stat(path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
            if sig != self._token_sig:
                token = path.read_text(encoding="utf-8").strip()
                if not token:
                    raise ValueError("empty")
                self._token, self._token_sig = token, sig
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            # The file name is fine to log; its content never is.
            log.error("registry_token_unreadable", file=str(path), error=type(exc).__name__)
            raise _Permanent("bearer token file unreadable") from None
        return self._token
