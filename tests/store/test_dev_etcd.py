"""etcd provisioning and the local cluster launcher (`keel dev etcd`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_for

from keel.dev import etcd_provision
from keel.dev.etcd_cluster import EtcdCluster


def test_provisioned_etcd_is_at_least_3_5() -> None:
    binary = etcd_provision.ensure_etcd()
    version = etcd_provision.etcd_version(binary)
    assert version is not None
    assert version >= (3, 5, 0)


def test_too_old_or_broken_etcd_on_path_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "etcd"
    fake.write_text("#!/bin/sh\necho 'etcd Version: 3.4.23'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("KEEL_ETCD", str(fake))
    found = etcd_provision.find_etcd()
    assert found != str(fake)
    assert found is None or etcd_provision.etcd_version(found) >= (3, 5, 0)  # type: ignore[operator]


def test_mirrors_come_from_the_machines_apt_configuration() -> None:
    mirrors = etcd_provision.debian_mirrors()
    assert mirrors, "this machine has a configured Debian mirror"
    assert all("security" not in m for m in mirrors)
    configured = "".join(
        p.read_text() for p in Path("/etc/apt").rglob("*") if p.is_file() and "sources" in p.name
    )
    assert all(m in configured for m in mirrors)


def test_three_member_cluster_survives_losing_its_leader(tmp_path: Path) -> None:
    with EtcdCluster.start(tmp_path, 3) as cluster:
        pids = [m.pid for m in cluster.members]
        leader = cluster.leader_index()
        cluster.kill_member(leader)
        assert cluster.leader_index() != leader
        cluster.restart_member(leader)
        assert cluster.members[leader].running
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_keel_dev_etcd_runs_a_cluster_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "keel", "dev", "etcd", "--members", "3", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "etcd://" in first
        member_pids = [int(proc.stdout.readline().split("pid ")[1].split(",")[0]) for _ in range(3)]
        for pid in member_pids:
            os.kill(pid, 0)  # alive
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        wait_for(
            f"the etcd members {member_pids} to exit",
            lambda: not [p for p in member_pids if Path(f"/proc/{p}").exists()],
            timeout=10,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
