"""Boot order, in process: /readyz and reads wait for the watch cache; 405 for odd methods.

In process (uvicorn on a free port) because the state before the cache syncs is too short
to catch from outside.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import uvicorn

from keel.api.auth import TokenFile
from keel.api.server import ApiServer
from keel.store import open_store


@pytest.fixture
async def unstarted(tmp_path: Path) -> AsyncIterator[tuple[ApiServer, str, str]]:
    token = TokenFile.create(tmp_path / "tokens.csv")
    store = await open_store(f"sqlite:///{tmp_path / 'k.db'}")
    api = ApiServer(store, TokenFile.load(tmp_path / "tokens.csv"), ready_timeout=0.2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    try:
        yield api, f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        await task
        await api.stop()
        await store.close()
        sock.close()


async def test_readyz_is_503_and_reads_wait_until_the_cache_is_synced(
    unstarted: tuple[ApiServer, str, str],
) -> None:
    api, url, token = unstarted
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 503
        async with http.get(f"{url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{url}/apis/keel.dev/v1/namespaces") as r:
            assert r.status == 503
            body = await r.json()
            assert body["reason"] == "ServiceUnavailable"
            assert r.headers["Retry-After"] == "1"
        await api.start()
        await asyncio.wait_for(api.ready.wait(), 10)
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{url}/apis/keel.dev/v1/namespaces") as r:
            assert r.status == 200
            names = [n["metadata"]["name"] for n in (await r.json())["items"]]
            assert names == ["default", "keel-node-lease", "keel-system"]


async def test_unsupported_methods_are_405_statuses(unstarted: tuple[ApiServer, str, str]) -> None:
    api, url, token = unstarted
    await api.start()
    await asyncio.wait_for(api.ready.wait(), 10)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{url}/apis/keel.dev/v1/namespaces/default"
    async with aiohttp.ClientSession(headers=headers) as http:
        for method, path in (
            ("DELETE", f"{base}/deployments"),
            ("POST", f"{url}/apis/keel.dev/v1/deployments"),
            ("PUT", f"{base}/instances/x/binding"),
            ("GET", f"{base}/leases/x/renew"),
            ("POST", f"{url}/version"),
        ):
            async with http.request(method, path) as r:
                assert r.status == 405, (method, path)
                assert (await r.json())["reason"] == "MethodNotAllowed"
