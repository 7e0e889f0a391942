"""The node lifecycle controller: its plan as a table over lease states and deadlines, and
the real thing against a `keel apiserver` (Ready from the lease, NotReady after the grace,
bound Instances deleted; exclusive ones only after lease duration + grace)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec
import pytest
from scheduler.keel_platform import FakeAgent, platform
from support import ApiServer, wait_for_async

from keel.api.resources import (
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
from keel.controllers.nodelifecycle import DeleteInstance, SetReady, plan

TS = "2024-01-01T00:00:00Z"


def node(ready: str | None = None, reason: str = "") -> Node:
    conditions = [Condition(type="Ready", status=ready, reason=reason)] if ready else []  # type: ignore[arg-type]
    return Node(
        metadata=ObjectMeta(name="n1"),
        spec=NodeSpec(cluster="c1"),
        status=NodeStatus(conditions=conditions),
    )


def bound(name: str, *, exclusive: bool = False, phase: str = "Running") -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"),
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
        (node("False", "NodeLeaseExpired"), False, 15.0, ["delete db", "delete web"], None),
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
        agent = await FakeAgent(admin, name, "c1", duration=2).start()
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
                    await admin.bind("default", instance, name)
                died = time.monotonic()
                await agent.die()
                await wait_for_async("Ready=False", lambda: is_ready("False"))
                assert time.monotonic() - died >= 1.0  # not before the grace period

                async def gone(instance: str) -> bool:
                    return not await exists(admin, instance)

                await wait_for_async("the non-exclusive instance deleted", lambda: gone(plain))
                assert await exists(admin, exclusive)  # its agent may still be fencing
                await wait_for_async("the exclusive one, later", lambda: gone(exclusive))
                # lease duration (2 s) + grace (1 s) after the lease went missing
                assert time.monotonic() - died >= 3.0
                # A lease again: Ready again.
                await agent.start_lease_only()
                await wait_for_async("Ready=True again", lambda: is_ready("True"))
        finally:
            await agent.stop_renewing()
