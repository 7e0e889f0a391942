"""What long commands say while they wait: `Progress` rewrites one live line on a terminal
and prints only steps elsewhere; `readiness` decides when an applied object is ready and,
when it is not, says why in words that name the culprit."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import msgspec

from keel.api.registry import BY_KIND
from keel.api.resources import Deployment, Instance, Node, Service
from keel.cli._progress import Progress
from keel.cli._up_status import metrics_listens, write_metrics_targets
from keel.cli._wait import readiness


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_live_line_rewritten_in_place() -> None:
    out = io.StringIO()
    progress = Progress(out, prefix="keel up: ", tty=True)
    progress.step("waiting for 4 nodes Ready (0/4)")
    progress.update("waiting for 4 nodes Ready (0/4)")  # unchanged: nothing written
    progress.update("waiting for 4 nodes Ready (2/4)")
    progress.done("4/4 nodes Ready")
    assert out.getvalue() == (
        "\r\033[Kkeel up: waiting for 4 nodes Ready (0/4)"
        "\r\033[Kkeel up: waiting for 4 nodes Ready (2/4)"
        "\r\033[Kkeel up: 4/4 nodes Ready\n"
    )


def test_a_log_gets_steps_only_and_a_rare_still_waiting_line() -> None:
    out = io.StringIO()
    clock = Clock()
    progress = Progress(out, tty=False, quiet_interval=30.0, clock=clock)
    progress.step("waiting for 4 nodes Ready (0/4)")
    for second in range(1, 40):
        clock.now = second
        progress.update(f"waiting for 4 nodes Ready ({min(second // 10, 3)}/4)")
    progress.done("4/4 nodes Ready")
    assert out.getvalue().splitlines() == [
        "waiting for 4 nodes Ready (0/4)",
        "waiting for 4 nodes Ready (3/4)",  # at 30 s, the one "still waiting" line
        "4/4 nodes Ready",
    ]
    assert "\r" not in out.getvalue() and "\033" not in out.getvalue()


def deployment(**status: Any) -> Deployment:
    return msgspec.convert(
        {
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 1},
            "spec": {"replicas": 2, "template": {"spec": {"command": ["web"]}}},
            "status": {"observedGeneration": 1, **status},
        },
        Deployment,
    )


def instance(name: str, *, node: str = "", owner: str = "d1", **status: Any) -> Instance:
    return msgspec.convert(
        {
            "kind": "Instance",
            "metadata": {
                "name": name,
                "namespace": "default",
                "ownerReferences": [
                    {"apiVersion": "keel.dev/v1", "kind": "Deployment", "name": "web", "uid": owner}
                ],
            },
            "spec": {"command": ["web"], "nodeName": node},
            "status": status,
        },
        Instance,
    )


DEPLOYMENTS = BY_KIND["Deployment"]


def test_a_complete_rollout_is_ready() -> None:
    done = deployment(
        phase="Complete", replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2
    )
    assert readiness(DEPLOYMENTS, done).ready


def test_a_stuck_rollout_names_the_instances_and_why() -> None:
    stuck = deployment(
        phase="Progressing",
        replicas=2,
        updatedReplicas=2,
        readyReplicas=1,
        availableReplicas=1,
        conditions=[{"type": "Progressing", "status": "True", "message": "rolling out revision 1"}],
    )
    ready = [{"type": "Ready", "status": "True"}]
    instances = [
        instance("web-0", node="n1", phase="Running", conditions=ready),
        instance("web-1", node="n2", phase="Running", message="exited with code 1"),
        instance(
            "web-2",
            phase="Pending",
            conditions=[{"type": "Scheduled", "status": "False", "message": "no node fits"}],
        ),
        instance("other-0", node="n1", owner="d2", phase="Running"),
    ]
    verdict = readiness(DEPLOYMENTS, stuck, instances)
    assert not verdict.ready and not verdict.failed
    assert verdict.summary == "deployment/web 1/2 available"
    assert "Progressing: rolling out revision 1" in verdict.reason
    assert "instance web-1 is Running on n2: exited with code 1" in verdict.reason
    assert "instance web-2 is Pending: unschedulable: no node fits" in verdict.reason
    assert "web-0" not in verdict.reason and "other-0" not in verdict.reason


def test_a_failed_rollout_fails_at_once_with_its_condition() -> None:
    failed = deployment(
        phase="Failed",
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "revision 1 made no progress for 600 s",
            }
        ],
    )
    verdict = readiness(DEPLOYMENTS, failed)
    assert verdict.failed and not verdict.ready
    assert "made no progress for 600 s" in verdict.reason


def test_nodes_must_be_ready_and_other_kinds_only_exist() -> None:
    def node(status: str) -> Node:
        conditions = [{"type": "Ready", "status": status, "reason": "LeaseExpired",
                       "message": "node lease gone"}]  # fmt: skip
        return msgspec.convert(
            {"kind": "Node", "metadata": {"name": "n1"}, "status": {"conditions": conditions}},
            Node,
        )

    nodes = BY_KIND["Node"]
    assert readiness(nodes, node("True")).ready
    verdict = readiness(nodes, node("Unknown"))
    assert not verdict.ready
    assert verdict.reason == "node n1 is not Ready (Ready=Unknown) (LeaseExpired: node lease gone)"
    service = msgspec.convert(
        {"kind": "Service", "metadata": {"name": "s", "namespace": "default"}, "spec": {}},
        Service,
    )
    assert readiness(BY_KIND["Service"], service).ready
    missing = readiness(BY_KIND["Service"], None)
    assert not missing.ready and "does not exist" in missing.reason


def test_keel_up_keeps_its_metrics_ports_across_runs(tmp_path: Path) -> None:
    names = ["controller-manager", "scheduler", "agent/node-1-1"]
    first = metrics_listens(tmp_path, names)
    assert len(set(first.values())) == 3
    assert all(listen.startswith("127.0.0.1:") for listen in first.values())
    path = write_metrics_targets(tmp_path, first, "https://127.0.0.1:7070")
    groups = json.loads(path.read_text())
    assert groups[0] == {
        "targets": ["127.0.0.1:7070"],
        "labels": {"job": "keel-apiserver", "component": "apiserver", "__scheme__": "https"},
    }
    assert groups[3] == {
        "targets": [first["agent/node-1-1"]],
        "labels": {"job": "keel-agent", "component": "agent/node-1-1", "node": "node-1-1"},
    }
    assert metrics_listens(tmp_path, names) == first  # the next run: same ports
    with socket.socket() as taken:  # unless one is taken meanwhile
        host, port = first["scheduler"].split(":")
        taken.bind((host, int(port)))
        again = metrics_listens(tmp_path, names)
    assert again["scheduler"] != first["scheduler"]
    assert again["controller-manager"] == first["controller-manager"]
