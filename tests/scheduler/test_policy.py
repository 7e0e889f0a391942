"""The scheduling policy as tables: filters with their reasons, spreading, load, ties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.api.resources import (
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
    Taint,
)
from keel.scheduler.policy import build_snapshot, schedule

NS = "default"


def node(
    name: str,
    *,
    cluster: str = "c1",
    cpu: str = "4",
    memory: str = "8Gi",
    ready: bool = True,
    unschedulable: bool = False,
    taints: list[Taint] | None = None,
    labels: dict[str, str] | None = None,
) -> Node:
    return Node(
        metadata=ObjectMeta(name=name, labels=labels or {}),
        spec=NodeSpec(
            cluster=cluster,
            capacity=ResourceList(cpu=cpu, memory=memory),
            unschedulable=unschedulable,
            taints=taints or [],
        ),
        status=NodeStatus(
            conditions=[Condition(type="Ready", status="True" if ready else "False")]
        ),
    )


def instance(
    name: str,
    *,
    on: str = "",
    cpu: str = "100m",
    memory: str = "64Mi",
    deployment: str | None = None,
    phase: str = "Pending",
) -> Instance:
    labels = {"keel.dev/deployment": deployment} if deployment else {}
    return Instance(
        metadata=ObjectMeta(name=name, namespace=NS, labels=labels),
        spec=InstanceSpec(
            command=["x"], node_name=on, resources=ResourceList(cpu=cpu, memory=memory)
        ),
        status=InstanceStatus(phase=phase),  # type: ignore[arg-type]
    )


def dep(name: str, placement: Placement) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=NS),
        spec=DeploymentSpec(
            template=InstanceTemplate(spec=InstanceSpec(command=["x"])), placement=placement
        ),
    )


@pytest.mark.parametrize(
    ("nodes", "pod", "expected", "reason_part"),
    [
        ([node("a", ready=False)], instance("i"), None, "1 not ready"),
        ([node("a", unschedulable=True)], instance("i"), None, "1 unschedulable"),
        (
            [node("a", taints=[Taint(key="k", effect="NoSchedule")])],
            instance("i"),
            None,
            "1 taint k:NoSchedule not tolerated",
        ),
        ([node("a", cpu="1")], instance("i", cpu="2"), None, "1 insufficient cpu"),
        ([node("a", memory="1Gi")], instance("i", memory="2Gi"), None, "1 insufficient memory"),
        ([], instance("i"), None, "no nodes are registered"),
        (
            [node("a", ready=False), node("b", cpu="1")],
            instance("i", cpu="2"),
            None,
            "0/2 nodes are available: 1 insufficient cpu, 1 not ready",
        ),
        ([node("a", ready=False), node("b")], instance("i"), "b", "1/2 nodes fit"),
        ([node("b"), node("a")], instance("i"), "a", ""),  # ties: by name
    ],
)
def test_filters_and_reasons(
    nodes: list[Node], pod: Instance, expected: str | None, reason_part: str
) -> None:
    decision = schedule(pod, build_snapshot(nodes, [pod]))
    assert decision.node == expected
    assert reason_part in decision.reason


def test_capacity_counts_requests_of_bound_unfinished_instances_only() -> None:
    nodes = [node("a", cpu="1")]
    pod = instance("new", cpu="500m")
    busy = [instance("x", on="a", cpu="600m")]
    assert schedule(pod, build_snapshot(nodes, [*busy, pod])).node is None
    done = [instance("x", on="a", cpu="600m", phase="Succeeded")]
    assert schedule(pod, build_snapshot(nodes, [*done, pod])).node == "a"


def test_allocatable_wins_over_capacity() -> None:
    n = node("a", cpu="4")
    n = Node(
        metadata=n.metadata,
        spec=n.spec,
        status=NodeStatus(conditions=n.status.conditions, allocatable=ResourceList(cpu="1")),
    )
    assert schedule(instance("i", cpu="2"), build_snapshot([n], [])).node is None


def test_replicas_of_one_deployment_spread_before_load() -> None:
    nodes = [node("a"), node("b")]
    # a is emptier but already runs a replica of web: b gets the next one.
    existing = [
        instance("web-0", on="a", deployment="web"),
        instance("other-0", on="b", cpu="2", deployment="other"),
    ]
    pod = instance("web-1", deployment="web")
    assert schedule(pod, build_snapshot(nodes, [*existing, pod])).node == "b"


def test_least_loaded_wins_without_a_deployment() -> None:
    nodes = [node("a"), node("b")]
    existing = [instance("x", on="a", cpu="2")]
    assert schedule(instance("i"), build_snapshot(nodes, existing)).node == "b"


def test_placement_clusters_and_node_selector() -> None:
    nodes = [node("east", cluster="east"), node("west", cluster="west", labels={"disk": "ssd"})]
    pod = instance("i", deployment="web")
    placement = Placement(clusters=["west"])
    assert schedule(pod, build_snapshot(nodes, [], [dep("web", placement)])).node == "west"
    placement = Placement(clusters=["east"], node_selector={"disk": "ssd"})
    decision = schedule(pod, build_snapshot(nodes, [], [dep("web", placement)]))
    assert decision.node is None
    assert "1 node selector mismatch" in decision.reason
    assert "1 not in an allowed cluster" in decision.reason


def test_spread_across_clusters() -> None:
    nodes = [node("e1", cluster="east"), node("e2", cluster="east"), node("w1", cluster="west")]
    existing = [instance("web-0", on="e1", deployment="web")]
    pod = instance("web-1", deployment="web")
    placement = Placement(spread_across="cluster")
    snapshot = build_snapshot(nodes, [*existing, pod], [dep("web", placement)])
    assert schedule(pod, snapshot).node == "w1"


def test_assumed_bindings_count_before_the_cache_shows_them() -> None:
    nodes = [node("a"), node("b")]
    first, second = instance("web-0", deployment="web"), instance("web-1", deployment="web")
    snapshot = build_snapshot(nodes, [first, second], assumed={"default/web-0": "a"})
    assert schedule(second, snapshot).node == "b"


@settings(max_examples=100, deadline=None)
@given(nodes=st.integers(1, 6), replicas=st.integers(1, 30))
def test_sequential_placement_spreads_evenly(nodes: int, replicas: int) -> None:
    """Placing replicas one after another on equal nodes never lets two nodes differ by
    more than one replica, and is deterministic."""
    all_nodes = [node(f"n{i}", cpu="64") for i in range(nodes)]
    placed: list[Instance] = []
    for index in range(replicas):
        pod = instance(f"web-{index}", deployment="web")
        decision = schedule(pod, build_snapshot(all_nodes, placed))
        assert decision.node is not None
        placed.append(instance(f"web-{index}", on=decision.node, deployment="web"))
    counts = [sum(1 for p in placed if p.spec.node_name == n.metadata.name) for n in all_nodes]
    assert max(counts) - min(counts) <= 1
