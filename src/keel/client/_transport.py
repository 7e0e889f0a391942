"""One aiohttp session per client, and the retry rules around each request.

Reads are repeated after connection failures and 502/503/504; every request is repeated after
429 with the server's Retry-After (bounded); a write that may have reached the server is never
repeated: it fails with `ApiUnavailable(ambiguous=True)`.
"""

from __future__ import annotations

import random
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from keel.client._backoff import RETRYABLE_READ_STATUSES, Backoff, may_retry_unavailable
from keel.client._errors import ApiError, ApiUnavailable, TooManyRequests, error_from_response

Sleep = Callable[[float], Awaitable[None]]
SSLArg = _ssl.SSLContext | bool | None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries before it gives up on a request."""

    backoff: Backoff = field(default_factory=Backoff)
    max_unavailable_retries: int = 5  # reads after connection errors / 502-504
    max_throttle_retries: int = 8  # 429 answers, any verb
    max_retry_after: float = 30.0  # a longer Retry-After is raised, not waited for


class Transport:
    """Sends requests, maps error answers to exceptions and applies `RetryPolicy`."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None,
        ssl: SSLArg,
        timeout: float,
        retry: RetryPolicy,
        sleep: Sleep,
        rng: random.Random,
        connections: int = 100,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server: expected an http(s) URL, got {server!r}")
        self.server = server.rstrip("/")
        self.retry = retry
        self.sleep = sleep
        self.rng = rng
        self._token = token
        self._ssl = ssl
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        self._connect_timeout = min(timeout, 10.0)
        self._session: aiohttp.ClientSession | None = None
        self.closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self.closed:
                raise RuntimeError("the client is closed")
            headers = {"Accept": "application/json", "User-Agent": "keel-client/0.1"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                # Below uvicorn's 5 s keep-alive, so an idle pooled connection is dropped by
                # us before the server closes it under a request we are sending.
                keepalive_timeout=4.0,
                ssl=self._ssl if self._ssl is not None else True,
            )
            session = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=self._timeout
            )
            # aiohttp silently resends PUT and DELETE once when a kept-alive connection
            # closes under them; the outcome of the first send is unknown, so that decision
            # belongs to RetryPolicy (aiohttp's own test client turns it off the same way).
            session._retry_connection = False
            self._session = session
        return self._session

    async def close(self) -> None:
        self.closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send one request (with retries); the body of a 2xx answer, else an exception."""
        session = self._get_session()
        send_headers: dict[str, str] = dict(headers) if headers else {}
        if body is not None:
            send_headers["Content-Type"] = content_type
        unavailable = 0
        throttled = 0
        while True:
            try:
                async with session.request(
                    method, url, params=params, data=body, headers=send_headers
                ) as response:
                    data = await response.read()
                    code = response.status
                    if code < 400:
                        return data
                    error = error_from_response(code, data, response.headers)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Never connected: nothing was sent, so even a write may be sent again.
                if unavailable >= self.retry.max_unavailable_retries or isinstance(
                    exc, aiohttp.ClientConnectorCertificateError
                ):
                    raise ApiUnavailable(f"{method} {url}: {exc}", ambiguous=False) from exc
                await self.sleep(self.retry.backoff.delay(unavailable, self.rng))
                unavailable += 1
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                if not may_retry_unavailable(method, sent=True):
                    raise ApiUnavailable(
                        f"{method} {url}: no answer, the write may or may not have been "
                        f"applied: {exc!r}",
                        ambiguous=True,
                    ) from exc
                if unavailable >= self.retry.max_unavailable_retries:
                    raise ApiUnavailable(f"{method} {url}: {exc!r}", ambiguous=False) from exc
                await self.sleep(self.retry.backoff.delay(unavailable, self.rng))
                unavailable += 1
                continue
            await self._wait_or_raise(method, error, unavailable, throttled)
            if isinstance(error, TooManyRequests):
                throttled += 1
            else:
                unavailable += 1

    async def _wait_or_raise(
        self, method: str, error: ApiError, unavailable: int, throttled: int
    ) -> None:
        """Sleep before a retry that the policy allows, else raise `error`."""
        if isinstance(error, TooManyRequests):
            # Admission rejects before doing anything, so any verb may be sent again.
            if (
                throttled >= self.retry.max_throttle_retries
                or error.retry_after > self.retry.max_retry_after
            ):
                raise error
            await self.sleep(error.retry_after)
            return
        if (
            error.status in RETRYABLE_READ_STATUSES
            and may_retry_unavailable(method, sent=True)
            and unavailable < self.retry.max_unavailable_retries
        ):
            await self.sleep(self.retry.backoff.delay(unavailable, self.rng))
            return
        raise error

    @asynccontextmanager
    async def stream(
        self,
        url: str,
        *,
        params: Mapping[str, str],
        idle_timeout: float | None,
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """Open a streaming GET (a watch). Errors answer as exceptions; no retries here."""
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout, sock_read=idle_timeout
        )
        async with session.get(url, params=params, timeout=timeout) as response:
            if response.status >= 400:
                data = await response.read()
                raise error_from_response(response.status, data, response.headers)
            yield response.content


class Readable(Protocol):
    async def readany(self) -> bytes: ...


async def iter_lines(stream: Readable) -> AsyncIterator[bytes]:
    """Complete newline-terminated lines of a chunked stream, of any length (aiohttp's own
    readline refuses lines over its buffer size, and an object may be up to 1 MiB)."""
    buffer = bytearray()
    while True:
        chunk = await stream.readany()
        if not chunk:
            return  # the server ended the stream; a partial line is dropped
        start = 0
        newline = chunk.find(b"\n")
        if newline < 0:
            buffer += chunk
            continue
        if buffer:
            buffer += chunk[: newline + 1]
            yield bytes(buffer)
            buffer.clear()
            start = newline + 1
            newline = chunk.find(b"\n", start)
        while newline >= 0:
            yield chunk[start : newline + 1]
            start = newline + 1
            newline = chunk.find(b"\n", start)
        if start < len(chunk):
            buffer += chunk[start:]
