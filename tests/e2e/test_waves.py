"""A wave rollout across three clusters with real processes: one agent per cluster, a
release that crash-loops only in the second cluster. The first wave rolls out and bakes,
the second fails, and the third cluster's Instance is never touched (same name, same uid,
the stable revision) however long one waits; `keel rollout status` exits 1 naming the wave."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from support import AgentProcess, ApiServer, KeelProcess, wait_for

from keel.api.resources import (
    Cluster,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Node,
    ObjectMeta,
    Placement,
    RollingUpdate,
    Strategy,
    TemplateMeta,
    Wave,
)
from keel.client import SyncClient
from keel.controllers.deployment import DEPLOYMENT_LABEL, HASH_LABEL, hash_of

CLUSTERS = {"w1": "w1-node", "w2": "w2-node", "w3": "w3-node"}
NS = "default"
STABLE = [sys.executable, "-c", "import time; time.sleep(1e6)"]
# The new release crash-loops on the second cluster's node only.
BAD_IN_W2 = [
    sys.executable,
    "-c",
    "import os, sys, time\n"
    "if os.environ['KEEL_NODE'] == 'w2-node': sys.exit(1)\n"
    "time.sleep(1e6 + 1)",
]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("waves")
    server = ApiServer(root / "apiserver", nodes=tuple(CLUSTERS.values())).start()
    others: list[KeelProcess] = []
    agents: list[AgentProcess] = []
    try:
        with server.sync_client() as admin:
            for cluster in CLUSTERS:
                admin.create(Cluster(metadata=ObjectMeta(name=cluster)))
        others.append(
            server.controller_manager("cm", "--controllers", "deployment,nodelifecycle,gc")
        )
        others.append(server.scheduler("sched"))
        for cluster, node in CLUSTERS.items():
            agents.append(server.agent(node, root / "agents" / node, cluster=cluster).start())
        # Every node Ready before the Deployment: else the scheduler may place all three
        # replicas on the one node Ready first (one per cluster is what the test expects).
        with server.sync_client() as admin:
            wait_for(
                "every node Ready",
                lambda: (
                    {n.metadata.name for n in admin.list(Node).items if ready(n)}
                    == set(CLUSTERS.values())
                ),
                timeout=60,
            )
        yield server
    finally:
        for agent in agents:
            agent.stop()
        for process in others:
            process.stop()
        server.stop()


def ready(node: Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def template(command: list[str]) -> InstanceTemplate:
    return InstanceTemplate(
        metadata=TemplateMeta(labels={"app": "waves"}),
        spec=InstanceSpec(command=command, termination_grace_period_seconds=1),
    )


def instances(client: SyncClient) -> dict[str, Instance]:
    items = client.list(Instance, namespace=NS, label_selector={DEPLOYMENT_LABEL: "waves"}).items
    return {i.spec.node_name: i for i in items if not i.metadata.deletion_timestamp}


def test_a_failing_wave_stops_the_rollout_before_the_last_cluster(platform: ApiServer) -> None:
    waves = [Wave(clusters=[c], bake_seconds=1) for c in CLUSTERS]
    deployment = Deployment(
        metadata=ObjectMeta(name="waves", namespace=NS),
        spec=DeploymentSpec(
            replicas=3,
            template=template(STABLE),
            strategy=Strategy(
                rolling_update=RollingUpdate(max_surge=1, max_unavailable=0), waves=waves
            ),
            placement=Placement(spread_across="cluster"),
            bake_seconds=1,
        ),
    )
    v1, v2 = hash_of(template(STABLE)), hash_of(template(BAD_IN_W2))
    with platform.sync_client() as client:
        client.create(deployment)
        wait_for(
            "waves: v1 stable, one instance per cluster",
            lambda: (
                client.get(Deployment, "waves", namespace=NS).status.stable_revision == v1
                and sorted(instances(client)) == sorted(CLUSTERS.values())
            ),
            timeout=60,
        )
        last = instances(client)["w3-node"]
        patch = [
            {
                "op": "replace",
                "path": "/spec/template",
                "value": msgspec.to_builtins(template(BAD_IN_W2)),
            }
        ]
        client.patch(Deployment, "waves", patch, namespace=NS, type="json")

        def failed() -> bool:
            dep = client.get(Deployment, "waves", namespace=NS)
            return dep.status.phase == "Failed"

        wait_for("waves: the second wave fails", failed, timeout=90)
        dep = client.get(Deployment, "waves", namespace=NS)
        assert dep.status.current_wave == 1
        progressing = next(c for c in dep.status.conditions if c.type == "Progressing")
        assert (
            progressing.reason == "WaveFailed"
            and "later waves are not touched" in progressing.message
        )
        running = instances(client)
        assert running["w1-node"].metadata.labels[HASH_LABEL] == v2
        time.sleep(2)  # twice any bake: still nothing moves on the last cluster
        now = instances(client)["w3-node"]
        assert (now.metadata.uid, now.metadata.labels[HASH_LABEL]) == (last.metadata.uid, v1)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
        kubeconfig = platform.kubeconfig_for("admin")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "keel",
                "rollout",
                "status",
                "waves",
                "--kubeconfig",
                str(kubeconfig),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert result.returncode == 1 and "wave 2" in result.stdout, result
