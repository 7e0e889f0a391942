"""The agent's small I/O helpers on their own: /proc reading (PID reuse detection), port
assignment and environment, log rotation, and `--capacity` parsing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import wait_for

from keel.agent import _driver, _procfs
from keel.api.resources import InstanceSpec, PortSpec
from keel.cli.agent import parse_capacity


def test_start_ticks_tell_a_live_process_from_a_reused_pid() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ticks = _procfs.start_ticks(process.pid)
        assert ticks is not None
        assert _procfs.alive(process.pid, ticks)
        assert not _procfs.alive(process.pid, ticks + 1)  # same PID, another process
    finally:
        process.kill()
        process.wait()
    assert not _procfs.alive(process.pid, ticks)
    assert _procfs.start_ticks(process.pid) is None


def test_group_usage_counts_memory_of_the_whole_group() -> None:
    process = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30; wait"], start_new_session=True)
    try:
        # sh and its two sleeps
        wait_for("3 group members", lambda: len(_procfs.group_members(process.pid)) == 3)
        _, rss = _procfs.group_usage(process.pid)
        assert rss > 0
    finally:
        os.killpg(process.pid, 9)
        process.wait()


def test_ports_are_assigned_for_port_zero_and_exported() -> None:
    spec = InstanceSpec(
        command=["x"], ports=[PortSpec(name="http"), PortSpec(name="admin-api", port=9999)]
    )
    ports = _driver.assign_ports(spec, taken=())
    assert ports["admin-api"] == 9999 and 0 < ports["http"] < 65536
    env = _driver.process_env(spec, ports, {"KEEL_NODE": "n1"})
    assert env["PORT"] == str(ports["http"])
    assert env["PORT_HTTP"] == str(ports["http"])
    assert env["PORT_ADMIN_API"] == "9999"
    assert env["KEEL_NODE"] == "n1"


def test_log_rotation_keeps_three_backups_and_the_writer_keeps_appending(
    tmp_path: Path,
) -> None:
    log = tmp_path / "x.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for round_ in range(5):
            os.write(fd, f"round {round_}\n".encode() * 20)
            assert _driver.rotate_log(log, max_bytes=100, backups=3)
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after\n"  # appended at the new end, no hole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log", "x.log.1", "x.log.2", "x.log.3"]
    assert (tmp_path / "x.log.1").read_text().startswith("round 4")
    assert not _driver.rotate_log(log, max_bytes=100)


def test_capacity_parsing() -> None:
    capacity = parse_capacity("cpu=4,memory=8Gi")
    assert (capacity.cpu, capacity.memory) == ("4", "8Gi")
    assert parse_capacity("cpu=500m").memory.endswith("Ki")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_capacity("gpu=1")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_capacity("cpu=lots")
