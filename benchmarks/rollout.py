"""Rollouts: how long a new template takes to roll out, and a bad one to be rolled back.

Real processes: `keel apiserver`, `keel controller-manager` (deployment, node lifecycle,
gc), `keel scheduler` and 3 `keel agent`s running real workloads (a sleeping Python). Per
trial and size (3 and 30 replicas; maxSurge/maxUnavailable 25%):

- roll out: from applying a new template until every replica runs it, Ready, and the
  Deployment's status says Complete;
- roll back (`autoRollback: true`, the release exits at once): from the first failure
  signal (a new Instance reported exited) until the stable revision runs in full again,
  Ready, with the Deployment RolledBack; the detection part (until RollingBack) apart.

    python benchmarks/rollout.py [--trials N] [--quick] [--sizes 3,30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the process launchers

import msgspec  # noqa: E402
from support import AgentProcess, ApiServer, KeelProcess  # noqa: E402

from keel.api.resources import (  # noqa: E402
    Cluster,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    TemplateMeta,
)
from keel.client import SyncClient  # noqa: E402
from keel.controllers.deployment import DEPLOYMENT_LABEL, HASH_LABEL, hash_of  # noqa: E402

NODES = ("b1", "b2", "b3")
NS = "default"


def template(code: str) -> InstanceTemplate:
    return InstanceTemplate(
        metadata=TemplateMeta(labels={"app": "bench"}),
        spec=InstanceSpec(command=[sys.executable, "-c", code], termination_grace_period_seconds=1),
    )


def sleeper(version: int) -> InstanceTemplate:
    return template(f"import time; time.sleep(1e6 + {version})")


CRASH = template("import sys; sys.exit(1)")


def wait(what: str, condition: Callable[[], bool], timeout: float = 180.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def instances(client: SyncClient, name: str) -> list[Instance]:
    items = client.list(Instance, namespace=NS, label_selector={DEPLOYMENT_LABEL: name}).items
    return [i for i in items if not i.metadata.deletion_timestamp]


def runs_in_full(client: SyncClient, name: str, revision: str, replicas: int) -> bool:
    live = instances(client, name)
    return len(live) == replicas and all(
        i.metadata.labels.get(HASH_LABEL) == revision
        and any(c.type == "Ready" and c.status == "True" for c in i.status.conditions)
        for i in live
    )


def phase(client: SyncClient, name: str) -> str:
    return client.get(Deployment, name, namespace=NS).status.phase


def set_template(client: SyncClient, name: str, new: InstanceTemplate) -> None:
    patch = [{"op": "replace", "path": "/spec/template", "value": msgspec.to_builtins(new)}]
    client.patch(Deployment, name, patch, namespace=NS, type="json")


def stable(client: SyncClient, name: str, revision: str, replicas: int) -> None:
    wait(
        f"{name}: {revision} stable",
        lambda: (
            runs_in_full(client, name, revision, replicas)
            and client.get(Deployment, name, namespace=NS).status.stable_revision == revision
        ),
    )


def rollout_trial(client: SyncClient, replicas: int, trial: int) -> float:
    name = f"roll-{replicas}-{trial}"
    client.create(
        Deployment(
            metadata=ObjectMeta(name=name, namespace=NS),
            spec=DeploymentSpec(replicas=replicas, template=sleeper(1), bake_seconds=1),
        )
    )
    stable(client, name, hash_of(sleeper(1)), replicas)
    start = time.monotonic()
    set_template(client, name, sleeper(2))
    v2 = hash_of(sleeper(2))
    done = wait(
        f"{name}: v2 rolled out",
        lambda: runs_in_full(client, name, v2, replicas) and phase(client, name) == "Complete",
    )
    client.delete(Deployment, name, namespace=NS)
    return done - start


def rollback_trial(client: SyncClient, replicas: int, trial: int) -> tuple[float, float]:
    name = f"back-{replicas}-{trial}"
    client.create(
        Deployment(
            metadata=ObjectMeta(name=name, namespace=NS),
            spec=DeploymentSpec(
                replicas=replicas, template=sleeper(1), bake_seconds=1, auto_rollback=True
            ),
        )
    )
    v1 = hash_of(sleeper(1))
    stable(client, name, v1, replicas)
    set_template(client, name, CRASH)
    bad = hash_of(CRASH)

    def failed_once() -> bool:
        return any(
            i.metadata.labels.get(HASH_LABEL) == bad
            and ("exit" in i.status.message or i.status.phase == "Failed")
            for i in instances(client, name)
        )

    first = wait(f"{name}: the first failure signal", failed_once)
    detected = wait(
        f"{name}: rolling back", lambda: phase(client, name) in ("RollingBack", "RolledBack")
    )
    restored = wait(
        f"{name}: stable restored",
        lambda: phase(client, name) == "RolledBack" and runs_in_full(client, name, v1, replicas),
    )
    client.delete(Deployment, name, namespace=NS)
    return detected - first, restored - first


def figures(what: str, values: list[float]) -> str:
    return (
        f"{what}: median {statistics.median(values):.2f} s, worst {max(values):.2f} s "
        f"over {len(values)} trial(s)"
    )


def run(work: Path, trials: int, sizes: tuple[int, ...]) -> list[str]:
    server = ApiServer(work / "apiserver", nodes=NODES).start()
    others: list[KeelProcess] = []
    agents: list[AgentProcess] = []
    lines: list[str] = []
    try:
        with server.sync_client() as client:
            client.create(Cluster(metadata=ObjectMeta(name="c1")))
            others.append(
                server.controller_manager("cm", "--controllers", "deployment,nodelifecycle,gc")
            )
            others.append(server.scheduler("sched"))
            for node in NODES:
                agents.append(server.agent(node, work / "agents" / node).start())
            for replicas in sizes:
                rolled = [rollout_trial(client, replicas, t) for t in range(trials)]
                lines.append(figures(f"roll out, {replicas} replicas", rolled))
            for replicas in sizes:
                results = [rollback_trial(client, replicas, t) for t in range(trials)]
                lines.append(
                    figures(
                        f"bad release, {replicas} replicas: first failure to rollback started",
                        [r[0] for r in results],
                    )
                )
                lines.append(
                    figures(
                        f"bad release, {replicas} replicas: first failure to stable restored",
                        [r[1] for r in results],
                    )
                )
    finally:
        for agent in agents:
            agent.stop()
        for process in others:
            process.stop()
        server.stop()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke: 1 trial, 3 and 6 replicas")
    parser.add_argument(
        "--sizes", default="", metavar="N,N", help="replica counts (default 3,30; --quick 3,6)"
    )
    args = parser.parse_args()
    trials = 1 if args.quick else args.trials
    sizes: tuple[int, ...] = (3, 6) if args.quick else (3, 30)
    if args.sizes:
        try:
            sizes = tuple(int(n) for n in args.sizes.split(","))
        except ValueError:
            parser.error(f"--sizes: expected replica counts like 3,30, got {args.sizes!r}")
        if any(n < 1 for n in sizes):
            parser.error(f"--sizes: every replica count must be at least 1, got {args.sizes!r}")
    with tempfile.TemporaryDirectory(prefix="keel-bench-rollout-") as tmp:
        lines = run(Path(tmp), trials, sizes)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
