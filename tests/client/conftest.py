"""Fixtures of the client tests: virtual time, and real API server subprocesses."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_fakes import VirtualSleep
from client_server import ApiServerProcess


@pytest.fixture
def virtual_sleep() -> VirtualSleep:
    return VirtualSleep()


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServerProcess]:
    """One real API server (sqlite) shared by a module's tests; each test uses its own names."""
    server = ApiServerProcess(tmp_path_factory.mktemp("apiserver"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_apiserver(tmp_path: Path) -> Iterator[ApiServerProcess]:
    """A real API server of this test's own, which it may stop and restart."""
    server = ApiServerProcess(tmp_path / "apiserver")
    server.start()
    yield server
    server.stop(signal.SIGKILL)
