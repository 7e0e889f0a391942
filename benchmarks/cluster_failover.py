"""Cluster failover: how long until the replicas of a lost cluster run elsewhere.

Real processes: `keel apiserver`, `keel controller-manager` (deployment, node lifecycle,
cluster controllers), `keel scheduler`, and 2 clusters x 2 `keel agent`s with `keel up`'s
node lease (4 s). Per trial, both agents of cluster cl-1 are paused (SIGSTOP) while two
Deployments (2 replicas, spreadAcross: cluster) run there, one `clusterFailover: Immediate`
and one `Graceful`; measured from the pause:

- cl-1's `Ready` condition turns `Unreachable` (node lease + node lifecycle grace),
- Immediate: both replicas Running and Ready in cl-2,
- Graceful: the old replica gone, after its replacement became Ready in cl-2.

Baseline in the same run: a single node failure (one agent of cl-2 paused; its replica Ready
on another node), which takes the node lifecycle path. Ratios are against its median.

The node lifecycle controller's FullDisruption rule (no node-by-node eviction in a cluster
that lost every node) leaves the lost cluster to the failover policy.

    python benchmarks/cluster_failover.py [--trials N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the process launchers and the stand-in

from support import AgentProcess, ApiServer, KeelProcess  # noqa: E402

from keel.api.resources import (  # noqa: E402
    Cluster,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    Placement,
    TemplateMeta,
)
from keel.client import NotFound, SyncClient  # noqa: E402

CLUSTERS = {"cl-1": ("n1a", "n1b"), "cl-2": ("n2a", "n2b")}
CLUSTER_OF = {n: c for c, nodes in CLUSTERS.items() for n in nodes}
LEASE_SECONDS = 4  # keel up's node lease
WORKLOAD = ["sleep", "100000"]


def deployment(name: str, policy: str) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=DeploymentSpec(
            replicas=2,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": name}),
                spec=InstanceSpec(command=WORKLOAD, termination_grace_period_seconds=1),
            ),
            placement=Placement(
                spread_across="cluster",
                cluster_failover=policy,  # type: ignore[arg-type]
                failover_grace_seconds=300,
            ),
        ),
    )


def live(client: SyncClient, app: str) -> list[Instance]:
    found = client.list(Instance, namespace="default", label_selector={"app": app}).items
    return [i for i in found if not i.metadata.deletion_timestamp]


def ready(instance: Instance) -> bool:
    return instance.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in instance.status.conditions
    )


def cluster_reason(client: SyncClient, name: str) -> str:
    cluster = client.get(Cluster, name)
    condition = next((c for c in cluster.status.conditions if c.type == "Ready"), None)
    return "" if condition is None else condition.reason


def wait(what: str, condition: Callable[[], bool], timeout: float = 90.0) -> float:
    """Poll every 50 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)
    return time.monotonic()


def spread_ready(client: SyncClient, app: str, where: list[str]) -> bool:
    found = live(client, app)
    return sorted(CLUSTER_OF.get(i.spec.node_name, "") for i in found) == where and all(
        ready(i) for i in found
    )


def cluster_trial(
    client: SyncClient, agents: dict[str, AgentProcess], trial: int
) -> tuple[float, float, float]:
    """(Unreachable, Immediate done, Graceful done), seconds after cl-1's agents paused."""
    apps = {"Immediate": f"imm-{trial}", "Graceful": f"grace-{trial}"}
    for policy, app in apps.items():
        client.create(deployment(app, policy))
    for app in apps.values():
        wait(f"{app} spread", lambda app=app: spread_ready(client, app, ["cl-1", "cl-2"]))  # type: ignore[misc]
    old = next(
        i.metadata.name
        for i in live(client, apps["Graceful"])
        if CLUSTER_OF[i.spec.node_name] == "cl-1"
    )
    for node in CLUSTERS["cl-1"]:
        agents[node].pause()
    t0 = time.monotonic()
    unreachable = wait("cl-1 Unreachable", lambda: cluster_reason(client, "cl-1") == "Unreachable")
    immediate = wait(
        "Immediate moved", lambda: spread_ready(client, apps["Immediate"], ["cl-2", "cl-2"])
    )

    def graceful_done() -> bool:
        found = {i.metadata.name: i for i in live(client, apps["Graceful"])}
        return old not in found and spread_ready(client, apps["Graceful"], ["cl-2", "cl-2"])

    graceful = wait("Graceful moved", graceful_done)
    for node in CLUSTERS["cl-1"]:
        agents[node].resume()
    wait("cl-1 Ready", lambda: cluster_reason(client, "cl-1") == "Ready")
    for app in apps.values():
        with contextlib.suppress(NotFound):
            client.delete(Deployment, app, namespace="default")
        for instance in live(client, app):
            with contextlib.suppress(NotFound):
                client.delete(Instance, instance.metadata.name, namespace="default")
    return unreachable - t0, immediate - t0, graceful - t0


def node_trial(client: SyncClient, agents: dict[str, AgentProcess], trial: int) -> float:
    """Seconds from pausing one agent of cl-2 until its replica is Ready on another node."""
    app = f"node-{trial}"
    client.create(deployment(app, "Immediate"))
    wait(f"{app} spread", lambda: spread_ready(client, app, ["cl-1", "cl-2"]))
    victim = next(
        i.spec.node_name for i in live(client, app) if CLUSTER_OF[i.spec.node_name] == "cl-2"
    )
    agents[victim].pause()
    t0 = time.monotonic()

    def moved() -> bool:
        found = live(client, app)
        return len(found) == 2 and all(ready(i) and i.spec.node_name != victim for i in found)

    done = wait("node failover", moved)
    agents[victim].resume()
    wait("cl-2 Ready", lambda: cluster_reason(client, "cl-2") == "Ready")
    client.delete(Deployment, app, namespace="default")
    return done - t0


def figures(name: str, values: list[float], baseline: float) -> str:
    median = statistics.median(values)
    return (
        f"{name}: median {median:.2f} s, worst {max(values):.2f} s over {len(values)} "
        f"trial(s) ({median / baseline:.2f}x the node failover baseline)"
    )


def run(work: Path, trials: int) -> list[str]:
    nodes = list(CLUSTER_OF)
    server = ApiServer(work / "apiserver", nodes=nodes).start()
    others: list[KeelProcess] = []
    agents: dict[str, AgentProcess] = {}
    try:
        with server.sync_client() as client:
            for name in CLUSTERS:
                client.create(Cluster(metadata=ObjectMeta(name=name)))
            others.append(
                server.controller_manager(
                    "cm",
                    "--controllers",
                    "deployment,nodelifecycle,cluster",
                )
            )
            others.append(server.scheduler("sched"))
            for node in nodes:
                agents[node] = server.agent(
                    node, work / "agents" / node, "--lease-duration", str(LEASE_SECONDS),
                    cluster=CLUSTER_OF[node],
                ).start()  # fmt: skip
            for name in CLUSTERS:
                wait(f"{name} Ready", lambda name=name: cluster_reason(client, name) == "Ready")  # type: ignore[misc]
            baseline = [node_trial(client, agents, t) for t in range(trials)]
            results = [cluster_trial(client, agents, t) for t in range(trials)]
    finally:
        for agent in agents.values():
            agent.stop()
        for process in others:
            process.stop()
        server.stop()
    base = statistics.median(baseline)
    return [
        f"node failover (baseline, one agent paused): median {base:.2f} s, "
        f"worst {max(baseline):.2f} s over {trials} trial(s)",
        figures("cluster Unreachable after its agents paused", [r[0] for r in results], base),
        figures(
            "cluster failover, Immediate (replicas Ready elsewhere)", [r[1] for r in results], base
        ),
        figures(
            "cluster failover, Graceful (replacements Ready, old replica gone)",
            [r[2] for r in results],
            base,
        ),
        f"(node lease {LEASE_SECONDS} s + node lifecycle grace 5 s, as `keel up`)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke: 1 trial each")
    args = parser.parse_args()
    trials = 1 if args.quick else args.trials
    with tempfile.TemporaryDirectory(prefix="keel-bench-cluster-failover-") as tmp:
        lines = run(Path(tmp), trials)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
