"""Test helpers for the scheduler and the platform controllers: run them in this process on
the real runtime against a real `keel apiserver`, and play agents by hand (Nodes, node
leases kept renewed, Instance status) with the right tokens. Holds no tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
from support import ApiServer

from keel.api.resources import (
    Condition,
    Instance,
    InstanceStatus,
    Lease,
    Node,
    NodeSpec,
    ObjectMeta,
    PortStatus,
    ResourceList,
)
from keel.client import KeelClient
from keel.clock import SystemClock
from keel.controllers.deployment import DeploymentController
from keel.controllers.endpoints import EndpointsController
from keel.controllers.nodelifecycle import ClusterEvictionsController, NodeLifecycleController
from keel.runtime.controller import Controller, ControllerRunner
from keel.runtime.manager import ControllerManager
from keel.scheduler.service import new_scheduler

NODE_LEASES = "keel-node-lease"


@contextlib.asynccontextmanager
async def platform(
    server: ApiServer,
    controllers: tuple[str, ...] = ("deployment", "endpoints", "nodelifecycle"),
    *,
    scheduler: bool = True,
    grace: float = 1.0,
) -> AsyncIterator[list[ControllerManager]]:
    """The named controllers under a controller-manager (controller token) and, optionally,
    the scheduler under its own election (scheduler token), until the block ends."""
    clock = SystemClock()
    clients: list[KeelClient] = []
    managers: list[ControllerManager] = []
    if controllers:
        client = server.client("controller")
        clients.append(client)
        runner = ControllerRunner(client, clock=clock)
        made: dict[str, Callable[[], Controller]] = {
            "deployment": DeploymentController,
            "endpoints": lambda: EndpointsController(runner.cache),
            "nodelifecycle": lambda: NodeLifecycleController(grace=grace),
            "cluster-evictions": lambda: ClusterEvictionsController(runner.cache),
        }
        for name in controllers:
            runner.register(made[name](), workers=2)
        managers.append(
            ControllerManager(client, runner, identity=f"cm-{uuid.uuid4().hex[:6]}", clock=clock)
        )
    if scheduler:
        client = server.client("scheduler")
        clients.append(client)
        managers.append(
            new_scheduler(client, identity=f"sched-{uuid.uuid4().hex[:6]}", clock=clock)
        )
    tasks = [asyncio.get_running_loop().create_task(m.run()) for m in managers]
    try:
        yield managers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()


class FakeAgent:
    """Plays the agent of one Node: registers it and keeps its node lease renewed until
    `die()` (which releases the lease, as an expiry would remove it)."""

    def __init__(self, admin: KeelClient, name: str, cluster: str, *, cpu: str = "4",
                 memory: str = "8Gi", duration: int = 3) -> None:  # fmt: skip
        self.admin = admin
        self.name = name
        self.cluster = cluster
        self.capacity = ResourceList(cpu=cpu, memory=memory)
        self.duration = duration
        self.lease: Lease | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> FakeAgent:
        await self.admin.create(
            Node(
                metadata=ObjectMeta(name=self.name),
                spec=NodeSpec(cluster=self.cluster, capacity=self.capacity),
            )
        )
        return await self.start_lease_only()

    async def start_lease_only(self) -> FakeAgent:
        """Take (and keep renewing) the node lease of an existing Node."""
        self.lease = await self.admin.acquire_lease(
            NODE_LEASES, self.name, self.name, self.duration
        )
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.duration / 3)
            assert self.lease is not None
            self.lease = await self.admin.renew_lease(self.lease)

    async def die(self) -> None:
        await self.stop_renewing()
        if self.lease is not None:
            await self.admin.release_lease(self.lease)
            self.lease = None

    async def stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None

    async def run(self, instance: Instance, port: int, *, ready: bool = True) -> Instance:
        """Report `instance` Running on this node with `port` (status write, as the agent)."""
        condition = Condition(type="Ready", status="True" if ready else "False")
        status = InstanceStatus(
            phase="Running",
            conditions=[condition],
            host_ip="127.0.0.1",
            ports=[PortStatus(name="http", port=port)],
        )
        current = await self.admin.get(
            Instance, instance.metadata.name, namespace=instance.metadata.namespace
        )
        return await self.admin.update_status(msgspec.structs.replace(current, status=status))
