"""Hollow nodes (as Kubernetes' kubemark): many Nodes in one process, for scale tests and
benchmarks of everything but the data plane. Each registers a Node (labels, zone, region,
capacity), holds its node lease `keel-node-lease/NAME` the way agents do (renewals are
keep-alives, never store writes), and reports the Instances bound to it Running and Ready
without starting anything (one status write each, as an agent's first report).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from keel.api.resources import (
    Cluster,
    ClusterSpec,
    Condition,
    Instance,
    InstanceStatus,
    Lease,
    Node,
    NodeSpec,
    ObjectMeta,
    ResourceList,
)
from keel.client import AlreadyExists, Conflict, KeelClient, KeelClientError, NotFound
from keel.clock import Clock, rfc3339
from keel.runtime.informer import Informer, object_key

__all__ = ["HollowNodes", "HollowShape", "hollow_nodes"]

NODE_LEASES = "keel-node-lease"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
TERMINAL = frozenset({"Succeeded", "Failed"})
log = logging.getLogger("keel.dev.hollow")


@dataclass(frozen=True)
class HollowShape:
    """What the hollow Nodes look like."""

    count: int
    clusters: int = 1
    zones_per_cluster: int = 2
    prefix: str = "hollow"
    cpu: str = "4"
    memory: str = "16Gi"
    extended: dict[str, str] = field(default_factory=dict)
    lease_duration: int = 40
    labels: dict[str, str] = field(default_factory=dict)

    def cluster_of(self, index: int) -> str:
        return f"{self.prefix}-c{index % self.clusters}"

    def zone_of(self, index: int) -> str:
        zone = (index // self.clusters) % self.zones_per_cluster
        return f"{self.cluster_of(index)}-z{zone}"

    def nodes(self) -> list[Node]:
        width = len(str(max(self.count - 1, 0)))
        return [
            Node(
                metadata=ObjectMeta(
                    name=f"{self.prefix}-{i:0{width}d}",
                    labels={
                        **self.labels,
                        "keel.dev/hollow": "true",
                        ZONE_LABEL: self.zone_of(i),
                        REGION_LABEL: f"{self.prefix}-region",
                    },
                ),
                spec=NodeSpec(
                    cluster=self.cluster_of(i),
                    capacity=ResourceList(
                        cpu=self.cpu, memory=self.memory, extended=dict(self.extended)
                    ),
                ),
            )
            for i in range(self.count)
        ]


class HollowNodes:
    """Registers the Nodes, keeps their leases and reports their Instances; `run()` until
    cancelled (the leases are released on the way out, so the Nodes turn NotReady)."""

    def __init__(
        self,
        client: KeelClient,
        shape: HollowShape,
        *,
        clock: Clock,
        concurrency: int = 32,
        rng: random.Random | None = None,
        report: bool = True,
    ) -> None:
        self.client = client
        self.shape = shape
        self.clock = clock
        self.concurrency = concurrency
        self.rng = rng or random.Random()
        self.names = {n.metadata.name for n in shape.nodes()}
        self.leases: dict[str, Lease] = {}
        self.reported = 0
        self.registered = asyncio.Event()
        self._dirty: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self.report = report
        self.instances = Informer(client, Instance, clock=clock, rng=random.Random(1))
        self.instances.add_handler(self._on_instance)

    async def run(self) -> None:
        try:
            await self.register()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._renew_forever(), name="hollow-leases")
                if self.report:
                    group.create_task(self.instances.run(), name="hollow-instances")
                    for i in range(self.concurrency):
                        group.create_task(self._report_forever(), name=f"hollow-report-{i}")
        finally:
            # Give the leases back (the Nodes turn NotReady at once), unless the API server
            # is gone: then they expire by themselves.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.release()), 10.0)

    # ------------------------------------------------------------------ registration

    async def register(self) -> None:
        shape = self.shape
        for c in sorted({shape.cluster_of(i) for i in range(shape.count)}):
            with contextlib.suppress(AlreadyExists):
                await self.client.create(
                    Cluster(metadata=ObjectMeta(name=c), spec=ClusterSpec(region="hollow"))
                )
        await _bounded(self.concurrency, [self._register_one(n) for n in shape.nodes()])
        self.registered.set()
        log.info("%d hollow nodes registered in %d clusters", shape.count, shape.clusters)

    async def _register_one(self, node: Node) -> None:
        name = node.metadata.name
        with contextlib.suppress(AlreadyExists):
            await self.client.create(node)
        while True:
            try:
                self.leases[name] = await self.client.acquire_lease(
                    NODE_LEASES, name, name, self.shape.lease_duration
                )
                return
            except AlreadyExists:
                # Ours from a previous run, or still held: wait for it to go, as an agent.
                await self.clock.sleep(1.0)

    async def _renew_forever(self) -> None:
        """Renew each lease about every duration/3, spread evenly over that period."""
        period = self.shape.lease_duration / 3
        while True:
            names = list(self.leases)
            if not names:
                await self.clock.sleep(period)
                continue
            gap = period / len(names)
            for name in names:
                lease = self.leases.get(name)
                if lease is None:
                    continue
                try:
                    self.leases[name] = await self.client.renew_lease(lease)
                except (NotFound, Conflict):
                    log.warning("hollow node %s lost its lease; taking it again", name)
                    self.leases.pop(name, None)
                    with contextlib.suppress(AlreadyExists, KeelClientError):
                        self.leases[name] = await self.client.acquire_lease(
                            NODE_LEASES, name, name, self.shape.lease_duration
                        )
                except (KeelClientError, OSError) as exc:
                    log.warning("renewing %s failed: %s", name, exc)
                await self.clock.sleep(gap)

    async def release(self) -> None:
        leases, self.leases = list(self.leases.values()), {}
        await _bounded(self.concurrency, [self._release_one(lease) for lease in leases])

    async def _release_one(self, lease: Lease) -> None:
        with contextlib.suppress(KeelClientError, OSError):
            await self.client.release_lease(lease)

    # ------------------------------------------------------------------ instances

    def _on_instance(self, _kind: str, _old: Instance | None, new: Instance | None) -> None:
        if new is None or new.spec.node_name not in self.names:
            return
        if _wanted(new) is None:
            return
        key = object_key(new)
        if key not in self._queued:
            self._queued.add(key)
            self._dirty.put_nowait(key)

    async def _report_forever(self) -> None:
        while True:
            key = await self._dirty.get()
            self._queued.discard(key)
            instance = self.instances.cache.get(key)
            if instance is None:
                continue
            status = _wanted(instance)
            if status is None:
                continue
            stamped = msgspec.structs.replace(
                status,
                started_at=status.started_at or rfc3339(self.clock.wall()),
                conditions=[
                    msgspec.structs.replace(c, last_transition_time=rfc3339(self.clock.wall()))
                    for c in status.conditions
                ],
            )
            try:
                await self.client.update_status(msgspec.structs.replace(instance, status=stamped))
                self.reported += 1
            except NotFound:
                continue
            except (Conflict, KeelClientError, OSError) as exc:
                log.debug("reporting %s: %s; again with the next version", key, exc)
                await self.clock.sleep(0.05)
                self._on_instance("RETRY", None, self.instances.cache.get(key))


def _wanted(instance: Instance) -> InstanceStatus | None:
    """The status a hollow agent reports for `instance`, or None if it already says so."""
    status = instance.status
    if instance.metadata.deletion_timestamp:
        if status.phase in TERMINAL:
            return None
        return msgspec.structs.replace(status, phase="Succeeded", message="hollow: stopped")
    if status.phase in TERMINAL:
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions)
    if status.phase == "Running" and ready:
        return None
    others = [c for c in status.conditions if c.type != "Ready"]
    return msgspec.structs.replace(
        status,
        phase="Running",
        host_ip="127.0.0.1",
        conditions=[*others, Condition(type="Ready", status="True", reason="Hollow")],
    )


async def _bounded(limit: int, work: Sequence[Coroutine[Any, Any, None]]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Coroutine[Any, Any, None]) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in work))


async def hollow_nodes(
    client: KeelClient,
    shape: HollowShape,
    *,
    clock: Clock,
    concurrency: int = 32,
    report: bool = True,
) -> None:
    """Run hollow nodes until cancelled."""
    await HollowNodes(client, shape, clock=clock, concurrency=concurrency, report=report).run()
