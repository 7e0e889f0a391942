"""The Cluster controller and cluster failover, as pure decisions: the Cluster's Ready
condition as a table, status written on transitions only, and each failover policy driven
through a small in-memory platform (the real Deployment plan, the real scheduling policy and
the failover plan) across an outage and a recovery. The real processes are in
test_cluster_failover.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import pytest

from keel.api.resources import (
    FAILOVER_PENDING,
    Cluster,
    ClusterStatus,
    Condition,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceStatus,
    InstanceTemplate,
    Node,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    Placement,
    ResourceList,
    RollingUpdate,
    Strategy,
    TemplateMeta,
)
from keel.clock import rfc3339
from keel.controllers import cluster as failover
from keel.controllers import deployment as deployments
from keel.controllers.cluster import (
    ClusterView,
    Counts,
    EvictInstance,
    MarkPending,
    cluster_condition,
    cluster_status,
)
from keel.scheduler.policy import build_snapshot, schedule

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STAMP = rfc3339(NOW)
Policy = Literal["Immediate", "Graceful", "Never"]

# ------------------------------------------------------------------ the cluster's condition


@pytest.mark.parametrize(
    ("nodes", "ready", "not_ready", "status", "reason"),
    [
        (0, 0, 0, "Unknown", "NoNodes"),
        (3, 3, 0, "True", "Ready"),
        (3, 2, 1, "True", "Degraded"),  # most nodes ready: it still takes work
        (4, 2, 2, "False", "Degraded"),  # half down: not ready, but not unreachable
        (3, 1, 2, "False", "Degraded"),
        (3, 0, 3, "False", "Unreachable"),  # every node lease lost: failover acts
        (3, 0, 2, "Unknown", "NodesPending"),  # one never reported: coming up, not lost
        (2, 0, 0, "Unknown", "NodesPending"),
    ],
)
def test_cluster_condition_table(
    nodes: int, ready: int, not_ready: int, status: str, reason: str
) -> None:
    got = cluster_condition(Counts(nodes=nodes, ready=ready, not_ready=not_ready))
    assert got[:2] == (status, reason)


def test_degraded_message_carries_the_counts() -> None:
    _status, _reason, message = cluster_condition(Counts(nodes=5, ready=3, not_ready=2))
    assert message == "3/5 nodes ready, 2 NotReady"


def node(name: str, cluster: str, ready: bool | None = True) -> Node:
    conditions = (
        []
        if ready is None
        else [Condition(type="Ready", status="True" if ready else "False", reason="x")]
    )
    return Node(
        kind="Node",
        metadata=ObjectMeta(name=name),
        spec=NodeSpec(cluster=cluster, capacity=ResourceList(cpu="4", memory="8Gi")),
        status=NodeStatus(conditions=conditions),
    )


def with_status(cluster: Cluster, status: ClusterStatus | None) -> Cluster:
    assert status is not None
    return msgspec.structs.replace(cluster, status=status)


def test_status_is_written_on_transitions_only_and_keeps_other_conditions() -> None:
    evictions = Condition(type="NodeEvictions", status="True", reason="Normal")
    c1 = Cluster(
        kind="Cluster",
        metadata=ObjectMeta(name="c1"),
        status=ClusterStatus(conditions=[evictions]),
    )
    nodes = [node("a", "c1"), node("b", "c1"), node("c", "c1")]
    c1 = with_status(c1, cluster_status(c1, nodes, "t0"))
    assert (c1.status.nodes, c1.status.ready_nodes) == (3, 3)
    assert c1.status.conditions[0] == evictions, "the node lifecycle controller's is kept"
    ready = c1.status.conditions[1]
    assert (ready.type, ready.status, ready.reason, ready.last_transition_time) == (
        "Ready",
        "True",
        "Ready",
        "t0",
    )
    # Nothing changed: nothing to write, however often it is asked.
    assert cluster_status(c1, nodes, "t1") is None
    # One node lost: Degraded (still True), a new transition time.
    nodes[0] = node("a", "c1", ready=False)
    c1 = with_status(c1, cluster_status(c1, nodes, "t2"))
    ready = c1.status.conditions[1]
    assert (ready.status, ready.reason, ready.last_transition_time) == ("True", "Degraded", "t2")
    assert c1.status.ready_nodes == 2
    # Another node joins the same state: new counts, same transition time.
    nodes.append(node("d", "c1"))
    c1 = with_status(c1, cluster_status(c1, nodes, "t3"))
    assert c1.status.conditions[1].last_transition_time == "t2"
    assert (c1.status.nodes, c1.status.ready_nodes) == (4, 3)
    # All leases lost.
    lost = [node(n.metadata.name, "c1", ready=False) for n in nodes]
    c1 = with_status(c1, cluster_status(c1, lost, "t4"))
    assert (c1.status.conditions[1].reason, c1.status.ready_nodes) == ("Unreachable", 0)
    assert c1.status.conditions[0] == evictions


def test_nodes_being_deleted_do_not_count() -> None:
    gone = node("a", "c1")
    gone = msgspec.structs.replace(
        gone, metadata=msgspec.structs.replace(gone.metadata, deletion_timestamp="t")
    )
    c1 = Cluster(kind="Cluster", metadata=ObjectMeta(name="c1"))
    status = cluster_status(c1, [gone, node("b", "c1")], "t0")
    assert status is not None and (status.nodes, status.ready_nodes) == (1, 1)


# ------------------------------------------------------------------ an in-memory platform

NODES = {"n1a": "c1", "n1b": "c1", "n2a": "c2", "n2b": "c2", "n3a": "c3"}


def make_deployment(
    policy: Policy = "Immediate",
    *,
    replicas: int = 4,
    clusters: Sequence[str] = (),
    rebalance: bool = False,
    grace: int = 300,
    spread: Literal["cluster", "node", "none"] = "cluster",
    exclusive: bool = False,
    max_unavailable: int = 1,
) -> Deployment:
    return Deployment(
        kind="Deployment",
        metadata=ObjectMeta(name="web", namespace="default", uid="dep-uid", generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": "web"}),
                spec=InstanceSpec(command=["serve"], exclusive=exclusive),
            ),
            strategy=Strategy(
                rolling_update=RollingUpdate(max_surge=1, max_unavailable=max_unavailable)
            ),
            placement=Placement(
                clusters=list(clusters),
                spread_across=spread,
                cluster_failover=policy,
                failover_grace_seconds=grace,
                rebalance=rebalance,
            ),
        ),
    )


def running(instance: Instance, ready: bool = True) -> Instance:
    condition = Condition(type="Ready", status="True" if ready else "False")
    return msgspec.structs.replace(
        instance, status=InstanceStatus(phase="Running", conditions=[condition])
    )


def plan_deployment(
    dep: Deployment, instances: list[Instance], now: float
) -> list[deployments.Action]:
    """The deployment plan's instance and status actions, given the Revision of the current
    template (its rollout machinery has tests of its own)."""
    revision = deployments.new_revision(dep, deployments.template_hash(dep), 1)
    kinds = (deployments.CreateInstance, deployments.DeleteInstance, deployments.UpdateStatus)
    return [a for a in deployments.plan(dep, [revision], instances, now) if isinstance(a, kinds)]


@dataclass
class World:
    """What the API server would hold, and what the agents would report: Instances on a
    Ready node become Ready at the next step; on a lost node nothing changes any more."""

    dep: Deployment
    nodes: dict[str, str] = field(default_factory=lambda: dict(NODES))
    lost: set[str] = field(default_factory=set)  # clusters whose every node lease is gone
    leases_gone: set[str] = field(default_factory=set)  # leases gone, not yet NotReady
    instances: dict[str, Instance] = field(default_factory=dict)
    now: float = NOW
    history: list[str] = field(default_factory=list)  # every delete and create, in order
    notices: list[str] = field(default_factory=list)
    hold_ready: set[str] = field(default_factory=set)  # Instances that never turn Ready

    def node_objects(self) -> list[Node]:
        return [node(name, c, ready=c not in self.lost) for name, c in self.nodes.items()]

    def views(self) -> dict[str, ClusterView]:
        result = {}
        for name in sorted(set(self.nodes.values())):
            counts = failover.count_nodes(n for n in self.node_objects() if n.spec.cluster == name)
            status, reason, _message = cluster_condition(counts)
            live = name not in self.lost and name not in self.leases_gone
            result[name] = ClusterView(reason=reason, ready=status == "True", live=live)
        return result

    def failover_plan(self) -> failover.Plan:
        nodes = self.node_objects()
        room = failover.rebalance_room(
            self.dep, list(self.instances.values()), nodes, self.instances.values(), [self.dep]
        )
        return failover.plan(
            self.dep,
            list(self.instances.values()),
            where=self.nodes,
            clusters=self.views(),
            now=self.now,
            room=room,
        )

    def step(self) -> int:
        """One round of every component; how many changes it made."""
        changes = 0
        for action in plan_deployment(self.dep, list(self.instances.values()), self.now):
            match action:
                case deployments.CreateInstance(instance=instance):
                    meta = msgspec.structs.replace(instance.metadata, uid=instance.metadata.name)
                    self.instances[meta.name] = msgspec.structs.replace(instance, metadata=meta)
                    self.history.append(f"+{meta.name}")
                    changes += 1
                case deployments.DeleteInstance(name=name):
                    self.delete(name)
                    changes += 1
                case deployments.UpdateStatus(status=status):
                    self.dep = msgspec.structs.replace(self.dep, status=status)
        decided = self.failover_plan()
        self.notices.extend(n.reason for n in decided.notices)
        for action in decided.actions:
            match action:
                case EvictInstance(name=name):
                    self.delete(name)
                case MarkPending(name=name, since=since):
                    instance = self.instances[name]
                    annotations = {**instance.metadata.annotations, FAILOVER_PENDING: since}
                    meta = msgspec.structs.replace(instance.metadata, annotations=annotations)
                    self.instances[name] = msgspec.structs.replace(instance, metadata=meta)
            changes += 1
        changes += self.schedule_and_run()
        return changes

    def delete(self, name: str) -> None:
        self.instances.pop(name, None)
        self.history.append(f"-{name}")

    def schedule_and_run(self) -> int:
        changes = 0
        for name in sorted(self.instances):
            instance = self.instances[name]
            if not instance.spec.node_name:
                snapshot = build_snapshot(self.node_objects(), self.instances.values(), [self.dep])
                decision = schedule(instance, snapshot)
                if decision.node is not None:
                    spec = msgspec.structs.replace(instance.spec, node_name=decision.node)
                    self.instances[name] = msgspec.structs.replace(instance, spec=spec)
                    changes += 1
            elif (
                self.nodes[instance.spec.node_name] not in self.lost
                and not deployments.is_ready(instance)
                and name not in self.hold_ready
            ):
                self.instances[name] = running(instance)
                changes += 1
        return changes

    def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.step():
                return
        raise AssertionError(f"no steady state after {rounds} rounds: {self.history[-10:]}")

    def where(self) -> dict[str, list[str]]:
        """Cluster -> names of the live Instances bound there."""
        out: dict[str, list[str]] = {}
        for instance in self.instances.values():
            cluster = self.nodes.get(instance.spec.node_name, "")
            out.setdefault(cluster, []).append(instance.metadata.name)
        return {c: sorted(names) for c, names in sorted(out.items())}

    def spread(self) -> dict[str, int]:
        return {c: len(names) for c, names in self.where().items()}


def started(dep: Deployment, nodes: dict[str, str] | None = None) -> World:
    world = World(dep, nodes=dict(nodes or {k: v for k, v in NODES.items() if v != "c3"}))
    world.settle()
    return world


def test_the_platform_spreads_across_clusters_to_begin_with() -> None:
    world = started(make_deployment())
    assert world.spread() == {"c1": 2, "c2": 2}
    assert all(deployments.is_ready(i) for i in world.instances.values())


def test_immediate_moves_replicas_off_an_unreachable_cluster_at_once() -> None:
    world = started(make_deployment("Immediate"))
    on_c1 = world.where()["c1"]
    world.lost.add("c1")
    decided = world.failover_plan()
    assert sorted(a.name for a in decided.actions if isinstance(a, EvictInstance)) == on_c1
    world.settle()
    assert world.spread() == {"c2": 4}, "recreated and placed on the other cluster only"
    assert all(deployments.is_ready(i) for i in world.instances.values())


def test_graceful_keeps_old_replicas_until_their_replacements_are_ready() -> None:
    world = started(make_deployment("Graceful"))
    on_c1 = world.where()["c1"]
    world.lost.add("c1")
    decided = world.failover_plan()
    assert [a for a in decided.actions if isinstance(a, EvictInstance)] == []
    assert sorted(a.name for a in decided.actions if isinstance(a, MarkPending)) == on_c1
    assert decided.requeue_after == 300, "looks again when the grace period ends"
    world.step()  # marked
    world.step()  # replacements created (and bound)
    assert set(on_c1) <= set(world.instances), "old ones kept while replacements start"
    assert len(world.instances) == 6, "temporarily more Instances than replicas"
    assert world.dep.status.replicas == 6
    world.settle()
    assert world.spread() == {"c2": 4}
    assert not set(on_c1) & set(world.instances), "old ones go once replacements are Ready"
    deletes = [h for h in world.history if h.startswith("-")]
    assert sorted(d[1:] for d in deletes) == on_c1


def test_graceful_releases_old_replicas_one_per_ready_replacement() -> None:
    world = started(make_deployment("Graceful"))
    world.lost.add("c1")
    world.step()  # marked
    world.step()  # replacements created and bound
    new = sorted(
        name
        for name, instance in world.instances.items()
        if FAILOVER_PENDING not in instance.metadata.annotations
        and not deployments.is_ready(instance)
    )
    assert len(new) == 2
    world.hold_ready.add(new[1])
    world.settle()
    assert len(world.where()["c1"]) == 1, "one old replica stays for the replacement not Ready"
    world.hold_ready.clear()
    world.settle()
    assert "c1" not in world.where()


def test_graceful_deletes_old_replicas_when_the_grace_period_ends() -> None:
    world = started(make_deployment("Graceful", grace=60))
    world.hold_ready.update(f"web-{deployments.template_hash(world.dep)}-{i}" for i in (4, 5))
    world.lost.add("c1")
    world.settle()
    assert len(world.where()["c1"]) == 2, "replacements not Ready: the old ones stay"
    world.now += 59
    assert [a for a in world.failover_plan().actions if isinstance(a, EvictInstance)] == []
    assert world.failover_plan().requeue_after == pytest.approx(1.0)
    world.now += 1
    world.settle()
    assert "c1" not in world.where(), "grace period over: they go"


def test_graceful_moves_an_exclusive_instance_as_immediate_does() -> None:
    """Two copies of an exclusive instance must never run: it is deleted (its name stays
    taken until its node's fence), never replaced beside itself."""
    world = started(make_deployment("Graceful", exclusive=True))
    world.lost.add("c1")
    decided = world.failover_plan()
    assert decided.actions and all(isinstance(a, EvictInstance) for a in decided.actions)


def test_never_leaves_replicas_where_they_are_and_says_so() -> None:
    world = started(make_deployment("Never"))
    before = world.where()
    world.lost.add("c1")
    world.settle()
    assert world.where() == before
    assert "FailoverDisabled" in world.notices


def test_nothing_moves_when_every_cluster_looks_unreachable() -> None:
    for policy in ("Immediate", "Graceful"):
        world = started(make_deployment(policy))
        before = world.where()
        world.lost.update({"c1", "c2"})
        world.settle()
        assert world.where() == before
        assert world.notices and set(world.notices) == {"FailoverSuppressed"}
        assert not any(FAILOVER_PENDING in i.metadata.annotations for i in world.instances.values())


def test_a_target_whose_leases_are_gone_is_no_target() -> None:
    """The observer cut off from every agent: the leases of the other cluster are gone too,
    though its nodes are not NotReady yet. Failing over onto it would move everything."""
    world = started(make_deployment("Immediate"))
    before = world.where()
    world.lost.add("c1")
    world.leases_gone.add("c2")
    world.settle()
    assert world.where() == before
    assert "FailoverSuppressed" in world.notices


def test_no_failover_without_an_allowed_ready_cluster() -> None:
    world = started(make_deployment("Immediate", clusters=["c1"]), nodes=dict(NODES))
    assert world.spread() == {"c1": 4}
    world.lost.add("c1")
    world.settle()
    assert world.spread() == {"c1": 4}, "c2 and c3 are not allowed"
    assert "NoFailoverTarget" in world.notices


def test_failover_goes_only_to_allowed_clusters() -> None:
    world = started(make_deployment("Immediate", clusters=["c1", "c3"]), nodes=dict(NODES))
    world.lost.add("c1")
    world.settle()
    assert world.spread() == {"c3": 4}


@pytest.mark.parametrize("policy", ["Immediate", "Graceful"])
def test_nothing_moves_back_after_recovery(policy: Policy) -> None:
    world = started(make_deployment(policy))
    world.lost.add("c1")
    world.settle()
    moved = world.where()
    world.lost.clear()
    history = len(world.history)
    for _ in range(20):
        world.step()
    assert world.where() == moved == {"c2": moved["c2"]}
    assert world.history[history:] == [], "no flapping"
    # New work lands on the recovered cluster again.
    world.dep = msgspec.structs.replace(
        world.dep, spec=msgspec.structs.replace(world.dep.spec, replicas=6)
    )
    world.settle()
    assert world.spread() == {"c1": 2, "c2": 4}


def test_a_graceful_move_once_begun_completes_after_recovery() -> None:
    world = started(make_deployment("Graceful"))
    marked = world.where()["c1"]
    world.lost.add("c1")
    world.step()  # marked
    world.lost.clear()
    world.settle()
    assert not set(marked) & set(world.instances), "no un-marking: the old ones go as planned"
    assert sum(world.spread().values()) == 4
    history = len(world.history)
    for _ in range(10):
        world.step()
    assert world.history[history:] == []


def test_rebalance_spreads_out_again_gradually_within_max_unavailable() -> None:
    world = started(make_deployment("Immediate", rebalance=True, max_unavailable=1))
    world.lost.add("c1")
    world.settle()
    assert world.spread() == {"c2": 4}
    world.lost.clear()
    decided = world.failover_plan()
    assert len(decided.actions) == 1, "one at a time (maxUnavailable 1)"
    world.step()
    assert world.failover_plan().actions == [], "waits while a moved replica is not Ready"
    world.settle()
    assert world.spread() == {"c1": 2, "c2": 2}
    history = len(world.history)
    for _ in range(10):
        world.step()
    assert world.history[history:] == [], "balanced: it stays"


def test_rebalance_moves_as_many_as_max_unavailable_allows() -> None:
    world = started(make_deployment("Immediate", rebalance=True, max_unavailable=2))
    world.lost.add("c1")
    world.settle()
    world.lost.clear()
    assert len(world.failover_plan().actions) == 2


def test_rebalance_waits_while_a_cluster_is_unreachable_or_a_move_is_pending() -> None:
    world = started(make_deployment("Never", rebalance=True))
    world.lost.add("c1")
    world.settle()
    assert world.failover_plan().actions == []  # Never: stranded replicas stay put


def test_rebalance_needs_room_in_the_emptier_cluster() -> None:
    world = started(make_deployment("Immediate", rebalance=True))
    world.lost.add("c1")
    world.settle()
    world.lost.clear()
    plan = failover.plan(
        world.dep,
        list(world.instances.values()),
        where=world.nodes,
        clusters=world.views(),
        now=world.now,
        room=["c2"],  # the scheduler would not place one in c1 (full, say)
    )
    assert plan.actions == []


def test_rebalance_across_nodes() -> None:
    world = started(make_deployment("Immediate", rebalance=True, spread="node"))
    world.lost.add("c1")
    world.settle()
    assert world.spread() == {"c2": 4}
    world.lost.clear()
    world.settle()
    per_node: dict[str, int] = {}
    for instance in world.instances.values():
        per_node[instance.spec.node_name] = per_node.get(instance.spec.node_name, 0) + 1
    assert sorted(per_node.values()) == [1, 1, 1, 1]


def test_without_rebalance_a_recovered_cluster_is_left_alone() -> None:
    world = started(make_deployment("Immediate", rebalance=False))
    world.lost.add("c1")
    world.settle()
    world.lost.clear()
    assert world.failover_plan().actions == []


def test_the_scheduler_never_places_on_the_unreachable_clusters_nodes() -> None:
    world = started(make_deployment("Immediate"))
    world.lost.add("c1")
    probe = next(iter(world.instances.values()))
    probe = msgspec.structs.replace(probe, spec=msgspec.structs.replace(probe.spec, node_name=""))
    for _ in range(5):
        snapshot = build_snapshot(world.node_objects(), [], [world.dep])
        decision = schedule(probe, snapshot)
        assert decision.node is not None and world.nodes[decision.node] == "c2"


def test_pending_instances_do_not_count_and_replacements_take_free_indices() -> None:
    """The Deployment controller's side of a graceful move, alone."""
    dep = make_deployment("Graceful", replicas=3)
    h = deployments.template_hash(dep)
    instances = [running(deployments.new_instance(dep, h, i)) for i in range(3)]
    meta = msgspec.structs.replace(instances[1].metadata, annotations={FAILOVER_PENDING: STAMP})
    instances[1] = msgspec.structs.replace(instances[1], metadata=meta)
    actions = plan_deployment(dep, instances, 0.0)
    created = [
        a.instance.metadata.name for a in actions if isinstance(a, deployments.CreateInstance)
    ]
    assert created == [f"web-{h}-3"]
    assert not [a for a in actions if isinstance(a, deployments.DeleteInstance)]
    # The replacement Ready: the pending one goes, and nothing is renumbered afterwards.
    instances.append(running(deployments.new_instance(dep, h, 3)))
    actions = plan_deployment(dep, instances, 0.0)
    deleted = [a.name for a in actions if isinstance(a, deployments.DeleteInstance)]
    assert deleted == [f"web-{h}-1"]
    remaining = [i for i in instances if i.metadata.name != f"web-{h}-1"]
    assert [
        a
        for a in plan_deployment(dep, remaining, 0.0)
        if not isinstance(a, deployments.UpdateStatus)
    ] == []


def test_plans_are_idempotent_under_replay() -> None:
    """Planning twice on the same state proposes the same thing: a duplicated event or a
    restarted controller changes nothing."""
    world = started(make_deployment("Graceful"))
    world.lost.add("c1")
    assert world.failover_plan() == world.failover_plan()
    world.step()
    again = world.failover_plan()
    assert not [a for a in again.actions if isinstance(a, MarkPending)], "marked once"
