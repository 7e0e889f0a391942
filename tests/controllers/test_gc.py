"""The garbage collector: `plan` on its own, then against a real API server: objects whose
owners are all gone are collected, owned ones are kept, and a recreated object of the same
name is never deleted by a decision made about its predecessor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import pytest
from support import wait_for_async

from keel.api.resources import (
    FOREGROUND_FINALIZER,
    ORPHAN_FINALIZER,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Namespace,
    ObjectMeta,
    OwnerReference,
)
from keel.client import ApiError, KeelClient, NotFound
from keel.controllers.gc import (
    Delete,
    Release,
    RemoveFinalizer,
    Unknown,
    execute,
    live_owners,
    plan,
    plan_owner,
)
from keel.runtime.manager import ControllerManager

NOW = "2026-01-01T00:00:00Z"

# Starts a controller-manager running the named controllers in this process (a fixture).
RunManager = Callable[[list[str]], ControllerManager]


def ref(name: str, uid: str, kind: str = "Deployment") -> OwnerReference:
    return OwnerReference("keel.dev/v1", kind, name, uid)


def instance(name: str, *refs: OwnerReference, namespace: str = "ns", uid: str = "") -> Instance:
    meta = ObjectMeta(
        name=name, namespace=namespace, uid=uid or f"uid-{name}", owner_references=list(refs)
    )
    return Instance(kind="Instance", metadata=meta, spec=InstanceSpec(command=["sleep", "60"]))


def deployment(name: str, uid: str, namespace: str = "ns") -> Deployment:
    template = InstanceTemplate(spec=InstanceSpec(command=["sleep", "60"]))
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, uid=uid),
        spec=DeploymentSpec(template=template, replicas=0),
    )


# ------------------------------------------------------------------------- plan (pure)


def test_an_object_whose_owners_are_all_gone_is_collected() -> None:
    orphan = instance("a", ref("web", "u1"), ref("api", "u2"))
    assert plan(orphan, [None, None]) == [Delete("Instance", "ns", "a", "uid-a")]


def test_one_live_owner_keeps_it() -> None:
    owned = instance("a", ref("web", "u1"), ref("api", "u2"))
    assert plan(owned, [None, deployment("api", "u2")]) == []


def test_an_owner_with_another_uid_is_not_the_owner() -> None:
    stale = instance("a", ref("web", "u1"))
    assert plan(stale, [deployment("web", "u-new")]) == [Delete("Instance", "ns", "a", "uid-a")]


def test_objects_without_owners_or_with_unknown_ones_are_kept() -> None:
    assert plan(instance("a"), []) == []
    assert plan(instance("a", ref("x", "u", kind="Gadget")), [Unknown.OWNER]) == []
    being_deleted = instance("a", ref("web", "u1"))
    being_deleted = Instance(
        metadata=ObjectMeta(
            name="a", namespace="ns", deletion_timestamp=NOW, owner_references=[ref("web", "u1")]
        ),
        spec=being_deleted.spec,
    )
    assert plan(being_deleted, [None]) == []
    assert plan(None, []) == []


# ------------------------------------------------------------------------- real server


async def exists(client: KeelClient, name: str, namespace: str) -> bool:
    try:
        await client.get(Instance, name, namespace=namespace)
    except NotFound:
        return False
    return True


async def test_orphans_are_collected_and_owned_objects_kept(
    client: KeelClient, run_manager: RunManager, name: str
) -> None:
    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    owner = await client.create(deployment("web", "", namespace=name))
    uid = owner.metadata.uid
    for obj in (
        instance("owned", ref("web", uid), namespace=name),
        instance("orphan", ref("ghost", "no-such-uid"), namespace=name),
        instance("stale-uid", ref("web", "an-older-web"), namespace=name),
        instance("unowned", namespace=name),
        instance("half-owned", ref("ghost", "no-such-uid"), ref("web", uid), namespace=name),
    ):
        await client.create(obj)
    manager = run_manager(["gc"])

    async def orphans_gone() -> bool:
        return not (await exists(client, "orphan", name) or await exists(client, "stale-uid", name))

    await wait_for_async("the orphans to be collected", orphans_gone)

    # Every key has been looked at: what is left was judged and kept, not just not reached.
    metrics = manager.runner.metrics["gc-instances"]

    async def all_judged() -> bool:
        return metrics.reconciles >= 5

    await wait_for_async("a reconcile of every instance", all_judged)
    for kept in ("owned", "unowned", "half-owned"):
        assert await exists(client, kept, name), kept

    # The owner goes: what it owned goes too, the unowned object stays.
    await client.delete(Deployment, "web", namespace=name)

    async def dependents_gone() -> bool:
        return not (await exists(client, "owned", name) or await exists(client, "half-owned", name))

    await wait_for_async("the dependents of the deleted owner", dependents_gone)
    assert await exists(client, "unowned", name)


async def test_a_recreated_object_is_not_deleted_by_a_stale_decision(
    client: KeelClient, name: str
) -> None:

    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    first = await client.create(instance("x", ref("ghost", "gone"), namespace=name))
    [action] = plan(first, await live_owners(client, first))
    # Before the decision is carried out, the object is replaced by a new one of that name.
    await client.delete(Instance, "x", namespace=name)
    second = await client.create(instance("x", ref("ghost", "gone"), namespace=name))
    assert second.metadata.uid != first.metadata.uid
    await execute(client, action)
    assert (await client.get(Instance, "x", namespace=name)).metadata.uid == second.metadata.uid
    # Carried out on the current incarnation, the same kind of decision does delete it.
    [again] = plan(second, await live_owners(client, second))
    await execute(client, again)
    assert not await exists(client, "x", name)


# ------------------------------------------------------------------------- propagation


def doomed(finalizer: str) -> Deployment:
    owner = deployment("web", "owner-uid")
    meta = msgspec.structs.replace(
        owner.metadata, deletion_timestamp=NOW, finalizers=[finalizer], resource_version="7"
    )
    return msgspec.structs.replace(owner, metadata=meta)


def blocking(name: str, uid: str = "owner-uid", deleting: bool = False) -> Instance:
    meta = ObjectMeta(
        name=name,
        namespace="ns",
        uid=f"uid-{name}",
        owner_references=[OwnerReference("keel.dev/v1", "Deployment", "web", uid, True, True)],
        deletion_timestamp=NOW if deleting else None,
    )
    return Instance(kind="Instance", metadata=meta, spec=InstanceSpec(command=["x"]))


def test_foreground_deletes_dependents_and_waits_for_blocking_ones() -> None:
    owner = doomed(FOREGROUND_FINALIZER)
    plain = instance("plain", ref("web", "owner-uid"))
    actions = plan_owner(owner, [blocking("b"), plain])
    assert actions == [
        Delete("Instance", "ns", "b", "uid-b"),
        Delete("Instance", "ns", "plain", "uid-plain"),
    ]
    # A blocking dependent still terminating keeps the owner; only non-blocking ones: done.
    assert plan_owner(owner, [blocking("b", deleting=True)]) == []
    assert plan_owner(owner, [plain]) == [
        Delete("Instance", "ns", "plain", "uid-plain"),
        RemoveFinalizer("Deployment", "ns", "web", "7", ()),
    ]
    assert plan_owner(owner, []) == [RemoveFinalizer("Deployment", "ns", "web", "7", ())]


def test_orphan_releases_dependents_then_removes_its_finalizer() -> None:
    owner = doomed(ORPHAN_FINALIZER)
    both = instance("both", ref("web", "owner-uid"), ref("other", "other-uid"))
    [release] = plan_owner(owner, [both])
    assert isinstance(release, Release) and release.name == "both"
    assert [r.uid for r in release.owner_references] == ["other-uid"]
    assert plan_owner(owner, [instance("unrelated", ref("other", "other-uid"))]) == [
        RemoveFinalizer("Deployment", "ns", "web", "7", ())
    ]


def test_an_owner_not_being_deleted_needs_nothing() -> None:
    assert plan_owner(deployment("web", "owner-uid"), [blocking("b")]) == []


async def test_foreground_deletion_waits_for_blocking_dependents_on_a_real_server(
    client: KeelClient, run_manager: RunManager, name: str
) -> None:
    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    owner = await client.create(deployment("web", "", namespace=name))
    uid = owner.metadata.uid
    held = msgspec.structs.replace(
        blocking("blocker", uid=uid),
        metadata=msgspec.structs.replace(
            blocking("blocker", uid=uid).metadata,
            namespace=name,
            uid="",
            finalizers=["test.keel.dev/hold"],
        ),
    )
    await client.create(held)
    await client.create(instance("plain", ref("web", uid), namespace=name, uid=""))
    run_manager(["gc"])
    marked = await client.delete(Deployment, "web", namespace=name, propagation_policy="Foreground")
    assert marked is not None and marked.metadata.deletion_timestamp
    assert FOREGROUND_FINALIZER in marked.metadata.finalizers

    async def plain_gone() -> bool:
        return not await exists(client, "plain", name)

    await wait_for_async("the non-blocking dependent to go", plain_gone)
    blocker = await client.get(Instance, "blocker", namespace=name)
    assert blocker.metadata.deletion_timestamp  # terminating, held by its finalizer
    await asyncio.sleep(1.0)
    assert (await client.get(Deployment, "web", namespace=name)).metadata.deletion_timestamp
    await client.patch(Instance, "blocker", {"metadata": {"finalizers": None}}, namespace=name)

    async def owner_gone() -> bool:
        try:
            await client.get(Deployment, "web", namespace=name)
        except NotFound:
            return True
        return False

    await wait_for_async("the owner, once its blocking dependent is gone", owner_gone)


async def test_orphan_deletion_keeps_dependents_without_the_owner_reference(
    client: KeelClient, run_manager: RunManager, name: str
) -> None:
    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    owner = await client.create(deployment("web", "", namespace=name))
    await client.create(instance("kept", ref("web", owner.metadata.uid), namespace=name, uid=""))
    run_manager(["gc"])
    await client.delete(Deployment, "web", namespace=name, propagation_policy="Orphan")

    async def owner_gone() -> bool:
        try:
            await client.get(Deployment, "web", namespace=name)
        except NotFound:
            return True
        return False

    await wait_for_async("the owner, once its dependents are released", owner_gone)
    await asyncio.sleep(0.5)  # and the collector does not take the orphan afterwards
    kept = await client.get(Instance, "kept", namespace=name)
    assert kept.metadata.owner_references == []


async def test_an_unknown_propagation_policy_is_refused_by_name(
    client: KeelClient, name: str
) -> None:
    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    await client.create(deployment("web", "", namespace=name))
    with pytest.raises(ApiError) as raised:
        await client.delete(Deployment, "web", namespace=name, propagation_policy="Sideways")
    assert raised.value.status == 400
    assert "DeleteOptions.propagationPolicy: 'Sideways' is not one of" in str(raised.value)
    assert await client.get(Deployment, "web", namespace=name)
