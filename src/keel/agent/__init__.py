"""Keel's node agent: runs the Instances bound to its Node as real processes, reports their
phase and readiness transitions (fenced by the node lease) and their usage as telemetry.

`plan` is the pure decision core; `Agent` is the asyncio shell that executes it.
"""

from keel.agent._agent import Agent, AgentConfig
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
    observe_exit,
    observe_probe,
    observe_start_failed,
    observe_started,
    observe_stopping,
    plan,
    status_to_write,
)

__all__ = [
    "Action",
    "Agent",
    "AgentConfig",
    "Forget",
    "Kill",
    "Probe",
    "Record",
    "Report",
    "Start",
    "Stop",
    "View",
    "backoff_delay",
    "desired_status",
    "new_record",
    "next_wakeup",
    "observe_exit",
    "observe_probe",
    "observe_start_failed",
    "observe_started",
    "observe_stopping",
    "plan",
    "status_to_write",
]
