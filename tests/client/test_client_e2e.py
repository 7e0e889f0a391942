"""The client against a real `keel apiserver` subprocess on sqlite, over real HTTP: CRUD,
optimistic concurrency, watches that survive a server restart, leases and fencing, telemetry,
and the synchronous wrapper."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from support import ApiServer

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Lease,
    Node,
    NodeSpec,
    ObjectMeta,
)
from keel.client import (
    AlreadyExists,
    Conflict,
    FencingTokenRejected,
    Invalid,
    KeelClient,
    NotFound,
    Preconditions,
    SyncClient,
    Unauthorized,
    Watch,
    WatchEvent,
)

EVENT_TIMEOUT = 30.0  # an upper bound on waiting for an event, not a sleep


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def deployment(name: str, namespace: str = "default", **labels: str) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=DeploymentSpec(template=InstanceTemplate(spec=InstanceSpec(command=["sleep", "1"]))),
    )


async def next_event(watch: Watch[Any]) -> WatchEvent[Any]:
    return await asyncio.wait_for(watch.__anext__(), EVENT_TIMEOUT)


def name_of(event: WatchEvent[Any]) -> str:
    return event.object.metadata.name if event.object is not None else ""


async def events_until(watch: Watch[Any], name: str, kind: str = "ADDED") -> list[WatchEvent[Any]]:
    """Events up to and including `kind` for object `name`."""
    seen = []
    while True:
        event = await next_event(watch)
        seen.append(event)
        if event.type == kind and name_of(event) == name:
            return seen


async def test_objects_round_trip_through_every_verb(apiserver: ApiServer) -> None:
    name = unique("web")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        created = await client.create(deployment(name, tier="web"))
        assert created.metadata.uid and created.metadata.resource_version
        assert created.spec.replicas == 1

        got = await client.get(Deployment, name, namespace="default")
        assert got == created

        items, list_rv = await client.list(Deployment, label_selector={"tier": "web"})
        assert name in [d.metadata.name for d in items]
        assert int(list_rv) >= int(created.metadata.resource_version)

        scaled = await client.replace(
            msgspec.structs.replace(got, spec=msgspec.structs.replace(got.spec, replicas=3))
        )
        assert scaled.spec.replicas == 3
        assert int(scaled.metadata.resource_version) > int(created.metadata.resource_version)

        merged = await client.patch(Deployment, name, {"spec": {"replicas": 4}})
        assert merged.spec.replicas == 4
        patched = await client.patch(
            "deployments",
            name,
            [{"op": "replace", "path": "/spec/replicas", "value": 5}],
            type="json",
        )
        assert isinstance(patched, Deployment) and patched.spec.replicas == 5

        with_status = await client.update_status(
            msgspec.structs.replace(
                patched, status=msgspec.structs.replace(patched.status, observed_generation=7)
            )
        )
        assert with_status.status.observed_generation == 7
        assert with_status.spec.replicas == 5

        await client.delete(Deployment, name)
        with pytest.raises(NotFound):
            await client.get(Deployment, name)


async def test_a_write_based_on_a_stale_version_is_rejected_with_conflict(
    apiserver: ApiServer,
) -> None:
    name = unique("occ")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        base = await client.create(deployment(name))
        with pytest.raises(AlreadyExists):
            await client.create(deployment(name))
        first = msgspec.structs.replace(base, spec=msgspec.structs.replace(base.spec, replicas=2))
        second = msgspec.structs.replace(base, spec=msgspec.structs.replace(base.spec, replicas=9))
        await client.replace(first)
        with pytest.raises(Conflict):
            await client.replace(second)
        with pytest.raises(Conflict):
            await client.delete(
                Deployment,
                name,
                preconditions=Preconditions(resource_version=base.metadata.resource_version),
            )
        assert (await client.get(Deployment, name)).spec.replicas == 2


async def test_invalid_writes_name_the_offending_fields(apiserver: ApiServer) -> None:
    name = unique("bad")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(deployment(name))
        with pytest.raises(Invalid) as caught:
            await client.patch(Deployment, name, {"spec": {"replicas": -1}})
        assert any("replicas" in field for field in caught.value.fields)


async def test_a_wrong_token_is_unauthorized(apiserver: ApiServer) -> None:
    async with KeelClient(apiserver.url, token="not-a-token", ssl=apiserver.ssl_context) as client:
        with pytest.raises(Unauthorized):
            await client.get(Node, "anything")


async def test_list_returns_every_page_and_pages_follow_continue(
    apiserver: ApiServer,
) -> None:
    batch = unique("batch")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        names = sorted(f"{batch}-{i}" for i in range(7))
        for node_name in names:
            await client.create(
                Node(metadata=ObjectMeta(name=node_name, labels={"batch": batch}), spec=NodeSpec())
            )
        items, _ = await client.list(Node, label_selector={"batch": batch}, limit=3)
        pages = [
            [n.metadata.name for n in page.items]
            async for page in client.pages(Node, label_selector=f"batch={batch}", limit=3)
        ]
    assert sorted(n.metadata.name for n in items) == names
    assert sorted(name for page in pages for name in page) == names
    assert len(pages) >= 3


async def test_a_watch_sees_changes_in_order_from_its_start_version(
    apiserver: ApiServer,
) -> None:
    name = unique("watched")
    async with (
        KeelClient.from_kubeconfig(apiserver.kubeconfig) as client,
        client.watch(Deployment, namespace="default") as watch,
    ):
        await client.create(deployment(name))
        await client.patch(Deployment, name, {"spec": {"replicas": 2}})
        await client.delete(Deployment, name)
        seen = await events_until(watch, name, "DELETED")
    mine = [(e.type, e.object.spec.replicas) for e in seen if e.object and name_of(e) == name]
    assert mine == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 2)]
    versions = [int(e.resource_version) for e in seen]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


async def test_a_watch_resumes_across_an_api_server_restart(
    own_apiserver: ApiServer,
) -> None:
    before, during, after = unique("before"), unique("during"), unique("after")
    async with (
        KeelClient.from_kubeconfig(own_apiserver.kubeconfig) as client,
        client.watch(Node) as watch,
    ):
        await client.create(Node(metadata=ObjectMeta(name=before)))
        first = await events_until(watch, before)
        # SIGKILL: no graceful goodbye; the watch sees its stream break.
        await asyncio.to_thread(own_apiserver.restart, signal.SIGKILL)
        await client.create(Node(metadata=ObjectMeta(name=during)))
        await client.create(Node(metadata=ObjectMeta(name=after)))
        rest = await events_until(watch, after)
    names = [(e.type, e.object.metadata.name if e.object else None) for e in first + rest]
    if any(kind == "RELIST" for kind, _ in names):  # the restarted cache lacked our version
        relist = next(e for e in rest if e.type == "RELIST")
        assert before in [o.metadata.name for o in relist.objects]
    else:
        assert names.count(("ADDED", before)) == 1  # resumed, not replayed
    assert ("ADDED", during) in names
    assert names.index(("ADDED", during)) < names.index(("ADDED", after))
    assert watch.reconnects >= 1


async def test_a_watch_from_a_version_older_than_the_history_relists_then_continues(
    apiserver: ApiServer,
) -> None:
    name, later = unique("old"), unique("later")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(Node(metadata=ObjectMeta(name=name)))
        async with client.watch(Node, resource_version="1") as watch:
            first = await next_event(watch)
            assert first.type == "RELIST"
            assert name in [o.metadata.name for o in first.objects]
            added = [await next_event(watch) for _ in first.objects]
            assert {name_of(e) for e in added} == {o.metadata.name for o in first.objects}
            await client.create(Node(metadata=ObjectMeta(name=later)))
            rest = await events_until(watch, later)
    assert [e.type for e in rest] == ["ADDED"]


async def test_a_stale_fencing_token_is_rejected_after_a_new_holder(
    apiserver: ApiServer,
) -> None:
    lease_name, target = unique("leader"), unique("fenced")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        old = await client.acquire_lease("keel-system", lease_name, "old-leader", 30)
        assert old.status.fencing_token > 0
        async with client.fenced("keel-system", lease_name, old.status.fencing_token) as fenced:
            await fenced.create(deployment(target))

            # The old leader pauses; its lease is taken away and someone else acquires it.
            await client.delete(Lease, lease_name, namespace="keel-system")
            new = await client.acquire_lease("keel-system", lease_name, "new-leader", 30)
            assert new.status.fencing_token > old.status.fencing_token

            with pytest.raises(FencingTokenRejected):
                await fenced.patch(Deployment, target, {"spec": {"replicas": 9}})
            with pytest.raises(FencingTokenRejected):
                await fenced.delete(Deployment, target)
        assert (await client.get(Deployment, target)).spec.replicas == 1  # nothing written

        async with client.fenced("keel-system", lease_name, new.status.fencing_token) as fenced:
            updated = await fenced.patch(Deployment, target, {"spec": {"replicas": 3}})
        assert updated.spec.replicas == 3


async def test_a_lease_is_held_renewed_and_released_by_its_holder(
    apiserver: ApiServer,
) -> None:
    name = unique("lease")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        held = await client.acquire_lease("default", name, "me", 10)
        with pytest.raises(AlreadyExists):
            await client.acquire_lease("default", name, "someone-else", 10)
        renewed = await client.renew_lease(held)
        assert renewed.status.fencing_token == held.status.fencing_token
        assert await client.release_lease(held)
        assert not await client.release_lease(held)  # already gone
        with pytest.raises(NotFound):
            await client.renew_lease(held)
        successor = await client.acquire_lease("default", name, "someone-else", 10)
        assert successor.status.fencing_token > held.status.fencing_token
        assert not await client.release_lease(held)  # not ours any more: left alone
        assert (await client.get(Lease, name)).spec.holder_identity == "someone-else"


async def test_the_scheduler_binding_sets_the_node_once(apiserver: ApiServer) -> None:
    name = unique("inst")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        inst = await client.create(
            Instance(metadata=ObjectMeta(name=name), spec=InstanceSpec(command=["true"]))
        )
        bound = await client.bind(
            "default", name, "node-a", resource_version=inst.metadata.resource_version
        )
        assert bound is not None and bound.spec.node_name == "node-a"
        with pytest.raises(Conflict):
            await client.bind("default", name, "node-b")
        assert (await client.get(Instance, name)).spec.node_name == "node-a"


async def test_telemetry_is_reported_and_read_back(apiserver: ApiServer) -> None:
    node_name, inst = unique("node"), unique("inst")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.put_telemetry(
            "nodeheartbeats",
            {"node": node_name, "cpuUsage": "250m", "memoryUsage": "128Mi", "time": now},
            ttl=60,
        )
        beat = await client.get_telemetry("nodeheartbeats", node_name)
        assert beat["cpuUsage"] == "250m"
        for reason in ("Scheduled", "Started"):
            await client.record_event(
                {
                    "involvedObject": {"kind": "Instance", "name": inst, "namespace": "default"},
                    "reason": reason,
                    "message": f"{inst} {reason.lower()}",
                    "type": "Normal",
                    "time": now,
                }
            )
        events = await client.events("default", inst)
    assert [e["reason"] for e in events] == ["Scheduled", "Started"]


def test_the_sync_client_does_the_same_over_a_background_loop(
    apiserver: ApiServer,
) -> None:
    name = unique("sync")
    with SyncClient.from_kubeconfig(apiserver.kubeconfig) as client:
        _, rv = client.list(Deployment)
        created = client.create(deployment(name))
        assert client.get(Deployment, name) == created
        client.patch(Deployment, name, {"spec": {"replicas": 2}})
        with client.watch(Deployment, resource_version=rv) as watch:
            seen = []
            for event in watch:
                if event.object is not None and event.object.metadata.name == name:
                    seen.append((event.type, event.object.spec.replicas))
                if len(seen) == 2:
                    break
        assert seen == [("ADDED", 1), ("MODIFIED", 2)]
        lease = client.acquire_lease("default", unique("sync-lease"), "me", 10)
        with client.fenced("default", lease.metadata.name, lease.status.fencing_token) as fenced:
            fenced.delete(Deployment, name)
        with pytest.raises(NotFound):
            client.get(Deployment, name)
        assert client.release_lease(lease)
