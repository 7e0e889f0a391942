"""Fixtures of the scheduler tests: a fresh real API server (sqlite) per test, since Nodes
are cluster-wide and each test wants only its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from controllers.keel_processes import ApiServer

from keel.client import KeelClient


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "apiserver").start()
    yield server
    server.stop()


@pytest.fixture
async def admin(apiserver: ApiServer) -> AsyncIterator[KeelClient]:
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"
