"""Bindings are checked against node room by the store, not trusted: a binding that would
overcommit a Node (because another scheduler bound there first) is refused in the same
transaction; a plan of bindings commits those still valid in one transaction and says
why each other one was refused. Over one `keel apiserver` on sqlite, and two over one
3-member etcd (schedulers talking to different API servers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import msgspec
import pytest
from support import ApiServer

from keel.api.resources import (
    Condition,
    Instance,
    InstanceSpec,
    Namespace,
    Node,
    NodeSpec,
    ObjectMeta,
    PlanBinding,
    ResourceList,
)
from keel.client import Conflict, KeelClient
from keel.dev.etcd_cluster import EtcdCluster

V1 = "/apis/keel.dev/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver-plans")) as api:
        yield api


async def setup(client: KeelClient, cpu: str, instances: int, each: str) -> tuple[str, str]:
    """A namespace, a Node offering `cpu`, and `instances` unbound Instances of `each`."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    node = f"n-{ns}"
    await client.create(Namespace(metadata=ObjectMeta(name=ns)))
    await client.create(
        Node(
            metadata=ObjectMeta(name=node),
            spec=NodeSpec(capacity=ResourceList(cpu=cpu, memory="1Gi")),
        )
    )
    for index in range(instances):
        await client.create(
            Instance(
                metadata=ObjectMeta(name=f"i{index}", namespace=ns),
                spec=InstanceSpec(command=["sleep", "1"], resources=ResourceList(cpu=each)),
            )
        )
    return ns, node


async def bound_to(client: KeelClient, ns: str, node: str) -> list[str]:
    listed = await client.list(Instance, namespace=ns)
    return sorted(i.metadata.name for i in listed.items if i.spec.node_name == node)


async def wait_node_known(client: KeelClient, node: str) -> None:
    await client.get(Node, node)  # served from the watch cache: the room index has it too


def test_two_bindings_racing_for_the_last_room_exactly_one_is_applied(server: ApiServer) -> None:
    async def run() -> None:
        async with server.client() as one, server.client() as two:
            ns, node = await setup(one, "1", 2, "600m")
            await wait_node_known(one, node)
            results = await asyncio.gather(
                one.bind(ns, "i0", node), two.bind(ns, "i1", node), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, Exception)]
            assert len(refused) == 1, results
            assert isinstance(refused[0], Conflict)
            assert "insufficient cpu (requested 600m, free 400m of 1)" in str(refused[0])
            assert len(await bound_to(one, ns, node)) == 1

    asyncio.run(run())


def test_a_plan_commits_what_is_valid_and_says_why_not_for_the_rest(server: ApiServer) -> None:
    async def run() -> None:
        async with server.client() as client:
            ns, node = await setup(client, "1", 4, "400m")
            await wait_node_known(client, node)
            await client.bind(ns, "i3", node)  # 400m of 1 already taken
            results = await client.bind_plan(
                [
                    PlanBinding(ns, "i0", node),
                    PlanBinding(ns, "i1", node),  # would be 1200m with i0 and i3: refused
                    PlanBinding(ns, "missing", node),
                    PlanBinding(ns, "i3", node),  # already bound
                    PlanBinding(ns, "i2", node, resource_version="1"),  # stale precondition
                ]
            )
            assert [(r.name, r.bound, r.code) for r in results] == [
                ("i0", True, 0),
                ("i1", False, 409),
                ("missing", False, 404),
                ("i3", False, 409),
                ("i2", False, 409),
            ]
            assert "insufficient cpu" in results[1].message
            assert "already bound" in results[3].message
            assert results[0].resource_version
            assert await bound_to(client, ns, node) == ["i0", "i3"]
            stored = await client.get(Instance, "i0", namespace=ns)
            assert stored.metadata.resource_version == results[0].resource_version
            # The binding is recorded for its writer like any other write.
            assert any("f:nodeName" in str(m.fields_v1) for m in stored.metadata.managed_fields)

    asyncio.run(run())


def test_a_plan_too_large_or_malformed_is_refused_whole(server: ApiServer) -> None:
    http = server.http()
    plan = {"bindings": [{"namespace": "default", "name": f"x{i}", "node": "n"} for i in range(51)]}
    too_many = http.post(f"{V1}/bindingplans", plan)
    assert too_many.status == 400
    assert "bindings: at most 50 per plan" in too_many.json["message"]
    bad = http.post(f"{V1}/bindingplans", {"bindings": [{"namespace": "default", "name": "x"}]})
    assert bad.status == 422
    assert "node" in bad.json["message"]
    assert http.get(f"{V1}/bindingplans").status == 405


def test_only_who_may_bind_may_send_a_plan(server: ApiServer) -> None:
    plan = {"bindings": [{"namespace": "default", "name": "x", "node": "n"}]}
    refused = server.http("viewer").post(f"{V1}/bindingplans", plan)
    assert refused.status == 403, refused.json


def test_a_node_unknown_to_the_server_is_not_room_checked_but_still_ordered(
    server: ApiServer,
) -> None:
    async def run() -> None:
        async with server.client() as client:
            ns, _ = await setup(client, "1", 1, "2")
            [result] = await client.bind_plan([PlanBinding(ns, "i0", "not-registered")])
            assert result.bound, result

    asyncio.run(run())


@pytest.mark.etcd
def test_schedulers_on_different_api_servers_never_overcommit_a_node(
    etcd_cluster_3: EtcdCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two plan senders, each through its own API server over one etcd, race for nodes
    with room for 3 Instances each: per node exactly 3 are bound, the rest refused."""
    with ApiServer(tmp_path_factory.mktemp("plans-a"), store=etcd_cluster_3.url) as first:
        second = ApiServer(
            tmp_path_factory.mktemp("plans-b"),
            store=etcd_cluster_3.url,
            token_file=first.token_file,
        )
        with second:

            async def run() -> None:
                async with first.client() as a, second.client() as b:
                    ns, node = await setup(a, "3", 12, "1")
                    await wait_node_known(a, node)
                    await wait_node_known(b, node)
                    half = [PlanBinding(ns, f"i{i}", node) for i in range(12)]
                    results = await asyncio.gather(
                        a.bind_plan(half[:6]), b.bind_plan(half[6:]), return_exceptions=True
                    )
                    flat = [
                        r for part in results if not isinstance(part, BaseException) for r in part
                    ]
                    assert not [r for r in results if isinstance(r, BaseException)], results
                    assert sum(r.bound for r in flat) == 3, flat
                    assert len(await bound_to(a, ns, node)) == 3
                    refused = [r for r in flat if not r.bound]
                    assert all(r.code == 409 and "insufficient cpu" in r.message for r in refused)

            asyncio.run(run())


def test_binding_an_unschedulable_instance_says_it_is_scheduled_in_the_same_write(
    server: ApiServer,
) -> None:
    async def run() -> None:
        async with server.client() as client:
            ns, node = await setup(client, "1", 1, "100m")
            waiting = await client.get(Instance, "i0", namespace=ns)
            said = Condition(type="Scheduled", status="False", reason="Preempting", message="x")
            status = msgspec.structs.replace(
                waiting.status, conditions=[said], nominated_node_name=node
            )
            await client.update_status(msgspec.structs.replace(waiting, status=status))
            [result] = await client.bind_plan([PlanBinding(ns, "i0", node)])
            assert result.bound, result
            bound = await client.get(Instance, "i0", namespace=ns)
            assert bound.metadata.resource_version == result.resource_version  # one write
            [condition] = [c for c in bound.status.conditions if c.type == "Scheduled"]
            assert (condition.status, condition.reason) == ("True", "Bound")
            assert condition.message == f"bound to node {node}"
            assert bound.status.nominated_node_name == ""

    asyncio.run(run())
