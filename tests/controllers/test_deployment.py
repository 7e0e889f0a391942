"""The Deployment controller: its plan as tables and properties, and the real thing against
a `keel apiserver` (deterministic names, scaling up and down, template changes, status)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler.keel_platform import platform
from support import ApiServer, wait_for_async

from keel.api.resources import (
    Condition,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceStatus,
    InstanceTemplate,
    ObjectMeta,
    RollingUpdate,
    Strategy,
    TemplateMeta,
)
from keel.client import KeelClient, NotFound
from keel.controllers.deployment import (
    DEPLOYMENT_LABEL,
    HASH_LABEL,
    CreateInstance,
    DeleteInstance,
    UpdateStatus,
    new_instance,
    new_revision,
    template_hash,
)
from keel.controllers.deployment import plan as rollout_plan

NS = "default"


def deployment(
    replicas: int = 3,
    *,
    command: str = "serve",
    name: str = "web",
    strategy: Strategy | None = None,
    generation: int = 1,
) -> Deployment:
    return Deployment(
        kind="Deployment",
        metadata=ObjectMeta(name=name, namespace=NS, uid="dep-uid", generation=generation),
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": name}),
                spec=InstanceSpec(command=[command]),
            ),
            strategy=strategy or Strategy(),
        ),
    )


def ready(instance: Instance, value: bool = True) -> Instance:
    condition = Condition(type="Ready", status="True" if value else "False")
    return msgspec.structs.replace(
        instance, status=InstanceStatus(phase="Running", conditions=[condition])
    )


def apply(
    dep: Deployment,
    instances: list[Instance],
    actions: Sequence[object],
    *,
    make_ready: bool = False,
    hold: bool = False,
) -> tuple[Deployment, list[Instance]]:
    """What the API server would hold after `actions` (uids are names, as good as any).
    `hold`: deleted Instances stay, terminating (as bound exclusive ones do, held by their
    `keel.dev/stop-confirmed` finalizer until their copy is certainly stopped)."""
    by_name = {i.metadata.name: i for i in instances}
    for action in actions:
        match action:
            case CreateInstance(instance=instance):
                if instance.metadata.name not in by_name:
                    meta = msgspec.structs.replace(instance.metadata, uid=instance.metadata.name)
                    created = msgspec.structs.replace(instance, metadata=meta)
                    by_name[instance.metadata.name] = ready(created) if make_ready else created
            case DeleteInstance(name=name) if hold and name in by_name:
                by_name[name] = terminating(by_name[name])
            case DeleteInstance(name=name):
                by_name.pop(name, None)
            case UpdateStatus(status=status):
                dep = msgspec.structs.replace(dep, status=status)
    return dep, list(by_name.values())


def terminating(instance: Instance) -> Instance:
    meta = msgspec.structs.replace(instance.metadata, deletion_timestamp="2024-01-01T00:00:00Z")
    return msgspec.structs.replace(instance, metadata=meta)


def released(instances: list[Instance]) -> list[Instance]:
    """The terminating Instances gone: their copies were confirmed stopped."""
    return [i for i in instances if not i.metadata.deletion_timestamp]


def scaled(dep: Deployment, replicas: int) -> Deployment:
    return msgspec.structs.replace(dep, spec=msgspec.structs.replace(dep.spec, replicas=replicas))


def names(actions: Sequence[object], kind: type) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, CreateInstance) and kind is CreateInstance:
            out.append(action.instance.metadata.name)
        if isinstance(action, DeleteInstance) and kind is DeleteInstance:
            out.append(action.name)
    return out


# ------------------------------------------------------------------ pure plan


def plan(dep: Deployment | None, instances: Sequence[Instance], now: float) -> list[object]:
    """The instance and status actions of the plan, given the Revision of the current
    template (the rollout machinery has its own tests in test_rollout.py)."""
    revisions = [] if dep is None else [new_revision(dep, template_hash(dep), 1)]
    kinds = (CreateInstance, DeleteInstance, UpdateStatus)
    return [a for a in rollout_plan(dep, revisions, instances, now) if isinstance(a, kinds)]


def test_new_deployment_creates_replicas_with_deterministic_names_labels_and_owner() -> None:
    dep = deployment(3)
    h = template_hash(dep)
    actions = plan(dep, [], 0.0)
    assert names(actions, CreateInstance) == [f"web-{h}-0", f"web-{h}-1", f"web-{h}-2"]
    created = [a.instance for a in actions if isinstance(a, CreateInstance)]
    assert created[0].metadata.labels == {"app": "web", DEPLOYMENT_LABEL: "web", HASH_LABEL: h}
    owner = created[0].metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "Deployment",
        "web",
        "dep-uid",
        True,
    )
    status = next(a.status for a in actions if isinstance(a, UpdateStatus))
    assert (status.replicas, status.updated_replicas, status.ready_replicas) == (3, 3, 0)
    assert status.update_revision == status.current_revision == h
    assert status.observed_generation == 1


def test_template_hash_is_stable_and_changes_with_the_template() -> None:
    assert template_hash(deployment()) == template_hash(deployment(replicas=7))
    assert template_hash(deployment()) != template_hash(deployment(command="other"))


@pytest.mark.parametrize(
    ("start", "target", "created", "deleted"),
    [
        (3, 5, [3, 4], []),
        (5, 2, [], [4, 3, 2]),  # extras go highest index first
        (3, 3, [], []),
        (2, 0, [], [1, 0]),
    ],
)
def test_scaling_creates_missing_and_deletes_extras_highest_first(
    start: int, target: int, created: list[int], deleted: list[int]
) -> None:
    dep, instances = apply(deployment(start), [], plan(deployment(start), [], 0.0))
    dep = msgspec.structs.replace(dep, spec=msgspec.structs.replace(dep.spec, replicas=target))
    h = template_hash(dep)
    actions = plan(dep, instances, 0.0)
    assert names(actions, CreateInstance) == [f"web-{h}-{i}" for i in created]
    assert names(actions, DeleteInstance) == [f"web-{h}-{i}" for i in deleted]


def test_status_is_written_only_when_it_changes() -> None:
    dep, instances = apply(deployment(3), [], plan(deployment(3), [], 0.0))
    assert plan(dep, instances, 0.0) == []
    instances = [ready(i) for i in instances]
    actions = plan(dep, instances, 0.0)
    assert [type(a) for a in actions] == [UpdateStatus]
    dep, instances = apply(dep, instances, actions)
    assert dep.status.ready_replicas == dep.status.available_replicas == 3
    assert plan(dep, instances, 0.0) == []


def test_rolling_update_keeps_enough_ready_instances_and_finishes() -> None:
    strategy = Strategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable=0))
    old = deployment(3, strategy=strategy)
    dep, instances = apply(old, [], plan(old, [], 0.0), make_ready=True)
    new = msgspec.structs.replace(deployment(3, command="v2", strategy=strategy), status=dep.status)
    new_hash = template_hash(new)
    dep = new
    for _ in range(20):
        actions = plan(dep, instances, 0.0)
        if not actions:
            break
        dep, instances = apply(dep, instances, actions, make_ready=True)
        live_ready = sum(1 for i in instances if i.status.conditions)
        assert live_ready >= 3  # maxUnavailable 0: never below 3 ready
        assert len(instances) <= 4  # maxSurge 1
    assert sorted(i.metadata.name for i in instances) == [f"web-{new_hash}-{i}" for i in range(3)]
    assert dep.status.current_revision == dep.status.update_revision == new_hash


def test_rolling_update_waits_for_new_instances_to_become_ready() -> None:
    strategy = Strategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable=0))
    old = deployment(3, strategy=strategy)
    dep, instances = apply(old, [], plan(old, [], 0.0), make_ready=True)
    dep = msgspec.structs.replace(deployment(3, command="v2", strategy=strategy), status=dep.status)
    actions = plan(dep, instances, 0.0)
    assert len(names(actions, CreateInstance)) == 1 and names(actions, DeleteInstance) == []
    dep, instances = apply(dep, instances, actions)  # the new one is not ready
    actions = plan(dep, instances, 0.0)
    assert names(actions, CreateInstance) == [] and names(actions, DeleteInstance) == []


def test_recreate_deletes_old_instances_before_creating_new_ones() -> None:
    strategy = Strategy(type="Recreate")
    old = deployment(2, strategy=strategy)
    dep, instances = apply(old, [], plan(old, [], 0.0), make_ready=True)
    dep = msgspec.structs.replace(deployment(2, command="v2", strategy=strategy), status=dep.status)
    actions = plan(dep, instances, 0.0)
    assert len(names(actions, DeleteInstance)) == 2 and names(actions, CreateInstance) == []
    dep, instances = apply(dep, instances, actions)
    assert len(names(plan(dep, instances, 0.0), CreateInstance)) == 2


def test_a_terminating_instance_keeps_its_slot_until_it_is_gone() -> None:
    """Scaled down and up again while the deleted exclusive Instance waits for its copy to
    stop: its name is not created again (the server would refuse it; a replacement of the
    same name must wait), it is not counted as serving, and it is replaced once gone."""
    dep, instances = apply(deployment(2), [], plan(deployment(2), [], 0.0), make_ready=True)
    dep, instances = apply(dep, instances, plan(dep, instances, 0.0))  # status
    h = template_hash(dep)
    dep = scaled(dep, 1)
    actions = plan(dep, instances, 0.0)
    assert names(actions, DeleteInstance) == [f"web-{h}-1"]
    dep, instances = apply(dep, instances, actions, hold=True)
    assert (dep.status.replicas, dep.status.ready_replicas) == (1, 1)
    dep = scaled(dep, 2)
    actions = plan(dep, instances, 0.0)
    assert names(actions, CreateInstance) == [] and names(actions, DeleteInstance) == []
    dep, instances = apply(dep, instances, actions, hold=True)
    assert (dep.status.replicas, dep.status.ready_replicas) == (1, 1)
    assert plan(dep, instances, 0.0) == []  # nothing to do but wait
    actions = plan(dep, released(instances), 0.0)
    assert names(actions, CreateInstance) == [f"web-{h}-1"]


def test_a_terminating_instance_of_the_template_counts_towards_the_surge() -> None:
    strategy = Strategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable=0))
    old = deployment(2, strategy=strategy)
    dep, old_instances = apply(old, [], plan(old, [], 0.0), make_ready=True)
    new = msgspec.structs.replace(deployment(2, command="v2", strategy=strategy), status=dep.status)
    h = template_hash(new)
    # Index 0 of the new template was made, then deleted (a scale to 0 and back, say), and
    # still waits for its copy to stop: 2 old + 1 terminating = replicas + maxSurge.
    held = terminating(new_instance(new, h, 0))
    actions = plan(new, [*old_instances, held], 0.0)
    assert names(actions, CreateInstance) == [] and names(actions, DeleteInstance) == []
    actions = plan(new, old_instances, 0.0)  # gone: the rollout goes on
    assert names(actions, CreateInstance) == [f"web-{h}-0"]


def test_recreate_waits_for_terminating_old_instances() -> None:
    strategy = Strategy(type="Recreate")
    old = deployment(2, strategy=strategy)
    dep, instances = apply(old, [], plan(old, [], 0.0), make_ready=True)
    dep = msgspec.structs.replace(deployment(2, command="v2", strategy=strategy), status=dep.status)
    dep, instances = apply(dep, instances, plan(dep, instances, 0.0), hold=True)
    assert len(instances) == 2 and all(i.metadata.deletion_timestamp for i in instances)
    assert names(plan(dep, instances, 0.0), CreateInstance) == []  # old copies may still run
    assert len(names(plan(dep, released(instances), 0.0), CreateInstance)) == 2


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("scale"), st.integers(0, 5)),
            st.tuples(st.just("roll"), st.integers(0, 2)),
            st.tuples(st.just("release"), st.just(0)),
        ),
        max_size=12,
    )
)
def test_held_names_are_never_created_again_and_everything_converges(
    steps: list[tuple[str, int]],
) -> None:
    """Scaling and rolling while deleted Instances stay terminating: no plan creates a name
    that is taken, status counts only live Instances, and once the terminating ones go the
    Deployment converges to its replicas of the current template."""
    strategy = Strategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable=0))
    dep = deployment(2, strategy=strategy)
    instances: list[Instance] = []
    for what, value in steps:
        if what == "scale":
            dep = scaled(dep, value)
        elif what == "roll":
            template = deployment(command=f"v{value}").spec.template
            spec = msgspec.structs.replace(dep.spec, template=template)
            dep = msgspec.structs.replace(dep, spec=spec)
        else:
            instances = released(instances)
        actions = plan(dep, instances, 0.0)
        taken = {i.metadata.name for i in instances}
        assert not taken & set(names(actions, CreateInstance))
        dep, instances = apply(dep, instances, actions, make_ready=True, hold=True)
        assert dep.status.replicas == len(released(instances))
    for _ in range(20):
        instances = released(instances)
        actions = plan(dep, instances, 0.0)
        if not actions:
            break
        dep, instances = apply(dep, instances, actions, make_ready=True, hold=True)
    h = template_hash(dep)
    assert sorted(i.metadata.name for i in instances) == sorted(
        f"web-{h}-{i}" for i in range(dep.spec.replicas)
    )


def test_deleted_or_deleting_deployment_plans_nothing() -> None:
    assert plan(None, [], 0.0) == []
    dep = deployment()
    deleting = msgspec.structs.replace(
        dep,
        metadata=msgspec.structs.replace(dep.metadata, deletion_timestamp="2024-01-01T00:00:00Z"),
    )
    assert plan(deleting, [], 0.0) == []


@settings(max_examples=150, deadline=None)
@given(
    start=st.integers(0, 12),
    target=st.integers(0, 12),
    drop=st.sets(st.integers(0, 11)),
    ready_mask=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_plan_is_idempotent_once_applied(
    start: int, target: int, drop: set[int], ready_mask: list[bool]
) -> None:
    """Whatever Instances exist (some missing, some ready), applying the plan and planning
    again (once its completion is seen) yields nothing, and exactly `target` current
    Instances: the survivors with the lowest indices are kept (no Instance is restarted
    only to be renumbered), holes are filled lowest index first, and with no holes the
    indices are 0..target-1."""
    dep, instances = apply(deployment(start), [], plan(deployment(start), [], 0.0))
    instances = [
        ready(i) if ready_mask[n] else i
        for n, i in enumerate(sorted(instances, key=lambda i: i.metadata.name))
        if n not in drop
    ]
    survivors = sorted(int(i.metadata.name.rsplit("-", 1)[1]) for i in instances)
    dep = msgspec.structs.replace(dep, spec=msgspec.structs.replace(dep.spec, replicas=target))
    dep, instances = apply(dep, instances, plan(dep, instances, 0.0))
    # A scale-down completes the rollout once the deletions are seen: one more status write.
    dep, instances = apply(dep, instances, plan(dep, instances, 0.0))
    assert plan(dep, instances, 0.0) == []
    h = template_hash(dep)
    kept = survivors[:target]
    filled = [i for i in range(target + len(survivors)) if i not in survivors]
    expected = kept + filled[: target - len(kept)]
    assert sorted(i.metadata.name for i in instances) == sorted(f"web-{h}-{i}" for i in expected)
    if not drop & set(range(start)):
        assert sorted(i.metadata.name for i in instances) == sorted(
            f"web-{h}-{i}" for i in range(target)
        )
    assert dep.status.replicas == target


# ------------------------------------------------------------------ real API server


async def instances_of(client: KeelClient, name: str) -> list[str]:
    found = await client.list(Instance, namespace=NS, label_selector={DEPLOYMENT_LABEL: name})
    return sorted(i.metadata.name for i in found.items if not i.metadata.deletion_timestamp)


async def test_deployment_keeps_replicas_with_deterministic_names_and_scales(
    apiserver: ApiServer, client: KeelClient, name: str
) -> None:
    async with platform(apiserver, ("deployment",), scheduler=False):
        dep = await client.create(deployment(3, name=name))
        h = template_hash(dep)

        async def count_is(n: int) -> list[str] | None:
            got = await instances_of(client, name)
            return got if got == sorted(f"{name}-{h}-{i}" for i in range(n)) else None

        await wait_for_async("3 instances", lambda: count_is(3))

        async def status_is(n: int) -> bool:
            current = await client.get(Deployment, name, namespace=NS)
            s = current.status
            return (s.replicas, s.updated_replicas, s.observed_generation, s.update_revision) == (
                n,
                n,
                current.metadata.generation,
                h,
            )

        await wait_for_async("status replicas=3", lambda: status_is(3))
        await client.patch(Deployment, name, {"spec": {"replicas": 5}}, namespace=NS)
        await wait_for_async("5 instances", lambda: count_is(5))
        await wait_for_async("status replicas=5", lambda: status_is(5))
        await client.patch(Deployment, name, {"spec": {"replicas": 2}}, namespace=NS)
        await wait_for_async("2 instances", lambda: count_is(2))
        await wait_for_async("status replicas=2", lambda: status_is(2))

        # An Instance deleted by hand comes back under the same name.
        victim = f"{name}-{h}-1"
        old_uid = (await client.get(Instance, victim, namespace=NS)).metadata.uid

        async def recreated() -> bool:
            try:
                current = await client.get(Instance, victim, namespace=NS)
            except NotFound:
                return False
            return current.metadata.uid != old_uid

        await client.delete(Instance, victim, namespace=NS)
        await wait_for_async("the deleted instance to be recreated", recreated)


async def test_template_change_replaces_instances(
    apiserver: ApiServer, client: KeelClient, name: str
) -> None:
    async with platform(apiserver, ("deployment",), scheduler=False):
        strategy = Strategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable="100%"))
        dep = await client.create(deployment(2, name=name, strategy=strategy))
        old_hash = template_hash(dep)
        await wait_for_async(
            "2 instances of the first template",
            lambda: names_are(client, name, [f"{name}-{old_hash}-{i}" for i in (0, 1)]),
        )
        # A merge patch: the controller writes the status meanwhile (no read-modify-write).
        changed = await client.patch(
            Deployment,
            name,
            {"spec": {"template": {"spec": {"command": ["serve", "v2"]}}}},
            namespace=NS,
        )
        new_hash = template_hash(changed)
        assert new_hash != old_hash
        await wait_for_async(
            "2 instances of the new template only",
            lambda: names_are(client, name, [f"{name}-{new_hash}-{i}" for i in (0, 1)]),
        )


async def names_are(client: KeelClient, name: str, wanted: list[str]) -> bool:
    return await instances_of(client, name) == sorted(wanted)
