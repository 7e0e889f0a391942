"""The real platform under simulation: controller-manager replicas running Keel's own
controllers (deployment, node-lifecycle, endpoints, namespace, garbage collection), scheduler
replicas, and one real `Agent` per node whose processes live in a `SimMachineRoom`, all on the
real API server in memory and in virtual time, under the seeded faults of `simulate()`.

`simulate_platform()` checks what the simulation can see of DESIGN.md section 6: no dangerous
action twice (a second binding), no write accepted with a stale fencing token, at most one copy
of an exclusive instance running at any instant, and convergence after the faults heal: every
Deployment's replicas bound, Running and Ready, each with exactly one process on its node.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from keel.agent import Agent, AgentConfig, MemoryState
from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Node,
    ObjectMeta,
    ResourceList,
    TemplateMeta,
)
from keel.controllers import CONTROLLERS, build
from keel.runtime.controller import ControllerRunner
from keel.runtime.manager import ControllerManager
from keel.scheduler.service import new_scheduler
from keel.sim.faults import FaultMix
from keel.sim.harness import (
    Invariants,
    ProcessEnv,
    ProcessMain,
    ProcessSpec,
    Setup,
    SimEnv,
    SimResult,
)
from keel.sim.harness import simulate as _simulate
from keel.sim.network import Mutation
from keel.sim.processes import SimMachineRoom

__all__ = ["PlatformShape", "bound_twice", "simulate_platform"]


@dataclass(frozen=True)
class PlatformShape:
    """How big the simulated platform is, and its timing settings."""

    clusters: int = 2
    nodes_per_cluster: int = 2
    managers: int = 2
    schedulers: int = 2
    deployments: int = 3
    replicas: int = 2
    exclusive: bool = True
    control_ttl: int = 2  # controller-manager and scheduler leases
    node_lease: int = 10
    fence_margin: float = 2.0

    def nodes(self) -> list[tuple[str, str]]:
        """(node, cluster) pairs: `c{C}-n{N}`."""
        return [
            (f"c{c}-n{n}", f"c{c}")
            for c in range(self.clusters)
            for n in range(self.nodes_per_cluster)
        ]


def _controller_manager(ttl: int) -> ProcessMain:
    """`keel controller-manager` with every platform controller."""

    async def main(env: ProcessEnv) -> None:
        runner = ControllerRunner(
            env.client,
            clock=env.clock,
            rng=random.Random(env.rng.random()),
            log=logging.getLogger(f"keel.sim.{env.identity}"),
        )
        for controller in build(list(CONTROLLERS), runner.cache):
            runner.register(controller)
        manager = ControllerManager(
            env.client,
            runner,
            identity=env.identity,
            ttl=ttl,
            clock=env.clock,
            rng=random.Random(env.rng.random()),
        )
        await manager.run()

    return main


def _scheduler(ttl: int) -> ProcessMain:
    """`keel scheduler`."""

    async def main(env: ProcessEnv) -> None:
        manager = new_scheduler(
            env.client,
            identity=env.identity,
            clock=env.clock,
            ttl=ttl,
            rng=random.Random(env.rng.random()),
        )
        await manager.run()

    return main


def _agent(
    node: str, cluster: str, room: SimMachineRoom, state: MemoryState, shape: PlatformShape
) -> ProcessMain:
    """`keel agent` on `node`: its processes are the machine room's, its state survives a
    restart of the agent (as the state dir does), and it never exits on its own."""

    async def main(env: ProcessEnv) -> None:
        config = AgentConfig(
            node=node,
            cluster=cluster,
            state_dir=Path("/nonexistent/keel-sim") / node,
            capacity=ResourceList(cpu="4", memory="8Gi"),
            lease_duration=shape.node_lease,
            fence_margin=shape.fence_margin,
            leave_running=True,
        )
        agent = Agent(
            env.client,
            config,
            clock=env.clock,
            driver=room.driver(node),
            state=state,
            rng=random.Random(env.rng.random()),
        )
        await agent.run(asyncio.Event())

    return main


def _deployment(name: str, shape: PlatformShape) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=DeploymentSpec(
            replicas=shape.replicas,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": name}),
                spec=InstanceSpec(
                    command=["serve"],
                    exclusive=shape.exclusive,
                    resources=ResourceList(cpu="100m", memory="64Mi"),
                ),
            ),
        ),
    )


def _user_changes(shape: PlatformShape, until: float) -> Setup:
    """A user at work while faults strike: every few seconds a Deployment is scaled (1 to
    replicas + 1) or gets a new template (a rolling update), until `until` seconds in."""

    async def workload(env: SimEnv) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + until
        version = 0
        while loop.time() < end:
            await asyncio.sleep(env.rng.uniform(1.0, 4.0))
            name = f"app-{env.rng.randrange(shape.deployments)}"
            if env.rng.random() < 0.5:
                replicas = env.rng.randint(1, shape.replicas + 1)
                change: dict[str, object] = {"spec": {"replicas": replicas}}
                what = f"scale {name} to {replicas}"
            else:
                version += 1
                env_vars = {"VERSION": str(version)}
                change = {"spec": {"template": {"spec": {"env": env_vars}}}}
                what = f"roll {name} to version {version}"
            env.trace.record(loop.time(), "user", what)
            await env.admin.patch(Deployment, name, change, namespace="default")

    return workload


def bound_twice(mutation: Mutation) -> str | None:
    """Binding an Instance is dangerous: it must happen once per Instance (uid)."""
    if mutation.verb != "bind":
        return None
    uid = mutation.obj.metadata.uid if mutation.obj is not None else mutation.uid
    if not uid:
        return None
    return f"bind Instance {mutation.namespace}/{mutation.name} uid={uid}"


def _converged(room: SimMachineRoom) -> Invariants:
    def missing(env: SimEnv) -> list[str]:
        found: list[str] = []
        ready_nodes = {
            n.metadata.name
            for n in env.api.objects(Node)
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
        }
        instances = env.api.objects(Instance, "default")
        for deployment in env.api.objects(Deployment, "default"):
            name = deployment.metadata.name
            owned = [
                i
                for i in instances
                if any(r.uid == deployment.metadata.uid for r in i.metadata.owner_references)
                and i.metadata.deletion_timestamp is None
            ]
            serving = [
                i
                for i in owned
                if i.spec.node_name in ready_nodes
                and i.status.phase == "Running"
                and any(c.type == "Ready" and c.status == "True" for c in i.status.conditions)
            ]
            if len(serving) != deployment.spec.replicas or len(owned) != len(serving):
                found.append(
                    f"{name}: {len(serving)}/{deployment.spec.replicas} serving of "
                    f"{len(owned)} instances"
                )
        running = room.running()
        for instance in instances:
            key = f"{instance.metadata.namespace}/{instance.metadata.name}"
            where = running.get(key, [])
            if instance.spec.node_name and where != [instance.spec.node_name]:
                found.append(f"{key}: processes on {where}, bound to {instance.spec.node_name}")
        live = {f"{i.metadata.namespace}/{i.metadata.name}" for i in instances}
        for key, nodes in sorted(running.items()):
            if key not in live:
                found.append(f"{key}: still running on {nodes} after its Instance went")
        return found

    return missing


def _one_copy(room: SimMachineRoom) -> Invariants:
    def violations(env: SimEnv) -> list[str]:
        return [
            f"exclusive instance {o.instance} ran twice at once from {o.start:.3f} to "
            f"{o.end if o.end is None else round(o.end, 3)} on {', '.join(o.nodes)}"
            for o in room.overlaps()
        ]

    return violations


def simulate_platform(
    seed: int,
    *,
    shape: PlatformShape | None = None,
    faults: FaultMix | None = None,
    duration: float = 30.0,
    settle: float = 60.0,
    hold: float = 3.0,
    changes: bool = True,
) -> SimResult:
    """Run the whole platform for `duration` virtual seconds of faults (and, with
    `changes`, of user changes: scaling and rolling updates), then up to `settle` seconds
    without, and check the guarantees (see the module docstring)."""
    shape = shape or PlatformShape()
    room = SimMachineRoom()
    nodes = shape.nodes()
    states = {node: MemoryState() for node, _ in nodes}
    processes: list[ProcessSpec] = [
        ProcessSpec("cm", _controller_manager(shape.control_ttl), replicas=shape.managers),
        ProcessSpec(
            "scheduler",
            _scheduler(shape.control_ttl),
            role="scheduler",
            replicas=shape.schedulers,
        ),
        *(
            ProcessSpec(f"agent-{node}", _agent(node, cluster, room, states[node], shape),
                        role=f"node:{node}")
            for node, cluster in nodes
        ),
    ]  # fmt: skip

    async def setup(env: SimEnv) -> None:
        for index in range(shape.deployments):
            await env.admin.create(_deployment(f"app-{index}", shape))

    return _simulate(
        seed,
        None,
        setup,
        _converged(room),
        processes=processes,
        nodes=[node for node, _ in nodes],
        faults=faults,
        duration=duration,
        settle=settle,
        hold=hold,
        dangerous=bound_twice,
        checks=[_one_copy(room)],
        workload=_user_changes(shape, duration - 5.0) if changes else None,
    )
