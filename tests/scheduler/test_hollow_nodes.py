"""`keel dev hollow-nodes` as a real process beside `keel apiserver`, `keel
controller-manager` and `keel scheduler`: its Nodes register with zones and capacities,
turn Ready on their leases (renewed by keep-alives: no store writes while idle), take
Instances and report them Running and Ready; Ctrl-C releases the leases."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from signal import SIGINT

from support import ApiServer, KeelProcess, wait_for

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Lease,
    Node,
    ObjectMeta,
    ResourceList,
)
from keel.client import SyncClient


def ready_nodes(client: SyncClient) -> list[Node]:
    return [
        n
        for n in client.list(Node).items
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    ]


def writes(api: ApiServer, kinds: tuple[str, ...] = ("Lease", "Node", "Instance")) -> int:
    """Store writes of the kinds hollow nodes touch, from the server's counters."""
    text = api.http().get("/metrics").body.decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("keel_store_writes_total{")
        and any(f'kind="{kind}"' in line for kind in kinds)
    )


def test_hollow_nodes_take_instances_and_report_them_running(tmp_path: Path) -> None:
    with ApiServer(tmp_path / "api") as api:
        manager = api.controller_manager(
            "cm-1", "--controllers", "deployment,nodelifecycle", "--lease-ttl", "2"
        )
        scheduler = api.scheduler("scheduler-1", "--lease-ttl", "2")
        hollow = KeelProcess(
            "dev", "hollow-nodes", "--count", "12", "--clusters", "3",
            "--capacity", "cpu=2,memory=4Gi,gpu=1", "--lease-duration", "6",
            "--kubeconfig", str(api.kubeconfig),
            log_dir=tmp_path, name="hollow",
        ).start()  # fmt: skip
        try:
            with api.sync_client() as client:
                nodes = wait_for(
                    "12 Ready hollow nodes",
                    lambda: len(found := ready_nodes(client)) == 12 and found,
                    timeout=60,
                )
                assert Counter(n.spec.cluster for n in nodes) == {
                    "hollow-c0": 4,
                    "hollow-c1": 4,
                    "hollow-c2": 4,
                }
                zones = {n.metadata.labels["topology.kubernetes.io/zone"] for n in nodes}
                assert zones == {f"hollow-c{c}-z{z}" for c in range(3) for z in range(2)}
                assert all(n.spec.capacity.extended == {"gpu": "1"} for n in nodes)

                client.create(
                    Deployment(
                        metadata=ObjectMeta(name="web", namespace="default"),
                        spec=DeploymentSpec(
                            replicas=18,
                            template=InstanceTemplate(
                                spec=InstanceSpec(
                                    command=["/nonexistent/never-started"],
                                    resources=ResourceList(cpu="1", memory="1Gi"),
                                )
                            ),
                        ),
                    )
                )

                def all_running() -> list[Instance] | None:
                    items = client.list(Instance, namespace="default").items
                    ok = [
                        i
                        for i in items
                        if i.status.phase == "Running"
                        and any(
                            c.type == "Ready" and c.status == "True" for c in i.status.conditions
                        )
                    ]
                    return ok if len(ok) == 18 else None

                running = wait_for("18 instances Running and Ready", all_running, timeout=60)
                per_cluster = Counter(
                    next(n.spec.cluster for n in nodes if n.metadata.name == i.spec.node_name)
                    for i in running
                )
                assert per_cluster == {"hollow-c0": 6, "hollow-c1": 6, "hollow-c2": 6}
                assert max(Counter(i.spec.node_name for i in running).values()) <= 2  # cpu=2

                # Idle: leases renewed by keep-alives, no Lease, Node or Instance written.
                before = writes(api)
                assert before >= 12 + 18, "the counters must see the registrations and reports"
                time.sleep(4)  # more than one renewal period (6 s / 3)
                assert writes(api) == before
                assert len(ready_nodes(client)) == 12

                hollow.stop(SIGINT, timeout=30)
                assert hollow.returncode == 0, hollow.log()
                leases = client.list(Lease, namespace="keel-node-lease").items
                assert not [lease for lease in leases if lease.metadata.name.startswith("hollow-")]
        finally:
            for process in (hollow, scheduler, manager):
                process.stop(timeout=30)
