"""Deployments: keep `spec.replicas` Instances of the current template, named
`{deployment}-{templateHash}-{index}`, replace those of older templates (rolling or recreate)
and write the Deployment's status when it changes. `plan` decides (pure); `execute` applies.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from keel.api.disruption import is_ready, rollout_budget
from keel.api.resources import (
    API_VERSION,
    FAILOVER_PENDING,
    Deployment,
    DeploymentStatus,
    Instance,
    ObjectMeta,
    OwnerReference,
)
from keel.client import AlreadyExists, Conflict, KeelClient, NotFound, Preconditions
from keel.runtime.controller import Context, Related, Result

__all__ = [
    "DEPLOYMENT_LABEL",
    "HASH_LABEL",
    "CreateInstance",
    "DeleteInstance",
    "DeploymentController",
    "UpdateStatus",
    "execute",
    "instance_name",
    "is_ready",
    "plan",
    "rollout_budget",
    "template_hash",
]

DEPLOYMENT_LABEL = "keel.dev/deployment"
HASH_LABEL = "keel.dev/template-hash"
HASH_LENGTH = 10


@dataclass(frozen=True)
class CreateInstance:
    instance: Instance


@dataclass(frozen=True)
class DeleteInstance:
    namespace: str
    name: str
    uid: str  # only this incarnation: a recreated Instance of that name is not ours to judge


@dataclass(frozen=True)
class UpdateStatus:
    status: DeploymentStatus


Action = CreateInstance | DeleteInstance | UpdateStatus


def template_hash(deployment: Deployment) -> str:
    """A short, stable hash of the template (the revision): equal templates, equal hashes."""
    encoded = msgspec.json.encode(deployment.spec.template, order="deterministic")
    return hashlib.sha256(encoded).hexdigest()[:HASH_LENGTH]


def instance_name(deployment: str, revision: str, index: int) -> str:
    return f"{deployment}-{revision}-{index}"


def plan(deployment: Deployment | None, instances: Sequence[Instance], now: float) -> list[Action]:
    """What to do about `deployment` given the Instances it owns.

    Instances of the current template are named by index 0..replicas-1: missing ones are
    created, extras deleted (highest index first). Instances of older templates are replaced:
    "Recreate" deletes them all, and creates new ones once they are gone; "RollingUpdate"
    creates new ones up to replicas + maxSurge in total and deletes old ones while at least
    replicas - maxUnavailable stay Ready (unready old ones go first). The status is that of
    the Instances as they will be once these actions are applied, and is written only when
    it differs. `now` is unused by this first version (minReadySeconds is not honoured yet).

    A terminating Instance (an exclusive one waits, deleted, until its copy is certainly
    stopped) serves nobody and is not counted in the status, but still holds its name: one
    of the current template keeps its index taken (neither created again nor counted as
    missing) and counts towards replicas + maxSurge; "Recreate" waits for old ones to go.

    An Instance marked `FAILOVER_PENDING` (being moved gracefully off an Unreachable
    cluster) is outgoing: it counts neither towards replicas nor the rollout budget, so a
    replacement is created under the lowest free index, while it keeps its own name (and
    runs, perhaps, behind a partition). This is the one way a Deployment has more Instances
    than replicas + maxSurge, bounded by the pending ones. Pending Instances are deleted as
    replacements become Ready: at most replicas - (Ready counted Instances) of them stay
    (unready ones go first). The failover controller deletes those left when their grace
    period ends.

    The indices that count ("slots") are the `replicas` lowest ones held by counted or
    terminating Instances of the current template, topped up with the lowest free ones:
    0..replicas-1 while nothing was ever pending, and no renaming once a failover is over
    (a replacement keeps its higher index rather than move once more).
    """
    del now
    if deployment is None or deployment.metadata.deletion_timestamp:
        return []
    name = deployment.metadata.name
    revision = template_hash(deployment)
    replicas = deployment.spec.replicas
    live = [i for i in instances if not i.metadata.deletion_timestamp]
    pending = [i for i in live if FAILOVER_PENDING in i.metadata.annotations]
    counted = [i for i in live if FAILOVER_PENDING not in i.metadata.annotations]
    current: dict[int, Instance] = {}
    old: list[Instance] = []
    prefix = f"{name}-{revision}-"
    for instance in counted:
        index = _index(instance.metadata.name, prefix)
        if index is None:
            old.append(instance)
        else:
            current[index] = instance
    held: set[int] = set()  # indices whose Instance is terminating: their names are taken
    old_terminating = False
    for instance in instances:
        if instance.metadata.deletion_timestamp:
            index = _index(instance.metadata.name, prefix)
            if index is None:
                old_terminating = True
            else:
                held.add(index)
    taken = set(current) | held
    for instance in pending:
        index = _index(instance.metadata.name, prefix)
        if index is not None:
            taken.add(index)
    slots = _slots(sorted(set(current) | held), taken, replicas)
    held_slots = len(held & slots)

    actions: list[Action] = []
    deleted: set[str] = set()
    created: list[Instance] = []

    def delete(instance: Instance) -> None:
        meta = instance.metadata
        actions.append(DeleteInstance(meta.namespace, meta.name, meta.uid))
        deleted.add(meta.name)

    # Current-template extras: highest index first.
    for index in sorted((i for i in current if i not in slots), reverse=True):
        delete(current[index])
    missing = [i for i in sorted(slots) if i not in current and i not in held]

    if deployment.spec.strategy.type == "Recreate" and (old or old_terminating):
        for instance in sorted(old, key=lambda i: i.metadata.name):
            delete(instance)
        creatable = 0  # new ones only once every old one is gone, terminating ones too
    elif not old:
        creatable = len(missing)
    else:
        surge, unavailable = rollout_budget(deployment)
        kept_current = sum(1 for i in current if i in slots) + held_slots
        creatable = max(0, replicas + surge - (kept_current + len(old)))
        available = sum(1 for i, inst in current.items() if i in slots and is_ready(inst))
        available += sum(1 for inst in old if is_ready(inst))
        floor = replicas - unavailable
        # Unready old Instances serve nobody: they go first, then ready ones while enough
        # Instances stay available. Among equals, the highest name first (as scale-down).
        by_name = sorted(old, key=lambda i: i.metadata.name, reverse=True)
        for instance in sorted(by_name, key=is_ready):
            if not is_ready(instance):
                delete(instance)
            elif available - 1 >= floor:
                delete(instance)
                available -= 1

    for index in missing[:creatable]:
        instance = new_instance(deployment, revision, index)
        actions.append(CreateInstance(instance))
        created.append(instance)

    # Outgoing (failover-pending) Instances stay only while replacements are not yet Ready.
    ready_counted = sum(1 for i in counted if i.metadata.name not in deleted and is_ready(i))
    keep = max(0, replicas - ready_counted)
    by_name = sorted(pending, key=lambda i: i.metadata.name, reverse=True)
    for instance in sorted(by_name, key=is_ready)[: max(0, len(pending) - keep)]:
        delete(instance)

    remaining = [i for i in live if i.metadata.name not in deleted] + created
    status = _status(deployment, revision, remaining)
    if status != deployment.status:
        actions.append(UpdateStatus(status))
    return actions


def _slots(occupied: list[int], taken: set[int], replicas: int) -> set[int]:
    """The indices that count: the `replicas` lowest `occupied` ones (ascending), topped up
    with the lowest indices not `taken` by any Instance."""
    chosen = occupied[:replicas]
    free = (i for i in range(replicas + len(taken) + 1) if i not in taken)
    while len(chosen) < replicas:
        chosen.append(next(free))
    return set(chosen)


def _index(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    tail = name[len(prefix) :]
    if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        return None
    return int(tail)


def new_instance(deployment: Deployment, revision: str, index: int) -> Instance:
    """The Instance `index` of the current template, owned by the Deployment."""
    meta = deployment.metadata
    template = deployment.spec.template
    labels = {**template.metadata.labels, DEPLOYMENT_LABEL: meta.name, HASH_LABEL: revision}
    owner = OwnerReference(
        api_version=API_VERSION,
        kind="Deployment",
        name=meta.name,
        uid=meta.uid,
        controller=True,
        block_owner_deletion=True,
    )
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(
            name=instance_name(meta.name, revision, index),
            namespace=meta.namespace,
            labels=labels,
            annotations=dict(template.metadata.annotations),
            owner_references=[owner],
        ),
        spec=msgspec.structs.replace(template.spec, node_name=""),
    )


def _status(
    deployment: Deployment, revision: str, instances: Sequence[Instance]
) -> DeploymentStatus:
    updated = [i for i in instances if i.metadata.labels.get(HASH_LABEL) == revision]
    ready = sum(1 for i in instances if is_ready(i))
    outdated = sorted({i.metadata.labels.get(HASH_LABEL, "") for i in instances} - {revision, ""})
    previous = deployment.status.current_revision
    if not outdated:
        current_revision = revision
    elif previous in outdated:
        current_revision = previous
    else:
        current_revision = outdated[0]
    return msgspec.structs.replace(
        deployment.status,
        observed_generation=deployment.metadata.generation,
        replicas=len(instances),
        ready_replicas=ready,
        updated_replicas=len(updated),
        available_replicas=ready,
        current_revision=current_revision,
        update_revision=revision,
    )


async def execute(client: KeelClient, deployment: Deployment, action: Action) -> None:
    """Apply one action idempotently: a create finding the name taken, or a delete finding
    the object gone (or replaced by another incarnation), is done. A status write is
    conditional on the resourceVersion planned on (`Conflict`: look again)."""
    match action:
        case CreateInstance(instance=instance):
            with contextlib.suppress(AlreadyExists):
                await client.create(instance)
        case DeleteInstance(namespace=namespace, name=name, uid=uid):
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    Instance, name, namespace=namespace, preconditions=Preconditions(uid=uid)
                )
        case UpdateStatus(status=status):
            await client.update_status(msgspec.structs.replace(deployment, status=status))


class DeploymentController:
    """Reconciles Deployments: see the module docstring. Instances map to their owner."""

    name = "deployment"
    primary = Deployment
    related = (Related(Instance),)

    async def reconcile(self, ctx: Context, key: str) -> Result:
        deployment: Deployment | None = ctx.cache(Deployment).get(key)
        if deployment is None:
            return Result()  # gone: the garbage collector takes its Instances
        owned = [
            instance
            for instance in ctx.cache(Instance).by_index("owner", deployment.metadata.uid)
            if instance.metadata.namespace == deployment.metadata.namespace
        ]
        for action in plan(deployment, owned, ctx.clock.now()):
            if not isinstance(action, UpdateStatus):
                ctx.log.info("deployment %s: %s", key, _describe(action))
            await execute(ctx.client, deployment, action)
        return Result()


def _describe(action: Action) -> str:
    match action:
        case CreateInstance(instance=instance):
            return f"create instance {instance.metadata.name}"
        case DeleteInstance(name=name):
            return f"delete instance {name}"
        case UpdateStatus():
            return "update status"
