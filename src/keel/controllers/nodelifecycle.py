"""Node lifecycle: a Node is Ready while its lease `keel-node-lease/NAME` exists; once the
lease has been gone for a grace period the Node turns NotReady (a write on transitions only)
and the Instances bound to it are deleted so they are recreated elsewhere.

It also releases deleted exclusive Instances: their `keel.dev/stop-confirmed` finalizer goes
once the copy on the node is certainly stopped (its agent reported a terminal phase, or the
node lease has been gone long enough for the agent to have fenced itself), and only then may
a replacement of the same name be created and bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from keel.api.resources import STOP_CONFIRMED, Condition, Instance, Lease, Node, Resource
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
    "ReleaseInstance",
    "SetReady",
    "execute",
    "lease_state",
    "plan",
    "stop_confirmed",
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
) -> Plan:
    """What to do about `node` (None: there is no such Node), whose lease is present or has
    been missing since `missing_since` (monotonic seconds; `now` likewise), with `instances`
    bound to it.

    The Ready condition is set only when its status or reason changes (`timestamp` becomes
    its lastTransitionTime). Once expired, non-exclusive Instances are deleted; exclusive ones
    only after lease duration + grace, when their agent has certainly fenced itself. Deleted
    Instances holding `STOP_CONFIRMED` are released once `stop_confirmed` says why, whatever
    became of the Node object.
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
        actions.append(DeleteInstance(meta.namespace, meta.name, meta.uid))
        if STOP_CONFIRMED in meta.finalizers:
            # The delete only marks it; the node is fenced, so it is released at once too.
            actions.append(ReleaseInstance(meta.namespace, meta.name, meta.uid, FENCED))
    requeue: float | None = None
    if state == "missing":
        requeue = max(MIN_REQUEUE, grace - missing_for)
    elif state == "expired" and waiting:
        requeue = max(MIN_REQUEUE, exclusive_after - missing_for)
    return Plan(actions, requeue_after=requeue, node_fenced=fenced)


def ready_condition(node: Node) -> Condition | None:
    return next((c for c in node.status.conditions if c.type == "Ready"), None)


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
        lease: Lease | None = ctx.cache(Lease).get(f"{LEASE_NAMESPACE}/{key}")
        bound: list[Instance] = ctx.cache(Instance).by_index("nodeName", key)
        if node is None and not bound:
            self._missing_since.pop(key, None)
            self._durations.pop(key, None)
            return Result()
        now = ctx.clock.now()
        if lease is not None:
            self._missing_since.pop(key, None)
            self._durations[key] = float(lease.spec.lease_duration_seconds)
        else:
            self._missing_since.setdefault(key, now)
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
                case ReleaseInstance(namespace=ns, name=name, why=why):
                    ctx.log.info("node %s: releasing instance %s/%s: %s", key, ns, name, why)
            await execute(ctx.client, node, action, node_fenced=decided.node_fenced)
        return Result(requeue_after=decided.requeue_after)
