"""The scheduler with the Deployment and node lifecycle controllers against a real
`keel apiserver`: replicas bound spread across Ready Nodes, an unschedulable Instance says
why and is placed once a Node fits, a dead Node's Instances move elsewhere."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from scheduler.keel_platform import FakeAgent, platform
from support import ApiServer, wait_for_async

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Node,
    ObjectMeta,
    Placement,
    ResourceList,
)
from keel.client import KeelClient
from keel.controllers.deployment import DEPLOYMENT_LABEL

NS = "default"


def web(
    name: str, replicas: int, *, cpu: str = "100m", clusters: list[str] | None = None
) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=NS),
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(
                spec=InstanceSpec(command=["serve"], resources=ResourceList(cpu=cpu, memory="64Mi"))
            ),
            placement=Placement(clusters=clusters or []),
        ),
    )


async def placements(client: KeelClient, name: str) -> dict[str, str]:
    found = await client.list(Instance, namespace=NS, label_selector={DEPLOYMENT_LABEL: name})
    return {
        i.metadata.name: i.spec.node_name for i in found.items if not i.metadata.deletion_timestamp
    }


async def node_ready(client: KeelClient, node: str) -> str | None:
    current = await client.get(Node, node)
    return next((c.status for c in current.status.conditions if c.type == "Ready"), None)


async def wait_ready(client: KeelClient, nodes: list[str], wanted: str = "True") -> None:
    async def all_ready() -> bool:
        return all([await node_ready(client, n) == wanted for n in nodes])

    await wait_for_async(f"Ready={wanted} on {', '.join(nodes)}", all_ready)


async def wait_placed(client: KeelClient, name: str, ok: Callable[[dict[str, str]], bool],
                      what: str, timeout: float = 30.0) -> dict[str, str]:  # fmt: skip
    """The placements of `name`'s instances (instance -> node) once `ok` holds for them."""
    seen: dict[str, str] = {}

    async def check() -> bool:
        nonlocal seen
        seen = await placements(client, name)
        return ok(seen)

    await wait_for_async(what, check, timeout=timeout)
    return seen


async def test_replicas_are_bound_spread_across_ready_nodes(
    apiserver: ApiServer, admin: KeelClient, name: str
) -> None:
    agents = [await FakeAgent(admin, f"node-{i}", "c1").start() for i in range(3)]
    try:
        async with platform(apiserver):
            await wait_ready(admin, [a.name for a in agents])
            await admin.create(web(name, 6))
            bound = await wait_placed(
                admin, name, lambda got: len(got) == 6 and all(got.values()), "6 instances bound"
            )
            assert Counter(bound.values()) == {"node-0": 2, "node-1": 2, "node-2": 2}
    finally:
        for agent in agents:
            await agent.stop_renewing()


async def test_unschedulable_instance_says_why_and_is_placed_when_a_node_fits(
    apiserver: ApiServer, admin: KeelClient, name: str
) -> None:
    small = await FakeAgent(admin, "small", "c1", cpu="1").start()
    agents = [small]
    try:
        async with platform(apiserver):
            await wait_ready(admin, ["small"])
            await admin.create(web(name, 1, cpu="2"))

            async def unschedulable() -> list[tuple[str, str]]:
                found = await admin.list(Instance, namespace=NS)
                return [
                    (c.reason, c.message)
                    for instance in found.items
                    for c in instance.status.conditions
                    if c.type == "Scheduled" and c.status == "False"
                ]

            [(reason, message)] = await wait_for_async("an Unschedulable condition", unschedulable)
            assert reason == "Unschedulable"
            assert message == "0/1 nodes are available: 1 insufficient cpu"
            agents.append(await FakeAgent(admin, "big", "c1", cpu="8").start())

            async def on_big() -> bool:
                return list((await placements(admin, name)).values()) == ["big"]

            await wait_for_async("the instance bound to the big node", on_big)

            async def marked_scheduled() -> bool:
                found = await admin.list(Instance, namespace=NS)
                conditions = [c for i in found.items for c in i.status.conditions]
                return any(c.type == "Scheduled" and c.status == "True" for c in conditions)

            await wait_for_async("the Scheduled condition to turn True", marked_scheduled)
    finally:
        for agent in agents:
            await agent.stop_renewing()


async def test_only_allowed_clusters_are_used(
    apiserver: ApiServer, admin: KeelClient, name: str
) -> None:
    agents = [
        await FakeAgent(admin, "east-1", "east").start(),
        await FakeAgent(admin, "west-1", "west").start(),
    ]
    try:
        async with platform(apiserver):
            await admin.create(web(name, 3, clusters=["west"]))

            async def all_west() -> bool:
                got = await placements(admin, name)
                return len(got) == 3 and set(got.values()) == {"west-1"}

            await wait_for_async("3 instances on west-1", all_west)
    finally:
        for agent in agents:
            await agent.stop_renewing()


async def test_dead_node_goes_not_ready_and_its_instances_move(
    apiserver: ApiServer, admin: KeelClient, name: str
) -> None:
    agents = [await FakeAgent(admin, f"node-{i}", "c1").start() for i in range(3)]
    try:
        async with platform(apiserver, grace=1.0):
            await wait_ready(admin, [a.name for a in agents])
            await admin.create(web(name, 3))
            before = await wait_placed(
                admin,
                name,
                lambda got: sorted(got.values()) == ["node-0", "node-1", "node-2"],
                "one instance per node",
            )
            victim = next(n for n, node in before.items() if node == "node-1")
            await agents[1].die()
            await wait_ready(admin, ["node-1"], "False")
            after = await wait_placed(
                admin,
                name,
                lambda got: len(got) == 3 and all(got.values()) and "node-1" not in got.values(),
                "3 instances bound to the live nodes",
            )
            assert victim in after  # recreated under the same deterministic name
            condition = next(
                c for c in (await admin.get(Node, "node-1")).status.conditions if c.type == "Ready"
            )
            assert condition.reason == "NodeLeaseExpired"
    finally:
        for agent in agents:
            await agent.stop_renewing()


async def test_noexecute_taint_evicts_who_does_not_tolerate_it(
    apiserver: ApiServer, admin: KeelClient, name: str
) -> None:
    """A NoExecute taint evicts at once what does not tolerate it, after tolerationSeconds
    what tolerates it for a while, and never what tolerates it for good."""
    agent = await FakeAgent(admin, "tainted", "c1").start()
    tolerations: dict[str, list[dict[str, Any]]] = {
        "intolerant": [],
        "patient": [
            {"key": "maint", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
        ],
        "immune": [{"key": "maint", "operator": "Exists"}],
    }
    try:
        async with platform(apiserver):
            await wait_ready(admin, ["tainted"])
            for kind, tolerate in tolerations.items():
                spec = {"command": ["x"], "tolerations": tolerate}
                await admin.create(
                    Instance(
                        metadata=ObjectMeta(name=f"{name}-{kind}", namespace=NS),
                        spec=msgspec.convert(spec, InstanceSpec),
                    )
                )

            async def names() -> set[str]:
                found = await admin.list(Instance, namespace=NS)
                return {
                    i.metadata.name.removeprefix(f"{name}-")
                    for i in found.items
                    if i.spec.node_name == "tainted"
                }

            await wait_for_async("all three bound", lambda: _equals(names, set(tolerations)))
            await admin.patch(
                Node, "tainted", {"spec": {"taints": [{"key": "maint", "effect": "NoExecute"}]}}
            )
            tainted_at = time.monotonic()
            await wait_for_async(
                "the intolerant one evicted", lambda: _equals(names, {"patient", "immune"})
            )
            assert time.monotonic() - tainted_at < 2
            await wait_for_async("the patient one evicted", lambda: _equals(names, {"immune"}))
            assert time.monotonic() - tainted_at >= 2
    finally:
        await agent.stop_renewing()


async def _equals(get: Callable[[], Awaitable[set[str]]], wanted: set[str]) -> bool:
    return await get() == wanted
