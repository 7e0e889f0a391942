"""The agent's decisions, without I/O: what to start, stop, kill, probe or forget, and which
status transition to report, from the desired Instances, the observed processes and `now`.
Readiness checks (`healthCheck`) only drive Ready; liveness checks (`livenessCheck`) stop a
process that failed them, and the restart policy decides what follows, as after a crash.

The asyncio shell (`_agent.py`) feeds observations in through the `observe_*` functions and
executes the `Action`s that `plan` returns; nothing here sleeps, reads a clock or a file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec
from msgspec.structs import replace

from keel.api.resources import Condition, Instance, InstanceSpec, InstanceStatus, PortStatus

# Restart backoff: 1 s doubling to 60 s; a process that ran this long resets it.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
HEALTHY_RESET_SECONDS = 10.0

StopReason = Literal["", "unwanted", "deleted", "fenced", "shutdown", "liveness"]
Terminal = Literal["", "Succeeded", "Failed"]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
CheckKind = Literal["readiness", "liveness"]
RestartPolicy = Literal["Always", "OnFailure", "Never"]
# How a process's run ended, when the agent did not end it for a reason of its own.
Outcome = Literal["succeeded", "failed", "liveness"]

# Whether a run that ended is started again (after the backoff), by restart policy and how
# it ended; a run that is not ends the Instance: Succeeded if it succeeded, else Failed.
# fmt: off
RESTARTS: dict[tuple[RestartPolicy, Outcome], bool] = {
    ("Always",    "succeeded"): True,
    ("Always",    "failed"):    True,
    ("Always",    "liveness"):  True,
    ("OnFailure", "succeeded"): False,
    # An unknown exit code (the process ended while the agent was away) counts as failed.
    ("OnFailure", "failed"):    True,
    # Killed for failing its liveness check: a failure whatever the exit code its SIGTERM
    # handler chose, as Kubernetes counts it. OnFailure restarts it ...
    ("OnFailure", "liveness"):  True,
    ("Never",     "succeeded"): False,
    ("Never",     "failed"):    False,
    # ... and Never leaves it Failed (not Succeeded, even after a clean exit on SIGTERM).
    ("Never",     "liveness"):  False,
}
# fmt: on

# What a stop the agent made leaves behind, by the reason for it: whether the Instance is
# over (a terminal phase by the exit code, reported and never started again) and the message
# its status shows.
# fmt: off
STOPS: dict[StopReason, tuple[bool, str]] = {
    # The node lease could not be renewed: stopped before the control plane may place it
    # elsewhere; it starts again here once the lease is fresh, if it is still bound here.
    "fenced":   (False, "stopped: the node lease could not be renewed (self-fencing)"),
    # The agent shuts down: the next agent starts it again, with the same ports.
    "shutdown": (False, "stopped: the agent shut down"),
    # Gone from this node (deleted outright, or the name has a new incarnation): forgotten.
    "unwanted": (False, "stopped: no longer bound to this node"),
    # The Instance is being deleted (deletionTimestamp set, the object still there): over.
    # Its terminal phase tells the control plane that this copy stopped, which releases an
    # exclusive Instance's `keel.dev/stop-confirmed` finalizer and so its name.
    "deleted":  (True,  "stopped: the instance was deleted"),
    "":         (False, ""),
    # "liveness" has no row: that stop is the process failing, and RESTARTS decides.
}
# fmt: on
# An Instance deleted before this node ever started it: over too, and said so.
NEVER_STARTED = "deleted before it started on this node"


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """What this node runs for one Instance; persisted in the state dir, so a restarted
    agent re-adopts the process (`pid` + `proc_start` guard against PID reuse)."""

    namespace: str
    name: str
    uid: str
    spec: InstanceSpec
    ports: dict[str, int] = {}
    log_path: str = ""
    pid: int = 0  # 0: no process
    proc_start: int = 0  # /proc/PID/stat field 22 of `pid`
    started_at: float = 0.0  # wall clock of the current (or last) process start
    starts: int = 0  # processes started so far
    crashes: int = 0  # consecutive short-lived exits (sets the backoff)
    exit_code: int | None = None  # of the last exit (None: unknown, e.g. adopted)
    next_start_at: float = 0.0  # earliest restart after an exit
    stopping: StopReason = ""
    stop_deadline: float = 0.0  # SIGKILL of the group after this
    killed: bool = False
    terminal: Terminal = ""
    message: str = ""
    # Health: consecutive probe results, and the Ready they drive.
    ready: bool = False
    successes: int = 0
    failures: int = 0
    next_probe_at: float = 0.0
    # Liveness: consecutive failures, when the check last passed in this run (0: not yet),
    # and, once `failureThreshold` is reached, the last failure's reason (then it is stopped).
    live_failures: int = 0
    live_at: float = 0.0
    next_live_probe_at: float = 0.0
    liveness_failure: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def running(self) -> bool:
        return self.pid > 0

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


def instance_key(instance: Instance) -> str:
    return f"{instance.metadata.namespace}/{instance.metadata.name}"


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Start:
    """Start (or restart) the process of `key`: new record from `instance` if there is none."""

    key: str
    instance: Instance | None  # None: restart from the record's own spec


@dataclass(frozen=True)
class Stop:
    """SIGTERM the group; SIGKILL it `grace` seconds later unless it has exited."""

    key: str
    grace: float
    reason: StopReason


@dataclass(frozen=True)
class Kill:
    key: str


@dataclass(frozen=True)
class Probe:
    """Run the readiness (`healthCheck`) or the liveness (`livenessCheck`) check once."""

    key: str
    check: CheckKind = "readiness"


@dataclass(frozen=True)
class Forget:
    """The process is gone and the Instance is no longer ours: drop the record."""

    key: str


@dataclass(frozen=True)
class Report:
    """Write this status (a transition) to the Instance."""

    key: str
    status: InstanceStatus


Action = Start | Stop | Kill | Probe | Forget | Report


@dataclass(frozen=True)
class View:
    """What the agent knows of the world when it plans."""

    node: str
    host_ip: str
    synced: bool  # the desired set is a complete list (else keep running what we have)
    exclusive_ok: bool  # the node lease is fresh: exclusive instances may keep running
    # The bindings seen are at least as new as the lease: starting an exclusive instance is
    # safe (it was not deleted and placed elsewhere while this node had no lease).
    bindings_fresh: bool = True
    fence_grace: float = 1.5  # grace of a self-fencing stop: SIGKILL before the lease ends
    stopping_all: bool = False  # the agent is shutting down and stops its workloads


# --------------------------------------------------------------------------- observations


def backoff_delay(crashes: int) -> float:
    """Delay before the restart that follows `crashes` consecutive short-lived exits."""
    delay = BACKOFF_INITIAL
    for _ in range(max(0, crashes - 1)):
        delay *= 2
        if delay >= BACKOFF_MAX:
            return BACKOFF_MAX
    return delay


def new_record(instance: Instance, ports: Mapping[str, int], log_path: str) -> Record:
    meta = instance.metadata
    return Record(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        spec=instance.spec,
        ports=dict(ports),
        log_path=log_path,
    )


def observe_started(record: Record, pid: int, proc_start: int, now: float) -> Record:
    check = record.spec.health_check
    live = record.spec.liveness_check
    return replace(
        record,
        pid=pid,
        proc_start=proc_start,
        started_at=now,
        starts=record.starts + 1,
        exit_code=None,
        next_start_at=0.0,
        stopping="",
        stop_deadline=0.0,
        killed=False,
        message="",
        ready=check is None,
        successes=0,
        failures=0,
        next_probe_at=now + (check.initial_delay_seconds if check else 0.0),
        live_failures=0,
        live_at=0.0,
        next_live_probe_at=now + (live.initial_delay_seconds if live else 0.0),
        liveness_failure="",
    )


def _describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "exited while the agent was away (exit code unknown)"
    if exit_code < 0:
        return f"killed by signal {-exit_code}"
    return f"exited with code {exit_code}"


def observe_exit(record: Record, exit_code: int | None, now: float) -> Record:
    """The process of `record` is gone (`exit_code` None when unknown)."""
    base = replace(
        record,
        pid=0,
        proc_start=0,
        exit_code=exit_code,
        ready=False,
        successes=0,
        failures=0,
        killed=False,
        stop_deadline=0.0,
        stopping="",
        live_failures=0,
        liveness_failure="",
    )
    if record.stopping and record.stopping != "liveness":
        # Our own stop: not a crash. What follows is the STOPS table's row.
        over, message = STOPS[record.stopping]
        terminal: Terminal = ("Succeeded" if exit_code == 0 else "Failed") if over else ""
        return replace(base, next_start_at=0.0, terminal=terminal, message=message)
    outcome: Outcome
    if record.stopping == "liveness":
        outcome = "liveness"
        what = f"killed: liveness check failed: {record.liveness_failure}"
        # It was healthy until its liveness check last passed (not at all, if it never did),
        # so a process that is never live backs off like one that crashes at once.
        ran = record.live_at - record.started_at if record.live_at else 0.0
    else:
        outcome = "succeeded" if exit_code == 0 else "failed"
        what = _describe_exit(exit_code)
        ran = now - record.started_at
    crashes = 0 if ran >= HEALTHY_RESET_SECONDS else record.crashes
    if RESTARTS[(record.spec.restart_policy, outcome)]:
        delay = backoff_delay(crashes + 1)
        return replace(
            base,
            crashes=crashes + 1,
            next_start_at=now + delay,
            # No delay in the message: it is written as status, and a crash loop should
            # not make every back-off step a store write.
            message=f"{what}; restarting",
        )
    if outcome == "succeeded":
        return replace(base, crashes=crashes, terminal="Succeeded", message="")
    return replace(base, crashes=crashes, terminal="Failed", message=what)


def observe_deleted(instance: Instance, record: Record | None) -> Record:
    """What an Instance being deleted ends as here, its process gone: the record as it is if
    it is over already, else made terminal (by its last exit; Failed if it never ran here)."""
    if record is None:
        return replace(new_record(instance, {}, ""), terminal="Failed", message=NEVER_STARTED)
    if record.terminal:
        return record
    terminal: Terminal = "Succeeded" if record.exit_code == 0 else "Failed"
    return replace(record, terminal=terminal, message=STOPS["deleted"][1])


def observe_start_failed(record: Record, error: str, now: float) -> Record:
    """The process could not be started at all (no such command, bad working dir)."""
    started = replace(record, starts=record.starts + 1, started_at=now, pid=0)
    failed = observe_exit(started, 127, now)
    return replace(failed, message=f"cannot start: {error}; {failed.message}".rstrip("; "))


def observe_probe(record: Record, ok: bool, now: float) -> Record:
    """A health check finished; thresholds turn results into Ready."""
    check = record.spec.health_check
    if check is None or not record.running:
        return record
    successes = record.successes + 1 if ok else 0
    failures = 0 if ok else record.failures + 1
    ready = record.ready
    if ok and successes >= check.success_threshold:
        ready = True
    elif not ok and failures >= check.failure_threshold:
        ready = False
    return replace(
        record,
        successes=successes,
        failures=failures,
        ready=ready,
        next_probe_at=now + check.period_seconds,
    )


def observe_liveness(record: Record, ok: bool, reason: str, now: float) -> Record:
    """A liveness check finished. One success resets the failure count; `failureThreshold`
    failures in a row set `liveness_failure`, and `plan` stops the process."""
    check = record.spec.liveness_check
    if check is None or not record.running or record.stopping or record.liveness_failure:
        return record
    if ok:
        return replace(
            record, live_failures=0, live_at=now, next_live_probe_at=now + check.period_seconds
        )
    failures = record.live_failures + 1
    return replace(
        record,
        live_failures=failures,
        liveness_failure=(reason or "failed") if failures >= check.failure_threshold else "",
        next_live_probe_at=now + check.period_seconds,
    )


def observe_stopping(record: Record, reason: StopReason, grace: float, now: float) -> Record:
    return replace(record, stopping=reason, stop_deadline=now + grace, ready=False)


# --------------------------------------------------------------------------- status


def iso_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def desired_status(record: Record) -> tuple[str, bool, str] | None:
    """(phase, ready, message) the Instance should show, or None for "nothing to say yet"."""
    if record.terminal:
        return record.terminal, False, record.message
    if record.starts == 0 or record.stopping:
        return None
    return "Running", record.running and record.ready, record.message


def status_to_write(
    record: Record, current: InstanceStatus, host_ip: str, now: float
) -> InstanceStatus | None:
    """The new status if it differs from `current` in what the agent owns, else None."""
    wanted = desired_status(record)
    if wanted is None:
        return None
    phase, ready, message = wanted
    ports = [
        PortStatus(name=p.name, port=record.ports.get(p.name, p.port)) for p in record.spec.ports
    ]
    started = iso_time(record.started_at) if record.started_at else None
    ready_text: Literal["True", "False"] = "True" if ready else "False"
    old_ready = next((c for c in current.conditions if c.type == "Ready"), None)
    same = (
        current.phase == phase
        and current.message == message
        and current.host_ip == host_ip
        and current.ports == ports
        and current.started_at == started
        and old_ready is not None
        and old_ready.status == ready_text
    )
    if same:
        return None
    condition = (
        old_ready
        if old_ready is not None and old_ready.status == ready_text
        else Condition(
            type="Ready",
            status=ready_text,
            reason="HealthCheckPassed" if ready else _not_ready_reason(record),
            last_transition_time=iso_time(now),
        )
    )
    others = [c for c in current.conditions if c.type != "Ready"]
    return InstanceStatus(
        phase=phase,  # type: ignore[arg-type]
        conditions=[*others, condition],
        host_ip=host_ip,
        ports=ports,
        started_at=started,
        message=message,
    )


def _not_ready_reason(record: Record) -> str:
    if record.terminal:
        return record.terminal
    if not record.running:
        return "NotRunning"
    return "HealthCheckFailing" if record.spec.health_check else "Starting"


# --------------------------------------------------------------------------- plan


def _wanted(instance: Instance | None, node: str) -> bool:
    return (
        instance is not None
        and instance.spec.node_name == node
        and instance.metadata.deletion_timestamp is None
    )


def _deleting(instance: Instance | None, node: str) -> bool:
    """Bound here and being deleted: the object waits (a finalizer) for what we say."""
    return (
        instance is not None
        and instance.spec.node_name == node
        and instance.metadata.deletion_timestamp is not None
    )


def plan(
    desired: Mapping[str, Instance],
    records: Mapping[str, Record],
    now: float,
    view: View,
) -> list[Action]:
    """Every action due now, for every Instance bound here and every process we hold."""
    actions: list[Action] = []
    keys: Iterable[str] = sorted(set(desired) | set(records))
    for key in keys:
        actions.extend(_plan_one(key, desired.get(key), records.get(key), now, view))
    return actions


def _plan_one(
    key: str, instance: Instance | None, record: Record | None, now: float, view: View
) -> list[Action]:
    if record is None:
        if view.stopping_all or instance is None:
            return []
        if instance.status.phase in TERMINAL_PHASES:
            return []  # finished here before (or deleted, and said so): nothing runs
        if _deleting(instance, view.node):
            return _report_deleted(key, instance, None, view, now)
        if not _wanted(instance, view.node):
            return []
        if instance.spec.exclusive and not (view.exclusive_ok and view.bindings_fresh):
            return []
        return [Start(key, instance)]

    same_uid = instance is not None and instance.metadata.uid == record.uid
    deleting = same_uid and _deleting(instance, view.node)
    if view.stopping_all:
        wanted = False
        reason: StopReason = "shutdown"
    elif not view.synced and instance is None:
        wanted, reason = True, ""  # control plane unknown: keep what runs (static stability)
    else:
        wanted = same_uid and _wanted(instance, view.node)
        reason = "deleted" if deleting else "unwanted"
    fenced = record.spec.exclusive and not view.exclusive_ok

    if record.running:
        if record.stopping:
            if now >= record.stop_deadline and not record.killed:
                return [Kill(key)]
            return []
        if not wanted:
            return [Stop(key, float(record.spec.termination_grace_period_seconds), reason)]
        if fenced:
            grace = min(float(record.spec.termination_grace_period_seconds), view.fence_grace)
            return [Stop(key, grace, "fenced")]
        if record.liveness_failure:
            return [Stop(key, float(record.spec.termination_grace_period_seconds), "liveness")]
        actions: list[Action] = []
        if record.spec.health_check is not None and now >= record.next_probe_at:
            actions.append(Probe(key))
        if record.spec.liveness_check is not None and now >= record.next_live_probe_at:
            actions.append(Probe(key, "liveness"))
        actions.extend(_report(key, instance if same_uid else None, record, view, now))
        return actions

    # No process.
    if view.stopping_all:
        return []  # keep the record: the next agent starts it again with the same ports
    if deleting and instance is not None:
        # Its process is gone: report that before forgetting it (the Instance waits for it).
        if instance.status.phase in TERMINAL_PHASES:
            return [Forget(key)]
        return _report_deleted(key, instance, record, view, now) or [Forget(key)]
    if not wanted:
        return [Forget(key)] if view.synced else []
    if record.terminal:
        return _report(key, instance if same_uid else None, record, view, now)
    if fenced or (record.spec.exclusive and not view.bindings_fresh):
        return []
    actions = []
    if now >= record.next_start_at:
        actions.append(Start(key, None))
    else:
        actions.extend(_report(key, instance if same_uid else None, record, view, now))
    return actions


def _report_deleted(
    key: str, instance: Instance, record: Record | None, view: View, now: float
) -> list[Action]:
    status = status_to_write(observe_deleted(instance, record), instance.status, view.host_ip, now)
    return [Report(key, status)] if status is not None else []


def _report(
    key: str, instance: Instance | None, record: Record, view: View, now: float
) -> list[Action]:
    if instance is None:
        return []
    status = status_to_write(record, instance.status, view.host_ip, now)
    return [Report(key, status)] if status is not None else []


def next_wakeup(records: Iterable[Record], now: float) -> float:
    """The earliest future time at which `plan` would answer differently by itself."""
    times = [now + 60.0]
    for r in records:
        if r.running and r.stopping and not r.killed:
            times.append(r.stop_deadline)
        elif r.running:
            if r.liveness_failure:
                times.append(now)  # to be stopped
            if r.spec.health_check is not None:
                times.append(r.next_probe_at)
            if r.spec.liveness_check is not None:
                times.append(r.next_live_probe_at)
        elif not r.running and not r.terminal and r.next_start_at:
            times.append(r.next_start_at)
    return max(now, min(times))
