"""Node lifecycle: a Node is Ready while its lease `keel-node-lease/NAME` exists; once the
lease has been gone for a grace period the Node turns NotReady (a write on transitions only)
and the Instances bound to it are deleted so they are recreated elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from keel.api.resources import Condition, Instance, Lease, Node, Resource
from keel.client import Conflict, KeelClient, NotFound, Preconditions
from keel.clock import rfc3339
from keel.runtime.controller import Context, Related, Result

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LEASE_DURATION",
    "LEASE_NAMESPACE",
    "DeleteInstance",
    "NodeLifecycleController",
    "Plan",
    "SetReady",
    "execute",
    "lease_state",
    "plan",
]

LEASE_NAMESPACE = "keel-node-lease"
DEFAULT_GRACE = 5.0
DEFAULT_LEASE_DURATION = 10.0  # the agents' default, until a Lease tells us its own
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


Action = SetReady | DeleteInstance


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # when the next deadline passes


def lease_state(lease_present: bool, missing_for: float, grace: float) -> str:
    if lease_present:
        return "held"
    return "expired" if missing_for >= grace else "missing"


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
) -> Plan:
    """What to do about `node`, whose lease is present or has been missing since
    `missing_since` (monotonic seconds; `now` likewise), with `instances` bound to it.

    The Ready condition is set only when its status or reason changes (`timestamp` becomes
    its lastTransitionTime). Once expired, non-exclusive Instances are deleted; exclusive ones
    only after lease duration + grace, when their agent has certainly fenced itself.
    """
    if node is None or node.metadata.deletion_timestamp:
        return Plan()
    missing_for = 0.0 if lease_present or missing_since is None else now - missing_since
    state = lease_state(lease_present, missing_for, grace)
    actions: list[Action] = []
    wanted = READY_BY_LEASE[state]
    if wanted is not None:
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
    if state == "missing":
        return Plan(actions, requeue_after=max(MIN_REQUEUE, grace - missing_for))
    if state == "held":
        return Plan(actions)
    exclusive_after = grace + lease_duration
    waiting = False
    for instance in sorted(instances, key=lambda i: (i.metadata.namespace, i.metadata.name)):
        meta = instance.metadata
        if (
            meta.deletion_timestamp
            or instance.spec.node_name != node.metadata.name
            or instance.status.phase in TERMINAL
        ):
            continue
        if instance.spec.exclusive and missing_for < exclusive_after:
            waiting = True
            continue
        actions.append(DeleteInstance(meta.namespace, meta.name, meta.uid))
    requeue = max(MIN_REQUEUE, exclusive_after - missing_for) if waiting else None
    return Plan(actions, requeue_after=requeue)


def ready_condition(node: Node) -> Condition | None:
    return next((c for c in node.status.conditions if c.type == "Ready"), None)


async def execute(client: KeelClient, node: Node, action: Action) -> None:
    """The condition write is conditional on the Node's resourceVersion (`Conflict`: look
    again) and keeps the other conditions; deletes are conditional on the uid."""
    match action:
        case SetReady(condition=condition):
            others = [c for c in node.status.conditions if c.type != "Ready"]
            status = msgspec.structs.replace(node.status, conditions=[*others, condition])
            await client.update_status(msgspec.structs.replace(node, status=status))
        case DeleteInstance(namespace=namespace, name=name, uid=uid):
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    Instance, name, namespace=namespace, preconditions=Preconditions(uid=uid)
                )


class NodeLifecycleController:
    """Watches Nodes, their leases and the Instances bound to them: see the module docstring.

    When a lease went missing is remembered in memory: a new leader starts counting afresh,
    which only ever delays a decision (the safe direction).
    """

    name = "nodelifecycle"
    primary = Node

    def __init__(self, *, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self.related = (
            Related(Lease, self._node_of_lease),
            Related(Instance, self._node_of_instance),
        )
        self._missing_since: dict[str, float] = {}
        self._durations: dict[str, float] = {}

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
        if node is None:
            self._missing_since.pop(key, None)
            self._durations.pop(key, None)
            return Result()
        lease: Lease | None = ctx.cache(Lease).get(f"{LEASE_NAMESPACE}/{key}")
        now = ctx.clock.now()
        if lease is not None:
            self._missing_since.pop(key, None)
            self._durations[key] = float(lease.spec.lease_duration_seconds)
        else:
            self._missing_since.setdefault(key, now)
        bound: list[Instance] = ctx.cache(Instance).by_index("nodeName", key)
        decided = plan(
            node,
            lease is not None,
            self._missing_since.get(key),
            bound,
            now=now,
            timestamp=rfc3339(ctx.clock.wall()),
            grace=self.grace,
            lease_duration=self._durations.get(key, DEFAULT_LEASE_DURATION),
        )
        for action in decided.actions:
            match action:
                case SetReady(condition=c):
                    ctx.log.info("node %s: Ready=%s (%s)", key, c.status, c.reason)
                case DeleteInstance(namespace=ns, name=name):
                    ctx.log.info("node %s is not ready: deleting instance %s/%s", key, ns, name)
            await execute(ctx.client, node, action)
        return Result(requeue_after=decided.requeue_after)
