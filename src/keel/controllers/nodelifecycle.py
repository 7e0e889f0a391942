"""Node lifecycle: a Node is Ready while its lease `keel-node-lease/NAME` exists; once the
lease has been gone for a grace period the Node turns NotReady (a write on transitions only)
and the Instances bound to it are deleted so they are recreated elsewhere.

It also releases deleted exclusive Instances: their `keel.dev/stop-confirmed` finalizer goes
once the copy on the node is certainly stopped (its agent reported a terminal phase, or the
node lease has been gone long enough for the agent to have fenced itself), and only then may
a replacement of the same name be created and bound.

It does not trust itself blindly: evicting a node (deleting its Instances) is rate-limited
per cluster, slowed when a large share of a cluster's nodes is down at once, withheld in a
cluster whose nodes are all down (the cluster failover policy decides there), and stopped
everywhere when every cluster looks disrupted, since then the observer is the one cut off
(`disruption`, `eviction_reason`, `TokenBucket`). Each Cluster says which applies in its
`NodeEvictions` condition, written on transitions, with an event beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from keel.api.resources import (
    STOP_CONFIRMED,
    Cluster,
    Condition,
    Instance,
    Lease,
    Node,
    Resource,
)
from keel.client import Conflict, KeelClient, KeelClientError, NotFound, Preconditions
from keel.clock import rfc3339
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LEASE_DURATION",
    "EVICTIONS",
    "EVICTIONS_CONDITION",
    "FULL",
    "LEASE_NAMESPACE",
    "NORMAL",
    "OBSERVER_PARTITIONED",
    "PARTIAL",
    "ClusterEvictionsController",
    "DeleteInstance",
    "Disruption",
    "DisruptionPolicy",
    "NodeLifecycleController",
    "Plan",
    "ReleaseInstance",
    "SetReady",
    "TokenBucket",
    "cluster_state",
    "disruption",
    "eviction_delay",
    "evictions_condition",
    "execute",
    "lease_state",
    "plan",
    "stop_confirmed",
]

LEASE_NAMESPACE = "keel-node-lease"
# Failover of an ordinary instance takes about: what is left of the lease when the agent dies
# (up to 4 s) + this grace + replacement (create, bind, start, first health check). Two
# seconds cover a renewal that is merely late (the agent renews every lease duration / 4)
# and let the leases of nodes lost together all vanish before the first eviction is
# decided, so that `disruption` sees them together.
DEFAULT_GRACE = 2.0
DEFAULT_LEASE_DURATION = 4.0  # the agents' default, until a Lease tells us its own
TERMINAL = frozenset({"Succeeded", "Failed"})  # nothing runs any more: nothing to move
# A deadline computed by subtraction can stay a rounding error ahead of `now` (now + 1e-13
# == now): look again no sooner than this, or the requeue spins without time passing.
MIN_REQUEUE = 0.001

# The Ready condition each lease state calls for (None: decide nothing yet).
# fmt: off
READY_BY_LEASE: dict[str, tuple[str, str, str] | None] = {
    # The agent renews its lease (a renewal is not a store write): it is alive.
    "held":    ("True", "NodeLeaseHeld", "the agent holds its node lease"),
    # Gone for less than the grace period: a renewal may just be late.
    "missing": None,
    # Gone for the whole grace period: presume the node dead.
    "expired": ("False", "NodeLeaseExpired", "the node lease expired and was not renewed"),
}
# fmt: on


@dataclass(frozen=True)
class SetReady:
    condition: Condition


@dataclass(frozen=True)
class DeleteInstance:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class ReleaseInstance:
    """Remove `STOP_CONFIRMED` from a deleted Instance (which then goes): `why` its copy on
    the node is certainly stopped."""

    namespace: str
    name: str
    uid: str
    why: str


Action = SetReady | DeleteInstance | ReleaseInstance


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # when the next deadline passes
    # The node lease has been gone for lease duration + grace: what a release's live check
    # (`stop_confirmed` again, in `execute`) may assume.
    node_fenced: bool = False
    # Instances would have been deleted (evicted) but `evict` was False.
    withheld: bool = False


def lease_state(lease_present: bool, missing_for: float, grace: float) -> str:
    if lease_present:
        return "held"
    return "expired" if missing_for >= grace else "missing"


FENCED = "its node lease has been gone for lease duration + grace: its agent fenced it"


def stop_confirmed(instance: Instance, node_fenced: bool) -> str | None:
    """Why the copy of deleted `instance` is certainly stopped, so that its `STOP_CONFIRMED`
    finalizer may go; None while it may still run (or there is nothing to release).

    `node_fenced`: the node lease has been gone for lease duration + grace, so its agent
    stopped its exclusive instances before the lease ran out, or is dead."""
    meta = instance.metadata
    if not meta.deletion_timestamp or STOP_CONFIRMED not in meta.finalizers:
        return None
    if instance.status.phase in TERMINAL:
        # Written by the node's agent once no process of this uid runs there; it never
        # starts a terminal or deleted instance again.
        return f"its agent reported it {instance.status.phase}: the process is gone"
    if node_fenced:
        return FENCED
    return None


def plan(
    node: Node | None,
    lease_present: bool,
    missing_since: float | None,
    instances: Sequence[Instance],
    *,
    now: float,
    timestamp: str,
    grace: float = DEFAULT_GRACE,
    lease_duration: float = DEFAULT_LEASE_DURATION,
    evict: bool = True,
) -> Plan:
    """What to do about `node` (None: there is no such Node), whose lease is present or has
    been missing since `missing_since` (monotonic seconds; `now` likewise), with `instances`
    bound to it.

    The Ready condition is set only when its status or reason changes (`timestamp` becomes
    its lastTransitionTime). Once expired, non-exclusive Instances are deleted; exclusive ones
    only after lease duration + grace, when their agent has certainly fenced itself. Deleted
    Instances holding `STOP_CONFIRMED` are released once `stop_confirmed` says why, whatever
    became of the Node object.

    `evict=False` (the disruption rules or the rate limit say not now) withholds the deletes
    and says so in `Plan.withheld`; the Ready condition and releases go ahead regardless.
    """
    missing_for = 0.0 if lease_present or missing_since is None else now - missing_since
    state = lease_state(lease_present, missing_for, grace)
    exclusive_after = grace + lease_duration
    fenced = state == "expired" and missing_for >= exclusive_after
    live_node = node is not None and not node.metadata.deletion_timestamp
    actions: list[Action] = []
    wanted = READY_BY_LEASE[state]
    if node is not None and live_node and wanted is not None:
        status, reason, message = wanted
        current = ready_condition(node)
        if current is None or (current.status, current.reason) != (status, reason):
            condition = Condition(
                type="Ready",
                status="True" if status == "True" else "False",
                reason=reason,
                message=message,
                last_transition_time=timestamp,
            )
            actions.append(SetReady(condition))
    waiting = False  # for the node to count as fenced
    withheld = False
    for instance in sorted(instances, key=lambda i: (i.metadata.namespace, i.metadata.name)):
        meta = instance.metadata
        if node is not None and instance.spec.node_name != node.metadata.name:
            continue
        if meta.deletion_timestamp:
            if STOP_CONFIRMED in meta.finalizers:
                why = stop_confirmed(instance, fenced)
                if why is None:
                    waiting = True
                else:
                    actions.append(ReleaseInstance(meta.namespace, meta.name, meta.uid, why))
            continue
        if not live_node or state != "expired" or instance.status.phase in TERMINAL:
            continue
        if instance.spec.exclusive and not fenced:
            waiting = True
            continue
        if not evict:
            withheld = True
            continue
        actions.append(DeleteInstance(meta.namespace, meta.name, meta.uid))
        if STOP_CONFIRMED in meta.finalizers:
            # The delete only marks it; the node is fenced, so it is released at once too.
            actions.append(ReleaseInstance(meta.namespace, meta.name, meta.uid, FENCED))
    requeue: float | None = None
    if state == "missing":
        requeue = max(MIN_REQUEUE, grace - missing_for)
    elif state == "expired" and waiting:
        requeue = max(MIN_REQUEUE, exclusive_after - missing_for)
    return Plan(actions, requeue_after=requeue, node_fenced=fenced, withheld=withheld)


def ready_condition(node: Node) -> Condition | None:
    return next((c for c in node.status.conditions if c.type == "Ready"), None)


# ------------------------------------------------------------------ disruption (pure)

NORMAL = "Normal"
PARTIAL = "PartialDisruption"
FULL = "FullDisruption"
OBSERVER_PARTITIONED = "ObserverPartitioned"
EVICTIONS_CONDITION = "NodeEvictions"


@dataclass(frozen=True)
class DisruptionPolicy:
    """When a cluster counts as disrupted, and how fast its nodes may be evicted.

    As in Kubernetes: a cluster is in PartialDisruption when at least `threshold` of its
    nodes and more than two of them (`min_not_ready`) are not ready, so that losing one or
    two nodes of a small cluster is never mistaken for a disruption."""

    threshold: float = 0.55
    min_not_ready: int = 3
    rate: float = 0.5  # node evictions per second and cluster, normally
    burst: int = 3
    partial_rate: float = 0.1  # in a PartialDisruption: one node every 10 s
    partial_burst: int = 1


def cluster_state(ready: int, not_ready: int, policy: DisruptionPolicy) -> str:
    """NORMAL, PARTIAL or FULL for a cluster with so many ready and not ready nodes."""
    if not_ready == 0:
        return NORMAL
    if ready == 0:
        return FULL
    share = not_ready / (ready + not_ready)
    if not_ready >= policy.min_not_ready and share >= policy.threshold:
        return PARTIAL
    return NORMAL


@dataclass(frozen=True)
class Disruption:
    """Every cluster's state, and whether the observer itself looks cut off."""

    states: dict[str, str]
    observer_partitioned: bool

    def reason(self, cluster: str) -> str:
        """The reason of `cluster`'s NodeEvictions condition (a key of EVICTIONS)."""
        if self.observer_partitioned:
            return OBSERVER_PARTITIONED
        return self.states.get(cluster, NORMAL)


def disruption(readiness: Iterable[tuple[str, bool]], policy: DisruptionPolicy) -> Disruption:
    """The disruption of every cluster from its nodes' readiness, `(cluster, ready)` pairs.

    Every cluster (that has nodes) in partial or full disruption at once is more likely a
    cut-off observer than a disaster everywhere: then nothing is evicted anywhere."""
    counts: dict[str, list[int]] = {}
    for cluster, ready in readiness:
        counts.setdefault(cluster, [0, 0])[0 if ready else 1] += 1
    states = {c: cluster_state(r, n, policy) for c, (r, n) in sorted(counts.items())}
    partitioned = bool(states) and all(state != NORMAL for state in states.values())
    return Disruption(states, partitioned)


# reason -> (NodeEvictions status, rate-limiter setting, message, event type)
# fmt: off
EVICTIONS: dict[str, tuple[str, str | None, str, str]] = {
    # Few nodes down: evict them, rate-limited.
    NORMAL: ("True", "rate", "node evictions proceed, rate-limited", "Normal"),
    # A large share down at once: maybe a real failure, maybe a partial view; go slowly.
    PARTIAL: ("True", "partial_rate",
              "a large share of the cluster's nodes is not ready: evictions slowed", "Warning"),
    # All down: the cluster failover policy moves the work, not node evictions.
    FULL: ("False", None,
           "every node of the cluster is not ready: no node evictions, cluster failover decides",
           "Warning"),
    # Every cluster disrupted: the observer is probably the one cut off. Do nothing.
    OBSERVER_PARTITIONED: ("False", None,
                           "every cluster looks disrupted: this observer is probably cut off; "
                           "all evictions stopped", "Warning"),
}
# fmt: on


def evictions_condition(cluster: Cluster, reason: str, timestamp: str) -> Condition | None:
    """The NodeEvictions condition `cluster` should carry for `reason`; None when it carries
    it already (it is written on transitions only)."""
    status, _, message, _ = EVICTIONS[reason]
    current = next((c for c in cluster.status.conditions if c.type == EVICTIONS_CONDITION), None)
    if current is not None and (current.status, current.reason) == (status, reason):
        return None
    return Condition(
        type=EVICTIONS_CONDITION,
        status="True" if status == "True" else "False",
        reason=reason,
        message=message,
        last_transition_time=timestamp,
    )


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`, driven by the caller's clock (no I/O)."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one will be."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, rate: float, burst: float, now: float) -> None:
        """A new rate from `now` on; tokens beyond the new burst are dropped."""
        self.refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)


def eviction_delay(
    reason: str, buckets: dict[str, TokenBucket], cluster: str, policy: DisruptionPolicy, now: float
) -> float | None:
    """Whether a node of `cluster` may be evicted now (0.0), in so many seconds, or not at
    all for now (None) under `reason`; takes the token from the cluster's bucket."""
    _, setting, _, _ = EVICTIONS[reason]
    if setting is None:
        return None
    rate = float(getattr(policy, setting))
    burst = float(policy.burst if setting == "rate" else policy.partial_burst)
    bucket = buckets.get(cluster)
    if bucket is None:
        bucket = buckets[cluster] = TokenBucket.full(rate, burst, now)
    elif (bucket.rate, bucket.burst) != (rate, burst):
        bucket.retune(rate, burst, now)
    return bucket.take(now)


async def execute(
    client: KeelClient, node: Node | None, action: Action, *, node_fenced: bool = False
) -> None:
    """The condition write is conditional on the Node's resourceVersion (`Conflict`: look
    again) and keeps the other conditions; deletes are conditional on the uid. A release
    reads the Instance live and asks `stop_confirmed` again (`node_fenced` as planned): the
    cache proposes, the server's copy confirms; the write is conditional on that copy."""
    match action:
        case SetReady(condition=condition):
            assert node is not None
            others = [c for c in node.status.conditions if c.type != "Ready"]
            status = msgspec.structs.replace(node.status, conditions=[*others, condition])
            await client.update_status(msgspec.structs.replace(node, status=status))
        case DeleteInstance(namespace=namespace, name=name, uid=uid):
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    Instance, name, namespace=namespace, preconditions=Preconditions(uid=uid)
                )
        case ReleaseInstance(namespace=namespace, name=name, uid=uid):
            try:
                live = await client.get(Instance, name, namespace=namespace)
            except NotFound:
                return  # released already
            if live.metadata.uid != uid or stop_confirmed(live, node_fenced) is None:
                return  # another incarnation, or not (yet) confirmed: look again later
            kept = [f for f in live.metadata.finalizers if f != STOP_CONFIRMED]
            meta = msgspec.structs.replace(live.metadata, finalizers=kept)
            with contextlib.suppress(NotFound):
                await client.replace(msgspec.structs.replace(live, metadata=meta))


# While evictions are stopped (full disruption, cut-off observer), look again this often:
# the end of a disruption is another node's lease coming back, an event for that node only.
DISRUPTED_RECHECK = 1.0


def readiness(nodes: Iterable[Node], leases: Iterable[Lease]) -> list[tuple[str, bool]]:
    """(cluster, ready) of every live Node: ready while its node lease exists."""
    held = {lease.metadata.name for lease in leases if lease.metadata.namespace == LEASE_NAMESPACE}
    return [
        (node.spec.cluster, node.metadata.name in held)
        for node in nodes
        if not node.metadata.deletion_timestamp
    ]


class NodeLifecycleController:
    """Watches Nodes, their leases and the Instances bound to them: see the module docstring.

    When a lease went missing is remembered in memory: a new leader starts counting afresh,
    which only ever delays a decision (the safe direction). So are the eviction rate limits
    (per cluster) and which nodes have been evicted in their current outage (each node takes
    one token, however many reconciles its eviction needs).
    """

    name = "nodelifecycle"
    primary = Node

    def __init__(
        self, *, grace: float = DEFAULT_GRACE, policy: DisruptionPolicy | None = None
    ) -> None:
        self.grace = grace
        self.policy = policy or DisruptionPolicy()
        self.related = (
            Related(Lease, self._node_of_lease),
            Related(Instance, self._node_of_instance),
        )
        self._missing_since: dict[str, float] = {}
        self._durations: dict[str, float] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._evicted: set[str] = set()

    @staticmethod
    def _node_of_lease(lease: Resource) -> Iterable[str]:
        if lease.metadata.namespace == LEASE_NAMESPACE:
            return (lease.metadata.name,)
        return ()

    @staticmethod
    def _node_of_instance(instance: Resource) -> Iterable[str]:
        assert isinstance(instance, Instance)
        return (instance.spec.node_name,) if instance.spec.node_name else ()

    async def reconcile(self, ctx: Context, key: str) -> Result:
        node: Node | None = ctx.cache(Node).get(key)
        lease: Lease | None = ctx.cache(Lease).get(f"{LEASE_NAMESPACE}/{key}")
        bound: list[Instance] = ctx.cache(Instance).by_index("nodeName", key)
        if node is None and not bound:
            self._missing_since.pop(key, None)
            self._durations.pop(key, None)
            self._evicted.discard(key)
            return Result()
        now = ctx.clock.now()
        if lease is not None:
            self._missing_since.pop(key, None)
            self._evicted.discard(key)
            self._durations[key] = float(lease.spec.lease_duration_seconds)
        else:
            self._missing_since.setdefault(key, now)

        def decide(evict: bool) -> Plan:
            return plan(
                node,
                lease is not None,
                self._missing_since.get(key),
                bound,
                now=now,
                timestamp=rfc3339(ctx.clock.wall()),
                grace=self.grace,
                lease_duration=self._durations.get(key, DEFAULT_LEASE_DURATION),
                evict=evict,
            )

        decided = decide(key in self._evicted)
        requeue = decided.requeue_after
        if decided.withheld and node is not None:
            cluster = node.spec.cluster
            seen = disruption(
                readiness(ctx.cache(Node).list(), ctx.cache(Lease).list(LEASE_NAMESPACE)),
                self.policy,
            )
            reason = seen.reason(cluster)
            delay = eviction_delay(reason, self._buckets, cluster, self.policy, now)
            if delay == 0.0:
                self._evicted.add(key)
                decided = decide(True)
                requeue = decided.requeue_after
            else:
                wait = DISRUPTED_RECHECK if delay is None else max(MIN_REQUEUE, delay)
                requeue = wait if requeue is None else min(requeue, wait)
                ctx.log.debug(
                    "node %s is not ready; eviction %s (cluster %s: %s)", key,
                    "held" if delay is None else f"rate-limited for {delay:.1f}s", cluster,
                    reason,
                )  # fmt: skip
        for action in decided.actions:
            match action:
                case SetReady(condition=c):
                    ctx.log.info("node %s: Ready=%s (%s)", key, c.status, c.reason)
                case DeleteInstance(namespace=ns, name=name):
                    ctx.log.info("node %s is not ready: deleting instance %s/%s", key, ns, name)
                case ReleaseInstance(namespace=ns, name=name, why=why):
                    ctx.log.info("node %s: releasing instance %s/%s: %s", key, ns, name, why)
            await execute(ctx.client, node, action, node_fenced=decided.node_fenced)
        return Result(requeue_after=requeue)


class ClusterEvictionsController:
    """Says in each Cluster's `NodeEvictions` condition (on transitions, with an event) what
    the node lifecycle controller's disruption rules make of it. Any node or lease change
    may change every cluster's reason (ObserverPartitioned is about all of them), so each
    maps to every Cluster."""

    name = "cluster-evictions"
    primary = Cluster

    def __init__(self, cache: Callable[[type[Any]], Indexer[Any]],
                 policy: DisruptionPolicy | None = None) -> None:  # fmt: skip
        self.policy = policy or DisruptionPolicy()
        self._cache = cache
        self.related = (Related(Node, self._every_cluster), Related(Lease, self._every_cluster))

    def _every_cluster(self, obj: Resource) -> Iterable[str]:
        if isinstance(obj, Lease) and obj.metadata.namespace != LEASE_NAMESPACE:
            return ()
        return self._cache(Cluster).keys()

    async def reconcile(self, ctx: Context, key: str) -> Result:
        cluster: Cluster | None = ctx.cache(Cluster).get(key)
        if cluster is None or cluster.metadata.deletion_timestamp:
            return Result()
        seen = disruption(
            readiness(ctx.cache(Node).list(), ctx.cache(Lease).list(LEASE_NAMESPACE)),
            self.policy,
        )
        reason = seen.reason(key)
        condition = evictions_condition(cluster, reason, rfc3339(ctx.clock.wall()))
        if condition is None:
            return Result()
        others = [c for c in cluster.status.conditions if c.type != EVICTIONS_CONDITION]
        status = msgspec.structs.replace(cluster.status, conditions=[*others, condition])
        try:
            await ctx.client.update_status(msgspec.structs.replace(cluster, status=status))
        except Conflict:
            return Result(requeue_after=MIN_REQUEUE)  # another writer: look again
        except NotFound:
            return Result()
        ctx.log.info("cluster %s: NodeEvictions=%s (%s)", key, condition.status, reason)
        _, _, message, kind = EVICTIONS[reason]
        event = {
            "involvedObject": {"kind": "Cluster", "name": key},
            "reason": reason,
            "message": message,
            "type": kind,
            "time": condition.last_transition_time,
            "source": "keel-controller-manager/nodelifecycle",
        }
        with contextlib.suppress(KeelClientError, OSError):
            await ctx.client.record_event(event)
        return Result()
