"""Shared fixtures: real etcd clusters on loopback, stores of every backend, and (from
tests/support) real API servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from keel.dev.etcd_cluster import EtcdCluster
from keel.store import Store, open_store

pytest_plugins = ["support.fixtures"]

BACKENDS = ["memory", "sqlite", "etcd1", "etcd3"]


@pytest.fixture(scope="session")
def etcd_cluster_1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single-member etcd shared by the session; tests keep to their own key prefix."""
    cluster = EtcdCluster.start(tmp_path_factory.mktemp("etcd1"), 1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def etcd_cluster_3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A 3-member etcd shared by the session; tests that kill members use new_etcd_cluster."""
    cluster = EtcdCluster.start(tmp_path_factory.mktemp("etcd3"), 3)
    yield cluster
    cluster.stop()


@pytest.fixture
def new_etcd_cluster(tmp_path: Path) -> Iterator[Callable[[int], EtcdCluster]]:
    """Start a private cluster of N members, stopped when the test ends."""
    started: list[EtcdCluster] = []

    def start(members: int = 3) -> EtcdCluster:
        cluster = EtcdCluster.start(tmp_path / f"etcd-{len(started)}", members)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix of this test's own, so tests can share an etcd cluster."""
    return f"/t/{uuid.uuid4().hex[:12]}/".encode()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    backend: str = request.param
    if backend == "memory":
        return "memory://?progress_interval=1"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'keel.db'}?progress_interval=1"
    cluster: EtcdCluster = request.getfixturevalue(
        "etcd_cluster_1" if backend == "etcd1" else "etcd_cluster_3"
    )
    return cluster.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def _netns_missing() -> str | None:
    """Why network-namespace tests cannot run here, or None. They are not skipped: on a
    machine without them the suite fails, saying what to install."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "network namespaces need root on Linux (CI runs as root)"
    missing = [tool for tool in ("ip", "tc", "strace") if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed: run `make setup` (its tools target installs them)"
        )
    if subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode:
        return "`ip netns list` fails here: network namespaces are unavailable"
    return None


@pytest.fixture
def netns_required() -> None:
    """Tests that build hosts in network namespaces (partitions, slow disks) need root, ip,
    tc and strace: fail with what to install rather than skip."""
    missing = _netns_missing()
    if missing is not None:
        pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="module")
def browser_required() -> None:
    """The dashboard's browser tests need Debian's chromium and Playwright: fail with what to
    install rather than skip."""
    from support.browser import missing

    reason = missing()
    if reason is not None:
        pytest.fail(reason, pytrace=False)
