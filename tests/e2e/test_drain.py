"""`keel drain` with real processes: `keel apiserver`, `keel controller-manager`, `keel
scheduler` and three `keel agent`s. A Deployment of 3 replicas (maxUnavailable 1) that runs
entirely on one node is drained off it: never more than one replica unavailable at any sampled
moment, every replica ends up Ready elsewhere, the node stays cordoned until `keel uncordon`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import AgentProcess, ApiServer, wait_for

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Node,
    ObjectMeta,
    RollingUpdate,
    Strategy,
)
from keel.client import NotFound, SyncClient

NODES = ["n1", "n2", "n3"]
REPLICAS = 3
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


@dataclass
class Platform:
    api: ApiServer
    agents: dict[str, AgentProcess]
    started: list[AgentProcess] = field(default_factory=list)

    def start_agent(self, node: str) -> None:
        self.agents[node].start()
        self.started.append(self.agents[node])

    def keel(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KEEL_KUBECONFIG": str(self.api.kubeconfig)}
        return subprocess.run(
            [sys.executable, "-m", "keel", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )


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
        platform = Platform(api, agents)
        try:
            yield platform
        finally:
            for process in (*platform.started, scheduler, manager):
                process.stop(timeout=40)
            for agent in platform.started:  # nothing a test's agent started may outlive it
                for path in (agent.state_dir / "instances").glob("*.json"):
                    pid = int(json.loads(path.read_text()).get("pid", 0))
                    if pid > 1:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)


def serving(instance: Instance) -> bool:
    return not instance.metadata.deletion_timestamp and any(
        c.type == "Ready" and c.status == "True" for c in instance.status.conditions
    )


def replicas(client: SyncClient) -> list[Instance]:
    found: list[Instance] = client.list(
        Instance, namespace="default", label_selector="keel.dev/deployment=web"
    ).items
    return found


def node_ready(client: SyncClient, name: str) -> bool:
    try:
        node: Node = client.get(Node, name)
    except NotFound:
        return False  # not registered yet
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


class Sampler(threading.Thread):
    """Counts the serving replicas of `web` every 50 ms until stopped."""

    def __init__(self, client: SyncClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.samples.append(sum(1 for i in replicas(self.client) if serving(i)))


def test_drain_moves_a_deployment_off_a_node_within_its_budget(platform: Platform) -> None:
    api = platform.api
    platform.start_agent("n1")
    with api.sync_client() as client:
        wait_for("node n1 ready", lambda: node_ready(client, "n1"), timeout=30)
        template = InstanceTemplate(
            spec=InstanceSpec(command=SLEEPER, termination_grace_period_seconds=3)
        )
        client.create(
            Deployment(
                metadata=ObjectMeta(name="web", namespace="default"),
                spec=DeploymentSpec(
                    replicas=REPLICAS,
                    template=template,
                    strategy=Strategy(rolling_update=RollingUpdate(max_unavailable=1)),
                ),
            )
        )
        wait_for(
            "3 replicas serving on n1",
            lambda: (
                sum(1 for i in replicas(client) if serving(i) and i.spec.node_name == "n1")
                == REPLICAS
            ),
            timeout=60,
        )
        platform.start_agent("n2")
        platform.start_agent("n3")
        for node in ("n2", "n3"):
            wait_for(f"node {node} ready", lambda n=node: node_ready(client, n), timeout=30)

        with api.sync_client() as sampling:
            sampler = Sampler(sampling)
            sampler.start()
            try:
                drained = platform.keel("drain", "n1", "--timeout", "120", timeout=150)
            finally:
                sampler.halt.set()
                sampler.join()
        assert drained.returncode == 0, drained.stdout + drained.stderr
        out = drained.stdout
        assert "node/n1 cordoned" in out
        assert out.count("evicted instance default/web-") == REPLICAS
        assert "would violate the disruption budget of deployment web" in out  # it waited
        assert out.rstrip().endswith("node/n1 drained")

        assert sampler.samples, "the sampler saw nothing"
        assert min(sampler.samples) >= REPLICAS - 1, sampler.samples
        final = replicas(client)
        assert len(final) == REPLICAS
        assert all(i.spec.node_name in ("n2", "n3") for i in final), final
        assert client.list(Instance, field_selector="spec.nodeName=n1").items == []
        assert client.get(Node, "n1").spec.unschedulable
        nodes = platform.keel("get", "nodes")
        row = next(line for line in nodes.stdout.splitlines() if line.startswith("n1 "))
        assert "SchedulingDisabled" in row

        wait_for(
            "every replica serving elsewhere",
            lambda: sum(1 for i in replicas(client) if serving(i)) == REPLICAS,
            timeout=60,
        )
        uncordoned = platform.keel("uncordon", "n1")
        assert uncordoned.returncode == 0, uncordoned.stderr
        assert "node/n1 uncordoned" in uncordoned.stdout
        assert not client.get(Node, "n1").spec.unschedulable
        # Schedulable again: a fourth replica goes to the node with none of them.
        client.patch(Deployment, "web", {"spec": {"replicas": REPLICAS + 1}}, namespace="default")
        wait_for(
            "a replica placed on n1 again",
            lambda: any(i.spec.node_name == "n1" for i in replicas(client)),
            timeout=60,
        )


def test_cordon_uncordon_and_a_drain_the_budget_never_allows(platform: Platform) -> None:
    platform.start_agent("n1")
    with platform.api.sync_client() as client:
        wait_for("node n1 ready", lambda: node_ready(client, "n1"), timeout=30)
        first = platform.keel("cordon", "n1")
        again = platform.keel("cordon", "n1")
        assert (first.returncode, again.returncode) == (0, 0)
        assert first.stdout.strip() == "node/n1 cordoned"
        assert again.stdout.strip() == "node/n1 already cordoned"
        missing = platform.keel("cordon", "nowhere")
        assert missing.returncode == 1
        assert "not found" in missing.stderr
        assert platform.keel("uncordon", "n1").stdout.strip() == "node/n1 uncordoned"

        # One replica that may never be unavailable, and nowhere else to go: drain gives up
        # at its timeout and says why.
        client.create(
            Deployment(
                metadata=ObjectMeta(name="web", namespace="default"),
                spec=DeploymentSpec(
                    replicas=1,
                    template=InstanceTemplate(spec=InstanceSpec(command=SLEEPER)),
                    strategy=Strategy(rolling_update=RollingUpdate(max_unavailable=0)),
                ),
            )
        )
        wait_for("the replica serving", lambda: any(serving(i) for i in replicas(client)))
        stuck = platform.keel("drain", "n1", "--timeout", "3")
        assert stuck.returncode == 1
        assert "drain of node n1 timed out after 3s" in stuck.stderr
        assert (
            "would violate the disruption budget of deployment web: "
            "1 of 1 available, at most 0 may be unavailable"
        ) in stuck.stderr
        assert [i.spec.node_name for i in replicas(client) if serving(i)] == ["n1"]
        assert client.get(Node, "n1").spec.unschedulable  # the cordon stays
