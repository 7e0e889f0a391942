"""Preemption after other work, against a real `keel apiserver`: the Nodes hold many small
Instances of earlier work and one large priority-0 filler each; high-priority Instances then
arrive. Each must evict exactly one filler (never the small Instances, not even on the
Nodes where an earlier preemptor already took the filler), bind, and nothing is retried:
counts, not wall time. The preemptors come in two waves of more Nodes than the policy
works out exactly per decision, so a poor ranking of the Nodes shows in the second."""

from __future__ import annotations

import asyncio
from collections import Counter

from scheduler.keel_platform import FakeAgent, platform
from support import ApiServer, wait_for_async

from keel.api.resources import Instance, InstanceSpec, Namespace, Node, ObjectMeta, ResourceList
from keel.client import KeelClient
from keel.scheduler.controller import SchedulerController
from keel.scheduler.policy import CANDIDATES

WAVE = CANDIDATES + 4  # more Nodes than are worked out exactly per decision
NODES = 2 * WAVE
SMALL_PER_NODE = 2  # 500m each: the earlier work takes 1 of a Node's 2 cpus
PREEMPTORS = NODES  # one per filler


def instance(namespace: str, name: str, cpu: str, priority: int = 0) -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=InstanceSpec(
            command=["x"], resources=ResourceList(cpu=cpu, memory="16Mi"), priority=priority
        ),
    )


async def create_all(client: KeelClient, objects: list[Instance]) -> None:
    await asyncio.gather(*(client.create(o) for o in objects))


async def bound(client: KeelClient, namespace: str) -> dict[str, str]:
    found = await client.list(Instance, namespace=namespace)
    return {
        i.metadata.name: i.spec.node_name
        for i in found.items
        if i.spec.node_name and not i.metadata.deletion_timestamp
    }


async def test_preemption_after_other_work_evicts_one_filler_each(
    apiserver: ApiServer, admin: KeelClient
) -> None:
    agents = [await FakeAgent(admin, f"n{i:02d}", "c1", cpu="2").start() for i in range(NODES)]
    try:
        async with platform(apiserver, ("nodelifecycle",)) as managers:
            controller = managers[-1].runner.controllers["scheduler"]
            assert isinstance(controller, SchedulerController)

            async def all_ready() -> bool:
                nodes = (await admin.list(Node)).items
                return (
                    sum(
                        any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
                        for n in nodes
                    )
                    == NODES
                )

            await wait_for_async("every Node Ready", all_ready, timeout=30)
            for ns in ("other", "filler", "high"):
                await admin.create(Namespace(metadata=ObjectMeta(name=ns)))

            async def placed(namespace: str, count: int) -> None:
                async def done() -> bool:
                    return len(await bound(admin, namespace)) == count

                await wait_for_async(f"{count} bound in {namespace}", done, timeout=60)

            small = NODES * SMALL_PER_NODE
            await create_all(admin, [instance("other", f"s{i}", "500m") for i in range(small)])
            await placed("other", small)
            assert set(Counter((await bound(admin, "other")).values()).values()) == {SMALL_PER_NODE}
            await create_all(admin, [instance("filler", f"f{i}", "1") for i in range(NODES)])
            await placed("filler", NODES)

            stats = controller.stats
            before = (stats.preemptions, controller.preemptions, stats.conflicts)
            # In waves, each bound before the next: later waves find Nodes whose filler an
            # earlier preemptor took, where only small Instances are left to evict.
            for wave in range(0, PREEMPTORS, WAVE):
                await create_all(
                    admin,
                    [
                        instance("high", f"h{i}", "1", priority=100)
                        for i in range(wave, min(wave + WAVE, PREEMPTORS))
                    ],
                )
                await placed("high", min(wave + WAVE, PREEMPTORS))

            # One decision and one victim per preemptor, no binding refused, no write given
            # up; the earlier work untouched; one preemptor per Node.
            assert controller.preemptions - before[1] == PREEMPTORS
            assert stats.preemptions - before[0] == PREEMPTORS, "victims evicted"
            assert stats.conflicts - before[2] == 0
            assert stats.preemptions_stopped == 0

            async def fillers_gone() -> bool:
                return not await bound(admin, "filler")

            await wait_for_async("every filler evicted", fillers_gone, timeout=30)
            assert len(await bound(admin, "other")) == small
            assert sorted(Counter((await bound(admin, "high")).values()).values()) == [1] * NODES

            # Bound, each says so: the nomination written while preempting is cleared.
            async def all_marked() -> bool:
                found = (await admin.list(Instance, namespace="high")).items
                return all(
                    not i.status.nominated_node_name
                    and any(
                        c.type == "Scheduled" and c.status == "True" for c in i.status.conditions
                    )
                    for i in found
                )

            await wait_for_async("every preemptor marked Scheduled", all_marked, timeout=30)
    finally:
        for agent in agents:
            await agent.stop_renewing()
