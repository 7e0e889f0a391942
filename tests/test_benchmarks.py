"""Smoke runs of the benchmarks: they run end to end and print their figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_store_benchmark_quick_run_prints_every_figure() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "store.py"),
            "--quick",
            "--backends",
            "sqlite,etcd1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    out = proc.stdout
    for backend in ("sqlite", "etcd1", "etcd1-stub", "sqlite3-bare"):
        assert f"\n{backend} " in out, out
    for workload in ("put", "cas", "txn4", "watch"):
        assert f" {workload} " in out, out
    assert "sqlite put@64:" in out
    assert "etcd1 put@64: client" in out
    assert "sqlite watch delivery: p50" in out


def test_api_benchmark_quick_run_prints_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "api.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    out = proc.stdout
    for line in (
        "raw store create",
        "API create (HTTP)",
        "raw store update (CAS)",
        "API update (HTTP PUT, OCC)",
        "of the raw store",
        "fan-out    100 watchers",
    ):
        assert line in out, out
    assert "(100.0% of" in out, out  # every watcher got every event


def test_runtime_benchmark_quick_run_prints_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "runtime.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    out = proc.stdout
    for line in (
        "cold start, 2,000 objects: every key reconciled once after",
        "informer restart, 2,000 objects: full relist",
        "failover after SIGKILL of the leader",
        "failover after SIGSTOP of the leader",
    ):
        assert line in out, out


def test_cluster_failover_benchmark_quick_run_prints_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cluster_failover.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = proc.stdout
    for line in (
        "node failover (baseline, one agent paused): median",
        "cluster Unreachable after its agents paused: median",
        "cluster failover, Immediate (replicas Ready elsewhere): median",
        "cluster failover, Graceful (replacements Ready, old replica gone): median",
        "x the node failover baseline",
    ):
        assert line in out, out


def test_registration_benchmark_quick_run_meets_its_goals() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "registration.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    out = proc.stdout
    for line in (
        "registration expiry, ttl 2 s, 3 trials: SIGKILL -> gone from Endpoints",
        "meets the goal <= ttl + 1 = 3 s",
        "baseline, SIGINT (deregisters at once)",
        "idle writes, 10 live registrations (ttl 2 s, 10 listed) over 6 s: 0 store writes",
    ):
        assert line in out, out


def failover_benchmark(*faults: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "failover.py"), "--quick", "--sections", "node",
         "--faults", ",".join(faults)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )  # fmt: skip
    out = proc.stdout
    for kind in ("ordinary ", "exclusive"):
        assert f"{kind} replacement of a deleted instance (baseline)" in out, out
        for fault in ("kill", "pause", "partition"):
            assert (f"{kind} node failover after {fault}" in out) == (fault in faults), out
    assert "x the baseline)" in out, out
    return out


@pytest.mark.usefixtures("netns_required")
def test_failover_benchmark_quick_run_prints_the_figures_of_the_faults_asked_for() -> None:
    # One fault here (a pause: the exclusive copy must fence itself); every fault in
    # test_failover_benchmark_quick_run_prints_every_figure (`make soak`), and each fault
    # against ordinary replicas in tests/e2e/test_node_failover.py.
    failover_benchmark("pause")


@pytest.mark.slow
@pytest.mark.usefixtures("netns_required")
def test_failover_benchmark_quick_run_prints_every_figure() -> None:
    failover_benchmark("kill", "pause", "partition")


def rollout_benchmark(*sizes: int) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rollout.py"), "--quick",
         *(["--sizes", ",".join(map(str, sizes))] if sizes else [])],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )  # fmt: skip
    return proc.stdout


def test_rollout_benchmark_quick_run_at_one_size_prints_every_figure() -> None:
    # Both quick sizes (3 and 6 replicas) under `make soak`.
    out = rollout_benchmark(3)
    for line in (
        "roll out, 3 replicas: median",
        "bad release, 3 replicas: first failure to rollback started: median",
        "bad release, 3 replicas: first failure to stable restored: median",
    ):
        assert line in out, out
    assert "6 replicas" not in out, out


@pytest.mark.slow
def test_rollout_benchmark_quick_run_prints_every_figure() -> None:
    out = rollout_benchmark()
    for line in (
        "roll out, 3 replicas: median",
        "roll out, 6 replicas: median",
        "bad release, 3 replicas: first failure to rollback started: median",
        "bad release, 6 replicas: first failure to stable restored: median",
    ):
        assert line in out, out


def test_ui_benchmark_quick_run_prints_first_paint_against_an_empty_store() -> None:
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is not installed: run `make setup`", pytrace=False)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ui.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    out = proc.stdout
    for line in ("empty store                          overview", "2,000 instances"):
        assert line in out, out
    assert "worst first paint:" in out, out


def test_scheduler_benchmark_quick_run_prints_every_figure() -> None:
    # Preemption runs last, after the other scenarios filled the nodes unevenly (spread over
    # zones of unequal sizes): the fill before it uses the room each node has left.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scheduler.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    out = proc.stdout
    assert "placements/s   p50 ms   p99 ms conflicts store binds/s" in out, out
    for scenario, count in (
        ("basic", 500),
        ("spread", 500),
        ("anti-affinity", 500),
        ("preemption", 50),
    ):
        assert re.search(rf"\nsqlite\s+1\s+{scenario}\s+{count}\s+50\s+[0-9,]+\s", out), out
