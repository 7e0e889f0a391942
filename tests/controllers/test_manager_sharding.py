"""The controller-manager with shards, against a real API server: two replicas split the
shard leases, each reconciles only the keys of its own shards, and when one leaves the other
takes its shards over and keeps the work going."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from support import ApiServer, wait_for_async

from keel.api.resources import Namespace, ObjectMeta
from keel.client import KeelClient
from keel.clock import SystemClock
from keel.controllers.namespace import FINALIZER
from keel.runtime.controller import Context, ControllerRunner, Result
from keel.runtime.manager import ControllerManager
from keel.runtime.sharding import shard_of

SHARDS = 4


class SeenNamespaces:
    """Wraps the namespace controller's work: records which replica reconciled which key."""

    name = "namespace"
    primary = Namespace
    related = ()

    def __init__(self, identity: str, seen: dict[str, set[str]]) -> None:
        from keel.controllers.namespace import NamespaceController

        self.inner = NamespaceController()
        self.identity = identity
        self.seen = seen

    async def reconcile(self, ctx: Context, key: str) -> Result:
        self.seen.setdefault(key, set()).add(self.identity)
        return await self.inner.reconcile(ctx, key)


Start = Callable[[str], ControllerManager]


@pytest.fixture
async def sharded(
    apiserver: ApiServer,
) -> AsyncIterator[tuple[Start, dict[str, set[str]], dict[str, asyncio.Task[None]]]]:
    seen: dict[str, set[str]] = {}
    tasks: dict[str, asyncio.Task[None]] = {}
    clients: list[KeelClient] = []

    def start(identity: str) -> ControllerManager:
        client = KeelClient.from_kubeconfig(apiserver.kubeconfig_for("controller"))
        clients.append(client)
        clock = SystemClock()
        runner = ControllerRunner(client, clock=clock)
        runner.register(SeenNamespaces(identity, seen))
        manager = ControllerManager(
            client, runner, identity=identity, shards=SHARDS, clock=clock, lease_name="cm-test"
        )
        tasks[identity] = asyncio.get_running_loop().create_task(manager.run())
        return manager

    yield start, seen, tasks
    for task in tasks.values():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for client in clients:
        await client.close()


async def test_replicas_split_the_shards_and_take_over_when_one_leaves(
    client: KeelClient,
    sharded: tuple[Start, dict[str, set[str]], dict[str, asyncio.Task[None]]],
    name: str,
) -> None:
    start, seen, tasks = sharded
    a, b = start("shard-a"), start("shard-b")

    async def split() -> bool:
        owned_a, owned_b = set(a.owned_shards()), set(b.owned_shards())
        # Balanced (ceil(4 / 2) each), so no shard moves while the keys below are worked on.
        return len(owned_a) == len(owned_b) == SHARDS // 2 and not owned_a & owned_b

    await wait_for_async("the replicas to split the shards evenly", split)

    names = [f"{name}-{i}" for i in range(12)]
    for ns in names:
        await client.create(Namespace(metadata=ObjectMeta(name=ns)))

    async def all_finalized() -> bool:
        found = [await client.get(Namespace, ns) for ns in names]
        return all(FINALIZER in ns.metadata.finalizers for ns in found)

    await wait_for_async("every namespace to get the finalizer", all_finalized)
    # Each key was reconciled by the owner of its shard only.
    owners = {"shard-a": set(a.owned_shards()), "shard-b": set(b.owned_shards())}
    for ns in names:
        assert len(seen[ns]) == 1, (ns, seen[ns])
        [replica] = seen[ns]
        assert shard_of(ns, SHARDS) in owners[replica]

    # shard-a leaves (gracefully: it drops its work, then releases its leases).
    tasks["shard-a"].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tasks["shard-a"]

    async def b_owns_all() -> bool:
        return b.owned_shards() == list(range(SHARDS))

    await wait_for_async("shard-b to take every shard", b_owns_all, timeout=20)
    late = f"{name}-late"
    await client.create(Namespace(metadata=ObjectMeta(name=late)))

    async def late_finalized() -> bool:
        return FINALIZER in (await client.get(Namespace, late)).metadata.finalizers

    await wait_for_async("the remaining replica to do all the work", late_finalized)
    assert seen[late] == {"shard-b"}
