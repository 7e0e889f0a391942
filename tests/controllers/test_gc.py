"""The garbage collector: `plan` on its own, then against a real API server: objects whose
owners are all gone are collected, owned ones are kept, and a recreated object of the same
name is never deleted by a decision made about its predecessor."""

from __future__ import annotations

from collections.abc import Callable

from support import wait_for_async

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Namespace,
    ObjectMeta,
    OwnerReference,
)
from keel.client import KeelClient, NotFound
from keel.controllers.gc import Delete, Unknown, execute, live_owners, plan
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
