"""Helpers for the client tests: a scriptable aiohttp.web server on loopback standing in for
the API server where a fault must be produced on demand, and a virtual sleep."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from aiohttp import web

from keel.api.resources import Node, ObjectMeta, Status

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BASE = "/apis/keel.dev/v1"


def node(name: str, rv: int | str) -> Node:
    return Node(kind="Node", metadata=ObjectMeta(name=name, resource_version=str(rv)))


def node_json(name: str, rv: int | str) -> Any:
    return msgspec.to_builtins(node(name, rv))


def status_body(code: int, reason: str, message: str = "", **details: Any) -> bytes:
    body: dict[str, Any] = msgspec.to_builtins(Status(code=code, reason=reason, message=message))
    if details:
        body["details"] = details
    return json.dumps(body).encode()


def status_response(
    code: int, reason: str, message: str = "", headers: dict[str, str] | None = None, **details: Any
) -> web.Response:
    return web.Response(
        status=code,
        body=status_body(code, reason, message, **details),
        content_type="application/json",
        headers=headers,
    )


def event_line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def bookmark_line(rv: int) -> bytes:
    return event_line(
        "BOOKMARK",
        {"kind": "Node", "apiVersion": "keel.dev/v1", "metadata": {"resourceVersion": str(rv)}},
    )


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


def drop(request: web.Request) -> None:
    """Cut the connection without finishing the response, as a crashed server would."""
    assert request.transport is not None
    request.transport.abort()


@asynccontextmanager
async def serve(routes: Mapping[tuple[str, str], Handler]) -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 (any free port) answering `routes`; yields its URL."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
