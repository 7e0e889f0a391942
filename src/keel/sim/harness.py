"""`simulate()`: run processes (controller-manager replicas by default; any `ProcessSpec`,
the real platform's included) against the real API server in virtual time under seeded
faults, then check convergence and that no dangerous action was executed twice.

A run is a pure function of its seed and fault mix: the result carries the trace, and the
same arguments give the same trace, so a failing seed replays exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.api.resources import Lease
from keel.client import KeelClient
from keel.runtime.controller import Controller, ControllerRunner
from keel.runtime.manager import LEASE_NAME, LEASE_NAMESPACE, ControllerManager
from keel.sim.cluster import SimCluster
from keel.sim.faults import FaultMix, FaultScheduler, ProcessFault
from keel.sim.loop import SimClock, run_virtual
from keel.sim.network import Mutation
from keel.sim.trace import Trace

__all__ = [
    "Dangerous",
    "Invariants",
    "ProcessEnv",
    "ProcessMain",
    "ProcessSpec",
    "Setup",
    "SimEnv",
    "SimResult",
    "check_fencing",
    "check_once",
    "manager_process",
    "simulate",
]


@dataclass(frozen=True)
class SimEnv:
    """What setup, workload and invariants see: the cluster (`api.objects(...)` reads the
    server's cache), an admin client without faults, the clock."""

    api: SimCluster
    admin: KeelClient
    clock: SimClock
    rng: random.Random
    trace: Trace


@dataclass(frozen=True)
class ProcessEnv:
    """What one incarnation of a process runs with: the real client (its requests cross the
    simulated network), the virtual clock (its sleeps stop while the process is paused)."""

    identity: str
    incarnation: int
    client: KeelClient
    clock: SimClock
    rng: random.Random


Setup = Callable[[SimEnv], Awaitable[None]]
Invariants = Callable[[SimEnv], Sequence[str]]  # what is not (yet) as desired; empty: converged
Dangerous = Callable[[Mutation], str | None]  # the identity of a must-happen-once action
ProcessMain = Callable[[ProcessEnv], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ProcessSpec:
    """`replicas` processes named `{name}-{i}`, each running `main`, with the API role
    `role` (a token of that role; `node:NAME` for agents). `faults` False keeps process
    faults (crash, pause) away from them."""

    name: str
    main: ProcessMain
    role: str = "controller"
    replicas: int = 1
    faults: bool = True


@dataclass(frozen=True)
class SimResult:
    seed: int
    faults: FaultMix
    trace: tuple[str, ...]
    violations: tuple[str, ...]
    converged_after: float | None  # virtual seconds from the end of faults to convergence
    mutations: tuple[Mutation, ...]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def digest(self) -> str:
        """A short fingerprint of the trace (equal traces, equal digests)."""
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]

    def explain(self, tail: int = 60) -> str:
        """The violations and the end of the trace: what a failing test prints."""
        lines = [f"seed={self.seed} faults={self.faults}", *self.violations]
        if tail > 0:
            lines += ["trace tail:", *self.trace[-tail:]]
        return "\n".join(lines)


# ---------------------------------------------------------------------- property checkers


def check_once(mutations: Sequence[Mutation], dangerous: Dangerous) -> list[str]:
    """Accepted mutations that `dangerous` names alike: an action executed twice."""
    first: dict[str, Mutation] = {}
    found: list[str] = []
    for mutation in mutations:
        if not mutation.accepted:
            continue
        identity = dangerous(mutation)
        if identity is None:
            continue
        earlier = first.get(identity)
        if earlier is None:
            first[identity] = mutation
            continue
        found.append(
            f"dangerous action executed twice: {identity} (by {earlier.caller} at "
            f"{earlier.time:.3f} rv={earlier.revision}, again by {mutation.caller} at "
            f"{mutation.time:.3f} rv={mutation.revision})"
        )
    return found


def check_fencing(mutations: Sequence[Mutation]) -> list[str]:
    """Writes accepted with a fencing token older than a later holder's (the server must
    have rejected them): tokens of accepted fenced writes never go back."""
    newest: dict[str, int] = {}
    found: list[str] = []
    for mutation in mutations:
        if not mutation.accepted:
            continue
        if mutation.kind == "Lease" and mutation.verb == "create":
            lease = f"{mutation.namespace}/{mutation.name}"
            newest[lease] = max(newest.get(lease, 0), mutation.revision)
        if mutation.fencing is None:
            continue
        lease, token = mutation.fencing
        if token < newest.get(lease, 0):
            found.append(
                f"write accepted with stale fencing token {lease}={token} (current "
                f"{newest[lease]}): {mutation.verb} {mutation.kind} "
                f"{mutation.namespace}/{mutation.name} by {mutation.caller} at {mutation.time:.3f}"
            )
    return found


# ---------------------------------------------------------------------- processes


def manager_process(
    controller_factory: Callable[[], Controller],
    *,
    ttl: int = 2,
    shards: int = 0,
    workers: int = 2,
    resync_period: float = 30.0,
) -> ProcessMain:
    """A controller-manager replica: the runtime's runner and elector (or shard leases)
    around a fresh controller instance, as `keel controller-manager` runs them."""

    async def main(env: ProcessEnv) -> None:
        runner = ControllerRunner(
            env.client,
            clock=env.clock,
            rng=random.Random(env.rng.random()),
            log=logging.getLogger(f"keel.sim.{env.identity}"),
            resync_period=resync_period,
        )
        runner.register(controller_factory(), workers=workers)
        manager = ControllerManager(
            env.client,
            runner,
            identity=env.identity,
            ttl=ttl,
            shards=shards,
            clock=env.clock,
            rng=random.Random(env.rng.random()),
        )
        await manager.run()

    return main


class _Killed(asyncio.CancelledError):
    """Raised at every await point of a crashed incarnation: it never reaches the API."""


class _Process:
    """One process slot: its current incarnation's task and its pause gate."""

    def __init__(self, harness: _Harness, spec: ProcessSpec, identity: str) -> None:
        self.harness = harness
        self.spec = spec
        self.identity = identity
        self.incarnation = 0
        self.task: asyncio.Task[None] | None = None
        self.running = asyncio.Event()
        self.running.set()
        self.connected = asyncio.Event()  # cleared while partitioned from the API server
        self.connected.set()
        self.paused_until = 0.0

    def start(self) -> None:
        self.incarnation += 1
        incarnation = self.incarnation
        harness = self.harness

        async def gate() -> None:
            if incarnation != self.incarnation:
                raise _Killed()
            if not self.running.is_set():
                await self.running.wait()
                if incarnation != self.incarnation:
                    raise _Killed()

        caller = f"{self.identity}#{incarnation}"
        env = ProcessEnv(
            identity=self.identity,
            incarnation=incarnation,
            client=harness.api.client(
                caller,
                role=self.spec.role,
                gate=gate,
                stall=self._stalled(incarnation),
                cut_off=lambda: not self.connected.is_set(),
                reachable=self.connected.wait,
            ),
            clock=SimClock(gate),
            rng=random.Random(f"{harness.seed}:{caller}"),
        )
        harness.trace.record(harness.now(), "harness", f"start {caller}")
        self.task = asyncio.get_running_loop().create_task(
            self._run(self.spec.main(env), caller), name=caller
        )

    async def _run(self, main: Coroutine[Any, Any, None], caller: str) -> None:
        try:
            await main
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.harness.trace.record(
                self.harness.now(), "harness", f"{caller} died: {type(exc).__name__}: {exc}"
            )
            self.harness.process_errors.append(f"{caller}: {type(exc).__name__}: {exc}")

    def _stalled(self, incarnation: int) -> Callable[[float], None]:
        def stall(seconds: float) -> None:
            if incarnation == self.incarnation and self.running.is_set():
                self.harness.stats["stall"] += 1
                self.pause(seconds)

        return stall

    def kill(self) -> None:
        """SIGKILL: no cleanup reaches the API (the incarnation's gate now raises)."""
        self.incarnation += 1
        self.running.set()
        if self.task is not None:
            self.task.cancel()
        self.task = None

    def pause(self, duration: float) -> None:
        """SIGSTOP for `duration` virtual seconds, then SIGCONT."""
        self.running.clear()
        self.paused_until = self.harness.now() + duration
        asyncio.get_running_loop().call_later(duration, self._resume, self.incarnation)

    def partition(self, duration: float) -> None:
        """Cut the process off from the API server for `duration` virtual seconds."""
        self.connected.clear()
        asyncio.get_running_loop().call_later(duration, self.heal)

    def heal(self) -> None:
        if not self.connected.is_set():
            self.harness.trace.record(self.harness.now(), "harness", f"heal {self.identity}")
            self.connected.set()

    def _resume(self, incarnation: int) -> None:
        if incarnation == self.incarnation and not self.running.is_set():
            self.harness.trace.record(
                self.harness.now(), "harness", f"resume {self.identity}#{incarnation}"
            )
            self.running.set()


class _Harness:
    def __init__(
        self,
        seed: int,
        faults: FaultMix,
        specs: Sequence[ProcessSpec],
        *,
        nodes: Sequence[str],
    ) -> None:
        self.seed = seed
        self.trace = Trace()
        self.scheduler = FaultScheduler(seed, faults, self.trace)
        self.api = SimCluster(seed=seed, trace=self.trace, faults=self.scheduler, nodes=nodes)
        self.processes = [
            _Process(self, spec, f"{spec.name}-{index}")
            for spec in specs
            for index in range(spec.replicas)
        ]
        self.process_errors: list[str] = []
        self.stats: dict[str, int] = {
            "crash": 0,
            "pause": 0,
            "partition": 0,
            "expire-lease": 0,
            "stall": 0,
        }

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def chaos(self, lease: tuple[str, str]) -> None:
        while True:
            fault = self.scheduler.next_process_fault()
            if fault is None:
                return
            await asyncio.sleep(fault.after)
            if not self.scheduler.active:
                return
            await self.apply(fault, lease)

    async def apply(self, fault: ProcessFault, lease: tuple[str, str]) -> None:
        now = self.now()
        self.stats[fault.action] += 1
        if fault.action == "expire-lease":
            leases = self.api.objects(Lease)
            if leases:
                victim = leases[int(fault.pick * len(leases))]
                await self.api.expire_lease(victim.metadata.namespace, victim.metadata.name)
            return
        candidates = [
            p for p in self.processes if p.spec.faults and p.task is not None and p.running.is_set()
        ]
        if not candidates:
            return
        process = candidates[int(fault.pick * len(candidates))]
        if fault.action == "partition":
            self.trace.record(
                now, "fault", f"partition {process.identity} from the API {fault.duration:.3f}s"
            )
            process.partition(fault.duration)
            return
        if fault.action == "pause":
            # Mostly the leader: a paused leader is the interesting case for fencing.
            leader = self._holder(lease)
            if leader is not None and fault.pick < 0.8 and leader in candidates:
                process = leader
            self.trace.record(
                now,
                "fault",
                f"pause {process.identity}#{process.incarnation} {fault.duration:.3f}s",
            )
            process.pause(fault.duration)
            return
        self.trace.record(now, "fault", f"crash {process.identity}#{process.incarnation}")
        process.kill()
        asyncio.get_running_loop().call_later(0.5, process.start)

    def _holder(self, lease: tuple[str, str]) -> _Process | None:
        for obj in self.api.objects(Lease, lease[0]):
            if obj.metadata.name == lease[1]:
                for process in self.processes:
                    if process.identity == obj.spec.holder_identity:
                        return process
        return None


def simulate(
    seed: int,
    controller_factory: Callable[[], Controller] | None,
    setup: Setup,
    invariants: Invariants,
    *,
    faults: FaultMix | None = None,
    duration: float = 30.0,
    settle: float = 30.0,
    hold: float = 2.0,
    replicas: int = 2,
    dangerous: Dangerous | None = None,
    workload: Setup | None = None,
    process: ProcessMain | None = None,
    processes: Sequence[ProcessSpec] | None = None,
    nodes: Sequence[str] = (),
    checks: Sequence[Invariants] = (),
    ttl: int = 2,
    lease: tuple[str, str] = (LEASE_NAMESPACE, LEASE_NAME),
) -> SimResult:
    """Run processes for `duration` virtual seconds of faults, then up to `settle` seconds
    without faults, and check the properties.

    By default the processes are `replicas` controller-managers running
    `controller_factory` (`manager_process(controller_factory, ttl=ttl)`, or `process`);
    `processes` replaces them with any mix (the real platform: see `keel.sim.platform`),
    `nodes` names the nodes that get `node:NAME` tokens. `setup` creates the initial
    objects; `workload` (optional) runs alongside (user changes over time). `invariants`
    lists what is not yet as desired; the run converges when it is empty and stays so for
    `hold` seconds. `dangerous` names the actions that must never be executed twice;
    `checks` are safety properties checked at the end (each returns its violations).
    """
    if processes is None:
        if process is None:
            if controller_factory is None:
                raise ValueError("simulate: give controller_factory, process or processes")
            process = manager_process(controller_factory, ttl=ttl)
        processes = [ProcessSpec("cm", process, replicas=replicas)]
    mix = faults or FaultMix()
    harness = _Harness(seed, mix, processes, nodes=nodes)

    async def main() -> SimResult:
        api, trace = harness.api, harness.trace
        await api.start()
        env = SimEnv(
            api=api,
            admin=api.client("admin", faulty=False),
            clock=SimClock(),
            rng=random.Random(f"{seed}:setup"),
            trace=trace,
        )
        await setup(env)
        loop = asyncio.get_running_loop()
        background: list[asyncio.Task[None]] = []
        if workload is not None:
            background.append(loop.create_task(_quietly(workload(env)), name="workload"))
        for process in harness.processes:
            process.start()
        background.append(loop.create_task(harness.chaos(lease), name="chaos"))
        await asyncio.sleep(duration)
        harness.scheduler.active = False
        trace.record(loop.time(), "harness", "faults stop")
        healed_at = loop.time()
        for process in harness.processes:  # every crashed process is back, none paused or cut off
            if process.task is None:
                process.start()
            process.running.set()
            process.heal()
        converged_after: float | None = None
        missing: Sequence[str] = ()
        while loop.time() - healed_at <= settle:
            missing = invariants(env)
            if not missing:
                await asyncio.sleep(hold)
                missing = invariants(env)
                if not missing:
                    converged_after = round(max(0.0, loop.time() - hold - healed_at), 6)
                    break
            await asyncio.sleep(0.25)
        trace.record(loop.time(), "harness", f"converged_after={converged_after}")
        for process in harness.processes:
            process.kill()
        for task in background:
            task.cancel()
        await asyncio.sleep(0)
        violations: list[str] = []
        if converged_after is None:
            violations.append(
                f"not converged within {settle}s after faults stopped: " + "; ".join(missing)
            )
        mutations = tuple(api.mutations)
        if dangerous is not None:
            violations += check_once(mutations, dangerous)
        violations += check_fencing(mutations)
        for check in checks:
            violations += check(env)
        violations += [f"process error: {error}" for error in harness.process_errors]
        stats = dict(harness.stats)
        stats["writes"] = sum(1 for m in mutations if m.accepted)
        stats["rejected-fencing"] = sum(1 for m in mutations if m.outcome == "FencingTokenRejected")
        await env.admin.close()
        return SimResult(
            seed=seed,
            faults=mix,
            trace=tuple(trace.lines),
            violations=tuple(violations),
            converged_after=converged_after,
            mutations=mutations,
            stats=stats,
        )

    return run_virtual(main)


async def _quietly(work: Awaitable[None]) -> None:
    await work
