"""Fixtures of the scheduler tests: a fresh real API server (sqlite) per test, since Nodes
are cluster-wide and each test wants only its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from support import ApiServer

from keel.client import KeelClient


@pytest.fixture
def apiserver(own_apiserver: ApiServer) -> ApiServer:
    return own_apiserver


@pytest.fixture
async def admin(apiserver: ApiServer) -> AsyncIterator[KeelClient]:
    async with apiserver.client() as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"
