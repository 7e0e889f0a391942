"""Keel's node agent: runs the Instances bound to its Node as processes, reports their
phase and readiness transitions (fenced by the node lease) and their usage as telemetry.

`plan` is the pure decision core; `Agent` is the asyncio shell that executes it, on a
`keel.clock.Clock` and through a `ProcessDriver` (`LocalProcessDriver`: real processes;
`keel.sim.processes`: simulated ones).
"""

from keel.agent._agent import Agent, AgentConfig
from keel.agent._metrics import AgentMetrics, AgentStats
from keel.agent._plan import (
    Action,
    Forget,
    Kill,
    Probe,
    Record,
    Report,
    Start,
    Stop,
    View,
    backoff_delay,
    desired_status,
    new_record,
    next_wakeup,
    observe_deleted,
    observe_exit,
    observe_liveness,
    observe_probe,
    observe_start_failed,
    observe_started,
    observe_stopping,
    plan,
    status_to_write,
)
from keel.agent._processes import (
    CheckResult,
    Exited,
    LocalProcessDriver,
    ProcessDriver,
    Signal,
    Started,
    StartFailed,
    Usage,
    Workload,
)
from keel.agent._state import AgentState, LeaseMemo, MemoryState, StateDir

__all__ = [
    "Action",
    "Agent",
    "AgentConfig",
    "AgentMetrics",
    "AgentState",
    "AgentStats",
    "CheckResult",
    "Exited",
    "Forget",
    "Kill",
    "LeaseMemo",
    "LocalProcessDriver",
    "MemoryState",
    "Probe",
    "ProcessDriver",
    "Record",
    "Report",
    "Signal",
    "Start",
    "StartFailed",
    "Started",
    "StateDir",
    "Stop",
    "Usage",
    "View",
    "Workload",
    "backoff_delay",
    "desired_status",
    "new_record",
    "next_wakeup",
    "observe_deleted",
    "observe_exit",
    "observe_liveness",
    "observe_probe",
    "observe_start_failed",
    "observe_started",
    "observe_stopping",
    "plan",
    "status_to_write",
]
