"""The agent's seam to the machine: `ProcessDriver` is everything the agent does to processes
(start, signal, poll, probe, measure, rotate logs, pick ports). `LocalProcessDriver` runs real
processes through `_driver`, `_procfs` and `_health`; `keel.sim` plugs in simulated ones, so
the agent shell above the seam is the same code in production and in simulation.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from keel.agent import _driver, _fence, _health, _procfs
from keel.agent._health import CheckResult
from keel.api.resources import HealthCheck, InstanceSpec

__all__ = [
    "CheckResult",
    "Exited",
    "LocalProcessDriver",
    "ProcessDriver",
    "Signal",
    "StartFailed",
    "Started",
    "Usage",
    "Workload",
]

Signal = Literal["TERM", "KILL"]
FENCE_GRACE = 1.5  # at most this long between a fence watchdog's SIGTERM and its SIGKILL


@dataclass(frozen=True)
class Workload:
    """What a driver needs to run or probe one Instance's process."""

    namespace: str
    name: str
    spec: InstanceSpec
    ports: Mapping[str, int]  # assigned once (`assign_ports`) and kept across restarts
    log_path: str  # stdout and stderr are appended here
    env: Mapping[str, str] = field(default_factory=dict)  # the agent's (KEEL_NODE, ...)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Started:
    """A process is running: `pid` leads its own process group, `proc_start` tells it apart
    from a later process that reuses the PID."""

    pid: int
    proc_start: int


@dataclass(frozen=True)
class StartFailed:
    """The process could not be started at all (no such command, bad working dir)."""

    message: str


@dataclass(frozen=True)
class Exited:
    """The process is gone; `code` is None when unknown (not a child of this driver, as a
    process adopted from an earlier agent), negative for a signal."""

    code: int | None


@dataclass(frozen=True)
class Usage:
    """Cumulative CPU seconds and resident memory of a process group."""

    cpu_seconds: float
    memory_bytes: int


class ProcessDriver(Protocol):
    """The processes of one machine, as the agent sees them. Synchronous calls are quick
    (no waiting); only a health check may take time."""

    def assign_ports(self, spec: InstanceSpec, taken: Collection[int]) -> dict[str, int]:
        """A port per declared port: as given, or a free one (not in `taken`) for port 0."""
        ...

    def start(self, workload: Workload) -> Started | StartFailed:
        """Start the workload's command in a new process group."""
        ...

    def signal(self, pid: int, sig: Signal) -> bool:
        """Send SIGTERM or SIGKILL to the process group `pid`; False if none is left."""
        ...

    def alive(self, pid: int, proc_start: int) -> bool:
        """Whether `pid` is still the process that started at `proc_start`."""
        ...

    def poll(self, pid: int, proc_start: int) -> Exited | None:
        """None while the process runs; once it is gone, how it ended (reaps a child)."""
        ...

    def kill_leftovers(self, pid: int) -> None:
        """SIGKILL what is left of the group `pid` after its leader exited."""
        ...

    async def check_health(self, workload: Workload, check: HealthCheck) -> CheckResult:
        """Run `check` (readiness, or liveness when a `LivenessCheck`) once against the
        workload's process."""
        ...

    def usage(self, pid: int) -> Usage:
        """CPU and memory of the process group `pid` (zero once it is gone)."""
        ...

    def fence(self, until: float) -> None:
        """Exclusive workloads may run until monotonic time `until` even if the agent cannot
        act (paused, killed): past it, they are stopped without the agent."""
        ...

    def rotate_log(self, log_path: str) -> None:
        """Keep the workload's log bounded; never fails (the log is best effort)."""
        ...


class LocalProcessDriver:
    """Real processes on this machine: new sessions, /proc, signals to the group."""

    _SIGNALS: Mapping[Signal, signal.Signals] = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}

    def __init__(self, *, cwd: Path | None = None, fence_file: Path | None = None) -> None:
        self._cwd = cwd  # the default working dir; None: the agent's at start time
        # Where `fence()` publishes the lease deadline that the watchdog of each exclusive
        # process reads (keel.agent._fence); None: exclusive processes run without one.
        self._fence_file = fence_file
        # Processes this driver started, by PID: their exit codes can be read (and their
        # zombies reaped). Processes adopted from an earlier agent are only watched in /proc.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def assign_ports(self, spec: InstanceSpec, taken: Collection[int]) -> dict[str, int]:
        return _driver.assign_ports(spec, taken)

    def start(self, workload: Workload) -> Started | StartFailed:
        env = _driver.process_env(workload.spec, workload.ports, workload.env)
        spec = workload.spec
        if spec.exclusive and self._fence_file is not None:
            spec = msgspec.structs.replace(spec, command=self._fenced(spec))
        try:
            started = _driver.spawn(spec, env, Path(workload.log_path), self._cwd or Path.cwd())
        except OSError as exc:
            return StartFailed(str(exc))
        self._children[started.pid] = started.process
        return Started(started.pid, started.proc_start)

    def _fenced(self, spec: InstanceSpec) -> list[str]:
        """The command under its fence watchdog, which stops it within the grace the agent
        itself would give a self-fencing stop."""
        return [
            sys.executable,
            "-m",
            "keel.agent._fence",
            "--deadline-file",
            str(self._fence_file),
            "--grace",
            str(min(float(spec.termination_grace_period_seconds), FENCE_GRACE)),
            "--",
            *spec.command,
        ]

    def fence(self, until: float) -> None:
        if self._fence_file is not None:
            _fence.write_deadline(self._fence_file, until)

    def signal(self, pid: int, sig: Signal) -> bool:
        return _driver.signal_group(pid, self._SIGNALS[sig])

    def alive(self, pid: int, proc_start: int) -> bool:
        return _procfs.alive(pid, proc_start)

    def poll(self, pid: int, proc_start: int) -> Exited | None:
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            del self._children[pid]
            return Exited(code)
        if _procfs.alive(pid, proc_start):
            return None
        return Exited(None)

    def kill_leftovers(self, pid: int) -> None:
        _driver.kill_leftovers(pid)

    async def check_health(self, workload: Workload, check: HealthCheck) -> CheckResult:
        spec = workload.spec
        env = _driver.process_env(spec, workload.ports, workload.env)
        cwd = Path(spec.working_dir) if spec.working_dir else None
        return await _health.run_check(check, spec, workload.ports, env=env, cwd=cwd)

    def usage(self, pid: int) -> Usage:
        ticks, memory = _procfs.group_usage(pid)
        return Usage(ticks / _procfs.CLOCK_TICKS, memory)

    def rotate_log(self, log_path: str) -> None:
        # A full or read-only disk must not stop the agent; the next round tries again.
        with contextlib.suppress(OSError):
            _driver.rotate_log(Path(log_path))
