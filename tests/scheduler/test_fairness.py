"""Weighted dominant-resource fairness as tables, without I/O: shares, the choice of the next
tenant, the fair lane's order (alone and inside a real WorkQueue), the per-namespace
allocations ClusterState keeps, and a pure flood of two tenants converging to their weights.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.api.resources import (
    Condition,
    Instance,
    InstanceSpec,
    InstanceStatus,
    Namespace,
    Node,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    ResourceList,
)
from keel.clock import ManualClock
from keel.runtime.workqueue import WorkQueue
from keel.scheduler.fairness import FairLane, dominant_share, next_tenant, weighted_share
from keel.scheduler.policy import schedule
from keel.scheduler.state import ClusterState

GI = 1024**3


def node(name: str, *, cpu: str = "4", memory: str = "8Gi", gpu: str = "0",
         ready: bool = True, unschedulable: bool = False) -> Node:  # fmt: skip
    extended = {"gpu": gpu} if gpu != "0" else {}
    return Node(
        metadata=ObjectMeta(name=name),
        spec=NodeSpec(
            cluster="c1",
            capacity=ResourceList(cpu=cpu, memory=memory, extended=extended),
            unschedulable=unschedulable,
        ),
        status=NodeStatus(
            conditions=[Condition(type="Ready", status="True" if ready else "False")]
        ),
    )


def instance(namespace: str, name: str, *, cpu: str = "1", memory: str = "1Gi",
             gpu: str = "0", on: str = "", phase: str = "Pending",
             priority: int = 0) -> Instance:  # fmt: skip
    extended = {"gpu": gpu} if gpu != "0" else {}
    return Instance(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=InstanceSpec(
            command=["x"],
            node_name=on,
            priority=priority,
            resources=ResourceList(cpu=cpu, memory=memory, extended=extended),
        ),
        status=InstanceStatus(phase=phase),  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ shares

SHARES: list[tuple[str, dict[str, int], dict[str, int], float]] = [
    ("nothing used", {}, {"cpu": 4000, "memory": 8 * GI}, 0.0),
    ("cpu dominates", {"cpu": 2000, "memory": 1 * GI}, {"cpu": 4000, "memory": 8 * GI}, 0.5),
    ("memory dominates", {"cpu": 1000, "memory": 6 * GI}, {"cpu": 4000, "memory": 8 * GI}, 0.75),
    ("an extended resource dominates", {"cpu": 100, "gpu": 3},
     {"cpu": 4000, "memory": 8 * GI, "gpu": 4}, 0.75),
    ("a resource the cluster lacks does not count", {"cpu": 1000, "gpu": 2},
     {"cpu": 4000, "memory": 8 * GI}, 0.25),
    ("no schedulable capacity at all", {"cpu": 1000}, {"cpu": 0, "memory": 0}, 0.0),
]  # fmt: skip


@pytest.mark.parametrize(("used", "capacity", "share"), [c[1:] for c in SHARES],
                         ids=[c[0] for c in SHARES])  # fmt: skip
def test_dominant_share_is_the_largest_fraction_of_any_resource(
    used: dict[str, int], capacity: dict[str, int], share: float
) -> None:
    assert dominant_share(used, capacity) == pytest.approx(share)


@pytest.mark.parametrize(("weight", "share"), [(1.0, 0.5), (2.0, 0.25), (0.5, 1.0)])
def test_weighted_share_divides_by_the_weight(weight: float, share: float) -> None:
    assert weighted_share({"cpu": 2000}, {"cpu": 4000}, weight) == pytest.approx(share)


# ------------------------------------------------------------------ the next tenant

NEXT: list[tuple[str, dict[str, tuple[int, int]], dict[str, float], str | None]] = [
    ("nobody waits", {}, {}, None),
    ("one tenant: its own", {"a": (0, 5)}, {"a": 0.9}, "a"),
    ("lowest weighted share first", {"a": (0, 1), "b": (0, 2)}, {"a": 0.5, "b": 0.2}, "b"),
    ("equal shares: the earlier arrival", {"a": (0, 7), "b": (0, 3)}, {"a": 0.3, "b": 0.3},
     "b"),
    ("higher priority beats a lower share", {"a": (10, 9), "b": (0, 1)},
     {"a": 0.9, "b": 0.0}, "a"),
    ("DRF among the highest priority only", {"a": (5, 1), "b": (5, 2), "c": (0, 0)},
     {"a": 0.6, "b": 0.4, "c": 0.0}, "b"),
]  # fmt: skip


@pytest.mark.parametrize(("heads", "shares", "chosen"), [c[1:] for c in NEXT],
                         ids=[c[0] for c in NEXT])  # fmt: skip
def test_next_tenant(
    heads: dict[str, tuple[int, int]], shares: dict[str, float], chosen: str | None
) -> None:
    assert next_tenant(heads, shares.__getitem__) == chosen


# ------------------------------------------------------------------ the fair lane

Push = tuple[str, str | None, int]  # key, tenant (None: not pending), priority


def drain(pushes: list[Push], share: Callable[[str], float],
          on_pop: Callable[[str], None] = lambda _k: None) -> list[str]:  # fmt: skip
    kinds = {key: (tenant, prio) if tenant is not None else None for key, tenant, prio in pushes}
    lane = FairLane(kinds.__getitem__, share)
    for seq, (key, _tenant, _prio) in enumerate(pushes):
        lane.append((key, seq))
    assert len(lane) == len(pushes)
    order: list[str] = []
    while lane:
        key, _seq = lane.popleft()
        order.append(key)
        on_pop(key)
    return order


def test_with_one_tenant_the_order_is_arrival_then_priority() -> None:
    pushes: list[Push] = [("a/1", "a", 0), ("a/2", "a", 0), ("a/3", "a", 5), ("a/4", "a", 0)]
    assert drain(pushes, lambda _t: 0.0) == ["a/3", "a/1", "a/2", "a/4"]


def test_equal_weights_and_an_empty_tenant_keep_arrival_order() -> None:
    """Tenant b has nothing pending: a's order is exactly FIFO, whatever b holds."""
    pushes: list[Push] = [(f"a/{i}", "a", 0) for i in range(6)]
    shares = {"a": 0.4, "b": 0.1}
    assert drain(pushes, shares.__getitem__) == [f"a/{i}" for i in range(6)]


@given(st.lists(st.one_of(st.none(), st.integers(0, 30)), max_size=60))
def test_one_tenant_alone_is_served_exactly_as_fifo(ops: list[int | None]) -> None:
    """Any interleaving of adds (a number: that key) and pops (None), one tenant at one
    priority, whatever the shares say: the fair lane hands out what a deque would."""
    fair = FairLane(lambda _key: ("a", 0), lambda _t: 0.7)
    fifo: deque[tuple[str, int]] = deque()
    for seq, op in enumerate(ops):
        if op is None:
            assert (fair.popleft() if fair else None) == (fifo.popleft() if fifo else None)
        else:
            fair.append((f"a/{op}", seq))
            fifo.append((f"a/{op}", seq))
    assert [fair.popleft() for _ in range(len(fair))] == list(fifo)


def test_other_work_goes_first_in_arrival_order() -> None:
    pushes: list[Push] = [("a/1", "a", 0), ("x/bound", None, 0), ("a/2", "a", 9),
                          ("y/gone", None, 0)]  # fmt: skip
    assert drain(pushes, lambda _t: 0.0) == ["x/bound", "y/gone", "a/2", "a/1"]


def test_a_flood_is_served_by_live_shares() -> None:
    """a floods first; every placement raises its tenant's share (weights a=1, b=2): the
    pops interleave one of a for two of b, not a's whole backlog first."""
    pushes: list[Push] = [(f"a/{i}", "a", 0) for i in range(6)]
    pushes += [(f"b/{i}", "b", 0) for i in range(6)]
    held = {"a": 0, "b": 0}
    weights = {"a": 1.0, "b": 2.0}

    def place(key: str) -> None:
        held[key.partition("/")[0]] += 1

    order = drain(pushes, lambda t: held[t] / weights[t], place)
    assert [k[0] for k in order[:9]] == ["a", "b", "b", "a", "b", "b", "a", "b", "b"]


def test_fair_lane_inside_a_work_queue_keeps_dedup_and_lane_moves() -> None:
    """The WorkQueue's own rules still hold with a fair lane: a key queued twice is handed
    out once, a key moved to the high lane is served there, and drop_all empties it."""
    kinds = {"a/1": ("a", 0), "a/2": ("a", 0), "b/1": ("b", 0), "b/2": ("b", 0)}
    shares = {"a": 0.5, "b": 0.0}

    queue = WorkQueue(clock=ManualClock(), ready_lane=lambda name: FairLane(
        kinds.__getitem__, shares.__getitem__) if name == "normal" else _Fifo())  # fmt: skip
    for key in ("a/1", "a/2", "b/1", "a/1", "b/2"):
        queue.add(key)
    queue.add("a/2", "high")
    got = []
    while (key := queue.get_nowait()) is not None:
        got.append(key)
        queue.done(key)
    assert got == ["a/2", "b/1", "b/2", "a/1"]
    for key in kinds:
        queue.add(key)
    queue.drop_all()
    assert queue.get_nowait() is None and len(queue) == 0


class _Fifo(list[tuple[str, int]]):
    def popleft(self) -> tuple[str, int]:
        return self.pop(0)


# ------------------------------------------------------------------ allocations kept


def test_cluster_state_keeps_namespace_allocations_incrementally() -> None:
    state = ClusterState.build([node("n1"), node("n2", gpu="2")], [])
    assert state.schedulable_capacity() == {"cpu": 8000, "memory": 16 * GI, "gpu": 2}
    state.upsert_instance(instance("a", "x", on="n1", cpu="1"))
    state.upsert_instance(instance("a", "y", on="n2", cpu="500m", gpu="1"))
    state.assume(instance("b", "z", cpu="2", memory="2Gi"), "n1")  # assumed counts at once
    assert state.namespace_used == {
        "a": {"cpu": 1500, "memory": 2 * GI, "gpu": 1},
        "b": {"cpu": 2000, "memory": 2 * GI},
    }
    # resized (an update of the same Instance), then finished: terminal frees it
    state.upsert_instance(instance("a", "x", on="n1", cpu="2"))
    assert state.namespace_used["a"]["cpu"] == 2500
    state.upsert_instance(instance("a", "x", on="n1", cpu="2", phase="Succeeded"))
    assert state.namespace_used["a"] == {"cpu": 500, "memory": 1 * GI, "gpu": 1}
    state.forget("b/z")  # its binding failed
    assert "b" not in state.namespace_used
    state.remove_instance("a/y")
    assert state.namespace_used == {}


@pytest.mark.parametrize(
    ("change", "capacity"),
    [
        (node("n2", ready=False), {"cpu": 4000, "memory": 8 * GI}),
        (node("n2", unschedulable=True), {"cpu": 4000, "memory": 8 * GI}),
        (node("n2", cpu="8"), {"cpu": 12000, "memory": 16 * GI}),
    ],
    ids=["not ready", "cordoned", "grown"],
)
def test_schedulable_capacity_follows_node_changes(change: Node, capacity: dict[str, int]) -> None:
    state = ClusterState.build([node("n1"), node("n2")], [])
    assert state.schedulable_capacity() == {"cpu": 8000, "memory": 16 * GI}
    state.upsert_node(change)
    assert state.schedulable_capacity() == capacity
    state.remove_node("n2")
    assert state.schedulable_capacity() == {"cpu": 4000, "memory": 8 * GI}


def test_namespace_weight_is_validated_naming_the_field() -> None:
    def decode(weight: object) -> Namespace:
        body = {"metadata": {"name": "t"}, "spec": {"scheduling": {"weight": weight}}}
        return msgspec.json.decode(msgspec.json.encode(body), type=Namespace)

    assert decode(2).spec.scheduling.weight == 2.0
    assert Namespace().spec.scheduling.weight == 1.0
    for bad in (0, -1, "heavy"):
        with pytest.raises(msgspec.ValidationError, match=r"\$\.spec\.scheduling\.weight"):
            decode(bad)


# ------------------------------------------------------------------ a pure flood


def flood(weights: Mapping[str, float], per_tenant: int, nodes: int = 4) -> dict[str, float]:
    """Tenants queue `per_tenant` Instances each, one tenant after the other (the worst
    case for FIFO); the fair lane hands them to the real policy until nothing fits."""
    state = ClusterState.build([node(f"n{i}") for i in range(nodes)], [])
    pending = {
        f"{t}/i{i}": instance(t, f"i{i}", cpu="500m", memory="256Mi")
        for t in weights
        for i in range(per_tenant)
    }

    def share(tenant: str) -> float:
        used = state.namespace_used.get(tenant, {})
        return weighted_share(used, state.schedulable_capacity(), weights[tenant])

    lane = FairLane(lambda key: (key.partition("/")[0], 0), share)
    for seq, key in enumerate(pending):
        lane.append((key, seq))
    while lane:
        key, _seq = lane.popleft()
        decision = schedule(pending[key], state)
        if decision.node is not None:
            state.assume(pending[key], decision.node)
    capacity = state.schedulable_capacity()
    return {t: dominant_share(state.namespace_used.get(t, {}), capacity) for t in weights}


def test_a_flood_of_two_tenants_fills_the_cluster_in_proportion_to_their_weights() -> None:
    shares = flood({"a": 1.0, "b": 2.0}, per_tenant=40)  # 32 fit (16 cpu, 500m each)
    assert shares["a"] + shares["b"] == pytest.approx(1.0)
    assert shares["b"] / shares["a"] == pytest.approx(2.0, rel=0.1)  # 11:21 of 32


def test_equal_weights_split_the_cluster_evenly() -> None:
    shares = flood({"a": 1.0, "b": 1.0, "c": 1.0}, per_tenant=20, nodes=6)  # 48 fit
    assert shares == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
