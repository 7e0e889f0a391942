"""The client's seam, as httpx draws it: a `HttpTransport` moves one request and its answer;
everything above it (retries, decoding, watch resumption) is the client's and always runs.

`AiohttpTransport` speaks HTTP(S) over keep-alive connections; `keel.sim` plugs in a transport
that answers from the real API server app in memory. `Requests` wraps a transport with the
retry rules: reads are repeated after connection failures and 502/503/504; every request is
repeated after 429 with the server's Retry-After (bounded); a write that may have reached the
server is never repeated: it fails with `ApiUnavailable(ambiguous=True)`.
"""

from __future__ import annotations

import random
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from keel.client._backoff import RETRYABLE_READ_STATUSES, Backoff, may_retry_unavailable
from keel.client._errors import (
    ApiError,
    ApiUnavailable,
    TooManyRequests,
    error_from_response,
    is_budget_refusal,
)

__all__ = [
    "AiohttpTransport",
    "HttpRequest",
    "HttpResponse",
    "HttpTransport",
    "Requests",
    "ResponseStream",
    "RetryPolicy",
    "TransportError",
    "iter_lines",
]

Sleep = Callable[[float], Awaitable[None]]
SSLArg = _ssl.SSLContext | bool | None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries before it gives up on a request."""

    backoff: Backoff = field(default_factory=Backoff)
    max_unavailable_retries: int = 5  # reads after connection errors / 502-504
    max_throttle_retries: int = 8  # 429 answers, any verb
    max_retry_after: float = 30.0  # a longer Retry-After is raised, not waited for


# ------------------------------------------------------------------------- the seam


@dataclass(frozen=True)
class HttpRequest:
    """One request: `url` is absolute (`https://host:port/path`), `params` its query."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class HttpResponse:
    """A complete answer; `headers` are keyed in lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class ResponseStream(Protocol):
    """The open body of a streaming answer (a watch): `readany()` returns the next bytes
    that arrived, b"" once the server ended the stream."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    async def readany(self) -> bytes: ...


class TransportError(Exception):
    """No answer. `sent` says whether the request may have reached the server (then a
    write's outcome is unknown); `retryable` is False for faults a retry cannot fix (a
    certificate the client does not trust)."""

    def __init__(self, message: str, *, sent: bool, retryable: bool = True) -> None:
        super().__init__(message)
        self.sent = sent
        self.retryable = retryable


class HttpTransport(Protocol):
    """Moves requests and answers; never retries, never decodes, never raises for a status."""

    async def send(self, request: HttpRequest) -> HttpResponse: ...

    def stream(
        self, request: HttpRequest, *, idle_timeout: float | None
    ) -> AbstractAsyncContextManager[ResponseStream]: ...

    async def aclose(self) -> None: ...


# ------------------------------------------------------------------------- HTTP over aiohttp


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransportError(repr(exc), sent=True) from exc

    async def readany(self) -> bytes:
        try:
            return await self._response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransportError(repr(exc), sent=True) from exc


class AiohttpTransport:
    """HTTP(S) over one aiohttp session with keep-alive connections, opened on first use."""

    def __init__(
        self,
        *,
        ssl: SSLArg = None,
        timeout: float = 30.0,
        connections: int = 100,
    ) -> None:
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
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                # Below uvicorn's 5 s keep-alive, so an idle pooled connection is dropped by
                # us before the server closes it under a request we are sending.
                keepalive_timeout=4.0,
                ssl=self._ssl if self._ssl is not None else True,
            )
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            # aiohttp silently resends PUT and DELETE once when a kept-alive connection
            # closes under them; the outcome of the first send is unknown, so that decision
            # belongs to RetryPolicy (aiohttp's own test client turns it off the same way).
            session._retry_connection = False
            self._session = session
        return self._session

    async def aclose(self) -> None:
        self.closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, request: HttpRequest) -> HttpResponse:
        session = self._get_session()
        try:
            async with session.request(
                request.method,
                request.url,
                params=request.params,
                data=request.body,
                headers=request.headers,
            ) as response:
                body = await response.read()
                headers = {k.lower(): v for k, v in response.headers.items()}
                return HttpResponse(response.status, headers, body)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(str(exc), sent=False, retryable=False) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError(str(exc), sent=False) from exc  # never connected
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransportError(repr(exc), sent=True) from exc

    @asynccontextmanager
    async def stream(
        self, request: HttpRequest, *, idle_timeout: float | None
    ) -> AsyncIterator[ResponseStream]:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout, sock_read=idle_timeout
        )
        try:
            async with session.request(
                request.method,
                request.url,
                params=request.params,
                headers=request.headers,
                timeout=timeout,
            ) as response:
                yield _AiohttpStream(response)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(str(exc), sent=False, retryable=False) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportError(str(exc), sent=False) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransportError(repr(exc), sent=True) from exc


# ------------------------------------------------------------------------- retries


class Requests:
    """Sends requests through a transport with the client's headers (bearer token
    included), maps error answers to exceptions and applies `RetryPolicy`."""

    def __init__(
        self,
        server: str,
        transport: HttpTransport,
        *,
        token: str | None,
        retry: RetryPolicy,
        sleep: Sleep,
        rng: random.Random,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server: expected an http(s) URL, got {server!r}")
        self.server = server.rstrip("/")
        self.transport = transport
        self.headers = {"Accept": "application/json", "User-Agent": "keel-client/0.1"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.retry = retry
        self.sleep = sleep
        self.rng = rng

    async def close(self) -> None:
        await self.transport.aclose()

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
        send_headers = {**self.headers, **headers} if headers else dict(self.headers)
        if body is not None:
            send_headers["Content-Type"] = content_type
        request = HttpRequest(method, url, params, send_headers, body)
        unavailable = 0
        throttled = 0
        while True:
            try:
                response = await self.transport.send(request)
            except TransportError as exc:
                if exc.sent and not may_retry_unavailable(method, sent=True):
                    raise ApiUnavailable(
                        f"{method} {url}: no answer, the write may or may not have been "
                        f"applied: {exc}",
                        ambiguous=True,
                    ) from exc
                # Never sent, or a read: it may be sent again.
                if unavailable >= self.retry.max_unavailable_retries or not exc.retryable:
                    raise ApiUnavailable(f"{method} {url}: {exc}", ambiguous=False) from exc
                await self.sleep(self.retry.backoff.delay(unavailable, self.rng))
                unavailable += 1
                continue
            if response.status < 400:
                return response.body
            error = error_from_response(response.status, response.body, response.headers)
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
            # Admission rejects before doing anything, so any verb may be sent again. A
            # refused eviction is the caller's to retry: it says why, and for how long no one
            # knows.
            if (
                is_budget_refusal(error)
                or throttled >= self.retry.max_throttle_retries
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
    ) -> AsyncIterator[ResponseStream]:
        """Open a streaming GET (a watch). Errors answer as exceptions; no retries here."""
        async with self.transport.stream(
            HttpRequest("GET", url, params, self.headers), idle_timeout=idle_timeout
        ) as response:
            if response.status >= 400:
                data = await response.read()
                raise error_from_response(response.status, data, response.headers)
            yield response


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
