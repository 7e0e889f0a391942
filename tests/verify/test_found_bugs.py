"""Bugs `keel verify` found in Keel, kept as regressions: the history that showed each one
(still judged a violation by its checker) and the seeded run that found it (slow: `make soak`).

- Seed 5 of `keel verify --store sqlite --faults kill,pause --duration 60`: a 14 s SIGSTOP of
  the agent running the exclusive instance. The node lease lapsed, the instance was replaced
  on another node, and the paused agent's copy, which nothing could stop, ran on beside its
  replacement. Fixed by the fence watchdog (keel.agent._fence); tests/agent/
  test_fence_watchdog.py checks the fix with real processes in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel.verify import check_exclusive, load_history

HISTORIES = Path(__file__).parent / "histories"


def test_the_paused_agent_history_is_still_an_exclusive_violation() -> None:
    verdict = check_exclusive(load_history(HISTORIES / "exclusive-paused-agent-seed5.jsonl"))
    assert not verdict.valid
    assert verdict.summary.startswith("exclusive violation")
    nodes = {event["node"] for event in verdict.counterexample}
    assert len(nodes) == 2, "two copies on two nodes at once"


@pytest.mark.slow
def test_the_seed_that_found_the_paused_agent_bug_now_passes(tmp_path: Path) -> None:
    run_dir = tmp_path / "seed5"
    result = subprocess.run(
        [sys.executable, "-m", "keel", "verify", "--store", "sqlite", "--faults", "kill,pause",
         "--duration", "60", "--seed", "5", "--out", str(run_dir)],
        check=False, capture_output=True, text=True, timeout=600, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    verdicts = {v["model"]: v for v in json.loads((run_dir / "verdicts.json").read_text())}
    assert verdicts["exclusive"]["valid"]
    schedule = json.loads((run_dir / "schedule.json").read_text())
    assert {"kind": "pause", "target": "exclusive-agent"}.items() <= schedule["faults"][0].items()
