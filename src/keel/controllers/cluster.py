"""Clusters: the Cluster controller writes each Cluster's status (`nodes`, `readyNodes` and
its `Ready` condition) on transitions only, and the cluster failover controller acts on a
Deployment's `placement.clusterFailover` once a cluster it runs in turns Unreachable (and,
with `rebalance: true`, spreads it out again once clusters recover).

Both decide in pure functions, `cluster_status` and `plan`; the shells read the caches,
write, and record events. Neither writes while nothing changes: a status only when its
counts or condition change, an Instance only when it is marked or deleted. The `Ready`
condition is this controller's alone; the node lifecycle controller's `NodeEvictions` (and
any other type) is kept by every write.

Failover trusts no view in which every cluster looks lost: that is the observer cut off,
not the clusters. A failover needs a target cluster that is Ready *and* has a node holding
its node lease right now (a live signal, not only a persisted condition).
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from keel.api.resources import (
    FAILOVER_PENDING,
    Cluster,
    ClusterStatus,
    Condition,
    Deployment,
    Instance,
    Lease,
    Node,
    Resource,
)
from keel.client import Conflict, KeelClient, KeelClientError, NotFound, Preconditions
from keel.clock import rfc3339
from keel.controllers.deployment import is_ready, rollout_budget
from keel.controllers.nodelifecycle import LEASE_NAMESPACE
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer, object_key
from keel.scheduler.policy import build_snapshot, feasible_nodes

__all__ = [
    "READY",
    "ClusterController",
    "ClusterView",
    "Counts",
    "EvictInstance",
    "FailoverController",
    "MarkPending",
    "Notice",
    "Plan",
    "cluster_condition",
    "cluster_status",
    "count_nodes",
    "plan",
]

READY = "Ready"  # the condition type this controller owns on a Cluster
TERMINAL = frozenset({"Succeeded", "Failed"})
MIN_REQUEUE = 0.001
MAX_STATUS_ATTEMPTS = 5

# --------------------------------------------------------------------------- cluster status


@dataclass(frozen=True)
class Counts:
    """A cluster's Nodes by their own Ready condition (nodes being deleted not counted)."""

    nodes: int = 0
    ready: int = 0
    not_ready: int = 0  # Ready=False: the node lifecycle controller saw its lease expire

    @property
    def unknown(self) -> int:  # registered, not yet judged (no Ready condition)
        return self.nodes - self.ready - self.not_ready


# The cluster's Ready condition: the first row whose test holds, in order. A node that never
# reported is neither ready nor lost, so a cluster coming up is never taken for a dead one.
# fmt: off
CLUSTER_READY: tuple[tuple[Callable[[Counts], bool], str, str, str], ...] = (
    # Nothing registered: nothing to say about its health, and nothing to move.
    (lambda c: c.nodes == 0,              "Unknown", "NoNodes",
     "no node is registered in this cluster"),
    # Every node renews its lease.
    (lambda c: c.ready == c.nodes,        "True",    "Ready",
     "all {nodes} nodes are ready"),
    # Every node lost its lease: the cluster is down or cut off. Failover acts on this row.
    (lambda c: c.not_ready == c.nodes,    "False",   "Unreachable",
     "no node is ready: all {nodes} node leases are lost"),
    # None ready, some not judged yet: still coming up.
    (lambda c: c.ready == 0,              "Unknown", "NodesPending",
     "{ready}/{nodes} nodes ready, {unknown} not reported yet"),
    # Most are ready: it takes work; the node lifecycle controller moves what the rest ran.
    (lambda c: 2 * c.ready > c.nodes,     "True",    "Degraded",
     "{ready}/{nodes} nodes ready, {not_ready} NotReady"),
    # Half or more NotReady, but not all: not ready, not unreachable either (no failover).
    (lambda c: True,                      "False",   "Degraded",
     "{ready}/{nodes} nodes ready, {not_ready} NotReady"),
)
# fmt: on


def node_readiness(node: Node) -> bool | None:
    """True/False by the node's Ready condition; None while it has not been judged."""
    condition = next((c for c in node.status.conditions if c.type == READY), None)
    if condition is None or condition.status == "Unknown":
        return None
    return condition.status == "True"


def count_nodes(nodes: Iterable[Node]) -> Counts:
    live = [n for n in nodes if not n.metadata.deletion_timestamp]
    states = Counter(node_readiness(n) for n in live)
    return Counts(nodes=len(live), ready=states[True], not_ready=states[False])


def cluster_condition(counts: Counts) -> tuple[Literal["True", "False", "Unknown"], str, str]:
    """(status, reason, message) of a cluster's Ready condition for these node counts."""
    for test, status, reason, message in CLUSTER_READY:
        if test(counts):
            text = message.format(
                nodes=counts.nodes,
                ready=counts.ready,
                not_ready=counts.not_ready,
                unknown=counts.unknown,
            )
            return status, reason, text  # type: ignore[return-value]
    raise AssertionError("the last row always matches")


def ready_of(cluster: Cluster) -> Condition | None:
    return next((c for c in cluster.status.conditions if c.type == READY), None)


def cluster_status(cluster: Cluster, nodes: Iterable[Node], timestamp: str) -> ClusterStatus | None:
    """The Cluster's new status for the Nodes in it, or None when nothing changed (no write).

    `timestamp` becomes lastTransitionTime when the condition's status or reason changes; a
    change of counts alone rewrites the message and keeps the time. Conditions of other
    types (the node lifecycle controller's `NodeEvictions`) are kept as they are."""
    counts = count_nodes(nodes)
    status, reason, message = cluster_condition(counts)
    current = ready_of(cluster)
    if (
        current is not None
        and (current.status, current.reason, current.message) == (status, reason, message)
        and (cluster.status.nodes, cluster.status.ready_nodes) == (counts.nodes, counts.ready)
    ):
        return None
    moved = current is None or (current.status, current.reason) != (status, reason)
    condition = Condition(
        type=READY,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=timestamp
        if moved or current is None
        else current.last_transition_time,
    )
    return with_ready(cluster.status, condition, counts)


def with_ready(status: ClusterStatus, condition: Condition, counts: Counts) -> ClusterStatus:
    """`status` with our condition replaced in place (or appended) and the counts set."""
    conditions = list(status.conditions)
    at = next((i for i, c in enumerate(conditions) if c.type == READY), None)
    if at is None:
        conditions.append(condition)
    else:
        conditions[at] = condition
    return msgspec.structs.replace(
        status, conditions=conditions, nodes=counts.nodes, ready_nodes=counts.ready
    )


async def write_status(
    client: KeelClient, cluster: Cluster, status: ClusterStatus, nodes: Sequence[Node], ts: str
) -> ClusterStatus | None:
    """PUT the status with the cached resourceVersion; on `Conflict` (someone, perhaps the
    node lifecycle controller, wrote its own condition meanwhile) read the Cluster live and
    decide again on that copy, so no other condition is ever overwritten. The status
    written, or None when the live copy needed nothing."""
    wanted: ClusterStatus | None = status
    for attempt in range(MAX_STATUS_ATTEMPTS):
        assert wanted is not None
        try:
            await client.update_status(msgspec.structs.replace(cluster, status=wanted))
            return wanted
        except Conflict:
            if attempt == MAX_STATUS_ATTEMPTS - 1:
                raise  # the runner retries with backoff
            cluster = await client.get(Cluster, cluster.metadata.name)
            wanted = cluster_status(cluster, nodes, ts)
            if wanted is None:
                return None
    return None


class ClusterController:
    """Writes Cluster status from the Nodes whose `spec.cluster` names it."""

    name = "cluster"
    primary = Cluster

    def __init__(self) -> None:
        self.related = (Related(Node, self._cluster_of_node),)

    @staticmethod
    def _cluster_of_node(node: Resource) -> Iterable[str]:
        assert isinstance(node, Node)
        return (node.spec.cluster,) if node.spec.cluster else ()

    async def reconcile(self, ctx: Context, key: str) -> Result:
        cluster: Cluster | None = ctx.cache(Cluster).get(key)
        if cluster is None or cluster.metadata.deletion_timestamp:
            return Result()
        nodes = [n for n in ctx.cache(Node) if n.spec.cluster == key]
        timestamp = rfc3339(ctx.clock.wall())
        status = cluster_status(cluster, nodes, timestamp)
        if status is None:
            return Result()
        before = ready_of(cluster)
        written = await write_status(ctx.client, cluster, status, nodes, timestamp)
        if written is None:
            return Result()
        after = next(c for c in written.conditions if c.type == READY)
        ctx.log.info(
            "cluster %s: Ready=%s (%s): %s", key, after.status, after.reason, after.message
        )
        if before is None or (before.status, before.reason) != (after.status, after.reason):
            await record_event(
                ctx,
                {"kind": "Cluster", "name": key},
                after.reason,
                after.message,
                warning=after.status == "False",
            )
        return Result()


# --------------------------------------------------------------------------- failover


@dataclass(frozen=True)
class ClusterView:
    """What failover needs to know of one cluster."""

    reason: str  # of its Ready condition ("" before the first status)
    ready: bool  # its Ready condition is True (Ready, or Degraded with most nodes ready)
    live: bool  # some node of it holds its node lease right now


@dataclass(frozen=True)
class EvictInstance:
    """Delete an Instance (this incarnation) so it is recreated and scheduled elsewhere."""

    namespace: str
    name: str
    uid: str
    why: str


@dataclass(frozen=True)
class MarkPending:
    """Annotate an Instance `FAILOVER_PENDING` = `since`: outgoing, replaced first."""

    namespace: str
    name: str
    uid: str
    since: str


@dataclass(frozen=True)
class Notice:
    """Something a user should hear about (an event), though nothing is written."""

    reason: str
    message: str
    warning: bool = True


Action = EvictInstance | MarkPending


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    requeue_after: float | None = None  # when a grace period ends


def parse_time(stamp: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def plan(
    deployment: Deployment | None,
    instances: Sequence[Instance],
    *,
    where: Mapping[str, str],
    clusters: Mapping[str, ClusterView],
    now: float,
    room: Iterable[str] = (),
) -> Plan:
    """What cluster failover does for `deployment` with the Instances it owns.

    `where` maps node names to their cluster, `clusters` describes each cluster, `now` is
    the wall-clock time (RFC 3339 stamps are compared with it) and `room` names the groups
    (clusters, or nodes for `spreadAcross: node`) where the scheduler would place one more
    replica (for rebalancing only).

    1. A pending Instance whose grace period ended is deleted, whatever became of its
       cluster: a move once begun completes (no flapping).
    2. Instances on an Unreachable cluster: `Immediate` deletes them (recreated and placed
       elsewhere; the scheduler never picks a NotReady node); `Graceful` marks them
       `FAILOVER_PENDING` (the Deployment controller replaces them, then deletes them), except
       `exclusive` ones, which are deleted as under `Immediate` (two copies must never run,
       and the deletion waits for the old node's fence); `Never` leaves them. Nothing moves
       while no allowed cluster is a target (Ready, with a live node lease), and a notice
       says so: when every cluster looks lost, this observer is the one cut off.
    3. `rebalance: true`, nothing on an Unreachable cluster and nothing pending: one replica
       at a time (up to maxUnavailable, at least one) leaves the fullest group for the
       emptiest one with room, while they differ by more than one.
    """
    if deployment is None or deployment.metadata.deletion_timestamp:
        return Plan()
    placement = deployment.spec.placement
    policy = placement.cluster_failover
    live = [
        i for i in instances if not i.metadata.deletion_timestamp and i.status.phase not in TERMINAL
    ]
    actions: list[Action] = []
    notices: list[Notice] = []
    requeue: float | None = None

    # 1. Pending Instances whose grace period is over.
    pending = [i for i in live if FAILOVER_PENDING in i.metadata.annotations]
    for instance in sorted(pending, key=lambda i: i.metadata.name):
        since = parse_time(instance.metadata.annotations[FAILOVER_PENDING])
        left = 0.0 if since is None else since + placement.failover_grace_seconds - now
        if left <= 0:
            actions.append(_evict(instance, "its failover grace period ended"))
        else:
            requeue = left if requeue is None else min(requeue, left)

    # 2. Instances stranded on Unreachable clusters.
    unreachable = {name for name, view in clusters.items() if view.reason == "Unreachable"}
    stranded = [
        i
        for i in live
        if where.get(i.spec.node_name) in unreachable
        and FAILOVER_PENDING not in i.metadata.annotations
    ]
    if stranded:
        lost = sorted({where[i.spec.node_name] for i in stranded})
        allowed = set(placement.clusters) or set(clusters)
        targets = sorted(
            name
            for name in allowed
            if name in clusters and clusters[name].ready and clusters[name].live
        )
        populated = [name for name, view in clusters.items() if view.reason != "NoNodes"]
        if policy == "Never":
            notices.append(
                Notice(
                    "FailoverDisabled",
                    f"{len(stranded)} instance(s) stay on unreachable cluster(s) "
                    f"{', '.join(lost)}: placement.clusterFailover is Never",
                    warning=False,
                )
            )
        elif all(not clusters[name].ready or not clusters[name].live for name in populated):
            notices.append(
                Notice(
                    "FailoverSuppressed",
                    "every cluster looks unreachable (no node lease is held anywhere): this "
                    "controller is probably the one cut off, so nothing is moved",
                )
            )
        elif not targets:
            notices.append(
                Notice(
                    "NoFailoverTarget",
                    f"cluster(s) {', '.join(lost)} unreachable, and no other allowed cluster "
                    "is ready: nothing is moved",
                )
            )
        else:
            for instance in sorted(stranded, key=lambda i: i.metadata.name):
                cluster = where[instance.spec.node_name]
                if policy == "Immediate" or instance.spec.exclusive:
                    actions.append(_evict(instance, f"cluster {cluster} is unreachable"))
                else:
                    meta = instance.metadata
                    stamp = rfc3339(now)
                    actions.append(MarkPending(meta.namespace, meta.name, meta.uid, stamp))
                    left = float(placement.failover_grace_seconds)
                    requeue = left if requeue is None else min(requeue, left)

    # 3. Rebalancing, once nothing is failing over.
    elif placement.rebalance and not pending and placement.spread_across != "none":
        actions.extend(_rebalance(deployment, live, where, clusters, set(room)))

    if requeue is not None:
        requeue = max(MIN_REQUEUE, requeue)
    return Plan(actions, notices, requeue)


def _evict(instance: Instance, why: str) -> EvictInstance:
    meta = instance.metadata
    return EvictInstance(meta.namespace, meta.name, meta.uid, why)


def _rebalance(
    deployment: Deployment,
    live: Sequence[Instance],
    where: Mapping[str, str],
    clusters: Mapping[str, ClusterView],
    room: set[str],
) -> list[Action]:
    placement = deployment.spec.placement
    by_cluster = placement.spread_across == "cluster"
    replicas = deployment.spec.replicas
    if len(live) != replicas or any(not i.spec.node_name for i in live):
        return []  # still converging: nothing to rebalance yet
    _surge, unavailable = rollout_budget(deployment)
    budget = max(1, unavailable) - (replicas - sum(1 for i in live if is_ready(i)))
    if budget <= 0:
        return []
    allowed = set(placement.clusters) or set(clusters)

    def group(instance: Instance) -> str:
        return where.get(instance.spec.node_name, "") if by_cluster else instance.spec.node_name

    def usable(name: str) -> bool:
        cluster = name if by_cluster else where.get(name, "")
        view = clusters.get(cluster)
        return cluster in allowed and view is not None and view.ready and view.live

    members: dict[str, list[Instance]] = {}
    for instance in live:
        members.setdefault(group(instance), []).append(instance)
    counts = {name: len(found) for name, found in members.items()}
    for name in room:
        counts.setdefault(name, 0)
    actions: list[Action] = []
    for _move in range(budget):
        targets = [name for name in counts if name in room and usable(name)]
        if not targets or not counts:
            break
        fullest = max(counts, key=lambda name: (counts[name], name))
        emptiest = min(targets, key=lambda name: (counts[name], name))
        if counts[fullest] - counts[emptiest] <= 1:
            break
        leaving = sorted(members[fullest], key=lambda i: i.metadata.name).pop()
        members[fullest].remove(leaving)
        counts[fullest] -= 1
        counts[emptiest] += 1
        actions.append(_evict(leaving, f"rebalancing: {fullest} has more replicas than {emptiest}"))
    return actions


async def execute(client: KeelClient, action: Action) -> bool:
    """Apply one action idempotently; whether it wrote. Deletes are conditional on the uid;
    a mark reads the Instance live and is written with its resourceVersion (`Conflict`
    propagates: the runner looks again)."""
    match action:
        case EvictInstance(namespace=namespace, name=name, uid=uid):
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    Instance, name, namespace=namespace, preconditions=Preconditions(uid=uid)
                )
                return True
            return False
        case MarkPending(namespace=namespace, name=name, uid=uid, since=since):
            try:
                live = await client.get(Instance, name, namespace=namespace)
            except NotFound:
                return False
            meta = live.metadata
            if meta.uid != uid or meta.deletion_timestamp or FAILOVER_PENDING in meta.annotations:
                return False
            annotations = {**meta.annotations, FAILOVER_PENDING: since}
            marked = msgspec.structs.replace(meta, annotations=annotations)
            with contextlib.suppress(NotFound):
                await client.replace(msgspec.structs.replace(live, metadata=marked))
                return True
            return False


class FailoverController:
    """Runs `plan` for each Deployment; Cluster changes bring every Deployment back, Instance
    changes their owner. Notices become events, once per change (remembered in memory)."""

    name = "cluster-failover"
    primary = Deployment

    def __init__(self, cache: Callable[[type[Any]], Indexer[Any]]) -> None:
        self._cache = cache
        self.related = (
            Related(Instance),
            Related(Cluster, self._every_deployment),
            # Read for the live-lease check and the rebalance room; Cluster status changes
            # (on Node transitions) are what bring Deployments back.
            Related(Lease, lambda _lease: ()),
            Related(Node, lambda _node: ()),
        )
        self._noticed: dict[str, tuple[str, ...]] = {}

    def _every_deployment(self, _cluster: Resource) -> Iterable[str]:
        deployments: Indexer[Deployment] = self._cache(Deployment)
        return [object_key(d) for d in deployments]

    async def reconcile(self, ctx: Context, key: str) -> Result:
        deployment: Deployment | None = ctx.cache(Deployment).get(key)
        if deployment is None:
            self._noticed.pop(key, None)
            return Result()
        owned = [
            i
            for i in ctx.cache(Instance).by_index("owner", deployment.metadata.uid)
            if i.metadata.namespace == deployment.metadata.namespace
        ]
        nodes: list[Node] = list(ctx.cache(Node))
        where = {n.metadata.name: n.spec.cluster for n in nodes}
        clusters = views(ctx.cache(Cluster), nodes, ctx.cache(Lease))
        room = rebalance_room(deployment, owned, nodes, ctx.cache(Instance), ctx.cache(Deployment))
        decided = plan(
            deployment, owned, where=where, clusters=clusters, now=ctx.clock.wall(), room=room
        )
        said = tuple(f"{n.reason}: {n.message}" for n in decided.notices)
        if said != self._noticed.get(key, ()):
            for notice in decided.notices:
                level = logging.WARNING if notice.warning else logging.INFO
                ctx.log.log(level, "deployment %s: %s: %s", key, notice.reason, notice.message)
                await record_event(
                    ctx, _ref(deployment), notice.reason, notice.message, warning=notice.warning
                )
            self._noticed[key] = said
        evicted: Counter[str] = Counter()
        for action in decided.actions:
            if await execute(ctx.client, action):
                what = "pending" if isinstance(action, MarkPending) else action.why
                evicted[what] += 1
                ctx.log.info("deployment %s: %s", key, _describe(action))
        for what, count in sorted(evicted.items()):
            if what == "pending":
                message = (
                    f"marked {count} instance(s) failover-pending: replacements are created "
                    "elsewhere; they go once those are Ready or the grace period ends"
                )
            else:
                message = f"deleted {count} instance(s): {what}"
            reason = "Rebalance" if what.startswith("rebalancing") else "ClusterFailover"
            await record_event(ctx, _ref(deployment), reason, message, warning=False)
        return Result(requeue_after=decided.requeue_after)


def views(
    clusters: Iterable[Cluster], nodes: Iterable[Node], leases: Indexer[Lease]
) -> dict[str, ClusterView]:
    """Each Cluster as failover sees it: its persisted condition, and whether any of its
    nodes holds its node lease right now."""
    live: set[str] = set()
    for node in nodes:
        if leases.get(f"{LEASE_NAMESPACE}/{node.metadata.name}") is not None:
            live.add(node.spec.cluster)
    result = {}
    for cluster in clusters:
        condition = ready_of(cluster)
        name = cluster.metadata.name
        result[name] = ClusterView(
            reason=condition.reason if condition is not None else "",
            ready=condition is not None and condition.status == "True",
            live=name in live,
        )
    return result


def rebalance_room(
    deployment: Deployment,
    owned: Sequence[Instance],
    nodes: Sequence[Node],
    instances: Iterable[Instance],
    deployments: Iterable[Deployment],
) -> set[str]:
    """The groups (clusters, or nodes for `spreadAcross: node`) where the scheduler's own
    policy would place one more replica of `deployment`: asked only when it rebalances."""
    placement = deployment.spec.placement
    if not placement.rebalance or placement.spread_across == "none" or not owned:
        return set()
    snapshot = build_snapshot(nodes, instances, deployments)
    probe = owned[0]
    room: set[str] = set()
    for name in feasible_nodes(probe, snapshot):
        node = snapshot.nodes[name]
        room.add(node.spec.cluster if placement.spread_across == "cluster" else name)
    return room


def _ref(deployment: Deployment) -> dict[str, str]:
    meta = deployment.metadata
    return {"kind": "Deployment", "name": meta.name, "namespace": meta.namespace}


def _describe(action: Action) -> str:
    match action:
        case EvictInstance(namespace=ns, name=name, why=why):
            return f"deleting instance {ns}/{name}: {why}"
        case MarkPending(namespace=ns, name=name):
            return f"instance {ns}/{name} is failover-pending (replaced before it goes)"


async def record_event(
    ctx: Context, involved: Mapping[str, str], reason: str, message: str, *, warning: bool
) -> None:
    """An event (telemetry, never stored); losing one is not worth failing a reconcile."""
    event = {
        "involvedObject": dict(involved),
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "time": rfc3339(ctx.clock.wall()),
        "source": "keel-controller-manager/cluster",
    }
    try:
        await ctx.client.record_event(event)
    except (KeelClientError, OSError) as exc:
        logging.getLogger(__name__).debug("event not recorded: %s", exc)
