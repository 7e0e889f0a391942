"""Simulated processes under the real node agent: `SimProcessDriver` is a
`keel.agent.ProcessDriver` with no processes, files or sockets behind it, and `SimMachineRoom`
holds the processes of every simulated node, so a checker can ask at any instant which copies
of an instance run where ("an exclusive instance never runs on two nodes at once").

Processes are records: PIDs come from a counter, a process runs until it is signalled (SIGTERM:
it exits `term_delay` virtual seconds later; SIGKILL: at once), until its node is powered off,
or until its instance's `Script` makes it exit. Checks answer from the script (readiness checks
`healthy`, liveness checks `live`; both pass by default); usage is constant. Time is the room's
clock (by default the running loop's, which in a simulation is virtual).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal

from keel.agent import CheckResult, Exited, Signal, Started, StartFailed, Usage, Workload
from keel.api.resources import HealthCheck, InstanceSpec, LivenessCheck
from keel.clock import Clock

__all__ = [
    "Overlap",
    "Script",
    "SimMachineRoom",
    "SimProcess",
    "SimProcessDriver",
    "Transition",
    "overlaps",
]

# Exit codes as `subprocess.Popen.returncode` reports them: minus the signal number.
_SIGNAL_EXIT = {"TERM": -15, "KILL": -9}
_FIRST_PORT = 30000


@dataclass
class Script:
    """How the processes of one instance behave; tests change it at any time."""

    healthy: bool = True  # what its readiness checks (`healthCheck`) answer while it runs
    live: bool = True  # what its liveness checks (`livenessCheck`) answer while it runs
    ignore_term: bool = False  # only SIGKILL ends it
    term_delay: float | None = None  # seconds from SIGTERM to exit (None: the room's)
    start_error: str = ""  # non-empty: every start fails with this message
    exit_after: float | None = None  # each process exits by itself this long after its start
    exit_code: int = 1  # ... with this code


@dataclass
class SimProcess:
    """One simulated process. `ended_at` may lie in the future (a SIGTERM in progress)."""

    pid: int
    proc_start: int
    node: str
    instance: str  # "namespace/name"
    exclusive: bool
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    signals: list[tuple[float, Signal]] = field(default_factory=list)

    def running(self, now: float) -> bool:
        return self.ended_at is None or now < self.ended_at

    def end(self, at: float, code: int | None) -> None:
        """Exit at `at`, unless it exits earlier anyway."""
        if self.ended_at is None or at < self.ended_at:
            self.ended_at = at
            self.exit_code = code


@dataclass(frozen=True)
class Transition:
    """A process started or stopped: one line of the room's history."""

    time: float
    node: str
    instance: str
    kind: Literal["start", "stop"]
    pid: int
    exclusive: bool


@dataclass(frozen=True)
class Overlap:
    """From `start` to `end`, more than one copy of an exclusive instance ran (`pids` on
    `nodes`); `end` is None while it lasts."""

    instance: str
    start: float
    end: float | None
    nodes: tuple[str, ...]
    pids: tuple[int, ...]


def overlaps(history: Iterable[Transition]) -> list[Overlap]:
    """Every interval in which two or more copies of one exclusive instance ran at once.

    A process runs from its start up to (not including) its stop, so a copy that starts at
    the instant another stops does not overlap it.
    """
    ordered = sorted(history, key=lambda t: (t.time, t.kind != "stop", t.pid))
    running: dict[str, dict[int, str]] = {}
    opened: dict[str, tuple[float, dict[int, str]]] = {}
    found: list[Overlap] = []
    # A process that stops at the instant it starts is sorted stop-first: it never ran.
    never_ran: set[int] = set()
    for t in ordered:
        if not t.exclusive:
            continue
        copies = running.setdefault(t.instance, {})
        if t.kind == "start":
            if t.pid in never_ran:
                continue
            copies[t.pid] = t.node
        elif copies.pop(t.pid, None) is None:
            never_ran.add(t.pid)
        if len(copies) > 1:
            start, seen = opened.get(t.instance, (t.time, {}))
            opened[t.instance] = (start, {**seen, **copies})
        elif t.instance in opened:
            start, seen = opened.pop(t.instance)
            found.append(_overlap(t.instance, start, t.time, seen))
    for instance, (start, seen) in sorted(opened.items()):
        found.append(_overlap(instance, start, None, seen))
    return found


def _overlap(instance: str, start: float, end: float | None, seen: dict[int, str]) -> Overlap:
    pids = tuple(sorted(seen))
    return Overlap(instance, start, end, tuple(seen[p] for p in pids), pids)


class SimMachineRoom:
    """Every simulated node's processes, and the scripts their instances follow.

    `driver(node)` gives an agent its `ProcessDriver`; an agent restarted on the same node gets
    a new driver onto the same processes (they outlive the agent, as real ones do, and their
    exit codes are unknown to the new agent). A checker reads `running()`, `history()` and
    `overlaps()`.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        term_delay: float = 0.2,
        cpu: float = 0.05,  # cores each process uses
        memory: int = 64 * 1024 * 1024,  # resident bytes of each process
    ) -> None:
        self.clock = clock
        self.term_delay = term_delay
        self.cpu = cpu
        self.memory = memory
        self.processes: list[SimProcess] = []
        self.scripts: dict[str, Script] = {}
        self._pids = itertools.count(1000)
        self._starts = itertools.count(1)
        self._ports: dict[str, int] = {}
        self._by_pid: dict[tuple[str, int], SimProcess] = {}

    def now(self) -> float:
        if self.clock is not None:
            return self.clock.now()
        return asyncio.get_running_loop().time()

    def driver(self, node: str) -> SimProcessDriver:
        return SimProcessDriver(self, node)

    # ---------------------------------------------------------------- scripting

    def script(self, instance: str) -> Script:
        """The (mutable) script of `instance` ("namespace/name")."""
        return self.scripts.setdefault(instance, Script())

    def set_healthy(self, instance: str, healthy: bool) -> None:
        self.script(instance).healthy = healthy

    def set_live(self, instance: str, live: bool) -> None:
        self.script(instance).live = live

    def crash(self, instance: str, *, node: str | None = None, code: int = 1) -> list[int]:
        """End the running copies of `instance` (on `node`, or anywhere) now with `code`."""
        now = self.now()
        crashed = []
        for p in self._running(now):
            if p.instance == instance and node in (None, p.node):
                p.end(now, code)
                crashed.append(p.pid)
        return crashed

    def power_off(self, node: str) -> list[int]:
        """Every process of `node` ends at once (its agent should be stopped too)."""
        now = self.now()
        ended = []
        for p in self._running(now):
            if p.node == node:
                p.end(now, _SIGNAL_EXIT["KILL"])
                ended.append(p.pid)
        return ended

    # ---------------------------------------------------------------- observing

    def running(self) -> dict[str, list[str]]:
        """Instance -> the nodes that run a copy of it now (a node once per copy)."""
        copies: dict[str, list[str]] = {}
        for p in self._running(self.now()):
            copies.setdefault(p.instance, []).append(p.node)
        return {key: sorted(nodes) for key, nodes in sorted(copies.items())}

    def running_on(self, node: str) -> list[SimProcess]:
        return [p for p in self._running(self.now()) if p.node == node]

    def copies(self, instance: str) -> list[SimProcess]:
        """Every process ever started for `instance`, oldest first."""
        return [p for p in self.processes if p.instance == instance]

    def history(self) -> list[Transition]:
        """Starts and stops up to now, in time order (a stop before a start at one instant)."""
        now = self.now()
        lines: list[Transition] = []
        for p in self.processes:
            lines.append(Transition(p.started_at, p.node, p.instance, "start", p.pid, p.exclusive))
            if p.ended_at is not None and p.ended_at <= now:
                lines.append(Transition(p.ended_at, p.node, p.instance, "stop", p.pid, p.exclusive))
        return sorted(lines, key=lambda t: (t.time, t.kind != "stop", t.pid))

    def overlaps(self) -> list[Overlap]:
        """Intervals with two copies of an exclusive instance running, up to now."""
        return overlaps(self.history())

    # ---------------------------------------------------------------- for the drivers

    def _running(self, now: float) -> list[SimProcess]:
        return [p for p in self.processes if p.running(now)]

    def _find(self, node: str, pid: int) -> SimProcess | None:
        return self._by_pid.get((node, pid))

    def _spawn(self, node: str, workload: Workload) -> SimProcess:
        now = self.now()
        process = SimProcess(
            pid=next(self._pids),
            proc_start=next(self._starts),
            node=node,
            instance=workload.key,
            exclusive=workload.spec.exclusive,
            started_at=now,
        )
        script = self.script(workload.key)
        if script.exit_after is not None:
            process.end(now + script.exit_after, script.exit_code)
        self.processes.append(process)
        self._by_pid[(node, process.pid)] = process
        return process

    def _free_port(self, node: str, taken: Collection[int]) -> int:
        port = self._ports.get(node, _FIRST_PORT)
        while port in taken:
            port += 1
        self._ports[node] = port + 1
        return port


class SimProcessDriver:
    """One agent's `ProcessDriver` onto the simulated processes of `node`."""

    def __init__(self, room: SimMachineRoom, node: str) -> None:
        self.room = room
        self.node = node
        # The fence deadline the agent last published: a simulated agent is never paused
        # behind its own back, so nothing but the agent acts on it here.
        self.fenced_until = float("-inf")
        self._children: set[int] = set()  # started by this driver: exit codes are known

    def fence(self, until: float) -> None:
        self.fenced_until = until

    def assign_ports(self, spec: InstanceSpec, taken: Collection[int]) -> dict[str, int]:
        used = set(taken)
        ports: dict[str, int] = {}
        for p in spec.ports:
            ports[p.name] = p.port or self.room._free_port(self.node, used)
            used.add(ports[p.name])
        return ports

    def start(self, workload: Workload) -> Started | StartFailed:
        error = self.room.script(workload.key).start_error
        if error:
            return StartFailed(error)
        process = self.room._spawn(self.node, workload)
        self._children.add(process.pid)
        return Started(process.pid, process.proc_start)

    def signal(self, pid: int, sig: Signal) -> bool:
        process = self.room._find(self.node, pid)
        now = self.room.now()
        if process is None or not process.running(now):
            return False
        process.signals.append((now, sig))
        if sig == "KILL":
            process.end(now, _SIGNAL_EXIT["KILL"])
        else:
            script = self.room.script(process.instance)
            if not script.ignore_term:
                delay = self.room.term_delay if script.term_delay is None else script.term_delay
                process.end(now + delay, _SIGNAL_EXIT["TERM"])
        return True

    def alive(self, pid: int, proc_start: int) -> bool:
        process = self.room._find(self.node, pid)
        return (
            process is not None
            and process.proc_start == proc_start
            and process.running(self.room.now())
        )

    def poll(self, pid: int, proc_start: int) -> Exited | None:
        if self.alive(pid, proc_start):
            return None
        process = self.room._find(self.node, pid)
        if pid in self._children and process is not None:
            self._children.discard(pid)
            return Exited(process.exit_code)
        return Exited(None)

    def kill_leftovers(self, pid: int) -> None:
        return None  # a simulated process has no children of its own

    async def check_health(self, workload: Workload, check: HealthCheck) -> CheckResult:
        await asyncio.sleep(0)  # a check is a round trip: other tasks run meanwhile
        if not any(p.instance == workload.key for p in self.room.running_on(self.node)):
            return CheckResult(False, "not running")
        script = self.room.script(workload.key)
        if isinstance(check, LivenessCheck):
            return CheckResult(True) if script.live else CheckResult(False, "scripted: not live")
        return CheckResult(True) if script.healthy else CheckResult(False, "scripted: unhealthy")

    def usage(self, pid: int) -> Usage:
        process = self.room._find(self.node, pid)
        now = self.room.now()
        if process is None or not process.running(now):
            return Usage(0.0, 0)
        return Usage(self.room.cpu * (now - process.started_at), self.room.memory)

    def rotate_log(self, log_path: str) -> None:
        return None  # no files
