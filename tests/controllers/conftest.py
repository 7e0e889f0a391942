"""Fixtures of the controller tests: the module's real API server (from tests/support) and a
controller-manager running the chosen controllers in this process under leader election."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from support import ApiServer

from keel.client import KeelClient
from keel.clock import SystemClock
from keel.controllers import build
from keel.runtime.controller import ControllerRunner
from keel.runtime.manager import ControllerManager


@pytest.fixture
async def client(apiserver: ApiServer) -> AsyncIterator[KeelClient]:
    async with apiserver.client("controller") as client:
        yield client


@pytest.fixture
async def run_manager(
    apiserver: ApiServer,
) -> AsyncIterator[Callable[[list[str]], ControllerManager]]:
    """Start a controller-manager (own client, own identity) with the named controllers."""
    started: list[tuple[asyncio.Task[None], KeelClient]] = []

    def start(names: list[str]) -> ControllerManager:
        client = apiserver.client("controller")
        clock = SystemClock()
        runner = ControllerRunner(client, clock=clock)
        for controller in build(names, runner.cache):
            runner.register(controller, workers=2)
        manager = ControllerManager(
            client, runner, identity=f"test-{uuid.uuid4().hex[:6]}", clock=clock
        )
        started.append((asyncio.get_running_loop().create_task(manager.run()), client))
        return manager

    yield start
    for task, client in started:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


@pytest.fixture
def name() -> str:
    """A name of this test's own (tests share the module's API server)."""
    return f"t-{uuid.uuid4().hex[:8]}"
