"""The whole life of an exclusive instance with real processes: `keel apiserver`, `keel
controller-manager`, `keel scheduler` and two `keel agent`s. Deleted, it stays terminating
(its name taken) while its old copy still runs; its agent stops the copy and reports it
Failed; the controller-manager then releases `keel.dev/stop-confirmed`, and only then does
the replacement of the same name get created, bound and started."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_harness import group_alive, kill_group, ready
from support import AgentProcess, ApiServer, KeelProcess, wait_for

from keel.api.resources import (
    STOP_CONFIRMED,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
)
from keel.client import NotFound, SyncClient

PY = sys.executable
# Ignores SIGTERM, so only the SIGKILL after its grace period ends it: the old copy runs on
# for that long after its Instance was deleted.
STUBBORN = [PY, "-c", "import signal,time; signal.signal(15, signal.SIG_IGN); time.sleep(600)"]
GRACE = 3
NODES = ["n1", "n2"]


@dataclass
class Platform:
    api: ApiServer
    controller_manager: KeelProcess
    agents: dict[str, AgentProcess]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with ApiServer(tmp_path / "api", nodes=NODES) as api:
        manager = api.controller_manager(
            "cm-1", "--controllers", "deployment,nodelifecycle", "--lease-ttl", "2"
        )
        scheduler = api.scheduler("scheduler-1", "--lease-ttl", "2")
        agents = {
            node: api.agent(node, tmp_path / "agents" / node, "--capacity", "cpu=4,memory=8Gi")
            for node in NODES
        }
        for agent in agents.values():
            agent.start()
        try:
            yield Platform(api, manager, agents)
        finally:
            for process in (*agents.values(), scheduler, manager):
                process.stop(timeout=40)
            for agent in agents.values():  # nothing a test's agent started may outlive it
                for path in (agent.state_dir / "instances").glob("*.json"):
                    kill_group(json.loads(path.read_text()).get("pid", 0))


def running_copy(agents: dict[str, AgentProcess], name: str) -> tuple[str, int] | None:
    """(node, process group) of the copy of `name` an agent runs, from its state dir."""
    for node, agent in agents.items():
        path = agent.state_dir / "instances" / f"default_{name}.json"
        try:
            pid = int(json.loads(path.read_text()).get("pid", 0))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if pid and group_alive(pid):
            return node, pid
    return None


def current(client: SyncClient, name: str) -> Instance | None:
    try:
        return client.get(Instance, name, namespace="default")
    except NotFound:
        return None


def serving(client: SyncClient, name: str) -> Instance | None:
    found = current(client, name)
    if found is None or found.metadata.deletion_timestamp or found.status.phase != "Running":
        return None
    return found if ready(found) else None


def test_a_deleted_exclusive_instance_is_replaced_only_after_its_copy_stopped(
    platform: Platform,
) -> None:
    agents = platform.agents
    with platform.api.sync_client() as client:
        template = InstanceTemplate(
            spec=InstanceSpec(
                command=STUBBORN, exclusive=True, termination_grace_period_seconds=GRACE
            )
        )
        client.create(
            Deployment(
                metadata=ObjectMeta(name="solo", namespace="default"),
                spec=DeploymentSpec(replicas=1, template=template),
            )
        )
        listed = wait_for("an instance", lambda: client.list(Instance, namespace="default").items)
        name = listed[0].metadata.name
        first = wait_for("the first copy serving", lambda: serving(client, name), timeout=60)
        assert first.metadata.finalizers == [STOP_CONFIRMED]  # added by its binding
        where = wait_for("its process", lambda: running_copy(agents, name), timeout=20)

        # Scale down and straight back up: the controller deletes the Instance, then wants
        # one of the same name again.
        client.patch(Deployment, "solo", {"spec": {"replicas": 0}}, namespace="default")

        def terminating() -> bool:
            seen = current(client, name)
            return seen is None or seen.metadata.deletion_timestamp is not None

        wait_for("it terminating", terminating)
        client.patch(Deployment, "solo", {"spec": {"replicas": 1}}, namespace="default")

        # While the old copy runs (SIGTERM ignored, SIGKILL after GRACE seconds), the name
        # stays taken by the terminating Instance: no replacement exists, none runs.
        def old_copy_gone() -> bool:
            seen = current(client, name)  # first the object, then the process: no race
            old_alive = group_alive(where[1])
            if seen is not None and seen.metadata.uid != first.metadata.uid:
                assert not old_alive, "a replacement existed while the old copy still ran"
            return not old_alive

        wait_for("the old copy stopped", old_copy_gone, timeout=GRACE + 20)
        second = wait_for("the replacement serving", lambda: serving(client, name), timeout=60)
        assert second.metadata.uid != first.metadata.uid
        assert second.metadata.finalizers == [STOP_CONFIRMED]
        log = platform.controller_manager.log()
        assert f"releasing instance default/{name}: its agent reported it Failed" in log
