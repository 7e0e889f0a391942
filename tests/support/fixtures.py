"""The API-server fixtures, for every test folder (registered by tests/conftest.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.processes import ApiServer


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One real `keel apiserver` (sqlite) shared by a module's tests; each test keeps to names
    of its own."""
    with ApiServer(tmp_path_factory.mktemp("apiserver")) as server:
        yield server


@pytest.fixture
def own_apiserver(tmp_path: Path) -> Iterator[ApiServer]:
    """A real `keel apiserver` of this test's own, which it may pause, kill and restart."""
    server = ApiServer(tmp_path / "apiserver").start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)  # its state goes with the test
