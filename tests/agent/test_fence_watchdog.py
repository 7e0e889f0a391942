"""The fence watchdog keeps an exclusive instance single even when its agent cannot act: a
paused (SIGSTOP) or killed agent renews nothing, the control plane replaces the instance once
the node lease has expired, and by then the watchdog (a process of its own) has already
stopped the old copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import ApiServer, wait_for

from keel.agent._fence import write_deadline
from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    TemplateMeta,
)
from keel.verify import check_exclusive, load_history

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(600)"]


def watchdog(deadline_file: Path, *command: str, grace: float = 1.0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-m", "keel.agent._fence", "--deadline-file", str(deadline_file),
         "--grace", str(grace), "--", *command],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip


def test_the_workload_runs_while_the_deadline_is_ahead_and_its_exit_code_passes_through(
    tmp_path: Path,
) -> None:
    deadline = tmp_path / "fence-deadline"
    write_deadline(deadline, time.monotonic() + 60)
    proc = watchdog(deadline, PY, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)")
    assert proc.wait(timeout=10) == 3


def test_a_lapsed_deadline_stops_the_workload_within_its_grace(tmp_path: Path) -> None:
    deadline = tmp_path / "fence-deadline"
    write_deadline(deadline, time.monotonic() + 60)
    proc = watchdog(deadline, *SLEEPER, grace=1.0)
    try:
        time.sleep(0.5)
        assert proc.poll() is None, "the deadline is ahead: the workload runs"
        write_deadline(deadline, time.monotonic() - 1)
        lapsed_at = time.monotonic()
        proc.wait(timeout=5)
        assert time.monotonic() - lapsed_at < 1.0, "SIGTERM ends a sleeper at once"
        assert b"node lease was not renewed in time" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_workload_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    deadline = tmp_path / "fence-deadline"
    write_deadline(deadline, time.monotonic() + 0.5)
    stubborn = [PY, "-c", "import signal,time; signal.signal(15, signal.SIG_IGN); time.sleep(600)"]
    proc = watchdog(deadline, *stubborn, grace=1.0)
    try:
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_without_a_deadline_the_workload_is_never_started(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = watchdog(tmp_path / "missing", PY, "-c", f"open({str(marker)!r}, 'w')")
    assert proc.wait(timeout=10) == 75
    assert not marker.exists()


def test_a_paused_agent_cannot_leave_its_exclusive_copy_running_beside_the_replacement(
    tmp_path: Path,
) -> None:
    log = tmp_path / "exclusive.jsonl"
    with ApiServer(tmp_path / "api", nodes=["n1", "n2"]) as api:
        manager = api.controller_manager("cm-1", "--controllers", "deployment,nodelifecycle")
        scheduler = api.scheduler("scheduler-1")
        agents = {
            node: api.agent(node, tmp_path / "agents" / node, "--capacity", "cpu=4,memory=8Gi")
            for node in ("n1", "n2")
        }
        for agent in agents.values():
            agent.start()
        try:
            client = api.sync_client()
            client.create(
                Deployment(
                    metadata=ObjectMeta(name="solo", namespace="default"),
                    spec=DeploymentSpec(
                        replicas=1,
                        template=InstanceTemplate(
                            metadata=TemplateMeta(labels={"app": "solo"}),
                            spec=InstanceSpec(
                                command=[PY, "-m", "keel.verify.probe", "--log", str(log)],
                                exclusive=True,
                                termination_grace_period_seconds=2,
                            ),
                        ),
                    ),
                )
            )

            def node_running() -> str:
                for inst in client.list(Instance, namespace="default").items:
                    if inst.status.phase == "Running" and not inst.metadata.deletion_timestamp:
                        return inst.spec.node_name
                return ""

            first = wait_for("the exclusive instance to run", node_running, timeout=30)
            paused = agents[first]
            os.kill(paused.pid, signal.SIGSTOP)
            try:
                wait_for(
                    "the replacement to run on the other node",
                    lambda: node_running() not in ("", first),
                    timeout=30,
                )
                wait_for(
                    "the replacement's copy to log its start",
                    lambda: log.read_text().count('"start"') >= 2,
                )
            finally:
                os.kill(paused.pid, signal.SIGCONT)
        finally:
            for agent in agents.values():
                agent.stop()
            scheduler.stop()
            manager.stop()
    verdict = check_exclusive(load_history(log))
    assert verdict.valid, verdict.explanation
    copies = [json.loads(line) for line in log.read_text().splitlines()]
    stops = [c for c in copies if c["type"] == "stop" and c["node"] == first]
    assert stops, "the paused agent's copy was stopped by its watchdog, not left running"
    print(f"\nexclusive handover after SIGSTOP of its agent: {verdict.summary}")
