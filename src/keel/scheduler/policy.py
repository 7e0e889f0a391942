"""The first scheduling policy, pure: filter Nodes (Ready, schedulable, allowed cluster and
node selector, resource fit), then prefer the one with the fewest replicas of the same
Deployment, then the least loaded, then the name. No I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from keel.api.resources import CLUSTERS_ANNOTATION, Deployment, Instance, Node, Placement

__all__ = [
    "DEPLOYMENT_LABEL",
    "Decision",
    "NodeInfo",
    "Snapshot",
    "build_snapshot",
    "deployment_key",
    "node_is_ready",
    "schedule",
]

DEPLOYMENT_LABEL = "keel.dev/deployment"
TERMINAL = frozenset({"Succeeded", "Failed"})  # their requests are free again


@dataclass(frozen=True)
class NodeInfo:
    """One Node as the policy sees it: what it offers and what is already placed on it."""

    name: str
    cluster: str
    labels: Mapping[str, str]
    ready: bool
    schedulable: bool
    cpu: int  # millicpu offered (allocatable, else capacity)
    memory: int  # bytes offered
    used_cpu: int = 0
    used_memory: int = 0
    instances: int = 0
    replicas: Mapping[str, int] = field(default_factory=dict)  # deployment key -> count


@dataclass(frozen=True)
class Snapshot:
    """The Nodes (with usage) and the placements of Deployments, keyed "namespace/name"."""

    nodes: Sequence[NodeInfo]
    placements: Mapping[str, Placement] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    node: str | None
    reason: str


def node_is_ready(node: Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def deployment_key(instance: Instance) -> str | None:
    name = instance.metadata.labels.get(DEPLOYMENT_LABEL)
    return f"{instance.metadata.namespace}/{name}" if name else None


def build_snapshot(
    nodes: Iterable[Node],
    instances: Iterable[Instance],
    deployments: Iterable[Deployment] = (),
    assumed: Mapping[str, str] | None = None,
) -> Snapshot:
    """Usage per Node from the Instances bound to it (not finished, not being deleted).

    `assumed` maps "namespace/name" of Instances bound by us but not yet seen bound in
    `instances` to their Node, so back-to-back decisions see each other.
    """
    assumed = assumed or {}
    cpu: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    count: Counter[str] = Counter()
    replicas: dict[str, Counter[str]] = {}
    for instance in instances:
        key = f"{instance.metadata.namespace}/{instance.metadata.name}"
        where = instance.spec.node_name or assumed.get(key, "")
        if not where or instance.status.phase in TERMINAL or instance.metadata.deletion_timestamp:
            continue
        cpu[where] += instance.spec.resources.millicpu
        memory[where] += instance.spec.resources.memory_bytes
        count[where] += 1
        owner = deployment_key(instance)
        if owner is not None:
            replicas.setdefault(where, Counter())[owner] += 1
    infos = []
    for node in nodes:
        name = node.metadata.name
        offered = node.status.allocatable or node.spec.capacity
        infos.append(
            NodeInfo(
                name=name,
                cluster=node.spec.cluster,
                labels=dict(node.metadata.labels),
                ready=node_is_ready(node) and not node.metadata.deletion_timestamp,
                schedulable=not node.spec.unschedulable
                and not any(t.effect in ("NoSchedule", "NoExecute") for t in node.spec.taints),
                cpu=offered.millicpu,
                memory=offered.memory_bytes,
                used_cpu=cpu[name],
                used_memory=memory[name],
                instances=count[name],
                replicas=dict(replicas.get(name, {})),
            )
        )
    placements = {
        f"{d.metadata.namespace}/{d.metadata.name}": d.spec.placement for d in deployments
    }
    return Snapshot(nodes=infos, placements=placements)


# Filters in the order a reader asks "why not this node?"; each returns a reason or None.
def _not_ready(node: NodeInfo, _i: Instance, _p: Placement | None) -> str | None:
    return None if node.ready else "not ready"


def _unschedulable(node: NodeInfo, _i: Instance, _p: Placement | None) -> str | None:
    return None if node.schedulable else "unschedulable"


def _cluster(node: NodeInfo, instance: Instance, placement: Placement | None) -> str | None:
    pinned = instance.metadata.annotations.get(CLUSTERS_ANNOTATION)
    if pinned is not None and node.cluster not in pinned.split(","):
        return "not in the instance's wave clusters"
    if placement is None or not placement.clusters or node.cluster in placement.clusters:
        return None
    return "not in an allowed cluster"


def _selector(node: NodeInfo, _i: Instance, placement: Placement | None) -> str | None:
    if placement is None:
        return None
    if all(node.labels.get(k) == v for k, v in placement.node_selector.items()):
        return None
    return "node selector mismatch"


def _cpu(node: NodeInfo, instance: Instance, _p: Placement | None) -> str | None:
    wanted = instance.spec.resources.millicpu
    return None if node.used_cpu + wanted <= node.cpu else "insufficient cpu"


def _memory(node: NodeInfo, instance: Instance, _p: Placement | None) -> str | None:
    wanted = instance.spec.resources.memory_bytes
    return None if node.used_memory + wanted <= node.memory else "insufficient memory"


FILTERS = (_not_ready, _unschedulable, _cluster, _selector, _cpu, _memory)


def _load(node: NodeInfo) -> float:
    """The larger of the cpu and memory fractions in use (0 for a dimension not offered)."""
    cpu = node.used_cpu / node.cpu if node.cpu else 0.0
    memory = node.used_memory / node.memory if node.memory else 0.0
    return max(cpu, memory)


def schedule(instance: Instance, snapshot: Snapshot) -> Decision:
    """The Node for `instance`, or None with a reason naming why each Node was rejected."""
    owner = deployment_key(instance)
    placement = snapshot.placements.get(owner) if owner is not None else None
    rejected: Counter[str] = Counter()
    feasible: list[NodeInfo] = []
    for node in snapshot.nodes:
        reason = next((r for f in FILTERS if (r := f(node, instance, placement)) is not None), None)
        if reason is None:
            feasible.append(node)
        else:
            rejected[reason] += 1
    if not feasible:
        total = len(snapshot.nodes)
        if not total:
            return Decision(None, "no nodes are registered")
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items()))
        return Decision(None, f"0/{total} nodes are available: {why}")
    spread = placement.spread_across if placement is not None else "node"
    by_cluster: Counter[str] = Counter()
    if owner is not None and spread == "cluster":
        for node in snapshot.nodes:
            by_cluster[node.cluster] += node.replicas.get(owner, 0)

    def preference(node: NodeInfo) -> tuple[int, int, float, int, str]:
        same = node.replicas.get(owner, 0) if owner is not None and spread != "none" else 0
        return (by_cluster[node.cluster], same, _load(node), node.instances, node.name)

    best = min(feasible, key=preference)
    return Decision(
        best.name, f"{len(feasible)}/{len(snapshot.nodes)} nodes fit; chose {best.name}"
    )
