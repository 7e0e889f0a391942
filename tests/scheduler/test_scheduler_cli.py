"""`keel scheduler` as real processes: one of two replicas holds keel-system/scheduler and
binds; when it is killed the standby takes over and keeps binding."""

from __future__ import annotations

from scheduler.keel_platform import FakeAgent, platform
from support import ApiServer, lease_of, wait_for_async

from keel.api.resources import Instance, InstanceSpec, ObjectMeta
from keel.client import KeelClient


async def test_one_replica_binds_and_the_standby_takes_over(
    apiserver: ApiServer, admin: KeelClient
) -> None:
    replicas = {
        i: apiserver.scheduler(i, "--scoring", "MostAllocated") for i in ("sched-a", "sched-b")
    }
    agent = await FakeAgent(admin, "node-0", "c1").start()
    try:
        async with platform(apiserver, ("nodelifecycle",), scheduler=False):

            async def holder() -> str | None:
                lease = lease_of(apiserver.http(), "scheduler")
                return lease["spec"]["holderIdentity"] if lease else None

            leader = await wait_for_async("a scheduler to hold the lease", holder)
            assert leader in replicas

            async def bound(name: str) -> bool:
                instance = await admin.get(Instance, name, namespace="default")
                return instance.spec.node_name == "node-0"

            await create(admin, "first")
            await wait_for_async("the first instance bound", lambda: bound("first"))
            replicas[leader].kill()

            async def new_holder() -> str | None:
                current = await holder()
                return current if current not in (None, leader) else None

            await wait_for_async("the standby to take the lease", new_holder, timeout=15)
            await create(admin, "second")
            await wait_for_async("the second instance bound", lambda: bound("second"))
    finally:
        await agent.stop_renewing()
        for replica in replicas.values():
            replica.stop()
    survivor = next(r for name, r in replicas.items() if name != leader)
    assert survivor.returncode == 0, survivor.log()


async def create(client: KeelClient, name: str) -> None:
    await client.create(
        Instance(
            metadata=ObjectMeta(name=name, namespace="default"), spec=InstanceSpec(command=["x"])
        )
    )
