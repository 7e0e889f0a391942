"""Every filter and score of the columnar policy as tables: the Nodes, the Instance, where it
goes (or the reason it does not), and preemption's choice of victims."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from keel.api.resources import (
    Cluster,
    ClusterSpec,
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
    OwnerReference,
    Placement,
    ResourceList,
    RollingUpdate,
    Strategy,
    Taint,
)
from keel.scheduler.policy import (
    SchedulerConfig,
    build_snapshot,
    noexecute_deadline,
    preempt,
    schedule,
)
from keel.scheduler.state import ClusterState

NS = "default"


def node(
    name: str,
    *,
    cluster: str = "c1",
    cpu: str = "4",
    memory: str = "8Gi",
    labels: dict[str, str] | None = None,
    taints: list[Taint] | None = None,
    gpu: str | None = None,
) -> Node:
    return Node(
        metadata=ObjectMeta(name=name, labels=labels or {}),
        spec=NodeSpec(
            cluster=cluster,
            capacity=ResourceList(
                cpu=cpu, memory=memory, extended={"gpu": gpu} if gpu is not None else {}
            ),
            taints=taints or [],
        ),
        status=NodeStatus(conditions=[Condition(type="Ready", status="True")]),
    )


def inst(
    name: str,
    *,
    on: str = "",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    priority: int = 0,
    ready: bool = True,
    owner: Deployment | None = None,
    **spec: Any,
) -> Instance:
    resources = spec.pop("resources", {"cpu": "100m", "memory": "64Mi"})
    body = {"command": ["x"], "nodeName": on, "resources": resources, "priority": priority, **spec}
    all_labels = dict(labels or {})
    refs = []
    if owner is not None:
        all_labels["keel.dev/deployment"] = owner.metadata.name
        refs = [
            OwnerReference(
                api_version="keel.dev/v1",
                kind="Deployment",
                name=owner.metadata.name,
                uid=owner.metadata.uid,
                controller=True,
            )
        ]
    return Instance(
        metadata=ObjectMeta(
            name=name,
            namespace=NS,
            uid=f"uid-{name}",
            labels=all_labels,
            annotations=annotations or {},
            owner_references=refs,
        ),
        spec=msgspec.convert(body, InstanceSpec),
        status=InstanceStatus(
            phase="Running" if on else "Pending",
            conditions=[Condition(type="Ready", status="True" if ready else "False")],
        ),
    )


def deployment(
    name: str,
    *,
    replicas: int = 1,
    max_unavailable: int | str = "25%",
    placement: Placement | None = None,
) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=NS, uid=f"dep-{name}"),
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(spec=InstanceSpec(command=["x"])),
            strategy=Strategy(rolling_update=RollingUpdate(max_unavailable=max_unavailable)),
            placement=placement or Placement(),
        ),
    )


ZONED = [
    node("a1", cluster="a", labels={"topology.kubernetes.io/zone": "za"}),
    node("a2", cluster="a", labels={"topology.kubernetes.io/zone": "za"}),
    node("b1", cluster="b", labels={"topology.kubernetes.io/zone": "zb"}),
]
TERM_APP_WEB = {"labelSelector": {"matchLabels": {"app": "web"}}}


# Filters: (nodes, already placed, the new instance, where it goes or a part of the reason)
FILTER_CASES: list[tuple[str, list[Node], list[Instance], Instance, str]] = [
    (
        "NoSchedule taint not tolerated",
        [node("a", taints=[Taint(key="gpu", effect="NoSchedule")]), node("b", cpu="1")],
        [],
        inst("i", resources={"cpu": "2"}),
        "0/2 nodes are available: 1 insufficient cpu, 1 taint gpu:NoSchedule not tolerated",
    ),
    (
        "toleration Exists matches the key",
        [node("a", taints=[Taint(key="gpu", value="x", effect="NoSchedule")])],
        [],
        inst("i", tolerations=[{"key": "gpu", "operator": "Exists"}]),
        "a",
    ),
    (
        "toleration Equal needs the value",
        [node("a", taints=[Taint(key="gpu", value="x", effect="NoSchedule")])],
        [],
        inst("i", tolerations=[{"key": "gpu", "value": "y"}]),
        "1 taint gpu=x:NoSchedule not tolerated",
    ),
    (
        "toleration of another effect does not count",
        [node("a", taints=[Taint(key="k", effect="NoExecute")])],
        [],
        inst("i", tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]),
        "1 taint k:NoExecute not tolerated",
    ),
    (
        "empty key with Exists tolerates everything",
        [node("a", taints=[Taint(key="k", effect="NoExecute")])],
        [],
        inst("i", tolerations=[{"operator": "Exists"}]),
        "a",
    ),
    (
        "node affinity In",
        [node("a", labels={"disk": "hdd"}), node("b", labels={"disk": "ssd"})],
        [],
        inst(
            "i",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}
                                ]
                            }
                        ]
                    }
                }
            },
        ),
        "b",
    ),
    (
        "node affinity NotIn passes nodes without the label",
        [node("a", labels={"disk": "hdd"}), node("b")],
        [],
        inst(
            "i",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "disk", "operator": "NotIn", "values": ["hdd"]}
                                ]
                            }
                        ]
                    }
                }
            },
        ),
        "b",
    ),
    (
        "node affinity Exists / DoesNotExist, terms ORed",
        [
            node("a", labels={"gpu": "1"}),
            node("b", labels={"x": "1"}),
            node("c", labels={"y": "1"}),
        ],
        [],
        inst(
            "i",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "nothere", "operator": "Exists"}]},
                            {
                                "matchExpressions": [
                                    {"key": "gpu", "operator": "DoesNotExist"},
                                    {"key": "y", "operator": "Exists"},
                                ]
                            },
                        ]
                    }
                }
            },
        ),
        "c",
    ),
    (
        "node affinity reason",
        [node("a")],
        [],
        inst(
            "i",
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "disk", "operator": "In", "values": ["ssd"]}
                                ]
                            }
                        ]
                    }
                }
            },
        ),
        "1 node affinity mismatch",
    ),
    (
        "extended resources fit",
        [node("a"), node("b", gpu="2"), node("c", gpu="1")],
        [inst("x", on="c", resources={"extended": {"gpu": "1"}})],
        inst("i", resources={"extended": {"gpu": "1"}}),
        "b",
    ),
    (
        "extended resources reason",
        [node("a"), node("b", gpu="1")],
        [],
        inst("i", resources={"extended": {"gpu": "2"}}),
        "0/2 nodes are available: 2 insufficient gpu",
    ),
    (
        "required anti-affinity over nodes",
        [node("a"), node("b")],
        [inst("w0", on="a", labels={"app": "web"})],
        inst(
            "i",
            labels={"app": "web"},
            affinity={
                "instanceAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {**TERM_APP_WEB, "topologyKey": "node"}
                    ]
                }
            },
        ),
        "b",
    ),
    (
        "required anti-affinity over zones",
        ZONED,
        [inst("w0", on="a1", labels={"app": "web"})],
        inst(
            "i",
            labels={"app": "web"},
            affinity={
                "instanceAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {**TERM_APP_WEB, "topologyKey": "topology.kubernetes.io/zone"}
                    ]
                }
            },
        ),
        "b1",
    ),
    (
        "required anti-affinity unsatisfiable",
        ZONED,
        [inst("w0", on="a1", labels={"app": "web"}), inst("w1", on="b1", labels={"app": "web"})],
        inst(
            "i",
            labels={"app": "web"},
            affinity={
                "instanceAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {**TERM_APP_WEB, "topologyKey": "cluster"}
                    ]
                }
            },
        ),
        "3 instance anti-affinity (cluster) not satisfied",
    ),
    (
        "a placed instance's anti-affinity keeps a newcomer it selects away",
        ZONED,
        [
            inst(
                "loner",
                on="a1",
                affinity={
                    "instanceAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [
                            {**TERM_APP_WEB, "topologyKey": "cluster"}
                        ]
                    }
                },
            )
        ],
        inst("i", labels={"app": "web"}, resources={"cpu": "0"}),
        "b1",
    ),
    (
        "symmetric anti-affinity reason",
        ZONED[:2],
        [
            inst(
                "loner",
                on="a1",
                affinity={
                    "instanceAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [
                            {**TERM_APP_WEB, "topologyKey": "zone"}
                        ]
                    }
                },
            )
        ],
        inst("i", labels={"app": "web"}),
        "2 anti-affinity (zone) of placed instances not satisfied",
    ),
    (
        "required affinity goes where the others are",
        ZONED,
        [inst("db", on="b1", labels={"app": "db"})],
        inst(
            "i",
            affinity={
                "instanceAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "labelSelector": {
                                "matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["db"]}
                                ]
                            },
                            "topologyKey": "cluster",
                        }
                    ]
                }
            },
        ),
        "b1",
    ),
    (
        "required affinity with nothing to join fails",
        ZONED,
        [],
        inst(
            "i",
            affinity={
                "instanceAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}
                    ]
                }
            },
        ),
        "3 instance affinity (zone) not satisfied",
    ),
    (
        "required affinity: the first of a group that matches itself goes anywhere",
        ZONED,
        [],
        inst(
            "i",
            labels={"app": "web"},
            affinity={
                "instanceAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {**TERM_APP_WEB, "topologyKey": "zone"}
                    ]
                }
            },
        ),
        "a1",
    ),
    (
        "topology spread DoNotSchedule: maxSkew 1 over zones",
        ZONED,
        [inst("w0", on="a1", labels={"app": "web"})],
        inst(
            "i",
            labels={"app": "web"},
            topologySpreadConstraints=[
                {
                    "maxSkew": 1,
                    "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    **TERM_APP_WEB,
                }
            ],
        ),
        "b1",
    ),
    (
        "topology spread DoNotSchedule reason",
        # b1 is full, yet its zone counts: the skew is over the Nodes the Instance may use
        [
            *ZONED[:2],
            node("b1", cluster="b", cpu="0", labels={"topology.kubernetes.io/zone": "zb"}),
        ],
        [inst("w0", on="a1", labels={"app": "web"})],
        inst(
            "i",
            labels={"app": "web"},
            topologySpreadConstraints=[
                {
                    "maxSkew": 1,
                    "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    **TERM_APP_WEB,
                }
            ],
        ),
        "2 topology spread (zone, maxSkew 1) not satisfied",
    ),
    (
        "cluster annotation restricts to a wave",
        [node("a1", cluster="a"), node("b1", cluster="b")],
        [],
        inst("i", annotations={"keel.dev/clusters": "b, c"}),
        "b1",
    ),
    (
        "cluster annotation reason",
        [node("a1", cluster="a")],
        [],
        inst("i", annotations={"keel.dev/clusters": "b"}),
        "1 not in an allowed cluster",
    ),
]


@pytest.mark.parametrize(
    ("nodes", "placed", "pod", "expected"),
    [case[1:] for case in FILTER_CASES],
    ids=[case[0] for case in FILTER_CASES],
)
def test_filter(nodes: list[Node], placed: list[Instance], pod: Instance, expected: str) -> None:
    decision = schedule(pod, build_snapshot(nodes, [*placed, pod]))
    got = decision.node or decision.reason
    if decision.node is None:
        assert expected in got
    else:
        assert got == expected


# Scores: (nodes, already placed, deployments, the new instance, config, where it goes)
SCORE_CASES: list[tuple[str, list[Node], list[Instance], list[Deployment], Instance, str, str]] = [
    (
        "LeastAllocated prefers the emptier node",
        [node("a"), node("b")],
        [inst("x", on="a", resources={"cpu": "2"})],
        [],
        inst("i"),
        "LeastAllocated",
        "b",
    ),
    (
        "MostAllocated packs onto the fuller node",
        [node("a"), node("b")],
        [inst("x", on="b", resources={"cpu": "2"})],
        [],
        inst("i"),
        "MostAllocated",
        "b",
    ),
    (
        "PreferNoSchedule taint is avoided when possible",
        [node("a", taints=[Taint(key="old", effect="PreferNoSchedule")]), node("b")],
        [inst("x", on="b", resources={"cpu": "3"})],
        [],
        inst("i"),
        "LeastAllocated",
        "b",
    ),
    (
        "PreferNoSchedule tolerated is not avoided",
        [node("a", taints=[Taint(key="old", effect="PreferNoSchedule")]), node("b")],
        [inst("x", on="b", resources={"cpu": "3"})],
        [],
        inst("i", tolerations=[{"key": "old", "operator": "Exists"}]),
        "LeastAllocated",
        "a",
    ),
    (
        "preferred node affinity by weight",
        [node("a", labels={"disk": "hdd"}), node("b", labels={"disk": "ssd", "fast": "1"})],
        [],
        [],
        inst(
            "i",
            affinity={
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 10,
                            "preference": {
                                "matchExpressions": [
                                    {"key": "disk", "operator": "In", "values": ["hdd"]}
                                ]
                            },
                        },
                        {
                            "weight": 50,
                            "preference": {
                                "matchExpressions": [{"key": "fast", "operator": "Exists"}]
                            },
                        },
                    ]
                }
            },
        ),
        "LeastAllocated",
        "b",
    ),
    (
        "preferred instance affinity joins the others",
        ZONED,
        [inst("db", on="b1", labels={"app": "db"}, resources={"cpu": "3"})],
        [],
        inst(
            "i",
            affinity={
                "instanceAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "instanceAffinityTerm": {
                                "labelSelector": {"matchLabels": {"app": "db"}},
                                "topologyKey": "node",
                            },
                        }
                    ]
                }
            },
        ),
        "LeastAllocated",
        "b1",
    ),
    (
        "preferred anti-affinity keeps away",
        [node("a"), node("b")],
        [inst("w0", on="b", labels={"app": "web"})],
        [],
        inst(
            "i",
            affinity={
                "instanceAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "instanceAffinityTerm": {**TERM_APP_WEB, "topologyKey": "node"},
                        }
                    ]
                }
            },
            resources={"cpu": "0"},
        ),
        "MostAllocated",
        "a",
    ),
    (
        "spread ScheduleAnyway prefers the emptier zone",
        ZONED,
        [inst("w0", on="a1", labels={"app": "web"})],
        [],
        inst(
            "i",
            labels={"app": "web"},
            topologySpreadConstraints=[
                {
                    "maxSkew": 1,
                    "topologyKey": "zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    **TERM_APP_WEB,
                }
            ],
        ),
        "MostAllocated",
        "b1",
    ),
    (
        "default spread: clusters first, even when a node there is emptier",
        [node("a1", cluster="a"), node("a2", cluster="a"), node("b1", cluster="b")],
        [inst("web-0", on="a1", owner=deployment("web"))],
        [deployment("web")],
        inst("web-1", owner=deployment("web")),
        "LeastAllocated",
        "b1",
    ),
    (
        "spreadAcross cluster packs within the cluster",
        [node("a1", cluster="a"), node("a2", cluster="a"), node("b1", cluster="b")],
        [
            inst("web-0", on="a1", owner=deployment("web")),
            inst("web-1", on="b1", owner=deployment("web")),
            inst("other", on="a2", resources={"cpu": "1"}),
        ],
        [deployment("web", placement=Placement(spread_across="cluster"))],
        inst("web-2", owner=deployment("web")),
        "LeastAllocated",
        "a2",
    ),
    (
        "zones of a cluster's spec count as domains",
        [node("a1", cluster="a"), node("b1", cluster="b"), node("c1", cluster="c")],
        [inst("web-0", on="a1", owner=deployment("web"))],
        [deployment("web", placement=Placement(spread_across="cluster"))],
        inst("web-1", owner=deployment("web")),
        "LeastAllocated",
        "c1",
    ),
]


@pytest.mark.parametrize(
    ("nodes", "placed", "deployments", "pod", "scoring", "expected"),
    [case[1:] for case in SCORE_CASES],
    ids=[case[0] for case in SCORE_CASES],
)
def test_score(  # noqa: PLR0917
    nodes: list[Node],
    placed: list[Instance],
    deployments: list[Deployment],
    pod: Instance,
    scoring: str,
    expected: str,
) -> None:
    clusters = [
        Cluster(metadata=ObjectMeta(name="a"), spec=ClusterSpec(zone="z1")),
        Cluster(metadata=ObjectMeta(name="b"), spec=ClusterSpec(zone="z1")),
        Cluster(metadata=ObjectMeta(name="c"), spec=ClusterSpec(zone="z2")),
    ]
    state = build_snapshot(nodes, [*placed, pod], deployments, clusters=clusters)
    decision = schedule(pod, state, SchedulerConfig(scoring=scoring))  # type: ignore[arg-type]
    assert decision.node == expected, decision.reason


def test_state_follows_events_incrementally() -> None:
    """Adding, changing and removing Nodes and Instances one event at a time gives the same
    decisions as a state built from scratch."""
    state = ClusterState(capacity=2)  # grows as Nodes come
    for i in range(5):
        state.upsert_node(node(f"n{i}", cpu="1"))
    busy = [inst(f"x{i}", on=f"n{i}", resources={"cpu": "1"}) for i in range(4)]
    for placed in busy:
        state.upsert_instance(placed)
    pod = inst("i", resources={"cpu": "1"})
    assert schedule(pod, state).node == "n4"
    state.upsert_instance(inst("x4", on="n4", resources={"cpu": "1"}))
    assert schedule(pod, state).reason == "0/5 nodes are available: 5 insufficient cpu"
    assert state.remove_instance("default/x2")  # freed
    assert schedule(pod, state).node == "n2"
    state.remove_node("n2")
    assert schedule(pod, state).node is None
    state.upsert_node(node("n2", cpu="1"))
    assert schedule(pod, state).node == "n2"
    # an Instance bound to a Node not seen yet counts once the Node comes
    state.upsert_instance(inst("y", on="late", resources={"cpu": "1"}))
    state.upsert_node(node("late", cpu="1"))
    assert schedule(pod, state).node == "n2"


# ------------------------------------------------------------------ preemption


def full_node(name: str, victims: list[tuple[str, int]], **kw: Any) -> list[Instance]:
    return [inst(v, on=name, priority=p, resources={"cpu": "1"}, **kw) for v, p in victims]


def test_preemption_picks_the_node_with_the_lowest_priorities() -> None:
    nodes = [node("a", cpu="2"), node("b", cpu="2")]
    placed = [
        *full_node("a", [("a0", 5), ("a1", 5)]),
        *full_node("b", [("b0", 1), ("b1", 8)]),
    ]
    pod = inst("hi", priority=10, resources={"cpu": "1"})
    state = build_snapshot(nodes, [*placed, pod])
    assert schedule(pod, state).node is None
    chosen = preempt(pod, state)
    assert chosen is not None
    assert (chosen.node, chosen.victims) == ("b", ("default/b0",))


def test_preemption_takes_the_fewest_victims() -> None:
    nodes = [node("a", cpu="2"), node("b", cpu="2")]
    placed = [
        *full_node("a", [("a0", 1), ("a1", 1)]),
        inst("b0", on="b", priority=1, resources={"cpu": "2"}),
    ]
    pod = inst("hi", priority=10, resources={"cpu": "2"})
    chosen = preempt(pod, build_snapshot(nodes, [*placed, pod]))
    assert chosen is not None
    assert (chosen.node, chosen.victims) == ("b", ("default/b0",))


@pytest.mark.parametrize(
    ("victim_priority", "policy", "expected"),
    [
        (10, "PreemptLowerPriority", None),
        (11, "PreemptLowerPriority", None),
        (9, "Never", None),
        (9, "PreemptLowerPriority", "a"),
    ],
)
def test_equal_or_higher_priority_is_never_preempted(
    victim_priority: int, policy: str, expected: str | None
) -> None:
    placed = full_node("a", [("v", victim_priority)])
    pod = inst("hi", priority=10, resources={"cpu": "1"}, preemptionPolicy=policy)
    chosen = preempt(pod, build_snapshot([node("a", cpu="1")], [*placed, pod]))
    assert (chosen.node if chosen else None) == expected


def test_preemption_respects_disruption_budgets() -> None:
    """web allows no Ready replica to go (replicas 2, maxUnavailable 0): its node is
    skipped for another whose victims have budget; with no other node, nothing happens."""
    web = deployment("web", replicas=2, max_unavailable=0)
    batch = deployment("batch", replicas=2, max_unavailable=1)
    placed = [
        *full_node("a", [("web-0", 1), ("web-1", 1)], owner=web),
        *full_node("b", [("batch-0", 3), ("batch-1", 3)], owner=batch),
    ]
    pod = inst("hi", priority=10, resources={"cpu": "1"})
    nodes = [node("a", cpu="2"), node("b", cpu="2")]
    chosen = preempt(pod, build_snapshot(nodes, [*placed, pod], [web, batch]))
    assert chosen is not None and chosen.node == "b" and len(chosen.victims) == 1
    only_web = build_snapshot(nodes[:1], [*placed[:2], pod], [web])
    assert preempt(pod, only_web) is None
    # an Instance that is not Ready takes nothing available away: it may go
    unready = [
        *full_node("a", [("web-0", 1)], owner=web),
        inst("web-1", on="a", priority=1, resources={"cpu": "1"}, owner=web, ready=False),
    ]
    chosen = preempt(pod, build_snapshot(nodes[:1], [*unready, pod], [web]))
    assert chosen is not None and chosen.victims == ("default/web-1",)


def test_preemption_frees_extended_resources() -> None:
    placed = [inst("g", on="a", priority=0, resources={"extended": {"gpu": "1"}})]
    pod = inst("hi", priority=5, resources={"extended": {"gpu": "1"}})
    state = build_snapshot([node("a", gpu="1"), node("b")], [*placed, pod])
    assert schedule(pod, state).reason == ("0/2 nodes are available: 2 insufficient gpu")
    chosen = preempt(pod, state)
    assert chosen is not None and chosen.victims == ("default/g",)


def test_nomination_holds_room_until_the_nominee_binds() -> None:
    state = build_snapshot([node("a", cpu="1")], [])
    nominee = inst("hi", priority=10, resources={"cpu": "1"})
    state.nominate(nominee, "a")
    assert schedule(inst("lo", resources={"cpu": "1"}), state).node is None
    assert state.release_nomination("default/hi") is not None
    assert schedule(nominee, state).node == "a"


NOEXECUTE_CASES = [
    ("not tolerated: at once", [], [("maint", "", 10.0)], 10.0),
    ("tolerated for good", [{"key": "maint", "operator": "Exists"}], [("maint", "", 10.0)], None),
    (
        "tolerated for a while",
        [{"key": "maint", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
        [("maint", "", 10.0)],
        40.0,
    ),
    (
        "the shortest of several tolerations",
        [
            {"key": "maint", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            {"key": "maint", "value": "v", "effect": "NoExecute", "tolerationSeconds": 5},
        ],
        [("maint", "v", 10.0)],
        15.0,
    ),
    (
        "another taint not tolerated wins",
        [{"key": "maint", "operator": "Exists"}],
        [("maint", "", 10.0), ("gone", "", 12.0)],
        12.0,
    ),
    (
        "a NoSchedule toleration does not count",
        [{"key": "maint", "operator": "Exists", "effect": "NoSchedule"}],
        [("maint", "", 3.0)],
        3.0,
    ),
]


@pytest.mark.parametrize(
    ("tolerations", "taints", "due"),
    [case[1:] for case in NOEXECUTE_CASES],
    ids=[case[0] for case in NOEXECUTE_CASES],
)
def test_noexecute_deadline(
    tolerations: list[dict[str, Any]], taints: list[tuple[str, str, float]], due: float | None
) -> None:
    parsed = msgspec.convert({"command": ["x"], "tolerations": tolerations}, InstanceSpec)
    assert noexecute_deadline(parsed.tolerations, taints) == due


def test_preemptions_in_flight_each_take_the_cheapest_fresh_node() -> None:
    """Preemptors arriving while earlier victims are still going: each evicts one victim on
    a Node whose room is not already held for another, and no victim is chosen twice."""
    nodes = [node(f"n{i:02d}", cpu="4") for i in range(20)]
    placed = [
        inst(f"f{i}-{j}", on=f"n{i:02d}", resources={"cpu": "1"})
        for i in range(20)
        for j in range(4)
    ]
    state = build_snapshot(nodes, placed)
    chosen_nodes: list[str] = []
    victims: list[str] = []
    for k in range(20):
        pod = inst(f"hi-{k}", priority=10, resources={"cpu": "1"})
        chosen = preempt(pod, state)
        assert chosen is not None
        assert len(chosen.victims) == 1
        state.nominate(pod, chosen.node)
        state.evicting.update(chosen.victims)  # as the shell does until they are gone
        chosen_nodes.append(chosen.node)
        victims.extend(chosen.victims)
    assert len(set(chosen_nodes)) == 20
    assert len(set(victims)) == 20


def test_one_large_victim_rather_than_many_small_ones() -> None:
    small = [inst(f"s{i}", on="a", resources={"cpu": "100m"}) for i in range(30)]
    large = inst("large", on="a", resources={"cpu": "1"})
    pod = inst("hi", priority=10, resources={"cpu": "1"})
    chosen = preempt(pod, build_snapshot([node("a", cpu="4")], [*small, large, pod]))
    assert chosen is not None and chosen.victims == ("default/large",)


def test_after_other_work_preemption_still_takes_one_large_victim() -> None:
    """Nodes also hold many small Instances of other work. Where earlier preemptors took the
    large victims already, only small ones are left (ten to make room): those Nodes, first
    by name, must not be chosen while a Node elsewhere frees the room with one eviction."""
    nodes = [node(f"n{i:02d}", cpu="4") for i in range(40)]
    placed = [
        inst(f"small-{i}-{j}", on=f"n{i:02d}", resources={"cpu": "100m"})
        for i in range(40)
        for j in range(10)
    ]
    placed += [
        inst(f"done-{i}-{j}", on=f"n{i:02d}", priority=10, resources={"cpu": "1"})
        for i in range(20)
        for j in range(3)
    ]
    placed += [
        inst(f"filler-{i}-{j}", on=f"n{i:02d}", resources={"cpu": "1"})
        for i in range(20, 40)
        for j in range(3)
    ]
    state = build_snapshot(nodes, placed)
    # Preemptors one after another, the state moved on as the shell does: the room held,
    # the victims going, then gone, then the preemptor bound (half of them before the next
    # decision, half after it).
    going: list[tuple[Instance, str, tuple[str, ...]]] = []
    for k in range(60):
        pod = inst(f"hi-{k}", priority=10, resources={"cpu": "1"})
        chosen = preempt(pod, state)
        assert chosen is not None
        assert len(chosen.victims) == 1 and "filler" in chosen.victims[0], (k, chosen)
        state.nominate(pod, chosen.node)
        state.evicting.update(chosen.victims)
        going.append((pod, chosen.node, chosen.victims))
        while len(going) > k % 2:
            done, where, victims = going.pop(0)
            for victim in victims:
                state.remove_instance(victim)
            state.assume(done, where)
    # Every filler is gone or going: now ten small ones must go (the only way left).
    chosen = preempt(inst("last", priority=10, resources={"cpu": "1"}), state)
    assert chosen is not None and len(chosen.victims) == 10


def test_largest_lower_priority_instance_per_node_follows_removals() -> None:
    placed = [
        inst("a-big", on="a", resources={"cpu": "2", "memory": "64Mi"}),
        inst("a-mem", on="a", resources={"cpu": "100m", "memory": "1Gi"}),
        inst("a-small", on="a", resources={"cpu": "500m", "memory": "64Mi"}),
        inst("a-high", on="a", priority=5, resources={"cpu": "3", "memory": "2Gi"}),
    ]
    state = build_snapshot([node("a", cpu="8"), node("b", cpu="8")], placed)
    cpu, memory = state.largest[0]
    slot = state.slots["a"]
    assert (cpu[slot], memory[slot]) == (2000, 1 << 30)
    assert (cpu[state.slots["b"]], memory[state.slots["b"]]) == (0, 0)
    state.remove_instance("default/a-big")
    assert (cpu[slot], memory[slot]) == (500, 1 << 30)
    state.remove_instance("default/a-mem")
    assert (cpu[slot], memory[slot]) == (500, 64 << 20)
    assert state.largest[5][0][slot] == 3000


def test_largest_free_room_sets_nominated_room_aside() -> None:
    """What a freed-resources sweep checks before looking at a waiting Instance again."""
    down = msgspec.structs.replace(node("down", cpu="16"), status=NodeStatus(conditions=[]))
    state = build_snapshot(
        [node("a", cpu="4"), node("b", cpu="2"), down],
        [inst("x", on="a", resources={"cpu": "2", "memory": "1Gi"})],
    )
    room = state.largest_free()
    assert (room.cpu, room.memory) == (2000, 8 << 30)  # the NotReady Node does not count
    assert room.may_fit(inst("fits", resources={"cpu": "2"}))
    assert not room.may_fit(inst("too-big", resources={"cpu": "3"}))
    state.nominate(inst("hi", priority=10, resources={"cpu": "2"}), "b")
    assert state.largest_free().cpu == 2000  # a's 2 cpus; b's are held for "hi"
    state.nominate(inst("hi2", priority=10, resources={"cpu": "1"}), "a")
    assert state.largest_free().cpu == 1000
    assert not state.largest_free().may_fit(inst("waiting", resources={"cpu": "2"}))
