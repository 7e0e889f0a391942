"""Cluster failover with real processes: `keel apiserver`, `keel controller-manager` (with the
cluster controllers), `keel scheduler` and four `keel agent`s in two clusters. All agents of
one cluster are paused (SIGSTOP): its Cluster turns Unreachable, and three Deployments move
(or not) by their `placement.clusterFailover`. The measured failover time is printed."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import AgentProcess, ApiServer, KeelProcess, wait_for

from keel.api.resources import (
    FAILOVER_PENDING,
    Cluster,
    Deployment,
    DeploymentSpec,
    HealthCheck,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    Placement,
    PortSpec,
    TemplateMeta,
)
from keel.client import SyncClient

CLUSTERS = {"cl-1": ("n1a", "n1b"), "cl-2": ("n2a", "n2b")}
NODES = [n for nodes in CLUSTERS.values() for n in nodes]
CLUSTER_OF = {n: c for c, nodes in CLUSTERS.items() for n in nodes}
LEASE_SECONDS = 2
# Ready only after 2 s (a TCP check on its port): a replacement is visibly not Ready at first.
SLOW_SERVER = ["sh", "-c", f"sleep 2; exec {sys.executable} -m http.server --bind 127.0.0.1 $PORT"]


def deployment(name: str, policy: str) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=DeploymentSpec(
            replicas=2,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": name}),
                spec=InstanceSpec(
                    command=SLOW_SERVER,
                    ports=[PortSpec(name="http")],
                    health_check=HealthCheck(type="tcp", port="http", period_seconds=1),
                    termination_grace_period_seconds=2,
                ),
            ),
            placement=Placement(
                spread_across="cluster",
                cluster_failover=policy,  # type: ignore[arg-type]
                failover_grace_seconds=120,
            ),
        ),
    )


def instances(client: SyncClient, app: str) -> list[Instance]:
    found = client.list(Instance, namespace="default", label_selector={"app": app}).items
    return [i for i in found if not i.metadata.deletion_timestamp]


def is_ready(instance: Instance) -> bool:
    return instance.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in instance.status.conditions
    )


def placement_of(client: SyncClient, app: str) -> dict[str, str]:
    """Instance name -> cluster of its node ("" while unbound)."""
    return {i.metadata.name: CLUSTER_OF.get(i.spec.node_name, "") for i in instances(client, app)}


def cluster_ready(client: SyncClient, name: str) -> tuple[str, str, int, int]:
    cluster = client.get(Cluster, name)
    condition = next((c for c in cluster.status.conditions if c.type == "Ready"), None)
    if condition is None:
        return ("", "", cluster.status.nodes, cluster.status.ready_nodes)
    return (condition.status, condition.reason, cluster.status.nodes, cluster.status.ready_nodes)


def cluster_writes(server: ApiServer) -> int:
    text = server.http("admin").get("/metrics", timeout=5).body.decode()
    return sum(
        int(float(m.group(1)))
        for m in re.finditer(r'keel_store_writes_total\{kind="clusters"[^}]*\} (\S+)', text)
    )


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[ApiServer, dict[str, AgentProcess]]]:
    server = ApiServer(tmp_path / "apiserver", nodes=NODES).start()
    others: list[KeelProcess] = []
    agents: dict[str, AgentProcess] = {}
    try:
        with server.sync_client() as admin:
            for name in CLUSTERS:
                admin.create(Cluster(metadata=ObjectMeta(name=name)))
        others.append(
            server.controller_manager(
                "cm",
                "--controllers",
                # nodelifecycle leaves a cluster that lost every node to cluster failover
                "deployment,nodelifecycle,cluster",
                "--lease-ttl",
                "2",
            )
        )
        others.append(server.scheduler("sched"))
        for node in NODES:
            agent = server.agent(
                node,
                tmp_path / "agents" / node,
                "--lease-duration",
                str(LEASE_SECONDS),
                cluster=CLUSTER_OF[node],
            )
            agents[node] = agent.start()
        yield server, agents
    finally:
        for agent in agents.values():
            agent.stop()
        for process in others:
            process.stop()
        server.stop()


def test_an_unreachable_cluster_fails_over_by_each_policy(
    platform: tuple[ApiServer, dict[str, AgentProcess]],
) -> None:
    server, agents = platform
    with server.sync_client() as client:
        for name in CLUSTERS:
            wait_for(
                f"{name} Ready with 2 ready nodes",
                lambda name=name: cluster_ready(client, name) == ("True", "Ready", 2, 2),  # type: ignore[misc]
                timeout=30,
            )
        policies = {"imm": "Immediate", "grace": "Graceful", "never": "Never"}
        for app, policy in policies.items():
            client.create(deployment(app, policy))
        for app in policies:
            wait_for(
                f"{app}: one Ready replica in each cluster",
                lambda app=app: (  # type: ignore[misc]
                    sorted(placement_of(client, app).values()) == ["cl-1", "cl-2"]
                    and all(is_ready(i) for i in instances(client, app))
                ),
                timeout=60,
            )
        before = {app: placement_of(client, app) for app in policies}
        writes = cluster_writes(server)
        time.sleep(2)
        assert cluster_writes(server) == writes, "a steady cluster writes no Cluster status"

        # The whole of cl-1 goes silent.
        for node in CLUSTERS["cl-1"]:
            agents[node].pause()
        stopped = time.monotonic()
        wait_for(
            "cl-1 Unreachable",
            lambda: cluster_ready(client, "cl-1")[:2] == ("False", "Unreachable"),
            timeout=30,
        )
        unreachable = time.monotonic() - stopped
        assert cluster_ready(client, "cl-2") == ("True", "Ready", 2, 2)

        # Graceful, watched closely: the old replica stays until its replacement is Ready.
        old_grace = next(n for n, c in before["grace"].items() if c == "cl-1")
        marked = False
        deadline = time.monotonic() + 60
        while True:
            current = {i.metadata.name: i for i in instances(client, "grace")}
            old = current.get(old_grace)
            ready_in_cl2 = [
                i
                for n, i in current.items()
                if n != old_grace and CLUSTER_OF.get(i.spec.node_name) == "cl-2" and is_ready(i)
            ]
            if old is not None and FAILOVER_PENDING in old.metadata.annotations:
                marked = True
            if old is None:
                assert marked, "the old replica was marked failover-pending before it went"
                assert len(ready_in_cl2) == 2, "it went only once its replacement was Ready"
                break
            assert time.monotonic() < deadline, f"graceful failover incomplete: {current}"
            time.sleep(0.1)
        graceful = time.monotonic() - stopped

        def immediate_done() -> bool:
            found = instances(client, "imm")
            return (
                len(found) == 2
                and all(CLUSTER_OF.get(i.spec.node_name) == "cl-2" for i in found)
                and all(is_ready(i) for i in found)
            )

        wait_for("Immediate: both replicas Ready in cl-2", immediate_done, timeout=60)
        immediate = time.monotonic() - stopped
        assert placement_of(client, "never") == before["never"], "Never: they stay"
        print(
            f"\ncluster failover: cl-1 Unreachable {unreachable:.1f} s after its agents stopped "
            f"(node lease {LEASE_SECONDS} s + node grace 5 s); Immediate replicas Ready in cl-2 "
            f"after {immediate:.1f} s, Graceful old replica gone after {graceful:.1f} s "
            "(its replacement Ready first)"
        )

        # The cluster recovers: nothing moves back, but it takes new work again.
        moved = {app: placement_of(client, app) for app in policies}
        for node in CLUSTERS["cl-1"]:
            agents[node].resume()
        wait_for(
            "cl-1 Ready again",
            lambda: cluster_ready(client, "cl-1") == ("True", "Ready", 2, 2),
            timeout=30,
        )
        time.sleep(3)
        assert {app: placement_of(client, app) for app in policies} == moved, "no flapping"
        client.patch(Deployment, "imm", {"spec": {"replicas": 4}}, namespace="default")
        wait_for(
            "new replicas placed in the recovered cluster",
            lambda: (
                sorted(placement_of(client, "imm").values()) == ["cl-1", "cl-1", "cl-2", "cl-2"]
            ),
            timeout=30,
        )
