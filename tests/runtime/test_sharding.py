"""Sharding: the stable key hash and the balancing plan without I/O, and shard coordinators
against a real `keel apiserver` on sqlite (balance, no double ownership, takeover)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ApiServer, wait_for_async

from keel.api.resources import Lease
from keel.client import KeelClient
from keel.clock import SystemClock
from keel.runtime.sharding import ShardCoordinator, plan_shards, shard_of, shard_target

TTL = 2
NS = "keel-system"
SHARDS = 8


# --------------------------------------------------------------------------- pure


def test_shard_of_is_the_crc32_of_the_key_and_stable() -> None:
    assert shard_of("default/web", 16) == zlib.crc32(b"default/web") % 16
    assert [shard_of(f"ns/obj-{i}", 8) for i in range(50)] == [
        shard_of(f"ns/obj-{i}", 8) for i in range(50)
    ]
    assert {shard_of(f"ns/obj-{i}", 8) for i in range(1000)} == set(range(8))
    assert shard_of("anything", 1) == 0
    with pytest.raises(ValueError):
        shard_of("x", 0)


@pytest.mark.parametrize(
    ("shards", "live", "target"), [(8, 1, 8), (8, 2, 4), (8, 3, 3), (8, 5, 2), (8, 9, 1), (8, 0, 8)]
)
def test_a_replica_holds_at_most_ceil_of_shards_over_live_members(
    shards: int, live: int, target: int
) -> None:
    assert shard_target(shards, live) == target


def test_an_under_target_replica_takes_free_shards_up_to_its_target() -> None:
    take, release = plan_shards(
        owned=[0], free=[1, 2, 3, 4, 5], live_members=3, shards=8, identity="a"
    )
    assert release == [] and len(take) == 2 and set(take) <= {1, 2, 3, 4, 5}


def test_an_over_target_replica_releases_extras_and_takes_nothing() -> None:
    take, release = plan_shards(owned=range(8), free=[], live_members=3, shards=8, identity="a")
    assert take == [] and len(release) == 5 and set(release) <= set(range(8))


def test_a_replica_at_target_does_nothing() -> None:
    assert plan_shards(owned=[1, 2, 3], free=[4], live_members=3, shards=8, identity="a") == (
        [],
        [],
    )


def test_replicas_prefer_different_free_shards() -> None:
    firsts = {plan_shards([], range(8), 4, 8, f"replica-{i}")[0][0] for i in range(8)}
    assert len(firsts) > 1


def simulate(members: list[str], shards: int, owner: dict[int, str], rounds: int) -> None:
    """Replicas take turns applying plan_shards; a shard has at most one owner by
    construction (like the store's create-if-absent), releases free it."""
    for _ in range(rounds):
        for member in members:
            owned = [s for s, o in owner.items() if o == member]
            free = [s for s in range(shards) if s not in owner]
            take, release = plan_shards(owned, free, len(members), shards, member)
            for shard in release:
                del owner[shard]
            for shard in take:
                assert shard not in owner
                owner[shard] = member


@settings(max_examples=200, deadline=None)
@given(
    shards=st.integers(1, 32),
    members=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
    joined=st.lists(st.sampled_from("ijkl"), max_size=4, unique=True),
    seed=st.integers(0, 1000),
)
def test_balancing_converges_to_every_shard_owned_within_the_target(
    shards: int, members: list[str], joined: list[str], seed: int
) -> None:
    rng = random.Random(seed)
    owner: dict[int, str] = {}
    simulate(members, shards, owner, rounds=3)
    members = members + joined  # new replicas join; the old ones give extras back
    rng.shuffle(members)
    simulate(members, shards, owner, rounds=4)
    assert set(owner) == set(range(shards))
    counts = [sum(1 for o in owner.values() if o == m) for m in members]
    assert max(counts) <= shard_target(shards, len(members))
    if len(members) == 1:
        return
    departed = members.pop()  # one leaves: its shards become free and are taken over
    owner = {s: o for s, o in owner.items() if o != departed}
    simulate(members, shards, owner, rounds=3)
    assert set(owner) == set(range(shards))
    assert max(sum(1 for o in owner.values() if o == m) for m in members) <= shard_target(
        shards, len(members)
    )


# --------------------------------------------------------------------------- real server


@pytest.fixture
async def client(apiserver: ApiServer) -> AsyncIterator[KeelClient]:
    async with apiserver.client("controller") as client:
        yield client


class Fleet:
    """Coordinators of one prefix, and a monitor that checks no shard is believed owned by
    two replicas at once and that a believed owner is the holder in the store."""

    def __init__(self, client: KeelClient) -> None:
        self.client = client
        self.prefix = f"cm-{uuid.uuid4().hex[:6]}"
        self.coordinators: dict[str, ShardCoordinator] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.violations: list[str] = []
        self.lost: dict[str, list[int]] = {}
        self.samples = 0

    def start(self, identity: str, **options: bool) -> ShardCoordinator:
        coordinator = ShardCoordinator(
            self.client,
            identity,
            SHARDS,
            ttl=TTL,
            namespace=NS,
            prefix=self.prefix,
            clock=SystemClock(),
            rng=random.Random(identity),
            **options,
        )
        self.lost[identity] = []
        coordinator.on_lost(self.lost[identity].append)
        self.coordinators[identity] = coordinator
        self.tasks[identity] = asyncio.create_task(coordinator.run())
        return coordinator

    async def stop(self, identity: str) -> None:
        task = self.tasks.pop(identity)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        del self.coordinators[identity]

    def beliefs(self) -> dict[int, list[str]]:
        owners: dict[int, list[str]] = {}
        for identity, coordinator in self.coordinators.items():
            for shard in coordinator.owned:
                owners.setdefault(shard, []).append(identity)
        return owners

    async def monitor(self) -> None:
        while True:
            before = self.beliefs()
            listed = await self.client.list(Lease, namespace=NS)
            after = self.beliefs()
            self.samples += 1
            holders = {lease.metadata.name: lease.spec.holder_identity for lease in listed.items}
            for shard, owners in before.items():
                if len(owners) > 1:
                    self.violations.append(f"shard {shard} owned by {owners}")
                # Believed both before and after the list: the store must agree.
                for owner in owners:
                    if owner in after.get(shard, []):
                        held_by = holders.get(f"{self.prefix}-shard-{shard}")
                        if held_by != owner:
                            self.violations.append(f"{owner} acts on {shard} held by {held_by}")
            await asyncio.sleep(0.01)

    def counts(self) -> dict[str, int]:
        return {i: len(c.owned) for i, c in self.coordinators.items()}

    def balanced(self) -> bool:
        counts = self.counts()
        target = shard_target(SHARDS, len(counts))
        owned = set().union(*(set(c.owned) for c in self.coordinators.values()))
        return owned == set(range(SHARDS)) and max(counts.values()) <= target


@contextlib.asynccontextmanager
async def fleet(client: KeelClient) -> AsyncIterator[Fleet]:
    group = Fleet(client)
    monitor = asyncio.create_task(group.monitor())
    try:
        yield group
    finally:
        monitor.cancel()
        for identity in list(group.tasks):
            await group.stop(identity)
        await asyncio.gather(monitor, return_exceptions=True)


async def test_replicas_split_shards_evenly_and_never_own_one_twice(client: KeelClient) -> None:
    async with fleet(client) as group:
        group.start("a")
        group.start("b")
        await wait_for_async("2 replicas to balance 8 shards", group.balanced, timeout=20)
        assert sorted(group.counts().values()) == [4, 4]
        group.start("c")
        await wait_for_async("3 replicas to balance 8 shards", group.balanced, timeout=20)
        assert sorted(group.counts().values()) == [2, 3, 3]
        # The given-back shards went through on_lost before their release.
        assert sum(len(lost) for lost in group.lost.values()) >= 2
        assert group.samples > 0 and group.violations == []
        owners = {s: i for i, c in group.coordinators.items() for s in c.owned}
        # Every replica's lease cache comes to name the same holders.
        await wait_for_async(
            "the lease caches to agree",
            lambda: all(c.holders() == owners for c in group.coordinators.values()),
        )


async def test_a_crashed_replicas_shards_are_taken_over(client: KeelClient) -> None:
    async with fleet(client) as group:
        group.start("a")
        group.start("b")
        doomed = group.start("c", release_on_exit=False)
        await wait_for_async("3 replicas to balance", group.balanced, timeout=20)
        orphaned = set(doomed.owned)
        assert orphaned
        await group.stop("c")  # stops renewing; its leases expire in the store
        crashed = time.monotonic()
        await wait_for_async("2 replicas to take over", group.balanced, timeout=20)
        takeover = time.monotonic() - crashed
        print(f"shards of a crashed replica taken over after {takeover:.3f} s")
        assert takeover < TTL + 1.5
        assert sorted(group.counts().values()) == [4, 4]
        assert group.violations == []


async def test_a_departing_replica_hands_its_shards_over_at_once(client: KeelClient) -> None:
    async with fleet(client) as group:
        group.start("a")
        leaving = group.start("b")
        await wait_for_async("2 replicas to balance", group.balanced, timeout=20)
        handed = set(leaving.owned)
        await group.stop("b")
        assert sorted(group.lost["b"]) == sorted(handed)
        stopped = time.monotonic()
        await wait_for_async("a to own all", lambda: len(group.coordinators["a"].owned) == SHARDS)
        handover = time.monotonic() - stopped
        print(f"shards of a departing replica taken over after {handover:.3f} s")
        # a's member count drops when b's member lease is released, and its shards are free.
        assert handover < 1.0
        assert group.violations == []


async def test_a_fenced_out_shard_is_dropped_at_once_and_retaken_after_expiry(
    client: KeelClient,
) -> None:
    async with fleet(client) as group:
        a = group.start("a")
        await wait_for_async("a to own every shard", lambda: len(a.owned) == SHARDS)
        shard = 3
        a.lost(shard)
        assert shard not in a.owned and a.token(shard) is None
        await wait_for_async("on_lost for the fenced-out shard", lambda: shard in group.lost["a"])
        # Its lease was not released (it may be someone else's): it comes back after expiry.
        await wait_for_async(
            "the shard to be taken again", lambda: shard in a.owned, timeout=TTL + 3
        )
        assert group.violations == []
