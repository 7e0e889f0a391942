"""The node lifecycle controller: its plan as a table over lease states and deadlines, and
the real thing against a `keel apiserver` (Ready from the lease, NotReady after the grace,
bound Instances deleted; exclusive ones only after lease duration + grace), and the release
of deleted exclusive Instances (`keel.dev/stop-confirmed`) once their copy certainly stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
import pytest
from scheduler.keel_platform import FakeAgent, platform
from support import ApiServer, wait_for_async

from keel.api.resources import (
    STOP_CONFIRMED,
    Cluster,
    ClusterStatus,
    Condition,
    Instance,
    InstanceSpec,
    InstanceStatus,
    Node,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
)
from keel.client import KeelClient, NotFound
from keel.controllers.nodelifecycle import (
    EVICTIONS,
    EVICTIONS_CONDITION,
    FENCED,
    FULL,
    NORMAL,
    OBSERVER_PARTITIONED,
    PARTIAL,
    DeleteInstance,
    DisruptionPolicy,
    ReleaseInstance,
    SetReady,
    TokenBucket,
    cluster_state,
    disruption,
    eviction_delay,
    evictions_condition,
    plan,
    stop_confirmed,
)

TS = "2024-01-01T00:00:00Z"


def node(ready: str | None = None, reason: str = "") -> Node:
    conditions = [Condition(type="Ready", status=ready, reason=reason)] if ready else []  # type: ignore[arg-type]
    return Node(
        metadata=ObjectMeta(name="n1"),
        spec=NodeSpec(cluster="c1"),
        status=NodeStatus(conditions=conditions),
    )


def bound(
    name: str, *, exclusive: bool = False, phase: str = "Running", deleting: bool = False
) -> Instance:
    """Bound to n1; an exclusive one holds the finalizer its binding added."""
    return Instance(
        metadata=ObjectMeta(
            name=name,
            namespace="default",
            uid=f"uid-{name}",
            finalizers=[STOP_CONFIRMED] if exclusive else [],
            deletion_timestamp=TS if deleting else None,
        ),
        spec=InstanceSpec(command=["x"], node_name="n1", exclusive=exclusive),
        status=InstanceStatus(phase=phase),  # type: ignore[arg-type]
    )


def kinds(actions: Sequence[object]) -> list[str]:
    out = []
    for a in actions:
        match a:
            case SetReady(condition=c):
                out.append(f"Ready={c.status}/{c.reason}")
            case DeleteInstance(name=name):
                out.append(f"delete {name}")
            case ReleaseInstance(name=name):
                out.append(f"release {name}")
    return out


INSTANCES = [
    bound("web"),
    bound("db", exclusive=True),
    bound("job", phase="Succeeded"),
]


@pytest.mark.parametrize(
    ("current", "lease", "missing_for", "expected", "requeue"),
    [
        # lease held: Ready=True once, then nothing
        (node(), True, None, ["Ready=True/NodeLeaseHeld"], None),
        (node("True", "NodeLeaseHeld"), True, None, [], None),
        (node("False", "NodeLeaseExpired"), True, None, ["Ready=True/NodeLeaseHeld"], None),
        # missing for less than the grace: no decision, wake up when it passes
        (node("True", "NodeLeaseHeld"), False, 2.0, [], 3.0),
        # past the grace: NotReady, non-exclusive running instances deleted
        (
            node("True", "NodeLeaseHeld"),
            False,
            5.0,
            ["Ready=False/NodeLeaseExpired", "delete web"],
            10.0,
        ),
        # already NotReady: no condition write; exclusive waits for duration + grace
        (node("False", "NodeLeaseExpired"), False, 9.0, ["delete web"], 6.0),
        # the node is fenced: the exclusive one is deleted and released at once (its
        # binding gave it the finalizer, so the delete alone would only mark it)
        (
            node("False", "NodeLeaseExpired"),
            False,
            15.0,
            ["delete db", "release db", "delete web"],
            None,
        ),
    ],
)
def test_plan_table(
    current: Node,
    lease: bool,
    missing_for: float | None,
    expected: list[str],
    requeue: float | None,
) -> None:
    now = 100.0
    since = None if missing_for is None else now - missing_for
    decided = plan(
        current, lease, since, INSTANCES, now=now, timestamp=TS, grace=5.0, lease_duration=10.0
    )
    assert kinds(decided.actions) == expected
    assert decided.requeue_after == requeue


@pytest.mark.parametrize("deadline", [5.0, 15.0])  # the grace; lease duration + grace
def test_a_deadline_a_rounding_error_away_is_not_requeued_at_once(deadline: float) -> None:
    """`now - since` may fall a rounding error short of a deadline that `now` has reached
    (1025.0085557601506 - 1020.0085557601507 < 5.0): a requeue after 1e-13 s would land
    on `now` again and spin without time passing (a simulation seed hung on it)."""
    now = 1025.0085557601506
    since = now - deadline + 1e-13
    assert now - since < deadline
    decided = plan(node("False", "NodeLeaseExpired"), False, since, INSTANCES, now=now,
                   timestamp=TS, grace=5.0, lease_duration=10.0)  # fmt: skip
    assert decided.requeue_after is not None and decided.requeue_after >= 0.001


# A deleted exclusive Instance's finalizer goes once its copy is certainly stopped:
# (phase the agent reported, node fenced?) -> released?
@pytest.mark.parametrize(
    ("phase", "node_fenced", "released"),
    [
        ("Running", False, False),  # may still run: the name stays taken
        ("Pending", False, False),  # the agent may have started it and not said so yet
        ("Scheduled", False, False),
        ("Succeeded", False, True),  # the agent saw the deletion and the process end
        ("Failed", False, True),
        ("Running", True, True),  # the agent fenced itself (or is dead)
        ("Pending", True, True),
    ],
)
def test_stop_confirmed_table(phase: str, node_fenced: bool, released: bool) -> None:
    deleting = bound("db", exclusive=True, phase=phase, deleting=True)
    assert (stop_confirmed(deleting, node_fenced) is not None) == released


def test_only_a_deleted_instance_holding_the_finalizer_is_released() -> None:
    alive = bound("db", exclusive=True, phase="Failed")
    assert stop_confirmed(alive, True) is None  # not deleted: nothing to release
    plain = bound("web", phase="Failed", deleting=True)
    assert stop_confirmed(plain, True) is None  # no finalizer of ours


# (lease present, missing for, Instances bound to n1) -> actions, requeue
@pytest.mark.parametrize(
    ("lease", "missing_for", "instances", "expected", "requeue"),
    [
        # held: the agent's word releases it; nothing to wait for by the clock
        (True, None, [bound("db", exclusive=True, deleting=True)], [], None),
        (True, None, [bound("db", exclusive=True, phase="Failed", deleting=True)],
         ["release db"], None),
        # lease missing, then expired: wait for lease duration + grace unless reported
        (False, 2.0, [bound("db", exclusive=True, deleting=True)], [], 3.0),
        (False, 9.0, [bound("db", exclusive=True, deleting=True)], [], 6.0),
        (False, 9.0, [bound("db", exclusive=True, phase="Succeeded", deleting=True)],
         ["release db"], None),
        (False, 15.0, [bound("db", exclusive=True, deleting=True)], ["release db"], None),
        # a plain instance being deleted (another finalizer) is not ours to release
        (False, 15.0, [bound("web", deleting=True)], [], None),
    ],
)  # fmt: skip
def test_release_table(
    lease: bool,
    missing_for: float | None,
    instances: list[Instance],
    expected: list[str],
    requeue: float | None,
) -> None:
    now = 100.0
    since = None if missing_for is None else now - missing_for
    ready = "True" if lease else "False"
    current = node(ready, "NodeLeaseHeld" if lease else "NodeLeaseExpired")
    decided = plan(
        current, lease, since, instances, now=now, timestamp=TS, grace=5.0, lease_duration=10.0
    )
    assert kinds(decided.actions) == expected
    assert decided.requeue_after == requeue
    assert decided.node_fenced == (missing_for is not None and missing_for >= 15.0)


def test_release_does_not_need_the_node_object() -> None:
    """A Node deleted while an agent still runs its exclusive instances: they are released on
    the same evidence (the agent's report, or the lease gone long enough)."""
    reported = bound("db", exclusive=True, phase="Failed", deleting=True)
    waiting = bound("job", exclusive=True, deleting=True)
    decided = plan(None, True, None, [reported, waiting], now=100.0, timestamp=TS)
    assert kinds(decided.actions) == ["release db"]
    decided = plan(None, False, 80.0, [waiting], now=100.0, timestamp=TS, grace=5.0,
                   lease_duration=10.0)  # fmt: skip
    assert decided.actions == [ReleaseInstance("default", "job", "uid-job", FENCED)]
    decided = plan(None, False, 95.0, [waiting], now=100.0, timestamp=TS, grace=5.0,
                   lease_duration=10.0)  # fmt: skip
    assert decided.actions == [] and decided.requeue_after == 10.0


def test_deleted_node_and_deleting_instances_plan_nothing() -> None:
    assert plan(None, False, 0.0, INSTANCES, now=100.0, timestamp=TS).actions == []
    deleting = bound("web")
    deleting = msgspec.structs.replace(
        deleting, metadata=msgspec.structs.replace(deleting.metadata, deletion_timestamp=TS)
    )
    decided = plan(node("False", "NodeLeaseExpired"), False, 0.0, [deleting], now=100.0,
                   timestamp=TS)  # fmt: skip
    assert decided.actions == []


def test_condition_carries_the_transition_time() -> None:
    decided = plan(node(), True, None, [], now=0.0, timestamp=TS)
    action = decided.actions[0]
    assert isinstance(action, SetReady) and action.condition.last_transition_time == TS


# ------------------------------------------------------------------ real API server


async def ready_status(client: KeelClient, name: str) -> str | None:
    current = await client.get(Node, name)
    return next((c.status for c in current.status.conditions if c.type == "Ready"), None)


async def exists(client: KeelClient, name: str) -> bool:
    try:
        await client.get(Instance, name, namespace="default")
        return True
    except NotFound:
        return False


async def test_node_not_ready_after_grace_and_its_instances_deleted(
    apiserver: ApiServer, name: str
) -> None:
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as admin:
        # A cluster of its own, with a second node that stays up: one node of two lost is a
        # node failure, not a disruption of the whole cluster (see the disruption tests).
        agent = await FakeAgent(admin, name, name, duration=2).start()
        peer = await FakeAgent(admin, f"{name}-peer", name, duration=2).start()
        try:
            async with platform(apiserver, ("nodelifecycle",), scheduler=False, grace=1.0):

                async def is_ready(wanted: str) -> bool:
                    return await ready_status(admin, name) == wanted

                await wait_for_async("Ready=True", lambda: is_ready("True"))
                plain, exclusive = f"{name}-web", f"{name}-db"
                for instance, excl in ((plain, False), (exclusive, True)):
                    await admin.create(
                        Instance(
                            metadata=ObjectMeta(name=instance, namespace="default"),
                            spec=InstanceSpec(command=["x"], exclusive=excl),
                        )
                    )
                    bound = await admin.bind("default", instance, name)
                    assert bound is not None
                    assert bound.metadata.finalizers == ([STOP_CONFIRMED] if excl else [])
                died = time.monotonic()
                await agent.die()
                await wait_for_async("Ready=False", lambda: is_ready("False"))
                assert time.monotonic() - died >= 1.0  # not before the grace period

                async def gone(instance: str) -> bool:
                    return not await exists(admin, instance)

                await wait_for_async("the non-exclusive instance deleted", lambda: gone(plain))
                assert await exists(admin, exclusive)  # its agent may still be fencing
                # Deleted and released at once: its agent (dead, or fenced) said nothing.
                await wait_for_async("the exclusive one, later", lambda: gone(exclusive))
                # lease duration (2 s) + grace (1 s) after the lease went missing
                assert time.monotonic() - died >= 3.0
                # A lease again: Ready again.
                await agent.start_lease_only()
                await wait_for_async("Ready=True again", lambda: is_ready("True"))
        finally:
            await agent.stop_renewing()
            await peer.stop_renewing()


async def test_a_deleted_exclusive_instance_goes_once_its_live_agent_reports_it_stopped(
    apiserver: ApiServer, name: str
) -> None:
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as admin:
        agent = await FakeAgent(admin, name, "c1", duration=2).start()
        try:
            async with platform(apiserver, ("nodelifecycle",), scheduler=False, grace=1.0):
                solo = f"{name}-solo"
                await admin.create(
                    Instance(
                        metadata=ObjectMeta(name=solo, namespace="default"),
                        spec=InstanceSpec(command=["x"], exclusive=True),
                    )
                )
                await admin.bind("default", solo, name)
                await admin.delete(Instance, solo, namespace="default")
                # Its agent is alive (the lease is renewed) and has said nothing: the copy may
                # still run, so the Instance stays, terminating, well past lease + grace.
                await asyncio.sleep(4.0)  # longer than lease duration + grace: nothing happens
                held = await admin.get(Instance, solo, namespace="default")
                assert held.metadata.deletion_timestamp and held.metadata.finalizers
                stopped = msgspec.structs.replace(held.status, phase="Failed")
                await admin.update_status(msgspec.structs.replace(held, status=stopped))
                await wait_for_async(
                    "released once its agent reported it stopped", lambda: _gone(admin, solo)
                )
        finally:
            await agent.stop_renewing()


async def _gone(client: KeelClient, instance: str) -> bool:
    return not await exists(client, instance)


# ------------------------------------------------------------------ disruption (pure)

POLICY = DisruptionPolicy()


# (ready, not ready) nodes of one cluster -> its state
@pytest.mark.parametrize(
    ("ready", "not_ready", "state"),
    [
        (3, 0, NORMAL),
        (0, 0, NORMAL),  # no nodes: nothing is disrupted
        (1, 1, NORMAL),  # one of two: a node failure
        (1, 2, NORMAL),  # two of three: still only two (Kubernetes: more than two)
        (2, 3, PARTIAL),  # 60% and three
        (3, 3, NORMAL),  # 50% is under the 55% threshold
        (9, 11, PARTIAL),
        (0, 1, FULL),  # a one-node cluster whose node is down is down
        (0, 4, FULL),
    ],
)
def test_cluster_state_table(ready: int, not_ready: int, state: str) -> None:
    assert cluster_state(ready, not_ready, POLICY) == state


def test_a_cluster_down_while_others_are_fine_is_a_full_disruption_there_only() -> None:
    seen = disruption([("a", False), ("a", False), ("b", True), ("b", False)], POLICY)
    assert seen.states == {"a": FULL, "b": NORMAL}
    assert not seen.observer_partitioned
    assert (seen.reason("a"), seen.reason("b")) == (FULL, NORMAL)
    assert seen.reason("unknown") == NORMAL


def test_every_cluster_disrupted_means_the_observer_is_cut_off() -> None:
    nodes = [("a", False), ("a", False)] + [("b", i < 1) for i in range(5)]
    seen = disruption(nodes, POLICY)
    assert seen.states == {"a": FULL, "b": PARTIAL}
    assert seen.observer_partitioned
    assert seen.reason("a") == seen.reason("b") == OBSERVER_PARTITIONED
    assert not disruption([], POLICY).observer_partitioned


@pytest.mark.parametrize(
    ("reason", "first", "then"),
    [
        (NORMAL, [0.0, 0.0, 0.0], 2.0),  # a burst of 3, then one every 2 s
        (PARTIAL, [0.0], 10.0),  # one node, then one every 10 s
    ],
)
def test_evictions_are_rate_limited_per_cluster(
    reason: str, first: list[float], then: float
) -> None:
    buckets: dict[str, TokenBucket] = {}
    taken = [eviction_delay(reason, buckets, "a", POLICY, 100.0) for _ in first]
    assert taken == first
    assert eviction_delay(reason, buckets, "a", POLICY, 100.0) == pytest.approx(then)
    assert eviction_delay(reason, buckets, "b", POLICY, 100.0) == 0.0  # its own bucket
    assert eviction_delay(reason, buckets, "a", POLICY, 100.0 + then) == 0.0


@pytest.mark.parametrize("reason", [FULL, OBSERVER_PARTITIONED])
def test_no_evictions_in_a_full_disruption_or_with_the_observer_cut_off(reason: str) -> None:
    assert eviction_delay(reason, {}, "a", POLICY, 0.0) is None


def test_a_cluster_turning_partial_keeps_no_more_than_the_slower_burst() -> None:
    buckets: dict[str, TokenBucket] = {}
    assert eviction_delay(NORMAL, buckets, "a", POLICY, 0.0) == 0.0  # 2 of 3 left
    assert eviction_delay(PARTIAL, buckets, "a", POLICY, 0.0) == 0.0  # capped to 1
    assert eviction_delay(PARTIAL, buckets, "a", POLICY, 0.0) == pytest.approx(10.0)


def test_token_bucket_refills_with_time_up_to_its_burst() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=2, now=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0.0
    assert [bucket.take(100.0), bucket.take(100.0), bucket.take(100.0)] == [0.0, 0.0, 1.0]


def cluster(reason: str | None = None, status: str = "True") -> Cluster:
    conditions = (
        [Condition(type=EVICTIONS_CONDITION, status=status, reason=reason)]  # type: ignore[arg-type]
        if reason
        else []
    )
    return Cluster(metadata=ObjectMeta(name="a"), status=ClusterStatus(conditions=conditions))


def test_the_node_evictions_condition_is_written_on_transitions_only() -> None:
    first = evictions_condition(cluster(), NORMAL, TS)
    assert first is not None and (first.status, first.reason) == ("True", NORMAL)
    assert evictions_condition(cluster(NORMAL), NORMAL, TS) is None
    full = evictions_condition(cluster(NORMAL), FULL, TS)
    assert full is not None and (full.status, full.reason, full.last_transition_time) == (
        "False", FULL, TS,
    )  # fmt: skip
    assert evictions_condition(cluster(FULL, "False"), FULL, TS) is None
    assert set(EVICTIONS) == {NORMAL, PARTIAL, FULL, OBSERVER_PARTITIONED}


def test_withheld_evictions_still_say_not_ready_and_release_what_is_confirmed() -> None:
    instances = [bound("web"), bound("db", exclusive=True, phase="Failed", deleting=True)]
    decided = plan(node("True", "NodeLeaseHeld"), False, 90.0, instances, now=100.0,
                   timestamp=TS, grace=5.0, lease_duration=10.0, evict=False)  # fmt: skip
    assert kinds(decided.actions) == ["Ready=False/NodeLeaseExpired", "release db"]
    assert decided.withheld
    allowed = plan(node("False", "NodeLeaseExpired"), False, 90.0, instances, now=100.0,
                   timestamp=TS, grace=5.0, lease_duration=10.0)  # fmt: skip
    assert kinds(allowed.actions) == ["release db", "delete web"] and not allowed.withheld


# ------------------------------------------------------------------ disruption, for real


async def evictions_reason(client: KeelClient, name: str) -> str | None:
    current = await client.get(Cluster, name)
    found = [c for c in current.status.conditions if c.type == EVICTIONS_CONDITION]
    return found[0].reason if found else None


async def test_a_cluster_that_lost_every_node_keeps_its_instances_and_says_why(
    own_apiserver: ApiServer,
) -> None:
    """Cluster a loses both its nodes: NotReady, but nothing is evicted (cluster failover
    decides there), and Cluster a says FullDisruption. Then cluster b's only node goes too:
    every cluster is disrupted, the observer is presumably cut off, and both say so."""
    async with KeelClient.from_kubeconfig(own_apiserver.kubeconfig) as admin:
        for name in ("a", "b"):
            await admin.create(Cluster(metadata=ObjectMeta(name=name)))
        agents = {
            node: await FakeAgent(admin, node, node[0], duration=2).start()
            for node in ("a1", "a2", "b1")
        }
        try:
            async with platform(own_apiserver, ("nodelifecycle", "cluster-evictions"),
                                scheduler=False, grace=1.0):  # fmt: skip
                await wait_for_async(
                    "NodeEvictions Normal", lambda: _reasons(admin, NORMAL, NORMAL)
                )
                await admin.create(
                    Instance(
                        metadata=ObjectMeta(name="web", namespace="default"),
                        spec=InstanceSpec(command=["x"]),
                    )
                )
                await admin.bind("default", "web", "a1")
                await agents["a1"].die()
                await agents["a2"].die()
                await wait_for_async(
                    "cluster a in full disruption", lambda: _reasons(admin, FULL, NORMAL)
                )

                async def not_ready(node: str) -> bool:
                    return await ready_status(admin, node) == "False"

                await wait_for_async("a1 NotReady", lambda: not_ready("a1"))
                await asyncio.sleep(2.0)  # past the grace, several times: still there
                assert await exists(admin, "web")
                events = await admin.events(name="a")
                assert any(e["reason"] == FULL for e in events), events
                await agents["b1"].die()
                await wait_for_async(
                    "the observer cut off",
                    lambda: _reasons(admin, OBSERVER_PARTITIONED, OBSERVER_PARTITIONED),
                )
                # One node of a back: a is only half down, evictions resume there.
                await agents["a2"].start_lease_only()
                await wait_for_async("a Normal again", lambda: _reasons(admin, NORMAL, FULL))
                await wait_for_async("web evicted", lambda: _gone(admin, "web"))
        finally:
            for agent in agents.values():
                await agent.stop_renewing()


async def _reasons(client: KeelClient, a: str, b: str) -> bool:
    return (await evictions_reason(client, "a"), await evictions_reason(client, "b")) == (a, b)
