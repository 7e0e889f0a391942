"""The real node agent in virtual time: the real API server app on an in-memory store, the real
client through `AppTransport`, and simulated processes (`SimProcessDriver`). Instances bound to
the node run and are reported Running and Ready, stop when deleted, survive an agent crash, and
an exclusive instance stops `fence_margin` seconds before the node lease ends when the agent
cannot renew it, and a failing liveness check restarts a process where readiness never does.
Minutes of virtual time pass in a fraction of a real second, and replay exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from support import wait_for_async

from keel.agent import Agent, AgentConfig, MemoryState
from keel.api.auth import TokenFile
from keel.api.resources import (
    HealthCheck,
    Instance,
    InstanceSpec,
    Lease,
    LivenessCheck,
    ObjectMeta,
    PortSpec,
)
from keel.api.server import ApiServer
from keel.client import (
    HttpRequest,
    HttpResponse,
    KeelClient,
    NotFound,
    ResponseStream,
    TransportError,
)
from keel.sim.loop import SimClock, run_virtual
from keel.sim.processes import SimMachineRoom, Transition
from keel.sim.transport import AppTransport
from keel.store import MemoryStore

T = TypeVar("T")
Body = Callable[["Sim"], Coroutine[Any, Any, None]]

SERVER = "http://keel.sim"
ADMIN_TOKEN = "admin-token"
NODE_TOKEN = "node-n1-token"
TOKENS = f"{ADMIN_TOKEN},admin,admin\n{NODE_TOKEN},agent-n1,node:n1\n"


class Partition:
    """The agent's network: `AppTransport` until `cut`, then every request fails before it
    reaches the server. Records the (virtual) time of each successful lease renewal."""

    def __init__(self, inner: AppTransport) -> None:
        self.inner = inner
        self.cut = False
        self.renewals: list[float] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        if self.cut:
            raise TransportError("simulated partition", sent=False)
        response = await self.inner.send(request)
        if request.url.endswith("/renew") and response.status == 200:
            self.renewals.append(asyncio.get_running_loop().time())
        return response

    @asynccontextmanager
    async def stream(
        self, request: HttpRequest, *, idle_timeout: float | None
    ) -> AsyncIterator[ResponseStream]:
        if self.cut:
            raise TransportError("simulated partition", sent=False)
        async with self.inner.stream(request, idle_timeout=idle_timeout) as stream:
            yield stream

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Sim:
    """Node n1 and the control plane, in virtual time."""

    clock: SimClock
    admin: KeelClient
    network: Partition
    room: SimMachineRoom
    config: AgentConfig
    state: MemoryState = field(default_factory=MemoryState)  # n1's disk, across agents
    incarnations: int = 0

    def agent(self) -> Agent:
        """A new agent process on n1: its own client, the machine's processes and state."""
        self.incarnations += 1
        client = KeelClient(
            SERVER,
            token=NODE_TOKEN,
            transport=self.network,
            clock=self.clock,
            rng=random.Random(f"client-{self.incarnations}"),
        )
        return Agent(
            client,
            self.config,
            clock=self.clock,
            driver=self.room.driver("n1"),
            state=self.state,
            rng=random.Random(f"agent-{self.incarnations}"),
        )

    async def wait_for(
        self, what: str, check: Callable[[], Awaitable[T | None]], timeout: float = 60.0
    ) -> T:
        """`wait_for_async`, polling every virtual 0.1 s (each poll is a request)."""
        found = await wait_for_async(what, check, timeout=timeout, interval=0.1)
        return cast(T, found)  # truthy, so not None

    async def instance(self, name: str) -> Instance | None:
        try:
            return await self.admin.get(Instance, name, namespace="default")
        except NotFound:
            return None

    def ready(self, name: str) -> Callable[[], Awaitable[Instance | None]]:
        async def check() -> Instance | None:
            instance = await self.instance(name)
            return instance if is_ready(instance) else None

        return check

    def not_ready(self, name: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            instance = await self.instance(name)
            return instance is not None and not is_ready(instance)

        return check

    def in_phase(self, name: str, phase: str) -> Callable[[], Awaitable[Instance | None]]:
        async def check() -> Instance | None:
            instance = await self.instance(name)
            return instance if instance is not None and instance.status.phase == phase else None

        return check

    def stopped(self, key: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return key not in self.room.running()

        return check

    def started(self, key: str, times: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return key in self.room.running() and len(self.room.copies(key)) == times

        return check

    async def renewed(self) -> bool:
        return bool(self.network.renewals)


@dataclass(frozen=True)
class Run:
    virtual: float  # seconds that passed in the simulation
    real: float  # seconds that took
    history: list[Transition]  # every process start and stop


def simulate(body: Body, **config: Any) -> Run:
    """Run `body` on a virtual-time loop with the API server started. Nothing is random but
    seeded, so a run replays exactly."""
    runs: list[Run] = []

    async def main() -> None:
        clock = SimClock()
        tokens = TokenFile.parse(TOKENS, "<test>")
        server = ApiServer(
            MemoryStore(clock=clock), tokens, clock=clock, rng=random.Random("apiserver")
        )
        await server.start()
        app = AppTransport(server.app)
        sim = Sim(
            clock=clock,
            admin=KeelClient(
                SERVER,
                token=ADMIN_TOKEN,
                transport=app,
                clock=clock,
                rng=random.Random("admin"),
            ),
            network=Partition(app),
            room=SimMachineRoom(clock),
            # The state dir is never touched: the agent keeps its state in `Sim.state`.
            config=AgentConfig(node="n1", cluster="c1", state_dir=Path("/nonexistent"), **config),
        )
        began = clock.now()
        try:
            await body(sim)
        finally:
            await server.stop()
        runs.append(Run(clock.now() - began, 0.0, sim.room.history()))

    began = time.monotonic()
    run_virtual(main)
    return replace(runs[0], real=time.monotonic() - began)


def bound(name: str, **spec: Any) -> Instance:
    """An Instance already bound to n1, as the scheduler leaves it."""
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=InstanceSpec(command=["serve"], node_name="n1", **spec),
    )


def is_ready(instance: Instance | None) -> bool:
    return instance is not None and any(
        c.type == "Ready" and c.status == "True" for c in instance.status.conditions
    )


@asynccontextmanager
async def running(agent: Agent, *, crash: bool = False) -> AsyncIterator[Agent]:
    """Run `agent` during the block; then stop it as SIGTERM would, or with `crash` end it
    at once (its processes run on, as after a SIGKILL of the agent)."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        if crash:
            task.cancel()
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


# ----------------------------------------------------------------------------- tests


def test_bound_instance_runs_is_reported_ready_and_stops_when_deleted() -> None:
    async def body(sim: Sim) -> None:
        check = HealthCheck(type="http", path="/healthz", period_seconds=2)
        await sim.admin.create(bound("web", ports=[PortSpec(name="http")], health_check=check))
        async with running(sim.agent()):
            web = await sim.wait_for("web Running and Ready", sim.ready("web"))
            assert web.status.phase == "Running"
            assert web.status.host_ip == "127.0.0.1"
            assert [(p.name, p.port) for p in web.status.ports] == [("http", 30000)]
            assert sim.room.running() == {"default/web": ["n1"]}
            (process,) = sim.room.copies("default/web")

            # Failing health checks turn Ready off; the process keeps running.
            sim.room.set_healthy("default/web", False)
            await sim.wait_for("web not Ready", sim.not_ready("web"))
            assert sim.room.running() == {"default/web": ["n1"]}

            deleted_at = sim.clock.now()
            await sim.admin.delete(Instance, "web", namespace="default")
            await sim.wait_for("web stopped", sim.stopped("default/web"))
            assert [sig for _, sig in process.signals] == ["TERM"]
            assert process.ended_at is not None
            assert process.ended_at - deleted_at < 1.0  # a reconcile tick, then the TERM delay

    simulate(body)


def self_fencing(lease_duration: int = 10, fence_margin: float = 2.0) -> Body:
    """Partition the agent from the API server between two renewals of its node lease: the
    exclusive instance stops `fence_margin` seconds before the lease ends, a plain one runs
    on, and once the partition heals the exclusive instance runs again (never twice at once)."""

    async def body(sim: Sim) -> None:
        await sim.admin.create(bound("solo", exclusive=True, termination_grace_period_seconds=30))
        await sim.admin.create(bound("plain"))
        async with running(sim.agent()):
            await sim.wait_for("solo Ready", sim.ready("solo"))
            await sim.wait_for("plain Ready", sim.ready("plain"))
            await sim.wait_for("a lease renewal", sim.renewed)
            await sim.clock.sleep(1.0)
            sim.network.cut = True
            lease_end = sim.network.renewals[-1] + lease_duration
            (solo,) = sim.room.copies("default/solo")

            await sim.wait_for("solo stopped", sim.stopped("default/solo"))
            (term_at, sig), *_ = solo.signals
            assert sig == "TERM"
            # Self-fencing starts fence_margin before the end (at the next reconcile tick) ...
            assert lease_end - fence_margin <= term_at <= lease_end - fence_margin + 0.25
            # ... and the process is gone before the lease is.
            assert solo.ended_at is not None and solo.ended_at < lease_end

            # The lease does end then: the server forgets it, so the control plane may
            # place the instance elsewhere, and the old copy is already gone.
            await sim.clock.sleep(lease_end - sim.clock.now() + 0.5)
            assert await _lease(sim) is None
            # A plain instance keeps running through the partition (static stability).
            assert sim.room.running() == {"default/plain": ["n1"]}

            # Healed: a new lease, fresh bindings, and the exclusive instance runs again.
            sim.network.cut = False
            await sim.wait_for("solo started again", sim.started("default/solo", 2))
            assert sim.room.running() == {"default/plain": ["n1"], "default/solo": ["n1"]}
            assert sim.room.overlaps() == []

    return body


async def _lease(sim: Sim) -> Lease | None:
    try:
        return await sim.admin.get(Lease, "n1", namespace="keel-node-lease")
    except NotFound:
        return None


def test_exclusive_instance_stops_fence_margin_before_the_lease_it_cannot_renew_ends() -> None:
    run = simulate(self_fencing(10, 2.0), lease_duration=10, fence_margin=2.0)
    assert run.virtual > 15.0  # the lease ran out, and was acquired again after the partition
    assert run.real < run.virtual  # without waiting for it


def test_fence_margin_is_honoured_for_other_lease_settings() -> None:
    simulate(self_fencing(6, 3.0), lease_duration=6, fence_margin=3.0)


def test_a_simulation_replays_exactly() -> None:
    first = simulate(self_fencing(), lease_duration=10, fence_margin=2.0)
    second = simulate(self_fencing(), lease_duration=10, fence_margin=2.0)
    assert first.history == second.history
    assert first.virtual == second.virtual


def test_a_restarted_agent_adopts_the_running_process() -> None:
    async def body(sim: Sim) -> None:
        await sim.admin.create(bound("web"))
        async with running(sim.agent(), crash=True):
            await sim.wait_for("web Ready", sim.ready("web"))
        (process,) = sim.room.copies("default/web")
        await sim.clock.sleep(3.0)  # no agent; the process runs on
        assert sim.room.running() == {"default/web": ["n1"]}

        async with running(sim.agent()):
            await sim.clock.sleep(5.0)
            assert sim.room.copies("default/web") == [process]  # adopted, not started again
            assert is_ready(await sim.instance("web"))
        # This agent was stopped cleanly: it stopped its workloads.
        assert sim.room.running() == {}
        assert [sig for _, sig in process.signals] == ["TERM"]

    simulate(body)


def test_a_failing_liveness_check_restarts_the_process_and_a_failing_readiness_check_does_not() -> (
    None
):
    live = LivenessCheck(type="http", port="http", period_seconds=2, failure_threshold=3,
                         initial_delay_seconds=5)  # fmt: skip
    spec = {
        "ports": [PortSpec(name="http")],
        "health_check": HealthCheck(type="http", period_seconds=1),
        "liveness_check": live,
        "termination_grace_period_seconds": 4,
    }

    async def body(sim: Sim) -> None:
        await sim.admin.create(bound("web", **spec))
        await sim.admin.create(bound("once", restart_policy="Never", **spec))
        async with running(sim.agent()):
            await sim.wait_for("web Ready", sim.ready("web"))
            await sim.wait_for("once Ready", sim.ready("once"))
            (first,) = sim.room.copies("default/web")

            # Readiness failing for a long while: not Ready, and never restarted.
            sim.room.set_healthy("default/web", False)
            await sim.wait_for("web not Ready", sim.not_ready("web"))
            await sim.clock.sleep(30.0)
            assert sim.room.copies("default/web") == [first] and not first.signals
            sim.room.set_healthy("default/web", True)
            await sim.wait_for("web Ready again", sim.ready("web"))

            # Liveness failing: SIGTERM after failureThreshold periods, then a new process.
            failing_at = sim.clock.now()
            sim.room.set_live("default/web", False)
            await sim.wait_for("web restarted", sim.started("default/web", 2))
            sim.room.set_live("default/web", True)
            restarted = sim.room.copies("default/web")[1]
            # Three failed checks (2 s apart), the exit on SIGTERM, the 1 s backoff, a tick.
            took = restarted.started_at - failing_at
            assert 2 * 2 + 1.0 <= took <= 2 * 3 + sim.room.term_delay + 1.0 + 0.5
            assert [sig for _, sig in first.signals] == ["TERM"]
            await sim.wait_for("web Ready after the restart", sim.ready("web"))
            events = await sim.admin.events("default", "web")
            killing = [e["message"] for e in events if e["reason"] == "Unhealthy"]
            assert "Killing: liveness check failed: scripted: not live" in killing

            async def restart_counted() -> bool:
                usage = await sim.admin.get_telemetry("instanceusages", "web", namespace="default")
                return bool(usage["restarts"] == 1)

            await sim.wait_for("the restart in telemetry", restart_counted)

            # With restartPolicy Never a liveness kill leaves the instance Failed.
            sim.room.set_live("default/once", False)
            failed = await sim.wait_for("once Failed", sim.in_phase("once", "Failed"))
            assert "liveness check failed" in failed.status.message
            assert len(sim.room.copies("default/once")) == 1

    simulate(body)
