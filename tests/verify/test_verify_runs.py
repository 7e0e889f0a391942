"""Whole `keel verify` runs: the smoke schedule passes on a namespace cluster, deliberately
broken clients are caught by their checkers, and nothing a run started outlives it, whether it
ends normally, on Ctrl-C, or by a crash followed by `keel verify --cleanup`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

needs_root = pytest.mark.usefixtures("netns_required")


def keel(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def verdicts(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {v["model"]: v for v in json.loads((run_dir / "verdicts.json").read_text())}


def processes_of(run_dir: Path) -> list[str]:
    """Command lines of live processes started for this run (their argv names the run dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(run_dir) in cmdline and state != "Z":
            found.append(cmdline)
    return found


def namespaces_with(prefix: str) -> list[str]:
    listed = subprocess.run(
        ["ip", "netns", "list"], check=False, capture_output=True, text=True
    ).stdout
    links = subprocess.run(["ip", "-o", "link"], check=False, capture_output=True, text=True).stdout
    return [line for line in (listed + links).splitlines() if prefix in line]


@needs_root
def test_smoke_schedule_passes_every_checker_and_leaves_nothing_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "smoke"
    result = keel("verify", "--smoke", "--seed", "1", "--out", str(run_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    judged = verdicts(run_dir)
    assert set(judged) == {
        "register (HTTP API)",
        "register (store client)",
        "watch",
        "fencing",
        "surge",
        "exclusive",
        "duplicates",
        "convergence",
    }
    assert all(v["valid"] for v in judged.values())
    schedule = json.loads((run_dir / "schedule.json").read_text())
    assert [f["kind"] for f in schedule["faults"]] == ["partition-agent", "kill", "pause"]
    nemesis = [
        json.loads(line)
        for line in (run_dir / "history.jsonl").read_text().splitlines()
        if '"nemesis"' in line
    ]
    assert [e["fault"] for e in nemesis if e["type"] == "end"] == [
        "partition-agent",
        "kill",
        "pause",
    ]
    assert judged["register (HTTP API)"]["stats"]["operations"] > 1000
    assert "PASS" in (run_dir / "report.html").read_text()
    assert processes_of(run_dir) == []
    assert not (run_dir / "fabric.json").exists()
    assert namespaces_with(schedule["prefix"]) == []


def test_deliberately_broken_clients_are_each_caught(tmp_path: Path) -> None:
    run_dir = tmp_path / "broken"
    result = keel(
        "verify",
        "--store",
        "sqlite",
        "--faults",
        "kill",
        "--duration",
        "10",
        "--seed",
        "9",  # at 10 s: one kill, of the controller-manager leader, while the clients run
        "--workloads",
        "register,watch,fencing,exclusive",
        "--broken",
        "register-stale",
        "--broken",
        "watch-skip",
        "--broken",
        "fencing-no-token",
        "--broken",
        "exclusive-by-hand",
        "--out",
        str(run_dir),
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    judged = verdicts(run_dir)
    assert not judged["register (HTTP API)"]["valid"]
    assert judged["watch"]["summary"] == "watch violation: gap"
    assert judged["fencing"]["summary"].startswith(
        "fencing violation: accepted without a fencing token"
    )
    assert not judged["exclusive"]["valid"]
    assert "by-hand" in json.dumps(judged["exclusive"]["counterexample"])
    assert judged["convergence"]["valid"], "the platform itself still converged"
    assert "FAIL" in (run_dir / "report.html").read_text()
    assert processes_of(run_dir) == []


@needs_root
def test_ctrl_c_and_a_crash_followed_by_cleanup_leave_nothing_behind(tmp_path: Path) -> None:
    for ending in ("interrupt", "crash"):
        run_dir = tmp_path / ending
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keel",
                "verify",
                "--duration",
                "120",
                "--seed",
                "3",
                "--out",
                str(run_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            state = run_dir / "fabric.json"
            wait_for("the run to build its hosts", state.exists, timeout=60)
            prefix = json.loads(state.read_text())["prefix"]
            wait_for(
                "the cluster's processes",
                lambda run_dir=run_dir: len(processes_of(run_dir)) >= 8,
                timeout=60,
            )
            if ending == "interrupt":
                process.send_signal(signal.SIGINT)
                assert process.wait(timeout=90) == 130
            else:
                process.kill()
                process.wait(timeout=10)
                assert namespaces_with(prefix), "a crashed run leaves its hosts behind"
                cleanup = keel("verify", "--cleanup", timeout=60)
                assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
                assert prefix in cleanup.stdout
            wait_for(
                "every process of the run to end",
                lambda run_dir=run_dir: processes_of(run_dir) == [],
                timeout=30,
            )
            assert namespaces_with(prefix) == []
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        time.sleep(0)
