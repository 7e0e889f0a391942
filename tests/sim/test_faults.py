"""Watch faults keep the API's contract: whatever the simulated network delays, drops,
redelivers or expires, the real client's watch (over the real API server in memory) leaves a
consumer that applies events by resourceVersion with the server's state."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from keel.api.resources import ObjectMeta, Service
from keel.client import AlreadyExists, NotFound, WatchEvent
from keel.sim import FaultMix, FaultScheduler, SimCluster, Trace, run_virtual


async def _writer(api: SimCluster, rng: random.Random, seconds: float) -> None:
    client = api.client("writer")
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        name = f"s-{rng.randrange(8)}"
        try:
            roll = rng.random()
            if roll < 0.4:
                await client.create(Service(metadata=ObjectMeta(name=name)))
            elif roll < 0.8:
                labels = {"v": str(rng.randrange(1000))}
                await client.patch(Service, name, {"metadata": {"labels": labels}})
            else:
                await client.delete(Service, name)
        except (AlreadyExists, NotFound):
            pass  # the dice picked a name that is (not) there


def _apply(cache: dict[str, Service], event: WatchEvent[Service]) -> None:
    """What an informer does: newer versions win; a relist replaces everything."""
    if event.type == "RELIST":
        cache.clear()
        cache.update({obj.metadata.name: obj for obj in event.objects})
        return
    obj = event.object
    if obj is None:
        return
    held = cache.get(obj.metadata.name)
    if held is not None and int(held.metadata.resource_version) > int(event.resource_version):
        return  # a redelivered older event
    if event.type == "DELETED":
        cache.pop(obj.metadata.name, None)
    else:
        cache[obj.metadata.name] = obj


def _run(seed: int, mix: FaultMix) -> tuple[dict[str, str], dict[str, str], list[str]]:
    trace = Trace()
    scheduler = FaultScheduler(seed, mix, trace)

    async def main() -> tuple[dict[str, str], dict[str, str]]:
        api = SimCluster(seed=seed, faults=scheduler, trace=trace)
        await api.start()
        cache: dict[str, Service] = {}
        watch = api.client("consumer").watch(Service, resource_version="0")

        async def consume() -> None:
            async for event in watch:
                _apply(cache, event)

        consumer = asyncio.get_running_loop().create_task(consume())
        await _writer(api, random.Random(seed), 30.0)
        scheduler.active = False
        await asyncio.sleep(5.0)  # faults healed: the consumer catches up
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        server = {s.metadata.name: s.metadata.resource_version for s in api.objects(Service)}
        seen = {name: obj.metadata.resource_version for name, obj in cache.items()}
        return server, seen

    server, seen = run_virtual(main)
    return server, seen, trace.lines


HEAVY = FaultMix(delay=0.2, drop=0.1, duplicate=0.1, expire=0.05, max_delay=1.0)


@pytest.mark.parametrize("seed", range(6))
def test_a_consumer_converges_to_the_server_state_under_watch_faults(seed: int) -> None:
    server, seen, trace = _run(seed, HEAVY)
    assert seen == server
    faults = " ".join(trace)
    for kind in ("dropped", "rewound", "expired"):
        assert kind in faults, f"no {kind!r} fault happened with seed {seed}"


def test_a_duplicate_fault_redelivers_older_events() -> None:
    mix = FaultMix(duplicate=0.5, max_rewind=3)
    versions: list[int] = []

    async def main() -> None:
        api = SimCluster(faults=FaultScheduler(7, mix))
        await api.start()
        client = api.client("tester")
        _, start = await client.list(Service)
        for index in range(10):
            await client.create(Service(metadata=ObjectMeta(name=f"s-{index}")))
        _, end = await client.list(Service)
        watch = client.watch(Service, resource_version=start)
        while not versions or versions[-1] < int(end):
            versions.append(int((await anext(watch)).resource_version))
        await watch.aclose()

    run_virtual(main)
    assert any(b <= a for a, b in itertools.pairwise(versions))  # older after newer
    assert len(versions) > len(set(versions)) == 10  # every change, some more than once


def test_a_dropped_connection_resumes_without_a_gap() -> None:
    mix = FaultMix(drop=0.5)
    seen: list[int] = []

    async def main() -> int:
        api = SimCluster(faults=FaultScheduler(3, mix))
        await api.start()
        client = api.client("tester")
        _, start = await client.list(Service)
        for index in range(20):
            await client.create(Service(metadata=ObjectMeta(name=f"s-{index}")))
        watch = client.watch(Service, resource_version=start)
        while len(seen) < 20:
            seen.append(int((await anext(watch)).resource_version))
        reconnects = watch.reconnects
        await watch.aclose()
        return reconnects

    reconnects = run_virtual(main)
    assert reconnects > 0
    assert seen == sorted(seen) and len(set(seen)) == 20  # in order, unique, gap-free


def test_the_same_seed_draws_the_same_faults() -> None:
    first = _run(11, HEAVY)[2]
    second = _run(11, HEAVY)[2]
    third = _run(12, HEAVY)[2]
    assert first == second
    assert first != third


def test_process_faults_follow_the_mix() -> None:
    scheduler = FaultScheduler(1, FaultMix(crash=1.0))
    faults = [scheduler.next_process_fault() for _ in range(50)]
    assert all(f is not None and f.action == "crash" for f in faults)
    assert FaultScheduler(1, FaultMix()).next_process_fault() is None
    inactive = FaultScheduler(1, FaultMix(drop=1.0))
    inactive.active = False
    assert inactive.on_watch_event().action == "deliver"
