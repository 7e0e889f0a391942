"""Priority and graceful preemption with real processes: `keel apiserver`, `keel
controller-manager`, `keel scheduler` and one `keel agent` whose Node is full of a
low-priority Deployment. A high-priority Deployment arrives: the scheduler nominates the
Node, evicts one low replica through the eviction API (its process gets its grace period),
and binds the newcomer there; the low Deployment's replacement cannot preempt it back."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent.agent_harness import group_alive, kill_group
from support import AgentProcess, ApiServer, wait_for

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    ResourceList,
    RollingUpdate,
    Strategy,
    TemplateMeta,
)
from keel.client import SyncClient

PY = sys.executable
# Ignores SIGTERM: only the SIGKILL after its grace period ends it.
STUBBORN = [PY, "-c", "import signal,time; signal.signal(15, signal.SIG_IGN); time.sleep(600)"]
GRACE = 2


@pytest.fixture
def one_full_node(tmp_path: Path) -> Iterator[tuple[ApiServer, AgentProcess]]:
    with ApiServer(tmp_path / "api", nodes=["n1"]) as api:
        manager = api.controller_manager(
            "cm-1", "--controllers", "deployment,nodelifecycle", "--lease-ttl", "2"
        )
        scheduler = api.scheduler("scheduler-1", "--lease-ttl", "2")
        agent = api.agent("n1", tmp_path / "n1", "--capacity", "cpu=1,memory=8Gi").start()
        try:
            yield api, agent
        finally:
            for process in (agent, scheduler, manager):
                process.stop(timeout=40)
            for path in (agent.state_dir / "instances").glob("*.json"):
                kill_group(json.loads(path.read_text()).get("pid", 0))


def deployment(name: str, replicas: int, priority: int) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=DeploymentSpec(
            replicas=replicas,
            priority=priority,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": name}),
                spec=InstanceSpec(
                    command=STUBBORN,
                    resources=ResourceList(cpu="500m", memory="64Mi"),
                    termination_grace_period_seconds=GRACE,
                ),
            ),
            strategy=Strategy(rolling_update=RollingUpdate(max_unavailable=1)),
        ),
    )


def instances(client: SyncClient, app: str) -> list[Instance]:
    found = client.list(Instance, namespace="default", label_selector={"app": app}).items
    return [i for i in found if not i.metadata.deletion_timestamp]


def running(client: SyncClient, app: str) -> list[Instance]:
    return [i for i in instances(client, app) if i.status.phase == "Running"]


def pid_of(agent: AgentProcess, name: str) -> int:
    path = agent.state_dir / "instances" / f"default_{name}.json"
    try:
        return int(json.loads(path.read_text()).get("pid", 0))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_high_priority_deployment_preempts_a_low_priority_one_on_a_full_node(
    one_full_node: tuple[ApiServer, AgentProcess],
) -> None:
    api, agent = one_full_node
    with api.sync_client() as client:
        client.create(deployment("low", replicas=2, priority=0))
        low = wait_for(
            "both low replicas running",
            lambda: len(found := running(client, "low")) == 2 and found,
            timeout=60,
        )
        pids = {i.metadata.name: pid_of(agent, i.metadata.name) for i in low}

        client.create(deployment("high", replicas=1, priority=1000))
        high = wait_for(
            "the high replica running on n1",
            lambda: (r := running(client, "high")) and r[0].spec.node_name == "n1" and r[0],
            timeout=60,
        )
        remaining = {i.metadata.name for i in running(client, "low")}
        evicted = sorted(set(pids) - remaining)
        assert len(evicted) == 1, (pids, remaining)
        victim = evicted[0]
        events = client.events("default", victim)
        assert any(
            e.get("reason") == "Preempted" and "high" in e.get("message", "") for e in events
        ), events
        # graceful: the victim's copy got its grace period, then it was stopped
        wait_for(
            "the victim's copy stopped", lambda: not group_alive(pids[victim]), timeout=GRACE + 20
        )
        assert high.status.nominated_node_name in ("", "n1")

        # The low Deployment recreates its replica, which cannot preempt higher priority:
        # it waits, saying why.
        def replacement_waits() -> Instance | None:
            pending = [i for i in instances(client, "low") if not i.spec.node_name]
            for i in pending:
                cond = next((c for c in i.status.conditions if c.type == "Scheduled"), None)
                if cond is not None and cond.reason == "Unschedulable":
                    return i
            return None

        waiting = wait_for("the low replacement unschedulable", replacement_waits, timeout=30)
        condition = next(c for c in waiting.status.conditions if c.type == "Scheduled")
        assert condition.message == "0/1 nodes are available: 1 insufficient cpu"
        assert {i.metadata.name for i in running(client, "high")} == {high.metadata.name}
