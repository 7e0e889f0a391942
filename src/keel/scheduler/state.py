"""The scheduler's columnar snapshot: one slot per Node in numpy arrays (readiness, capacity,
allocation, domain ids per topology key, one value-id column per label key, one column per
distinct taint), plus the Instances placed on them and per-selector count columns, kept up
to date incrementally from watch events. Nothing here decides; keel.scheduler.policy does,
with array operations over these columns. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from keel.api.disruption import controller_ref, is_ready
from keel.api.resources import (
    TOPOLOGY_KEYS,
    Cluster,
    Deployment,
    Instance,
    InstanceLabelSelector,
    Node,
)

__all__ = [
    "CLUSTERS_ANNOTATION",
    "DEPLOYMENT_LABEL",
    "REGION_LABEL",
    "TOPOLOGIES",
    "ZONE_LABEL",
    "ClusterState",
    "Placed",
    "Room",
    "effective_priority",
    "instance_key",
    "node_is_ready",
    "selector_matcher",
]

DEPLOYMENT_LABEL = "keel.dev/deployment"
# An Instance may be restricted to some clusters (comma-separated names) besides its
# Deployment's placement.clusters: rollout waves use it.
CLUSTERS_ANNOTATION = "keel.dev/clusters"
# A Node's zone and region: these well-known labels, else its Cluster's spec.zone/region.
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
TOPOLOGIES = ("node", "cluster", "zone", "region")
TERMINAL = frozenset({"Succeeded", "Failed"})  # their requests are free again

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def node_is_ready(node: Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def instance_key(instance: Instance) -> str:
    return f"{instance.metadata.namespace}/{instance.metadata.name}"


def deployment_key(instance: Instance) -> str | None:
    name = instance.metadata.labels.get(DEPLOYMENT_LABEL)
    return f"{instance.metadata.namespace}/{name}" if name else None


def effective_priority(instance: Instance, deployment: Deployment | None) -> int:
    """The Instance's `priority`; when it leaves it at 0, its Deployment's `priority`."""
    if instance.spec.priority or deployment is None:
        return instance.spec.priority
    return deployment.spec.priority


def selector_matcher(selector: InstanceLabelSelector) -> Callable[[Mapping[str, str]], bool]:
    pairs = tuple(selector.match_labels.items())
    expressions = tuple(
        (e.key, e.operator, frozenset(e.values)) for e in selector.match_expressions
    )

    def matches(labels: Mapping[str, str]) -> bool:
        for key, value in pairs:
            if labels.get(key) != value:
                return False
        for key, operator, values in expressions:
            present = key in labels
            if operator == "In" and (not present or labels[key] not in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True

    return matches


def selector_signature(namespace: str, selector: InstanceLabelSelector) -> tuple[Any, ...]:
    return (
        namespace,
        tuple(sorted(selector.match_labels.items())),
        tuple(
            sorted((e.key, e.operator, tuple(sorted(e.values))) for e in selector.match_expressions)
        ),
    )


@dataclass(frozen=True)
class Room:
    """The most cpu and the most memory free on any one usable Node (each on its own, the
    room held for nominated Instances set aside): an Instance asking for more fits nowhere."""

    cpu: int
    memory: int

    def may_fit(self, instance: Instance) -> bool:
        resources = instance.spec.resources
        return resources.millicpu <= self.cpu and resources.memory_bytes <= self.memory


@dataclass
class Placed:
    """An Instance holding resources on a Node (bound, or assumed bound by us)."""

    key: str
    uid: str
    namespace: str
    labels: Mapping[str, str]
    slot: int
    priority: int
    cpu: int
    memory: int
    extended: dict[str, int]
    owner: str | None  # its Deployment, "namespace/name"
    owner_uid: str  # its controlling Deployment's uid ("" if none)
    ready: bool
    terminating: bool
    assumed: bool
    instance: Instance | None = None


class _Interner:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def id(self, name: str) -> int:
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = len(self.names)
            self.names.append(name)
        return found


@dataclass
class _Counter:
    """Per-slot counts of the placed Instances one selector selects in one namespace."""

    namespace: str
    matches: Callable[[Mapping[str, str]], bool]
    counts: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # One label pair every selected Instance has (None: no matchLabels): a placement only
    # looks at the counters of its own pairs.
    pair: tuple[str, str] | None = None


class ClusterState:
    """The columnar snapshot. Slots of removed Nodes are reused; `live` marks the used ones."""

    def __init__(self, capacity: int = 64) -> None:
        self.cap = capacity
        self.names: list[str] = [""] * capacity
        self.slots: dict[str, int] = {}
        self._free: list[int] = []
        self.high = 0  # slots [0, high) have ever been used
        self.nodes: dict[str, Node] = {}
        self.live = np.zeros(capacity, dtype=np.bool_)
        self.ready = np.zeros(capacity, dtype=np.bool_)
        self.schedulable = np.zeros(capacity, dtype=np.bool_)
        self.cpu = np.zeros(capacity, dtype=np.int64)
        self.memory = np.zeros(capacity, dtype=np.int64)
        self.used_cpu = np.zeros(capacity, dtype=np.int64)
        self.used_memory = np.zeros(capacity, dtype=np.int64)
        self.count = np.zeros(capacity, dtype=np.int64)
        # domain id per topology key (-1: the node has none); "node" is the slot itself
        self.domains: dict[str, IntArray] = {
            t: np.full(capacity, -1, dtype=np.int64) for t in TOPOLOGIES
        }
        self.domain_names: dict[str, _Interner] = {t: _Interner() for t in TOPOLOGIES}
        self.labels: dict[str, IntArray] = {}  # label key -> value id per slot (-1 absent)
        self.label_values: dict[str, _Interner] = {}
        self.taint_ids = _Interner()  # "key=value:Effect"
        self.taint_info: list[tuple[str, str, str]] = []  # id -> (key, value, effect)
        self.taints: dict[int, BoolArray] = {}
        self.ext_capacity: dict[str, IntArray] = {}
        self.ext_used: dict[str, IntArray] = {}
        self.clusters: dict[str, Cluster] = {}
        self.deployments: dict[str, Deployment] = {}
        self.deployment_by_uid: dict[str, Deployment] = {}
        self.placed: dict[str, Placed] = {}
        # Instances bound to a Node not (or no longer) known: placed once it appears.
        self.orphans: dict[str, dict[str, Instance]] = {}
        self._orphan_of: dict[str, str] = {}  # instance key -> node name
        self.by_slot: list[set[str]] = [set() for _ in range(capacity)]
        self.owners: dict[str, IntArray] = {}  # deployment key -> replicas per slot
        self._counters: dict[tuple[Any, ...], _Counter] = {}
        self._by_pair: dict[tuple[str, str, str], list[_Counter]] = {}  # (ns, key, value)
        # The required anti-affinity terms of placed Instances, (namespace, selector,
        # topology) -> (matcher, how many placed Instances per slot carry it): a newcomer
        # they select must keep out of their domains too (symmetry, as Kubernetes).
        self.anti_terms: dict[
            tuple[Any, ...], tuple[Callable[[Mapping[str, str]], bool], str, IntArray]
        ] = {}
        self._unpaired: dict[str, list[_Counter]] = {}  # namespace -> counters
        # priority -> (cpu, memory, count) of the placed, not terminating Instances per slot:
        # what preemption could reclaim from Instances below a priority, as array sums.
        self.by_priority: dict[int, tuple[IntArray, IntArray, IntArray]] = {}
        # priority -> (cpu, memory) of the largest such Instance per slot (each dimension on
        # its own): how few victims could free a deficit, a bound preemption ranks Nodes by.
        self.largest: dict[int, tuple[IntArray, IntArray]] = {}
        self.ready_by_owner: dict[str, int] = {}  # Deployment uid -> Ready Instances placed
        # Resources reserved on a Node for an Instance whose preemption is in flight.
        self.nominated: dict[str, tuple[int, int, int, dict[str, int], int]] = {}
        # Victims of preemptions in flight: already promised, never chosen twice.
        self.evicting: set[str] = set()
        self.nominated_cpu = np.zeros(capacity, dtype=np.int64)
        self.nominated_memory = np.zeros(capacity, dtype=np.int64)
        self._rank: IntArray | None = None  # slot -> rank of its name
        # Per namespace, what its placed Instances request ("cpu", "memory", extended
        # resources) and how many there are: the tenants' allocations fairness weighs,
        # kept with every placement rather than summed per decision.
        self.namespace_used: dict[str, dict[str, int]] = {}
        self._namespace_count: dict[str, int] = {}
        self._capacity: dict[str, int] | None = None  # schedulable_capacity(), until a Node changes

    # ------------------------------------------------------------------ growth

    def _grow(self) -> None:
        old = self.cap
        new = old * 2

        def widen(array: npt.NDArray[Any], fill: Any = 0) -> npt.NDArray[Any]:
            grown = np.full(new, fill, dtype=array.dtype)
            grown[:old] = array
            return grown

        for name in (
            "live", "ready", "schedulable", "cpu", "memory", "used_cpu", "used_memory",
            "count", "nominated_cpu", "nominated_memory",
        ):  # fmt: skip
            setattr(self, name, widen(getattr(self, name)))
        self.domains = {t: widen(a, -1) for t, a in self.domains.items()}
        self.labels = {k: widen(a, -1) for k, a in self.labels.items()}
        self.taints = {k: widen(a) for k, a in self.taints.items()}
        self.ext_capacity = {k: widen(a) for k, a in self.ext_capacity.items()}
        self.ext_used = {k: widen(a) for k, a in self.ext_used.items()}
        self.owners = {k: widen(a) for k, a in self.owners.items()}
        self.anti_terms = {k: (m, t, widen(a)) for k, (m, t, a) in self.anti_terms.items()}
        self.by_priority = {
            p: (widen(c), widen(m), widen(n)) for p, (c, m, n) in self.by_priority.items()
        }
        self.largest = {p: (widen(c), widen(m)) for p, (c, m) in self.largest.items()}
        for counter in self._counters.values():
            counter.counts = widen(counter.counts)
        self.names.extend([""] * old)
        self.by_slot.extend(set() for _ in range(old))
        self.cap = new

    def _zeros(self) -> IntArray:
        return np.zeros(self.cap, dtype=np.int64)

    # ------------------------------------------------------------------ nodes

    def upsert_node(self, node: Node) -> None:
        name = node.metadata.name
        slot = self.slots.get(name)
        if slot is None:
            if self._free:
                slot = self._free.pop()
            else:
                if self.high == self.cap:
                    self._grow()
                slot = self.high
                self.high += 1
            self.slots[name] = slot
            self.names[slot] = name
            self._rank = None
        self.nodes[name] = node
        self._capacity = None
        self.live[slot] = True
        self.ready[slot] = node_is_ready(node) and not node.metadata.deletion_timestamp
        self.schedulable[slot] = not node.spec.unschedulable
        offered = node.status.allocatable or node.spec.capacity
        self.cpu[slot] = offered.millicpu
        self.memory[slot] = offered.memory_bytes
        extended = offered.extended_units
        for resource in set(self.ext_capacity) | set(extended):
            self._ext(resource)[0][slot] = extended.get(resource, 0)
        labels = node.metadata.labels
        for key in set(self.labels) | set(labels):
            column = self._label_column(key)
            column[slot] = self.label_values[key].id(labels[key]) if key in labels else -1
        for taint_column in self.taints.values():
            taint_column[slot] = False
        for taint in node.spec.taints:
            self._taint_column(taint.key, taint.value, taint.effect)[slot] = True
        self._set_domains(slot, node)
        for key, instance in self.orphans.pop(name, {}).items():
            self._orphan_of.pop(key, None)
            self.upsert_instance(instance)

    def _set_domains(self, slot: int, node: Node) -> None:
        cluster_name = node.spec.cluster
        cluster = self.clusters.get(cluster_name)
        labels = node.metadata.labels
        zone = labels.get(ZONE_LABEL) or (cluster.spec.zone if cluster is not None else "")
        region = labels.get(REGION_LABEL) or (cluster.spec.region if cluster is not None else "")
        self.domains["node"][slot] = slot
        for topology, value in (("cluster", cluster_name), ("zone", zone), ("region", region)):
            self.domains[topology][slot] = self.domain_names[topology].id(value) if value else -1

    def remove_node(self, name: str) -> None:
        slot = self.slots.pop(name, None)
        self.nodes.pop(name, None)
        if slot is None:
            return
        self._capacity = None
        self.live[slot] = False
        self.ready[slot] = False
        self.names[slot] = ""
        self._rank = None
        # Instances still bound to the gone Node wait, unplaced, for it to come back.
        for key in list(self.by_slot[slot]):
            placed = self.placed[key]
            self.remove_instance(key)
            if placed.instance is not None and not placed.assumed:
                self._orphan(name, key, placed.instance)
        self._reset_slot(slot)
        self._free.append(slot)

    def _reset_slot(self, slot: int) -> None:
        for array in (self.cpu, self.memory, self.used_cpu, self.used_memory, self.count):
            array[slot] = 0
        for topology in TOPOLOGIES:
            self.domains[topology][slot] = -1
        for column in self.labels.values():
            column[slot] = -1
        for taint in self.taints.values():
            taint[slot] = False

    def upsert_cluster(self, cluster: Cluster) -> None:
        self.clusters[cluster.metadata.name] = cluster
        for node in self.nodes.values():
            if node.spec.cluster == cluster.metadata.name:
                self._set_domains(self.slots[node.metadata.name], node)

    def remove_cluster(self, name: str) -> None:
        self.clusters.pop(name, None)

    def _label_column(self, key: str) -> IntArray:
        column = self.labels.get(key)
        if column is None:
            column = self.labels[key] = np.full(self.cap, -1, dtype=np.int64)
            self.label_values[key] = _Interner()
        return column

    def _taint_column(self, key: str, value: str, effect: str) -> BoolArray:
        taint = self.taint_ids.id(f"{key}={value}:{effect}" if value else f"{key}:{effect}")
        column = self.taints.get(taint)
        if column is None:
            column = self.taints[taint] = np.zeros(self.cap, dtype=np.bool_)
            self.taint_info.append((key, value, effect))
        return column

    def _ext(self, resource: str) -> tuple[IntArray, IntArray]:
        if resource not in self.ext_capacity:
            self.ext_capacity[resource] = self._zeros()
            self.ext_used[resource] = self._zeros()
        return self.ext_capacity[resource], self.ext_used[resource]

    def label_value_id(self, key: str, value: str) -> int:
        """The id of `value` in the label column `key` (-2: no Node has it)."""
        values = self.label_values.get(key)
        if values is None:
            return -2
        return values.ids.get(value, -2)

    def largest_free(self) -> Room:
        """See `Room`: over the live, Ready and schedulable Nodes."""
        n = self.high
        usable = self.live[:n] & self.ready[:n] & self.schedulable[:n]
        if not usable.any():
            return Room(0, 0)
        cpu = self.cpu[:n] - self.used_cpu[:n] - self.nominated_cpu[:n]
        memory = self.memory[:n] - self.used_memory[:n] - self.nominated_memory[:n]
        return Room(int(cpu[usable].max()), int(memory[usable].max()))

    def rank(self) -> IntArray:
        """Each slot's position in the order of Node names (for deterministic ties)."""
        if self._rank is None:
            order = sorted(range(self.high), key=lambda s: self.names[s])
            rank = np.full(self.cap, self.cap, dtype=np.int64)
            rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order), dtype=np.int64)
            self._rank = rank
        return self._rank

    def schedulable_capacity(self) -> dict[str, int]:
        """The total cpu, memory and extended capacity of the Nodes that take new Instances
        (Ready, schedulable): what dominant shares are fractions of."""
        if self._capacity is None:
            n = self.high
            mask = self.live[:n] & self.ready[:n] & self.schedulable[:n]
            totals = {
                "cpu": int(self.cpu[:n][mask].sum()),
                "memory": int(self.memory[:n][mask].sum()),
            }
            for resource, column in self.ext_capacity.items():
                totals[resource] = int(column[:n][mask].sum())
            self._capacity = totals
        return self._capacity

    def domain_of(self, topology_key: str) -> IntArray:
        return self.domains[TOPOLOGY_KEYS[topology_key]]

    # ------------------------------------------------------------------ deployments

    def upsert_deployment(self, deployment: Deployment) -> None:
        meta = deployment.metadata
        key = f"{meta.namespace}/{meta.name}"
        old = self.deployments.get(key)
        if old is not None:
            self.deployment_by_uid.pop(old.metadata.uid, None)
        self.deployments[key] = deployment
        if meta.uid:
            self.deployment_by_uid[meta.uid] = deployment

    def remove_deployment(self, key: str) -> None:
        old = self.deployments.pop(key, None)
        if old is not None:
            self.deployment_by_uid.pop(old.metadata.uid, None)

    def deployment_of(self, instance: Instance) -> Deployment | None:
        key = deployment_key(instance)
        return self.deployments.get(key) if key is not None else None

    # ------------------------------------------------------------------ instances

    def upsert_instance(self, instance: Instance) -> bool:
        """Account for `instance` as it now is; True if this freed resources somewhere."""
        key = instance_key(instance)
        node = instance.spec.node_name
        old = self.placed.get(key)
        if (
            old is not None
            and old.assumed
            and not node
            and old.uid == instance.metadata.uid
            and instance.status.phase not in TERMINAL
            and not instance.metadata.deletion_timestamp
        ):
            return False  # our binding is in flight: keep the assumption
        if not node or instance.status.phase in TERMINAL:
            return self.remove_instance(key)
        slot = self.slots.get(node)
        if slot is None:  # bound to a Node we do not know (yet)
            freed = self.remove_instance(key)
            self._orphan(node, key, instance)
            return freed
        if old is not None and old.slot == slot and old.uid == instance.metadata.uid:
            self._unplace(old)
            self._place(self._record(instance, slot, assumed=False))
            return False
        freed = self.remove_instance(key)
        self._place(self._record(instance, slot, assumed=False))
        return freed

    def _orphan(self, node: str, key: str, instance: Instance) -> None:
        self.orphans.setdefault(node, {})[key] = instance
        self._orphan_of[key] = node

    def assume(self, instance: Instance, node: str) -> None:
        """Count a binding we are writing before the watch shows it."""
        key = instance_key(instance)
        self.remove_instance(key)
        self.release_nomination(key)
        self._place(self._record(instance, self.slots[node], assumed=True))

    def forget(self, key: str) -> None:
        """Drop an assumption whose binding failed."""
        placed = self.placed.get(key)
        if placed is not None and placed.assumed:
            self.remove_instance(key)

    def remove_instance(self, key: str) -> bool:
        """Stop counting `key`; True if it held resources somewhere."""
        node = self._orphan_of.pop(key, None)
        if node is not None:
            waiting = self.orphans.get(node, {})
            waiting.pop(key, None)
            if not waiting:
                self.orphans.pop(node, None)
        self.evicting.discard(key)
        placed = self.placed.pop(key, None)
        if placed is None:
            return False
        self._unplace(placed)
        return True

    def _record(self, instance: Instance, slot: int, *, assumed: bool) -> Placed:
        resources = instance.spec.resources
        ref = controller_ref(instance)
        return Placed(
            key=instance_key(instance),
            uid=instance.metadata.uid,
            namespace=instance.metadata.namespace,
            labels=dict(instance.metadata.labels),
            slot=slot,
            priority=effective_priority(instance, self.deployment_of(instance)),
            cpu=resources.millicpu,
            memory=resources.memory_bytes,
            extended=resources.extended_units,
            owner=deployment_key(instance),
            owner_uid=ref.uid if ref is not None else "",
            ready=is_ready(instance),
            terminating=bool(instance.metadata.deletion_timestamp),
            assumed=assumed,
            instance=instance,
        )

    def _place(self, placed: Placed) -> None:
        self.placed[placed.key] = placed
        self._account(placed, 1)

    def _unplace(self, placed: Placed) -> None:
        self._account(placed, -1)

    def _account(self, placed: Placed, sign: int) -> None:
        slot = placed.slot
        if sign > 0:
            self.by_slot[slot].add(placed.key)
        else:
            self.by_slot[slot].discard(placed.key)
        self.used_cpu[slot] += sign * placed.cpu
        self.used_memory[slot] += sign * placed.memory
        self.count[slot] += sign
        for resource, amount in placed.extended.items():
            self._ext(resource)[1][slot] += sign * amount
        self._account_namespace(placed, sign)
        if placed.owner is not None:
            owner = self.owners.get(placed.owner)
            if owner is None:
                owner = self.owners[placed.owner] = self._zeros()
            owner[slot] += sign
        namespace = placed.namespace
        for counter in self._unpaired.get(namespace, ()):
            if counter.matches(placed.labels):
                counter.counts[slot] += sign
        if self._by_pair:
            for key, value in placed.labels.items():
                for counter in self._by_pair.get((namespace, key, value), ()):
                    if counter.matches(placed.labels):
                        counter.counts[slot] += sign
        instance = placed.instance
        affinity = instance.spec.affinity if instance is not None else None
        if affinity is not None and affinity.instance_anti_affinity is not None:
            terms = affinity.instance_anti_affinity
            for term in terms.required_during_scheduling_ignored_during_execution:
                signature = (
                    *selector_signature(namespace, term.label_selector),
                    TOPOLOGY_KEYS[term.topology_key],
                )
                entry = self.anti_terms.get(signature)
                if entry is None:
                    entry = self.anti_terms[signature] = (
                        selector_matcher(term.label_selector),
                        TOPOLOGY_KEYS[term.topology_key],
                        self._zeros(),
                    )
                entry[2][slot] += sign
        if not placed.terminating:
            columns = self.by_priority.get(placed.priority)
            if columns is None:
                columns = self.by_priority[placed.priority] = (
                    self._zeros(),
                    self._zeros(),
                    self._zeros(),
                )
            columns[0][slot] += sign * placed.cpu
            columns[1][slot] += sign * placed.memory
            columns[2][slot] += sign
            self._track_largest(placed, sign)
            if placed.ready and placed.owner_uid:
                self.ready_by_owner[placed.owner_uid] = (
                    self.ready_by_owner.get(placed.owner_uid, 0) + sign
                )

    def _account_namespace(self, placed: Placed, sign: int) -> None:
        namespace = placed.namespace
        count = self._namespace_count.get(namespace, 0) + sign
        if count <= 0:  # its last Instance went: every sum is back at zero
            self._namespace_count.pop(namespace, None)
            self.namespace_used.pop(namespace, None)
            return
        self._namespace_count[namespace] = count
        used = self.namespace_used.setdefault(namespace, {})
        used["cpu"] = used.get("cpu", 0) + sign * placed.cpu
        used["memory"] = used.get("memory", 0) + sign * placed.memory
        for resource, amount in placed.extended.items():
            used[resource] = used.get(resource, 0) + sign * amount

    def _track_largest(self, placed: Placed, sign: int) -> None:
        """Keep `largest` current: a placement may raise its slot's maximum; a removal of
        the largest looks again at the slot's other Instances of that priority (a few)."""
        slot, priority = placed.slot, placed.priority
        columns = self.largest.get(priority)
        if columns is None:
            columns = self.largest[priority] = (self._zeros(), self._zeros())
        cpu, memory = columns
        if sign > 0:
            cpu[slot] = max(int(cpu[slot]), placed.cpu)
            memory[slot] = max(int(memory[slot]), placed.memory)
            return
        if placed.cpu < cpu[slot] and placed.memory < memory[slot]:
            return
        top_cpu = top_memory = 0
        for key in self.by_slot[slot]:  # `placed` has left it already
            other = self.placed[key]
            if other.priority == priority and not other.terminating and other is not placed:
                top_cpu = max(top_cpu, other.cpu)
                top_memory = max(top_memory, other.memory)
        cpu[slot] = top_cpu
        memory[slot] = top_memory

    def selected(self, namespace: str, selector: InstanceLabelSelector) -> IntArray:
        """Per slot, how many placed Instances of `namespace` the selector selects (the
        column is built once, then kept current by every placement)."""
        signature = selector_signature(namespace, selector)
        counter = self._counters.get(signature)
        if counter is None:
            matches = selector_matcher(selector)
            pair = min(selector.match_labels.items(), default=None)
            counter = _Counter(namespace, matches, self._zeros(), pair)
            for placed in self.placed.values():
                if placed.namespace == namespace and matches(placed.labels):
                    counter.counts[placed.slot] += 1
            self._counters[signature] = counter
            if pair is None:
                self._unpaired.setdefault(namespace, []).append(counter)
            else:
                self._by_pair.setdefault((namespace, *pair), []).append(counter)
        return counter.counts

    def replicas(self, owner: str | None) -> IntArray:
        if owner is None:
            return self._zeros()
        found = self.owners.get(owner)
        return found if found is not None else self._zeros()

    # ------------------------------------------------------------------ nominations

    def nominate(self, instance: Instance, node: str) -> None:
        """Hold the room preemption is freeing on `node` for `instance` (other Instances
        of no higher priority must not take it)."""
        key = instance_key(instance)
        self.release_nomination(key)
        slot = self.slots.get(node)
        if slot is None:
            return
        resources = instance.spec.resources
        priority = effective_priority(instance, self.deployment_of(instance))
        held = (
            slot,
            resources.millicpu,
            resources.memory_bytes,
            resources.extended_units,
            priority,
        )
        self.nominated[key] = held
        self.nominated_cpu[slot] += held[1]
        self.nominated_memory[slot] += held[2]

    def release_nomination(self, key: str) -> tuple[int, int, int, dict[str, int], int] | None:
        held = self.nominated.pop(key, None)
        if held is not None:
            self.nominated_cpu[held[0]] -= held[1]
            self.nominated_memory[held[0]] -= held[2]
        return held

    def nominated_node(self, key: str) -> str | None:
        held = self.nominated.get(key)
        return self.names[held[0]] if held is not None else None

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        nodes: Iterable[Node],
        instances: Iterable[Instance],
        deployments: Iterable[Deployment] = (),
        clusters: Iterable[Cluster] = (),
        assumed: Mapping[str, str] | None = None,
    ) -> ClusterState:
        """A state from complete lists (tests, and callers without a watch)."""
        state = cls()
        for cluster in clusters:
            state.upsert_cluster(cluster)
        for node in nodes:
            state.upsert_node(node)
        for deployment in deployments:
            state.upsert_deployment(deployment)
        assumed = assumed or {}
        for instance in instances:
            where = assumed.get(instance_key(instance))
            if not instance.spec.node_name and where is not None and where in state.slots:
                if instance.status.phase not in TERMINAL:
                    state.assume(instance, where)
                continue
            state.upsert_instance(instance)
        return state
