"""The nemesis: a seeded schedule of faults (pure), and the shell that applies them.

`schedule(seed, faults, duration)` decides, without I/O, which fault starts when, for how long
and against which role; the same seed gives the same schedule (`keel verify --seed`). The
`Nemesis` shell resolves each fault against the running cluster at its start (the etcd leader
or the controller-manager's lease holder *now*), applies it, and records its start and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from keel.api.resources import Instance
from keel.verify.cluster import VerifyCluster
from keel.verify.components import Component
from keel.verify.workloads import EXCLUSIVE, NAMESPACE, Recorder

__all__ = ["FAULTS", "Fault", "Nemesis", "Network", "schedule"]

# Each fault kind, and the stores it applies to (sqlite runs on one host: no partitions).
FAULTS: dict[str, tuple[str, ...]] = {
    "partition-one": ("etcd",),
    "partition-majority": ("etcd",),
    "partition-leader": ("etcd",),
    "partition-agent": ("etcd",),
    "kill": ("etcd", "sqlite"),
    "pause": ("etcd", "sqlite"),
    "slow-disk": ("etcd", "sqlite"),
}
# Families a user names on the command line (`--faults partition,kill`).
FAMILIES: dict[str, tuple[str, ...]] = {
    "partition": ("partition-one", "partition-majority", "partition-leader", "partition-agent"),
    "kill": ("kill",),
    "pause": ("pause",),
    "slow-disk": ("slow-disk",),
}
# "exclusive-agent": the agent running the exclusive instance, whose fence is at stake.
KILL_TARGETS = (
    "etcd",
    "apiserver",
    "controller-manager-leader",
    "scheduler",
    "agent",
    "exclusive-agent",
)
PAUSE_TARGETS = (
    "apiserver",
    "controller-manager-leader",
    "scheduler",
    "agent",
    "exclusive-agent",
    "etcd",
)


@dataclass(frozen=True)
class Fault:
    """One planned fault: `kind` against `target` (a role, resolved when it starts), from
    `at` seconds after the workloads start, for `duration` seconds."""

    at: float
    kind: str
    target: str
    duration: float
    pick: int  # which of the matching components or hosts (modulo their count)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind,
            "target": self.target,
            "duration": self.duration,
            "pick": self.pick,
        }


def expand(names: Sequence[str], store: str) -> list[str]:
    """Fault kinds from names or families, keeping those that apply to `store`."""
    kinds: list[str] = []
    for name in names:
        for kind in FAMILIES.get(name, (name,)):
            if kind not in FAULTS:
                known = ", ".join([*FAMILIES, *FAULTS])
                raise ValueError(f"--faults: unknown fault {name!r} (expected one of {known})")
            if store in FAULTS[kind] and kind not in kinds:
                kinds.append(kind)
    return kinds


def schedule(
    seed: int,
    kinds: Sequence[str],
    duration: float,
    *,
    pause_seconds: float = 14.0,
    fault_seconds: tuple[float, float] = (4.0, 8.0),
    quiet_seconds: tuple[float, float] = (2.0, 4.0),
    agent_cut_seconds: tuple[float, float] = (15.0, 20.0),
    ordered: bool = False,
    store: str = "etcd",
) -> list[Fault]:
    """Faults one after another, each followed by a quiet spell, until `duration` is used.

    `ordered` takes the kinds round-robin in the given order (the smoke run: one of each);
    otherwise each is drawn at random. Pauses last `pause_seconds`, longer than every lease
    TTL of a verify cluster, which is the point of them."""
    rng = random.Random(seed)
    # The embedded store lives inside the API server: there is no etcd member to hit.
    kill_targets = [t for t in KILL_TARGETS if store == "etcd" or t != "etcd"]
    pause_targets = [t for t in PAUSE_TARGETS if store == "etcd" or t != "etcd"]
    faults: list[Fault] = []
    t = rng.uniform(*quiet_seconds)
    index = 0
    while kinds:
        kind = kinds[index % len(kinds)] if ordered else rng.choice(list(kinds))
        index += 1
        if kind == "pause":
            length = pause_seconds
        elif kind == "partition-agent":
            # Long enough for the node's lease to lapse and its work to be replaced elsewhere.
            length = rng.uniform(*agent_cut_seconds)
        else:
            length = rng.uniform(*fault_seconds)
        if t + length > duration:
            break
        target = ""
        if kind == "kill":
            target = rng.choice(kill_targets)
        elif kind == "pause":
            target = rng.choice(pause_targets)
        elif kind == "slow-disk":
            target = "store"
        faults.append(Fault(round(t, 3), kind, target, round(length, 3), rng.randrange(1 << 16)))
        t += length + rng.uniform(*quiet_seconds)
    return faults


class Network(Protocol):
    """What the nemesis needs of the host fabric."""

    def partition(
        self, groups: list[list[str]], *, isolate_from_runner: Sequence[str] = ()
    ) -> None: ...

    def heal(self) -> None: ...

    def slow_disk(self, pid: int, delay_ms: int) -> Any: ...


class Nemesis:
    """Applies a schedule to a running cluster, recording each fault's start and end."""

    def __init__(
        self,
        cluster: VerifyCluster,
        network: Network | None,
        recorder: Recorder,
        *,
        slow_disk_ms: int = 300,
    ) -> None:
        self.cluster = cluster
        self.network = network
        self.recorder = recorder
        self.slow_disk_ms = slow_disk_ms
        self.active: list[Any] = []

    async def run(self, faults: Sequence[Fault], started: float) -> None:
        loop = asyncio.get_running_loop()
        for fault in faults:
            delay = started + fault.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.apply(fault)

    async def apply(self, fault: Fault) -> None:
        start = self.recorder.record("nemesis", type="start", fault=fault.kind, target=fault.target)
        try:
            detail, undo = await self._begin(fault)
        except Exception as exc:
            self.recorder.record(
                "nemesis", type="end", fault=fault.kind, error=f"could not start: {exc!r}"
            )
            return
        start["detail"] = detail
        self.recorder.record("nemesis", type="info", fault=fault.kind, detail=detail)
        await asyncio.sleep(fault.duration)
        try:
            await undo()
        finally:
            self.recorder.record("nemesis", type="end", fault=fault.kind, detail=detail)

    async def heal_all(self) -> None:
        """End every fault still in force and bring every component back (the final heal)."""
        if self.network is not None:
            self.network.heal()
        for undo in list(self.active):
            with contextlib.suppress(Exception):
                await undo()
        self.active.clear()
        for component in self.cluster.components.values():
            component.resume()
            if not component.running:
                await component.start()
        self.recorder.record("nemesis", type="heal")

    # ------------------------------------------------------------------ one fault

    async def _begin(self, fault: Fault) -> tuple[str, Any]:
        cluster = self.cluster
        hosts = [h.name for h in cluster.hosts]
        if fault.kind.startswith("partition"):
            assert self.network is not None, "partitions need network-namespace hosts"
            network = self.network
            runner_cut: list[str] = []
            if fault.kind == "partition-one":
                alone = hosts[fault.pick % len(hosts)]
                groups = [[alone], [h for h in hosts if h != alone]]
                runner_cut = [alone]
            elif fault.kind == "partition-leader":
                leader = await cluster.etcd_leader()
                member = cluster.components.get(f"etcd/{leader}") if leader else None
                alone = member.host if member else hosts[0]
                groups = [[alone], [h for h in hosts if h != alone]]
                runner_cut = [alone]
            elif fault.kind == "partition-majority":
                shuffled = list(hosts)
                random.Random(fault.pick).shuffle(shuffled)
                minority = shuffled[: (len(hosts) - 1) // 2]
                groups = [minority, [h for h in hosts if h not in minority]]
            else:  # partition-agent: an agent's host loses the control plane, not the runner
                agent = await self._agent_to_cut(fault.pick)
                control = {c.host for c in cluster.components.values() if c.role != "agent"}
                control.discard(agent.host)
                groups = [[agent.host], sorted(control)]
            network.partition(groups, isolate_from_runner=runner_cut)

            async def heal() -> None:
                network.heal()

            return _describe_groups(groups, runner_cut), self._track(heal)
        if fault.kind == "kill":
            component = await self._resolve(fault.target, fault.pick)
            pid = component.pid
            await component.kill()

            async def restart() -> None:
                await component.start()

            return f"kill -9 {component.name} (pid {pid})", self._track(restart)
        if fault.kind == "pause":
            component = await self._resolve(fault.target, fault.pick)
            pid = component.pid
            component.pause()

            async def resume() -> None:
                component.resume()

            return f"SIGSTOP {component.name} (pid {pid})", self._track(resume)
        if fault.kind == "slow-disk":
            assert self.network is not None
            stores = cluster.of_role("etcd") or cluster.of_role("apiserver")
            component = stores[fault.pick % len(stores)]
            if component.pid is None or not component.running:
                raise RuntimeError(f"{component.name} is not running")
            slow = self.network.slow_disk(component.pid, self.slow_disk_ms)
            await _maybe_await(slow.start())

            async def fast() -> None:
                await _maybe_await(slow.stop())

            return (
                f"fsync/fdatasync of {component.name} (pid {component.pid}) delayed"
                f" {self.slow_disk_ms} ms",
                self._track(fast),
            )
        raise ValueError(f"unknown fault {fault.kind!r}")

    def _track(self, undo: Any) -> Any:
        async def once() -> None:
            if undo in self.active:
                self.active.remove(undo)
                await undo()

        self.active.append(undo)
        return once

    async def _agent_to_cut(self, pick: int) -> Component:
        """The agent running the exclusive instance (its fence is what is at stake), or else
        one picked by the seed."""
        agents = self.cluster.of_role("agent")
        with contextlib.suppress(Exception):
            async with self.cluster.client(0, timeout=2.0) as client:
                listed = await client.list(
                    Instance, namespace=NAMESPACE, label_selector={"app": EXCLUSIVE}
                )
            for instance in listed.items:
                for agent in agents:
                    if agent.name == f"agent/{instance.spec.node_name}":
                        return agent
        return agents[pick % len(agents)]

    async def _resolve(self, target: str, pick: int) -> Component:
        cluster = self.cluster
        if target == "exclusive-agent":
            return await self._agent_to_cut(pick)
        if target == "controller-manager-leader":
            holder = await _lease_holder(cluster, "controller-manager")
            managers = cluster.of_role("controller-manager")
            for manager in managers:
                if holder == manager.name.replace("/", "-"):
                    return manager
            return managers[pick % len(managers)]
        found = [c for c in cluster.of_role(target) if c.running] or cluster.of_role(target)
        if not found:
            raise RuntimeError(f"no {target} in this cluster")
        return found[pick % len(found)]


async def _lease_holder(cluster: VerifyCluster, name: str) -> str | None:
    from keel.api.resources import Lease

    with contextlib.suppress(Exception):
        async with cluster.client(0, timeout=2.0) as client:
            lease = await client.get(Lease, name, namespace="keel-system")
            return lease.spec.holder_identity
    return None


def _describe_groups(groups: list[list[str]], runner_cut: Sequence[str]) -> str:
    text = " | ".join("{" + ", ".join(g) + "}" for g in groups)
    if runner_cut:
        text += f" (runner cut from {', '.join(runner_cut)})"
    return text


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value
