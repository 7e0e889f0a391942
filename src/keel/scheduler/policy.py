"""The placement policy, pure: `schedule(instance, state) -> Decision` filters every Node
slot of the columnar `ClusterState` with array operations, in the order a reader asks "why
not this node?", then ranks the feasible ones; `preempt` finds the Node whose eviction set
is cheapest when nothing fits. No I/O, no clock.

Filters: Ready; schedulable (not cordoned); allowed clusters (the Deployment's
placement.clusters and the Instance's `keel.dev/clusters` annotation); node selector and
required node affinity; NoSchedule/NoExecute taints not tolerated; cpu, memory and extended
resources; required instance affinity and anti-affinity over a topology key; topology spread
constraints with DoNotSchedule.

Ranking, lexicographic: the preferences (preferred node and instance (anti-)affinity, spread
constraints with ScheduleAnyway, PreferNoSchedule taints), then the replicas of the same
Deployment spread over failure domains (`placement.spreadAcross`: `node` spreads over
clusters, then zones, then nodes; `cluster` over clusters, then zones, and packs within a
zone; `none` not at all), then allocation (LeastAllocated or MostAllocated; packing for
`cluster`), then the Node's name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from keel.api.disruption import rollout_budget
from keel.api.resources import (
    TOPOLOGY_KEYS,
    Cluster,
    Deployment,
    Instance,
    InstanceAffinityTerm,
    Node,
    NodeSelectorTerm,
    Placement,
    Toleration,
)
from keel.scheduler.state import (
    CLUSTERS_ANNOTATION,
    DEPLOYMENT_LABEL,
    ClusterState,
    Placed,
    deployment_key,
    effective_priority,
    node_is_ready,
    selector_matcher,
    selector_signature,
)

__all__ = [
    "DEPLOYMENT_LABEL",
    "Decision",
    "Preemption",
    "SchedulerConfig",
    "Snapshot",
    "build_snapshot",
    "deployment_key",
    "feasible_nodes",
    "node_is_ready",
    "noexecute_deadline",
    "preempt",
    "schedule",
]

Snapshot = ClusterState
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Scoring = Literal["LeastAllocated", "MostAllocated"]

# Reasons a resource filter gives: nodes failing only these may be freed by preemption.
RESOURCE_REASONS = ("insufficient cpu", "insufficient memory")


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler-wide settings: how allocation ranks Nodes where the placement does not
    decide it (LeastAllocated spreads load, MostAllocated packs)."""

    scoring: Scoring = "LeastAllocated"


DEFAULT_CONFIG = SchedulerConfig()


@dataclass(frozen=True)
class Decision:
    node: str | None
    reason: str
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> Nodes


@dataclass(frozen=True)
class Preemption:
    node: str
    victims: tuple[str, ...]  # "namespace/name" of the Instances to evict
    reason: str


def build_snapshot(
    nodes: Iterable[Node],
    instances: Iterable[Instance],
    deployments: Iterable[Deployment] = (),
    assumed: Mapping[str, str] | None = None,
    clusters: Iterable[Cluster] = (),
) -> ClusterState:
    """A state from complete lists; `assumed` maps "namespace/name" of Instances bound by us
    but not yet seen bound to their Node, so back-to-back decisions see each other."""
    return ClusterState.build(nodes, instances, deployments, clusters, assumed)


# ---------------------------------------------------------------------------- filters


def _placement(instance: Instance, state: ClusterState) -> Placement | None:
    deployment = state.deployment_of(instance)
    return deployment.spec.placement if deployment is not None else None


def _allowed_clusters(instance: Instance, placement: Placement | None) -> set[str] | None:
    allowed: set[str] | None = None
    if placement is not None and placement.clusters:
        allowed = set(placement.clusters)
    annotation = instance.metadata.annotations.get(CLUSTERS_ANNOTATION)
    if annotation is not None:
        wave = {c.strip() for c in annotation.split(",") if c.strip()}
        allowed = wave if allowed is None else allowed & wave
    return allowed


def _term_mask(state: ClusterState, term: NodeSelectorTerm, n: int) -> BoolArray:
    if not term.match_expressions:
        return np.zeros(n, dtype=np.bool_)
    mask = np.ones(n, dtype=np.bool_)
    for expression in term.match_expressions:
        column = state.labels.get(expression.key)
        values = column[:n] if column is not None else np.full(n, -1, dtype=np.int64)
        ids = [state.label_value_id(expression.key, v) for v in expression.values]
        if expression.operator == "In":
            mask &= np.isin(values, ids)
        elif expression.operator == "NotIn":
            mask &= ~np.isin(values, ids)
        elif expression.operator == "Exists":
            mask &= values >= 0
        else:
            mask &= values < 0
    return mask


def tolerates(tolerations: Sequence[Toleration], key: str, value: str, effect: str) -> bool:
    for toleration in tolerations:
        if toleration.effect and toleration.effect != effect:
            continue
        if not toleration.key:
            return True  # empty key, operator Exists: every taint
        if toleration.key != key:
            continue
        if toleration.operator == "Exists" or toleration.value == value:
            return True
    return False


def noexecute_deadline(
    tolerations: Sequence[Toleration],
    taints: Iterable[tuple[str, str, float]],
) -> float | None:
    """When an Instance on a Node with these NoExecute taints ((key, value, since) each)
    must go: at once (the earliest `since`) for a taint it does not tolerate, `since +
    tolerationSeconds` for one tolerated for a while, never (None) if it tolerates them all
    for good. As Kubernetes' taint manager."""
    due: float | None = None
    for key, value, since in taints:
        matching = [
            t
            for t in tolerations
            if (not t.effect or t.effect == "NoExecute")
            and (not t.key or t.key == key)
            and (not t.key or t.operator == "Exists" or t.value == value)
        ]
        if not matching:
            when = since
        elif any(t.toleration_seconds is None for t in matching):
            continue
        else:
            when = since + min(t.toleration_seconds or 0 for t in matching)
        due = when if due is None else min(due, when)
    return due


def _taint_name(key: str, value: str, effect: str) -> str:
    return f"{key}={value}:{effect}" if value else f"{key}:{effect}"


def _domain_counts(
    state: ClusterState, topology_key: str, counts: IntArray, among: BoolArray, n: int
) -> tuple[IntArray, IntArray, IntArray]:
    """(domain per slot, matching Instances per domain counted over `among`, that count
    at each slot: 0 where the slot has no domain)."""
    domains = state.domain_of(topology_key)[:n]
    has = domains >= 0
    size = int(domains.max()) + 1 if n and has.any() else 1
    use = has & among
    per_domain = np.bincount(domains[use], weights=counts[:n][use], minlength=size).astype(np.int64)
    at_slot = np.where(has, per_domain[np.clip(domains, 0, None)], 0)
    return domains, per_domain, at_slot


@dataclass
class _Filtered:
    feasible: BoolArray
    rejected: Counter[str]
    # Nodes failing nothing but resources (preemption might free them)
    resource_only: BoolArray
    node_level: BoolArray  # passing cluster, selector and node affinity (spread counts these)


def _run_filters(instance: Instance, state: ClusterState, placement: Placement | None) -> _Filtered:
    n = state.high
    spec = instance.spec
    remaining = state.live[:n].copy()
    rejected: Counter[str] = Counter()
    resource_fail = np.zeros(n, dtype=np.bool_)

    def apply(reason: str, ok: BoolArray, *, resource: bool = False) -> None:
        nonlocal remaining
        failing = remaining & ~ok
        count = int(failing.sum())
        if count:
            rejected[reason] += count
            if resource:
                resource_fail[failing] = True
        remaining = remaining & ok

    def apply_rest(reason: str, ok: BoolArray) -> None:
        # Non-resource filters after the resource ones: a node failing them is not
        # preemptable either.
        nonlocal remaining
        failing = (remaining | resource_fail) & ~ok
        count = int((remaining & ~ok).sum())
        if count:
            rejected[reason] += count
        resource_fail[failing] = False
        remaining = remaining & ok

    apply("not ready", state.ready[:n])
    apply("unschedulable", state.schedulable[:n])
    allowed = _allowed_clusters(instance, placement)
    if allowed is not None:
        names = state.domain_names["cluster"].ids
        ids = [names[c] for c in allowed if c in names]
        apply("not in an allowed cluster", np.isin(state.domains["cluster"][:n], ids))
    if placement is not None and placement.node_selector:
        ok = np.ones(n, dtype=np.bool_)
        for key, value in placement.node_selector.items():
            column = state.labels.get(key)
            if column is None:
                ok[:] = False
                break
            ok &= column[:n] == state.label_value_id(key, value)
        apply("node selector mismatch", ok)
    affinity = spec.affinity
    node_affinity = affinity.node_affinity if affinity is not None else None
    required = (
        node_affinity.required_during_scheduling_ignored_during_execution
        if node_affinity is not None
        else None
    )
    if required is not None:
        ok = np.zeros(n, dtype=np.bool_)
        for selector_term in required.node_selector_terms:
            ok |= _term_mask(state, selector_term, n)
        apply("node affinity mismatch", ok)
    node_level = remaining.copy()
    for taint_id, tainted in state.taints.items():
        key, value, effect = state.taint_info[taint_id]
        if effect in ("NoSchedule", "NoExecute") and not tolerates(
            spec.tolerations, key, value, effect
        ):
            apply(f"taint {_taint_name(key, value, effect)} not tolerated", ~tainted[:n])
    # resources, against what is free once the room held for nominated Instances is set aside
    resources = spec.resources
    free_cpu = state.cpu[:n] - state.used_cpu[:n] - state.nominated_cpu[:n]
    free_memory = state.memory[:n] - state.used_memory[:n] - state.nominated_memory[:n]
    apply("insufficient cpu", free_cpu >= resources.millicpu, resource=True)
    apply("insufficient memory", free_memory >= resources.memory_bytes, resource=True)
    for name, amount in sorted(resources.extended_units.items()):
        capacity = state.ext_capacity.get(name)
        if capacity is None:
            apply(f"insufficient {name}", np.zeros(n, dtype=np.bool_), resource=True)
            continue
        used = state.ext_used[name]
        apply(f"insufficient {name}", capacity[:n] - used[:n] >= amount, resource=True)
    # inter-instance constraints
    namespace = instance.metadata.namespace
    live = state.live[:n]
    if affinity is not None and affinity.instance_anti_affinity is not None:
        for (
            term
        ) in affinity.instance_anti_affinity.required_during_scheduling_ignored_during_execution:
            counts = state.selected(namespace, term.label_selector)
            _d, _p, at = _domain_counts(state, term.topology_key, counts, live, n)
            apply_rest(f"instance anti-affinity ({_topology(term)}) not satisfied", at == 0)
    labels = instance.metadata.labels
    own_terms = _own_anti_terms(instance)
    for signature, (matches, topology, carriers) in state.anti_terms.items():
        # Placed Instances whose required anti-affinity selects this one keep it out of
        # their domains (the same term of its own was checked above).
        if signature[0] != namespace or signature in own_terms or not matches(labels):
            continue
        if not carriers[:n].any():
            continue
        _d, _p, at = _domain_counts(state, topology, carriers, live, n)
        apply_rest(f"anti-affinity ({topology}) of placed instances not satisfied", at == 0)
    if affinity is not None and affinity.instance_affinity is not None:
        for term in affinity.instance_affinity.required_during_scheduling_ignored_during_execution:
            counts = state.selected(namespace, term.label_selector)
            domains, per_domain, at = _domain_counts(state, term.topology_key, counts, live, n)
            if not per_domain.any() and selector_matcher(term.label_selector)(
                instance.metadata.labels
            ):
                # The first of a group that wants to be together may go anywhere.
                ok = domains >= 0
            else:
                ok = at > 0
            apply_rest(f"instance affinity ({_topology(term)}) not satisfied", ok)
    for constraint in spec.topology_spread_constraints:
        if constraint.when_unsatisfiable != "DoNotSchedule":
            continue
        counts = state.selected(namespace, constraint.label_selector)
        eligible = node_level & (state.domain_of(constraint.topology_key)[:n] >= 0)
        domains, per_domain, at = _domain_counts(
            state, constraint.topology_key, counts, eligible, n
        )
        present = np.unique(domains[eligible])
        minimum = int(per_domain[present].min()) if present.size else 0
        own = 1 if selector_matcher(constraint.label_selector)(instance.metadata.labels) else 0
        ok = (domains >= 0) & (at + own - minimum <= constraint.max_skew)
        apply_rest(
            f"topology spread ({TOPOLOGY_NAME[constraint.topology_key]}, "
            f"maxSkew {constraint.max_skew}) not satisfied",
            ok,
        )
    return _Filtered(remaining, rejected, resource_fail, node_level)


def _own_anti_terms(instance: Instance) -> set[tuple[Any, ...]]:
    affinity = instance.spec.affinity
    if affinity is None or affinity.instance_anti_affinity is None:
        return set()
    namespace = instance.metadata.namespace
    return {
        (*selector_signature(namespace, t.label_selector), TOPOLOGY_KEYS[t.topology_key])
        for t in affinity.instance_anti_affinity.required_during_scheduling_ignored_during_execution
    }


def _topology(term: InstanceAffinityTerm) -> str:
    return TOPOLOGY_NAME[term.topology_key]


TOPOLOGY_NAME = {
    "node": "node",
    "kubernetes.io/hostname": "node",
    "cluster": "cluster",
    "keel.dev/cluster": "cluster",
    "zone": "zone",
    "topology.kubernetes.io/zone": "zone",
    "region": "region",
    "topology.kubernetes.io/region": "region",
}


def summary(total: int, rejected: Mapping[str, int]) -> str:
    """ "0/5000 nodes are available: 3112 insufficient cpu, 1888 taint gpu:NoSchedule not
    tolerated" (most common reason first)."""
    if not total:
        return "no nodes are registered"
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(rejected.items(), key=_by_count))
    return f"0/{total} nodes are available: {why}"


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


# ---------------------------------------------------------------------------- scores


def _preferences(
    instance: Instance, state: ClusterState, idx: IntArray, node_level: BoolArray
) -> FloatArray | None:
    """The weighted preferences at the feasible slots `idx` (higher is better), or None."""
    spec = instance.spec
    n = state.high
    score = np.zeros(idx.size, dtype=np.float64)
    used = False
    affinity = spec.affinity
    node_affinity = affinity.node_affinity if affinity is not None else None
    if node_affinity is not None:
        for preferred in node_affinity.preferred_during_scheduling_ignored_during_execution:
            score += preferred.weight * _term_mask(state, preferred.preference, n)[idx]
            used = True
    for taint_id, column in state.taints.items():
        key, value, effect = state.taint_info[taint_id]
        if effect == "PreferNoSchedule" and not tolerates(spec.tolerations, key, value, effect):
            score -= 100.0 * column[:n][idx]
            used = True
    namespace = instance.metadata.namespace
    live = state.live[:n]
    for sign, group in (
        (1.0, affinity.instance_affinity if affinity is not None else None),
        (-1.0, affinity.instance_anti_affinity if affinity is not None else None),
    ):
        if group is None:
            continue
        for weighted in group.preferred_during_scheduling_ignored_during_execution:
            term = weighted.instance_affinity_term
            counts = state.selected(namespace, term.label_selector)
            _d, _p, at = _domain_counts(state, term.topology_key, counts, live, n)
            values = at[idx].astype(np.float64)
            top = values.max() if values.size else 0.0
            if top > 0:
                score += sign * weighted.weight * 100.0 * values / top
            used = True
    for constraint in spec.topology_spread_constraints:
        if constraint.when_unsatisfiable != "ScheduleAnyway":
            continue
        counts = state.selected(namespace, constraint.label_selector)
        eligible = node_level & (state.domain_of(constraint.topology_key)[:n] >= 0)
        domains, per_domain, at = _domain_counts(
            state, constraint.topology_key, counts, eligible, n
        )
        present = np.unique(domains[eligible])
        minimum = float(per_domain[present].min()) if present.size else 0.0
        penalty = (at[idx] - minimum) / constraint.max_skew
        penalty[domains[idx] < 0] = penalty.max() + 1 if penalty.size else 0
        score -= 100.0 * penalty
        used = True
    return score if used else None


def _allocation(state: ClusterState, idx: IntArray) -> FloatArray:
    """The larger of the cpu and memory fractions in use (0 for a dimension not offered)."""
    cpu = state.cpu[idx].astype(np.float64)
    memory = state.memory[idx].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cpu_load = np.where(cpu > 0, state.used_cpu[idx] / cpu, 0.0)
        memory_load = np.where(memory > 0, state.used_memory[idx] / memory, 0.0)
    result: FloatArray = np.maximum(cpu_load, memory_load)
    return result


def _rank_keys(  # noqa: PLR0917
    instance: Instance,
    state: ClusterState,
    placement: Placement | None,
    idx: IntArray,
    node_level: BoolArray,
    config: SchedulerConfig,
) -> list[npt.NDArray[np.generic]]:
    """Sort keys over the feasible slots `idx`, most significant first (smaller wins)."""
    keys: list[npt.NDArray[np.generic]] = []
    preferences = _preferences(instance, state, idx, node_level)
    if preferences is not None:
        keys.append(-preferences)
    spread = placement.spread_across if placement is not None else "node"
    owner = deployment_key(instance)
    pack = config.scoring == "MostAllocated"
    if owner is not None and spread != "none" and owner in state.owners:
        replicas = state.replicas(owner)
        live = state.live[: state.high]
        for topology in ("cluster", "zone"):
            _d, _p, at = _domain_counts(state, topology, replicas, live, state.high)
            keys.append(at[idx])
        if spread == "node":
            keys.append(replicas[idx])
        else:
            pack = True  # spread over failure domains, pack within one
    load = _allocation(state, idx)
    count = state.count[idx]
    keys.append(-load if pack else load)
    keys.append(-count if pack else count)
    keys.append(state.rank()[idx])
    return keys


def schedule(
    instance: Instance, state: ClusterState, config: SchedulerConfig = DEFAULT_CONFIG
) -> Decision:
    """The Node for `instance`, or None with a reason counting why Nodes were rejected."""
    placement = _placement(instance, state)
    filtered = _run_filters(instance, state, placement)
    total = int(state.live[: state.high].sum())
    idx = np.flatnonzero(filtered.feasible)
    if not idx.size:
        return Decision(None, summary(total, filtered.rejected), dict(filtered.rejected))
    if idx.size == 1:
        best = int(idx[0])
    else:
        keys = _rank_keys(instance, state, placement, idx, filtered.node_level, config)
        best = int(idx[np.lexsort(tuple(reversed(keys)))[0]])
    name = state.names[best]
    return Decision(name, f"{idx.size}/{total} nodes fit; chose {name}")


def feasible_nodes(instance: Instance, state: ClusterState) -> list[str]:
    """Every Node `instance` could be placed on now (the filters alone)."""
    filtered = _run_filters(instance, state, _placement(instance, state))
    return [state.names[int(i)] for i in np.flatnonzero(filtered.feasible)]


# ---------------------------------------------------------------------------- preemption

CANDIDATES = 16  # Nodes whose eviction sets are worked out exactly, per preemption


def _budgets(state: ClusterState, victims: Iterable[Placed]) -> dict[str, int]:
    """Ready Instances each victim's Deployment may lose now (its disruption budget)."""
    allowed: dict[str, int] = {}
    by_uid = state.deployment_by_uid
    for victim in victims:
        uid = victim.owner_uid
        if not uid or uid in allowed or uid not in by_uid:
            continue
        deployment = by_uid[uid]
        _surge, max_unavailable = rollout_budget(deployment)
        floor = deployment.spec.replicas - max_unavailable
        allowed[uid] = max(0, state.ready_by_owner.get(uid, 0) - floor)
    return allowed


def preempt(instance: Instance, state: ClusterState) -> Preemption | None:
    """The Node where evicting the cheapest set of lower-priority Instances (lowest highest
    priority, then fewest victims, then lowest priority sum) makes `instance` fit, keeping
    every Deployment within its disruption budget; None if there is none, or the Instance
    may not preempt (`preemptionPolicy: Never`). Equal or higher priority is never a victim.
    """
    if instance.spec.preemption_policy == "Never":
        return None
    priority = effective_priority(instance, state.deployment_of(instance))
    lower = sorted(p for p in state.by_priority if p < priority)
    if not lower:
        return None
    placement = _placement(instance, state)
    filtered = _run_filters(instance, state, placement)
    n = state.high
    candidates = filtered.resource_only
    if not candidates.any():
        return None
    resources = instance.spec.resources
    want_cpu, want_memory = resources.millicpu, resources.memory_bytes
    want_ext = resources.extended_units
    free_cpu = state.cpu[:n] - state.used_cpu[:n] - state.nominated_cpu[:n]
    free_memory = state.memory[:n] - state.used_memory[:n] - state.nominated_memory[:n]
    # Per Node, a lower bound of the cost (highest victim priority, number of victims): the
    # lowest priority level whose Instances (with all below it) would make room, and how
    # many of them at least, the deficit over the largest one of those levels. Nodes are
    # looked at cheapest bound first, and the search stops once no bound can beat the best
    # set found (a Node whose lower-priority room is in many small Instances, say those of
    # other workloads, ranks after one where a single eviction makes room).
    level = np.full(n, len(lower), dtype=np.int64)
    bound = np.zeros(n, dtype=np.int64)
    reclaim_cpu = np.zeros(n, dtype=np.int64)
    reclaim_memory = np.zeros(n, dtype=np.int64)
    largest_cpu = np.zeros(n, dtype=np.int64)
    largest_memory = np.zeros(n, dtype=np.int64)
    need_cpu = np.maximum(want_cpu - free_cpu, 0)
    need_memory = np.maximum(want_memory - free_memory, 0)
    for index, p in enumerate(lower):
        cpu, memory, _count = state.by_priority[p]
        reclaim_cpu += cpu[:n]
        reclaim_memory += memory[:n]
        big_cpu, big_memory = state.largest[p]
        np.maximum(largest_cpu, big_cpu[:n], out=largest_cpu)
        np.maximum(largest_memory, big_memory[:n], out=largest_memory)
        enough = (free_cpu + reclaim_cpu >= want_cpu) & (
            free_memory + reclaim_memory >= want_memory
        )
        first = enough & (level == len(lower))
        if first.any():
            level[first] = index
            bound[first] = np.maximum(
                _ceil_div(need_cpu[first], largest_cpu[first]),
                _ceil_div(need_memory[first], largest_memory[first]),
            )
    candidates = candidates & (level < len(lower))
    idx = np.flatnonzero(candidates)
    if not idx.size:
        return None
    # How much must go, relative to the request: a Node whose room is partly free already
    # (or not held for another nominee) needs fewer victims.
    with np.errstate(divide="ignore", invalid="ignore"):
        deficit = np.maximum(
            (want_cpu - free_cpu[idx]) / max(want_cpu, 1),
            (want_memory - free_memory[idx]) / max(want_memory, 1),
        )
    order = np.lexsort((state.rank()[idx], deficit, bound[idx], level[idx]))
    best: tuple[tuple[int, int, int, int], int, list[Placed]] | None = None
    for candidate in idx[order[:CANDIDATES]]:
        slot = int(candidate)
        if best is not None:
            floor = (lower[int(level[slot])], int(bound[slot]))
            top, count = best[0][0], best[0][1]
            if (top, count) < floor or (top == lower[0] and count <= floor[1]):
                # No Node from here on can beat it: their bounds are no lower (and at the
                # lowest priority, no lower priority sum is possible either).
                break
        found = _victims_on(state, slot, priority, want_cpu, want_memory, want_ext)
        if found is None:
            continue
        cost = (
            max(v.priority for v in found) if found else priority,
            len(found),
            sum(v.priority for v in found),
            int(state.rank()[slot]),
        )
        if best is None or cost < best[0]:
            best = (cost, slot, found)
    if best is None:
        return None
    _cost, slot, victims = best
    node = state.names[slot]
    shown = ", ".join(v.key for v in victims)
    return Preemption(
        node,
        tuple(v.key for v in victims),
        f"preempting {len(victims)} lower-priority instance(s) on {node}: {shown}",
    )


def _ceil_div(need: IntArray, size: IntArray) -> IntArray:
    """How many Instances of at most `size` free `need` at least (0 when nothing is needed;
    `need` itself when there is no Instance: no finite number would do)."""
    result: IntArray = np.where(need <= 0, 0, -(-need // np.maximum(size, 1)))
    return result


def _victims_on(  # noqa: PLR0917
    state: ClusterState,
    slot: int,
    priority: int,
    want_cpu: int,
    want_memory: int,
    want_ext: Mapping[str, int],
) -> list[Placed] | None:
    """The fewest, lowest-priority Instances on `slot` whose eviction makes room, within
    their Deployments' budgets; None if no such set exists. As kube-scheduler: remove every
    lower-priority Instance, then give back ("reprieve") the highest first while it fits."""
    placed = [state.placed[k] for k in state.by_slot[slot] if k not in state.evicting]
    lower = [p for p in placed if p.priority < priority and not p.terminating]
    free_cpu = int(state.cpu[slot] - state.used_cpu[slot] - state.nominated_cpu[slot])
    free_memory = int(state.memory[slot] - state.used_memory[slot] - state.nominated_memory[slot])
    free_ext = {
        name: int(state.ext_capacity[name][slot] - state.ext_used[name][slot])
        if name in state.ext_capacity
        else 0
        for name in want_ext
    }
    for victim in lower:
        free_cpu += victim.cpu
        free_memory += victim.memory
        for name in free_ext:
            free_ext[name] += victim.extended.get(name, 0)

    def fits(cpu: int, memory: int, ext: Mapping[str, int]) -> bool:
        return (
            cpu >= want_cpu
            and memory >= want_memory
            and all(ext[name] >= amount for name, amount in want_ext.items())
        )

    if not fits(free_cpu, free_memory, free_ext):
        return None
    budgets = _budgets(state, lower)
    victims: list[Placed] = []

    # Reprieve (keep) the most valuable first: higher priority; within one priority the
    # smallest (so that few large ones go rather than many small ones), then Ready ones.
    def value(p: Placed) -> tuple[int, float, bool, str]:
        size = p.cpu / max(want_cpu, 1) + p.memory / max(want_memory, 1)
        return (-p.priority, size, not p.ready, p.key)

    for candidate in sorted(lower, key=value):
        cpu = free_cpu - candidate.cpu
        memory = free_memory - candidate.memory
        ext = {name: free_ext[name] - candidate.extended.get(name, 0) for name in free_ext}
        if fits(cpu, memory, ext):
            free_cpu, free_memory, free_ext = cpu, memory, ext  # it stays
            continue
        if candidate.ready and candidate.owner_uid in budgets:
            if budgets[candidate.owner_uid] <= 0:
                return None  # evicting it would break its Deployment's budget
            budgets[candidate.owner_uid] -= 1
        victims.append(candidate)
    return victims
