"""The API double answers like the API server: a table of behaviours, each one asserted.

Every case runs on a fresh `SimApi` in virtual time, through a `SimClient` (the same calls
and exception classes as `keel.client.KeelClient`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Lease,
    ObjectMeta,
    Service,
)
from keel.client import (
    AlreadyExists,
    BadRequest,
    Conflict,
    FencingTokenRejected,
    Invalid,
    NotFound,
    Preconditions,
    WatchEvent,
)
from keel.runtime.api import ApiClient
from keel.sim import SimApi, SimClient, run_virtual

Case = Callable[[SimApi, SimClient], Awaitable[None]]


def _deployment(name: str = "web", replicas: int = 1, **meta: object) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, **meta),  # type: ignore[arg-type]
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(spec=InstanceSpec(command=["sleep", "inf"])),
        ),
    )


def _service(name: str, **labels: str) -> Service:
    return Service(metadata=ObjectMeta(name=name, labels=labels))


def _now() -> float:
    return asyncio.get_running_loop().time()


# ---------------------------------------------------------------------- objects


async def create_sets_identity_from_the_global_counter(api: SimApi, c: SimClient) -> None:
    first = await c.create(_deployment("a"))
    second = await c.create(_service("b"))
    assert int(second.metadata.resource_version) == int(first.metadata.resource_version) + 1
    assert first.metadata.uid and first.metadata.uid != second.metadata.uid
    assert first.metadata.generation == 1
    assert first.metadata.creation_timestamp is not None
    assert first.kind == "Deployment" and first.metadata.namespace == "default"


async def create_of_a_taken_name_is_already_exists(api: SimApi, c: SimClient) -> None:
    await c.create(_deployment())
    with pytest.raises(AlreadyExists):
        await c.create(_deployment())


async def create_in_a_missing_namespace_is_not_found(api: SimApi, c: SimClient) -> None:
    with pytest.raises(NotFound):
        await c.create(_deployment(namespace="nowhere"))


async def create_validates_like_the_server(api: SimApi, c: SimClient) -> None:
    with pytest.raises(Invalid):
        await c.create(_deployment("Not_A_Name"))
    with pytest.raises(Invalid):
        await c.create(_deployment(""))  # neither name nor generateName


async def generate_name_makes_a_fresh_name(api: SimApi, c: SimClient) -> None:
    a = await c.create(_deployment("", generate_name="web-"))
    b = await c.create(_deployment("", generate_name="web-"))
    assert a.metadata.name.startswith("web-") and a.metadata.name != b.metadata.name


async def get_of_a_missing_object_is_not_found(api: SimApi, c: SimClient) -> None:
    with pytest.raises(NotFound):
        await c.get(Deployment, "ghost")


async def replace_with_a_stale_resource_version_is_conflict(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    spec = msgspec.structs.replace(created.spec, replicas=2)
    updated = await c.replace(msgspec.structs.replace(created, spec=spec))
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    spec3 = msgspec.structs.replace(created.spec, replicas=3)
    with pytest.raises(Conflict):
        await c.replace(msgspec.structs.replace(created, spec=spec3))  # based on the old rv
    assert (await c.get(Deployment, "web")).spec.replicas == 2


async def replace_without_resource_version_is_unconditional(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    await c.replace(created)  # no change
    blind = msgspec.structs.replace(
        created,
        metadata=msgspec.structs.replace(created.metadata, resource_version=""),
        spec=msgspec.structs.replace(created.spec, replicas=4),
    )
    assert (await c.replace(blind)).spec.replicas == 4


async def an_unchanged_replace_writes_nothing(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    revision = api.revision
    same = await c.replace(created)
    assert same.metadata.resource_version == created.metadata.resource_version
    assert api.revision == revision
    assert api.mutations[-1].outcome == "noop"


async def generation_counts_spec_changes_only(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    labelled = await c.patch(Deployment, "web", {"metadata": {"labels": {"a": "b"}}})
    assert labelled.metadata.generation == 1
    scaled = await c.patch(Deployment, "web", {"spec": {"replicas": 5}})
    assert scaled.metadata.generation == 2
    status = await c.patch(Deployment, "web", {"status": {"replicas": 5}}, subresource="status")
    assert status.metadata.generation == 2
    assert created.metadata.uid == status.metadata.uid


async def replace_leaves_status_to_the_subresource(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    status = msgspec.structs.replace(created.status, replicas=7)
    kept = await c.replace(msgspec.structs.replace(created, status=status))
    assert kept.status.replicas == 0  # the main resource cannot write status
    written = await c.update_status(msgspec.structs.replace(kept, status=status))
    assert written.status.replicas == 7
    other_spec = msgspec.structs.replace(written.spec, replicas=9)
    only_status = await c.update_status(msgspec.structs.replace(written, spec=other_spec))
    assert only_status.spec.replicas == 1  # the status subresource cannot write spec


async def json_patch_test_failure_is_conflict(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "999"},
        {"op": "replace", "path": "/spec/replicas", "value": 3},
    ]
    with pytest.raises(Conflict):
        await c.patch(Deployment, "web", stale, type="json")
    fresh = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": created.metadata.resource_version,
        },
        {"op": "replace", "path": "/spec/replicas", "value": 3},
    ]
    assert (await c.patch(Deployment, "web", fresh, type="json")).spec.replicas == 3


async def patch_to_an_invalid_object_is_invalid(api: SimApi, c: SimClient) -> None:
    await c.create(_deployment())
    with pytest.raises(Invalid):
        await c.patch(Deployment, "web", {"spec": {"replicas": -1}})


async def delete_without_finalizers_removes_at_once(api: SimApi, c: SimClient) -> None:
    await c.create(_deployment())
    last = await c.delete(Deployment, "web")
    assert last is not None and last.metadata.name == "web"
    with pytest.raises(NotFound):
        await c.get(Deployment, "web")
    with pytest.raises(NotFound):
        await c.delete(Deployment, "web")


async def delete_preconditions_are_checked(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    with pytest.raises(Conflict):
        await c.delete(Deployment, "web", preconditions=Preconditions(uid="someone-else"))
    with pytest.raises(Conflict):
        await c.delete(Deployment, "web", preconditions=Preconditions(resource_version="1"))
    await c.delete(Deployment, "web", preconditions=Preconditions(uid=created.metadata.uid))


async def finalizers_hold_deletion_until_removed(api: SimApi, c: SimClient) -> None:
    await c.create(_deployment(finalizers=["keel.dev/test"]))
    marked = await c.delete(Deployment, "web")
    assert marked is not None and marked.metadata.deletion_timestamp is not None
    again = await c.delete(Deployment, "web")  # a second delete changes nothing
    assert again is not None and again.metadata.resource_version == marked.metadata.resource_version
    current = await c.get(Deployment, "web")
    assert current.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    await c.patch(Deployment, "web", {"metadata": {"finalizers": []}})
    with pytest.raises(NotFound):
        await c.get(Deployment, "web")


async def list_is_complete_ordered_and_filtered(api: SimApi, c: SimClient) -> None:
    await c.create(_service("b", tier="web"))
    await c.create(_service("a", tier="db"))
    await c.create(_service("c", tier="web"))
    listed = await c.list(Service)
    assert [s.metadata.name for s in listed.items] == ["a", "b", "c"]
    assert listed.resource_version == str(api.revision)
    web = await c.list(Service, label_selector={"tier": "web"})
    assert [s.metadata.name for s in web.items] == ["b", "c"]
    named = await c.list(Service, field_selector="metadata.name=a")
    assert [s.metadata.name for s in named.items] == ["a"]
    with pytest.raises(BadRequest):
        await c.list(Service, field_selector="spec.nonsense=1")


# ---------------------------------------------------------------------- leases and fencing


async def a_lease_token_is_its_create_revision(api: SimApi, c: SimClient) -> None:
    lease = await c.acquire_lease("keel-system", "lock", "me", 2)
    assert lease.status.fencing_token == int(lease.metadata.resource_version)
    with pytest.raises(AlreadyExists):
        await c.acquire_lease("keel-system", "lock", "you", 2)


async def a_lease_vanishes_after_its_ttl(api: SimApi, c: SimClient) -> None:
    lease = await c.acquire_lease("keel-system", "lock", "me", 2)
    watch = c.watch(
        Lease, namespace="keel-system", resource_version=lease.metadata.resource_version
    )
    started = _now()
    event = await anext(watch)
    assert event.type == "DELETED" and event.object is not None
    assert _now() - started == pytest.approx(2.0)
    await watch.aclose()
    with pytest.raises(NotFound):
        await c.renew_lease(lease)
    second = await c.acquire_lease("keel-system", "lock", "you", 2)
    assert second.status.fencing_token > lease.status.fencing_token


async def renewal_keeps_a_lease_alive_without_writing(api: SimApi, c: SimClient) -> None:
    lease = await c.acquire_lease("keel-system", "lock", "me", 2)
    revision = api.revision
    for _ in range(10):
        await asyncio.sleep(1.5)
        renewed = await c.renew_lease(lease)
        assert renewed.metadata.resource_version == lease.metadata.resource_version
    assert api.revision == revision  # a keep-alive is not a write
    await asyncio.sleep(2.1)
    with pytest.raises(NotFound):
        await c.get(Lease, "lock", namespace="keel-system")


async def renewal_by_another_holder_is_conflict(api: SimApi, c: SimClient) -> None:
    lease = await c.acquire_lease("keel-system", "lock", "me", 2)
    spec = msgspec.structs.replace(lease.spec, holder_identity="you")
    with pytest.raises(Conflict):
        await c.renew_lease(msgspec.structs.replace(lease, spec=spec))
    status = msgspec.structs.replace(lease.status, fencing_token=1)
    with pytest.raises(Conflict):
        await c.renew_lease(msgspec.structs.replace(lease, status=status))


async def fenced_writes_need_the_current_token(api: SimApi, c: SimClient) -> None:
    old = await c.acquire_lease("keel-system", "lock", "me", 2)
    async with c.fenced("keel-system", "lock", old.status.fencing_token) as view:
        await view.create(_deployment("one"))
        api.expire_lease("keel-system", "lock")
        new = await c.acquire_lease("keel-system", "lock", "you", 2)
        revision = api.revision
        with pytest.raises(FencingTokenRejected):
            await view.create(_deployment("two"))
        with pytest.raises(FencingTokenRejected):
            await view.patch(Deployment, "one", {"spec": {"replicas": 3}})
        with pytest.raises(FencingTokenRejected):
            await view.delete(Deployment, "one")
        assert api.revision == revision  # nothing was written
    async with c.fenced("keel-system", "lock", new.status.fencing_token) as fresh:
        await fresh.create(_deployment("two"))
    with pytest.raises(RuntimeError):
        await view.create(_deployment("three"))  # the view ended with its block
    tokens = [m.fencing for m in api.mutations if m.kind == "Deployment"]
    assert tokens[0] == ("keel-system/lock", old.status.fencing_token)
    assert tokens[-1] == ("keel-system/lock", new.status.fencing_token)


async def release_deletes_only_the_same_incarnation(api: SimApi, c: SimClient) -> None:
    lease = await c.acquire_lease("keel-system", "lock", "me", 2)
    assert await c.release_lease(lease) is True
    assert await c.release_lease(lease) is False
    await c.acquire_lease("keel-system", "lock", "you", 2)
    assert await c.release_lease(lease) is False  # someone else's incarnation stays
    assert (await c.get(Lease, "lock", namespace="keel-system")).spec.holder_identity == "you"


# ---------------------------------------------------------------------- watch


async def watch_resumes_from_a_resource_version(api: SimApi, c: SimClient) -> None:
    first = await c.create(_service("a"))
    await c.create(_service("b"))
    await c.patch(Service, "a", {"metadata": {"labels": {"x": "y"}}})
    await c.delete(Service, "b")
    watch = c.watch(Service, resource_version=first.metadata.resource_version)
    events = [await anext(watch) for _ in range(3)]
    await watch.aclose()
    assert [(e.type, e.object.metadata.name if e.object else "") for e in events] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    versions = [int(e.resource_version) for e in events]
    assert versions == sorted(versions)


async def watch_from_zero_starts_with_every_object(api: SimApi, c: SimClient) -> None:
    await c.create(_service("a"))
    await c.create(_service("b"))
    watch = c.watch(Service, resource_version="0")
    names = [(await anext(watch)).object for _ in range(2)]
    await watch.aclose()
    assert [n.metadata.name for n in names if n is not None] == ["a", "b"]


async def watch_older_than_the_window_relists(api: SimApi, c: SimClient) -> None:
    first = await c.create(_service("a"))
    await c.create(_service("b"))
    await c.delete(Service, "a")
    api.compact()
    watch = c.watch(Service, resource_version=first.metadata.resource_version)
    relist: WatchEvent[Service] = await anext(watch)
    added = await anext(watch)
    await watch.aclose()
    assert relist.type == "RELIST" and [o.metadata.name for o in relist.objects] == ["b"]
    assert added.type == "ADDED" and added.object is not None
    assert added.object.metadata.name == "b"


async def watch_sends_bookmarks_when_idle(api: SimApi, c: SimClient) -> None:
    await c.create(_service("a"))
    watch = c.watch(Service, resource_version="1", emit_bookmarks=True)
    event = await anext(watch)
    assert event.type == "ADDED"
    bookmark = await anext(watch)
    await watch.aclose()
    assert bookmark.type == "BOOKMARK" and bookmark.resource_version == str(api.revision)
    assert watch.resource_version == str(api.revision)


async def a_selected_watch_sees_objects_leave_as_deleted(api: SimApi, c: SimClient) -> None:
    start = api.revision
    await c.create(_service("a", tier="web"))
    await c.patch(Service, "a", {"metadata": {"labels": {"tier": "db"}}})
    await c.patch(Service, "a", {"metadata": {"labels": {"tier": "web"}}})
    watch = c.watch(Service, resource_version=str(start), label_selector="tier=web")
    types = [(await anext(watch)).type for _ in range(3)]
    await watch.aclose()
    assert types == ["ADDED", "DELETED", "ADDED"]


async def watch_of_a_namespace_sees_only_it(api: SimApi, c: SimClient) -> None:
    start = api.revision
    await c.create(_deployment("a", namespace="keel-system"))
    await c.create(_deployment("b"))
    watch = c.watch(Deployment, namespace="default", resource_version=str(start))
    event = await anext(watch)
    await watch.aclose()
    assert event.object is not None and event.object.metadata.name == "b"


async def a_write_rejected_for_staleness_is_logged(api: SimApi, c: SimClient) -> None:
    created = await c.create(_deployment())
    await c.patch(Deployment, "web", {"spec": {"replicas": 2}})
    with pytest.raises(Conflict):
        await c.replace(created)
    assert [(m.verb, m.outcome) for m in api.mutations if m.kind == "Deployment"] == [
        ("create", "ok"),
        ("patch", "ok"),
        ("replace", "Conflict"),
    ]


async def binding_sets_the_node_once_with_occ(api: SimApi, client: SimClient) -> None:
    created = await client.create(
        Instance(
            metadata=ObjectMeta(name="i", namespace="default"),
            spec=InstanceSpec(command=["sleep", "inf"]),
        )
    )
    with pytest.raises(Conflict):  # stale resourceVersion
        await client.bind("default", "i", "n1", resource_version="1")
    bound = await client.bind(
        "default", "i", "n1", resource_version=created.metadata.resource_version
    )
    assert bound is not None and bound.spec.node_name == "n1"
    with pytest.raises(Conflict):  # bound once, never again
        await client.bind("default", "i", "n2")
    assert (await client.get(Instance, "i", namespace="default")).spec.node_name == "n1"


CASES: list[Case] = [
    binding_sets_the_node_once_with_occ,
    create_sets_identity_from_the_global_counter,
    create_of_a_taken_name_is_already_exists,
    create_in_a_missing_namespace_is_not_found,
    create_validates_like_the_server,
    generate_name_makes_a_fresh_name,
    get_of_a_missing_object_is_not_found,
    replace_with_a_stale_resource_version_is_conflict,
    replace_without_resource_version_is_unconditional,
    an_unchanged_replace_writes_nothing,
    generation_counts_spec_changes_only,
    replace_leaves_status_to_the_subresource,
    json_patch_test_failure_is_conflict,
    patch_to_an_invalid_object_is_invalid,
    delete_without_finalizers_removes_at_once,
    delete_preconditions_are_checked,
    finalizers_hold_deletion_until_removed,
    list_is_complete_ordered_and_filtered,
    a_lease_token_is_its_create_revision,
    a_lease_vanishes_after_its_ttl,
    renewal_keeps_a_lease_alive_without_writing,
    renewal_by_another_holder_is_conflict,
    fenced_writes_need_the_current_token,
    release_deletes_only_the_same_incarnation,
    watch_resumes_from_a_resource_version,
    watch_from_zero_starts_with_every_object,
    watch_older_than_the_window_relists,
    watch_sends_bookmarks_when_idle,
    a_selected_watch_sees_objects_leave_as_deleted,
    watch_of_a_namespace_sees_only_it,
    a_write_rejected_for_staleness_is_logged,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_the_double_behaves_like_the_server(case: Case) -> None:
    async def main() -> None:
        api = SimApi()
        await case(api, api.client("tester"))

    run_virtual(main)


def test_the_sim_client_is_an_api_client() -> None:
    api = SimApi()
    client: ApiClient = api.client("tester")  # checked by mypy, structurally
    assert isinstance(client, SimClient)


def test_instances_keep_their_spec_through_the_double() -> None:
    async def main() -> Instance:
        api = SimApi()
        c = api.client()
        spec = InstanceSpec(command=["run"], exclusive=True)
        await c.create(Instance(metadata=ObjectMeta(name="i"), spec=spec))
        return await c.get(Instance, "i")

    assert run_virtual(main).spec.exclusive is True
