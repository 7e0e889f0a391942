"""`AppTransport`: a `keel.client.HttpTransport` that hands each request to an ASGI app (the
real API server's) in the same event loop, with no sockets.

The client above it runs unchanged (retries, decoding, watch resumption), and so does the
server below it (validation, admission, fencing, the watch cache). Streaming answers (watches)
are delivered chunk by chunk as the app sends them; closing the stream tells the app the
client went away, as a dropped connection would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

from keel.client import HttpRequest, HttpResponse, ResponseStream, TransportError

__all__ = ["AppTransport", "AsgiApp"]

Message = MutableMapping[str, Any]
AsgiApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


class _Exchange:
    """One request running in the app: what it sent back so far, and the disconnect."""

    def __init__(self, app: AsgiApp, request: HttpRequest) -> None:
        self._messages: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._disconnected = asyncio.Event()
        self._body_sent = False
        self._request = request
        self._done = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self._task = asyncio.get_running_loop().create_task(self._run(app, _scope(request)))

    async def _run(self, app: AsgiApp, scope: Message) -> None:
        try:
            await app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the app crashed: the connection breaks mid-answer
            self._messages.put_nowait(exc)
        else:
            self._messages.put_nowait({"type": "http.response.body", "more_body": False})

    async def _receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._request.body or b"", "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._disconnected.is_set():
            raise OSError("the client closed the connection")
        self._messages.put_nowait(message)

    async def _next(self) -> Message:
        item = await self._messages.get()
        if isinstance(item, BaseException):
            raise TransportError(f"the server failed mid-answer: {item!r}", sent=True) from item
        return item

    async def start(self) -> None:
        """Wait for the status line and headers."""
        message = await self._next()
        if message["type"] != "http.response.start":
            raise TransportError(f"the server answered {message['type']!r} first", sent=True)
        self.status = int(message["status"])
        self.headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in message.get("headers", [])
        }

    async def readany(self) -> bytes:
        """The next body chunk; b"" once the answer is complete."""
        while not self._done:
            message = await self._next()
            if message["type"] != "http.response.body":
                continue
            if not message.get("more_body", False):
                self._done = True
            chunk = bytes(message.get("body", b""))
            if chunk:
                return chunk
        return b""

    async def read(self) -> bytes:
        chunks = []
        while chunk := await self.readany():
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


def _scope(request: HttpRequest) -> Message:
    parts = urlsplit(request.url)
    query = parts.query
    if request.params:
        extra = urlencode(dict(request.params))
        query = f"{query}&{extra}" if query else extra
    host = parts.hostname or "sim"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    headers = [(b"host", f"{host}:{port}".encode())]
    for name, value in (request.headers or {}).items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    if request.body is not None:
        headers.append((b"content-length", str(len(request.body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": parts.scheme or "http",
        "path": parts.path or "/",
        "raw_path": (parts.path or "/").encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": (host, port),
        "state": {},
    }


class _Stream:
    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    @property
    def status(self) -> int:
        return self._exchange.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._exchange.headers

    async def read(self) -> bytes:
        return await self._exchange.read()

    async def readany(self) -> bytes:
        return await self._exchange.readany()


class AppTransport:
    """Answers every request from `app`, in this event loop."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def send(self, request: HttpRequest) -> HttpResponse:
        exchange = _Exchange(self.app, request)
        try:
            await exchange.start()
            body = await exchange.read()
        finally:
            await exchange.close()
        return HttpResponse(exchange.status, exchange.headers, body)

    @asynccontextmanager
    async def stream(
        self, request: HttpRequest, *, idle_timeout: float | None
    ) -> AsyncIterator[ResponseStream]:
        exchange = _Exchange(self.app, request)
        try:
            await exchange.start()
            yield _IdleLimited(exchange, idle_timeout)
        finally:
            await exchange.close()

    async def aclose(self) -> None:
        return None


class _IdleLimited(_Stream):
    """A stream whose reads fail after `idle_timeout` seconds without data, like a socket
    read timeout."""

    def __init__(self, exchange: _Exchange, idle_timeout: float | None) -> None:
        super().__init__(exchange)
        self._idle_timeout = idle_timeout

    async def readany(self) -> bytes:
        if self._idle_timeout is None:
            return await super().readany()
        try:
            return await asyncio.wait_for(super().readany(), self._idle_timeout)
        except TimeoutError as exc:
            raise TransportError("no data within the idle timeout", sent=True) from exc
