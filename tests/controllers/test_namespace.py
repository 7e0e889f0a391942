"""The namespace controller: `plan` on its own, then against a real API server: deleting a
Namespace deletes what is in it first, and only then lets the Namespace go."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from support import wait_for_async

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Endpoints,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Namespace,
    NamespaceStatus,
    ObjectMeta,
    Resource,
    Service,
)
from keel.client import KeelClient, NotFound
from keel.controllers.namespace import (
    FINALIZER,
    AddFinalizer,
    DeleteObject,
    MarkTerminating,
    RemoveFinalizer,
    live_contents,
    plan,
)
from keel.runtime.manager import ControllerManager

NOW = "2026-01-01T00:00:00Z"

# Starts a controller-manager running the named controllers in this process (a fixture).
RunManager = Callable[[list[str]], ControllerManager]


def namespace(finalizers: list[str], deleting: bool = False, phase: str = "Active") -> Namespace:
    meta = ObjectMeta(
        name="ns", uid="ns-uid", finalizers=finalizers, deletion_timestamp=NOW if deleting else None
    )
    return Namespace(metadata=meta, status=NamespaceStatus(phase=phase))  # type: ignore[arg-type]


def service(name: str, deleting: bool = False) -> Service:
    meta = ObjectMeta(
        name=name, namespace="ns", uid=f"uid-{name}", deletion_timestamp=NOW if deleting else None
    )
    return Service(kind="Service", metadata=meta)


# ------------------------------------------------------------------------- plan (pure)


def test_a_live_namespace_only_gets_the_finalizer() -> None:
    assert plan(namespace([]), [], "ns") == [AddFinalizer("ns")]
    assert plan(namespace(["other", FINALIZER]), [service("a")], "ns") == []


def test_a_deleting_namespace_deletes_its_contents_before_the_finalizer_goes() -> None:
    doomed = namespace([FINALIZER], deleting=True, phase="Terminating")
    assert plan(doomed, [service("b"), service("a")], "ns") == [
        DeleteObject("Service", "ns", "a", "uid-a"),
        DeleteObject("Service", "ns", "b", "uid-b"),
    ]
    # Contents already being deleted are waited for, not deleted twice.
    assert plan(doomed, [service("a", deleting=True)], "ns") == []
    assert plan(doomed, [], "ns") == [RemoveFinalizer("ns")]


def test_terminating_is_marked_once() -> None:
    assert plan(namespace([FINALIZER], deleting=True), [], "ns") == [
        MarkTerminating("ns"),
        RemoveFinalizer("ns"),
    ]


def test_contents_of_a_vanished_namespace_are_deleted() -> None:
    assert plan(None, [service("a")], "ns") == [DeleteObject("Service", "ns", "a", "uid-a")]
    assert plan(None, [], "ns") == []


def test_plan_is_idempotent_after_its_actions() -> None:
    """Applying the plan and planning again converges: nothing repeats."""
    doomed = namespace([FINALIZER], deleting=True, phase="Terminating")
    first = plan(doomed, [service("a")], "ns")
    assert first == [DeleteObject("Service", "ns", "a", "uid-a")]
    after = plan(doomed, [service("a", deleting=True)], "ns")
    assert after == []


# ------------------------------------------------------------------------- real server


def contents(name: str) -> list[Resource]:
    template = InstanceTemplate(spec=InstanceSpec(command=["sleep", "60"]))
    return [
        Deployment(
            metadata=ObjectMeta(name="web", namespace=name), spec=DeploymentSpec(template=template)
        ),
        Instance(
            metadata=ObjectMeta(name="web-1", namespace=name),
            spec=InstanceSpec(command=["sleep", "60"]),
        ),
        # Held by a finalizer of someone else: the Namespace must wait for it.
        Instance(
            metadata=ObjectMeta(name="held", namespace=name, finalizers=["test/hold"]),
            spec=InstanceSpec(command=["sleep", "60"]),
        ),
        Service(metadata=ObjectMeta(name="web", namespace=name)),
        Endpoints(metadata=ObjectMeta(name="web", namespace=name)),
    ]


async def test_deleting_a_namespace_removes_its_objects_then_the_namespace(
    client: KeelClient, run_manager: RunManager, name: str
) -> None:
    manager = run_manager(["namespace"])
    await client.create(Namespace(metadata=ObjectMeta(name=name)))

    async def finalized() -> bool:
        ns = await client.get(Namespace, name)
        return FINALIZER in ns.metadata.finalizers

    await wait_for_async("the controller to add its finalizer", finalized)
    assert manager.leading()
    for obj in contents(name):
        await client.create(obj)

    await client.delete(Namespace, name)

    async def only_held_left() -> list[Resource]:
        left = await live_contents(client, name)
        return left if [o.metadata.name for o in left] == ["held"] else []

    left = await wait_for_async("everything but the held object to go", only_held_left)
    assert left[0].metadata.deletion_timestamp  # deleted, waiting for its finalizer
    ns = await client.get(Namespace, name)
    assert ns.status.phase == "Terminating"
    assert FINALIZER in ns.metadata.finalizers  # still waiting for its contents

    held = await client.get(Instance, "held", namespace=name)
    await client.replace(
        msgspec.structs.replace(
            held, metadata=msgspec.structs.replace(held.metadata, finalizers=[])
        )
    )

    async def namespace_gone() -> bool:
        try:
            await client.get(Namespace, name)
        except NotFound:
            return True
        return False

    await wait_for_async("the Namespace to go once it is empty", namespace_gone)
    assert await live_contents(client, name) == []


async def test_an_empty_namespace_goes_at_once(
    client: KeelClient, run_manager: RunManager, name: str
) -> None:

    run_manager(["namespace"])
    await client.create(Namespace(metadata=ObjectMeta(name=name)))

    async def finalized() -> bool:
        ns = await client.get(Namespace, name)
        return FINALIZER in ns.metadata.finalizers

    await wait_for_async("the finalizer", finalized)
    await client.delete(Namespace, name)

    async def gone() -> bool:
        try:
            await client.get(Namespace, name)
        except NotFound:
            return True
        return False

    await wait_for_async("the Namespace to go", gone)
