"""The controller-manager: runs a `ControllerRunner`'s controllers only while this replica
holds `keel-system/controller-manager` (or, sharded, only for the shards it holds), every
write fenced with the lease's token; a rejected write ends the work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from keel.client import FencingTokenRejected, KeelClient
from keel.clock import Clock
from keel.runtime.controller import ControllerRunner, Partition
from keel.runtime.leaderelection import LeaderElector
from keel.runtime.sharding import ShardCoordinator, shard_of

__all__ = ["LEASE_NAME", "LEASE_NAMESPACE", "ControllerManager"]

LEASE_NAMESPACE = "keel-system"
LEASE_NAME = "controller-manager"
HOLDER_POLL = 0.1  # seconds between looks at the observed holder (a log line, not a decision)

log = logging.getLogger("keel.manager")


class ControllerManager:
    """Leader election (or shard leases) around a runner.

    Informers run all the time, so a standby has warm caches and acts as soon as it wins;
    the work partitions exist only while a lease is held. The write client of a partition is
    `client.fenced(keel-system, lease, token)`: the store, not our clock, has the last word.
    """

    def __init__(
        self,
        client: KeelClient,
        runner: ControllerRunner,
        *,
        identity: str,
        ttl: int = 2,
        shards: int = 0,
        clock: Clock,
        rng: random.Random | None = None,
        namespace: str = LEASE_NAMESPACE,
        lease_name: str = LEASE_NAME,
    ) -> None:
        self.client = client
        self.runner = runner
        self.identity = identity
        self.ttl = ttl
        self.shards = shards
        self.clock = clock
        self.rng = rng or random.Random()
        self.namespace = namespace
        self.lease_name = lease_name
        self.elector: LeaderElector | None = None
        self.coordinator: ShardCoordinator | None = None
        self._holders: dict[str, asyncio.Task[None]] = {}  # partition name -> its task
        if shards > 0:
            self.coordinator = ShardCoordinator(
                client,
                identity,
                shards,
                ttl=ttl,
                namespace=namespace,
                prefix=lease_name,
                clock=clock,
                rng=random.Random(self.rng.random()),
            )
            self.coordinator.on_acquired(self._shard_acquired)
            self.coordinator.on_lost(self._shard_lost)
        else:
            self.elector = LeaderElector(
                client,
                namespace,
                lease_name,
                identity,
                ttl=ttl,
                clock=clock,
                rng=random.Random(self.rng.random()),
            )
            self.elector.on_change(self._leadership_changed)

    # -- running

    async def run(self) -> None:
        """Informers plus election (or sharding) until cancelled; then work stops before the
        leases are given back, so a successor never overlaps with our in-flight writes."""
        loop = asyncio.get_running_loop()
        informers = loop.create_task(self.runner.run_informers(), name="informers")
        election = loop.create_task(self._campaign(), name="election")
        try:
            done, _ = await asyncio.wait((informers, election), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # neither ends by itself: surface its failure
        finally:
            # Not `gather`: its cancellation reaches the elector while it is still releasing
            # the lease, so the release could be cut short. Work first, then one cancel each.
            await self._stop_all_work()
            for task in (election, informers):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _campaign(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.run()
        elif self.elector is not None:
            observer = asyncio.get_running_loop().create_task(self._observe_holder(self.elector))
            try:
                await self.elector.run()
            finally:
                observer.cancel()

    async def _observe_holder(self, elector: LeaderElector) -> None:
        """Log who holds the lease whenever that changes, so a standby says whom it waits
        for (the elector reports only our own leadership)."""
        seen: str | None = None
        while True:
            holder = elector.holder
            if holder != seen and holder not in (None, self.identity):
                log.warning(
                    "%s standing by: %s/%s is held by %s",
                    self.identity,
                    self.namespace,
                    self.lease_name,
                    holder,
                )
            seen = holder
            await self.clock.sleep(HOLDER_POLL)

    async def _stop_all_work(self) -> None:
        for name in list(self._holders):
            await self._stop(name)

    # -- single lease

    def _leadership_changed(self, token: int | None) -> None:
        if token is None:
            if "leader" in self._holders:
                log.warning(
                    "%s stepped down from %s/%s: work stopped",
                    self.identity,
                    self.namespace,
                    self.lease_name,
                )
            self._stop_now("leader")
            return
        log.warning(
            "%s leading %s/%s with fencing token %d",
            self.identity,
            self.namespace,
            self.lease_name,
            token,
        )
        self._stop_now("leader")  # a new term: never mix the writes of two tokens
        self._hold("leader", self.lease_name, token, accepts=_every_key)

    def _leader_fenced(self, partition: Partition, exc: FencingTokenRejected) -> None:
        log.error(
            "%s: write rejected with FencingTokenRejected (409) on %s/%s: %s; stepping down",
            self.identity,
            self.namespace,
            self.lease_name,
            exc,
        )
        self._stop_now("leader")
        self._give_up("leader")

    # -- shards

    def _shard_acquired(self, shard: int, token: int) -> None:
        name = f"shard-{shard}"
        lease = f"{self.lease_name}-shard-{shard}"
        log.warning("%s acquired %s/%s with fencing token %d", self.identity, self.namespace,
                    lease, token)  # fmt: skip
        self._stop_now(name)
        shards = self.shards
        self._hold(name, lease, token, accepts=lambda key: shard_of(key, shards) == shard)

    async def _shard_lost(self, shard: int) -> None:
        # Awaited by the coordinator before it releases the lease: the queue is dropped and
        # in-flight work has ended when the next owner can start.
        log.warning("%s gives up shard %d: work stopped", self.identity, shard)
        await self._stop(f"shard-{shard}")

    def _shard_fenced(self, partition: Partition, exc: FencingTokenRejected) -> None:
        log.error(
            "%s: write rejected with FencingTokenRejected (409) in %s: %s; dropping it",
            self.identity,
            partition.name,
            exc,
        )
        self._stop_now(partition.name)
        self._give_up(partition.name)

    # -- partitions

    def _hold(self, name: str, lease: str, token: int, *, accepts: Callable[[str], bool]) -> None:
        on_fenced = self._leader_fenced if name == "leader" else self._shard_fenced

        async def work() -> None:
            async with self.client.fenced(self.namespace, lease, token) as view:
                partition = self.runner.start(name, view, accepts=accepts, on_fenced=on_fenced)
                try:
                    await partition.wait()
                finally:
                    await partition.stop()
            if self._holders.get(name) is asyncio.current_task():
                # The work died while we still hold the lease (a bug, logged by the
                # partition): let the lease go rather than lead with nothing running.
                del self._holders[name]
                self._give_up(name)

        self._holders[name] = asyncio.get_running_loop().create_task(work(), name=f"hold-{name}")

    def _give_up(self, name: str) -> None:
        if self.elector is not None:
            self.elector.lost()
        elif self.coordinator is not None:
            self.coordinator.lost(int(name.removeprefix("shard-")))

    def _stop_now(self, name: str) -> None:
        partition = self.runner.partitions.get(name)
        if partition is not None:
            partition.stop_now()
        task = self._holders.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _stop(self, name: str) -> None:
        task = self._holders.get(name)
        self._stop_now(name)
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(task, return_exceptions=True)

    # -- observation (tests, metrics)

    def leading(self) -> bool:
        return bool(self._holders)

    def owned_shards(self) -> list[int]:
        return sorted(int(n.split("-", 1)[1]) for n in self._holders if n.startswith("shard-"))


def _every_key(_key: str) -> bool:
    return True
