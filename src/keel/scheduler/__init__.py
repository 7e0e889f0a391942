"""Keel's first scheduler: a pure policy (`schedule(instance, snapshot) -> Decision`), its
shell on the controller runtime (`SchedulerController`), and `new_scheduler` to run it under
leader election with fenced bindings.
"""

from keel.scheduler.controller import SCHEDULED, SchedulerController
from keel.scheduler.policy import Decision, NodeInfo, Snapshot, build_snapshot, schedule
from keel.scheduler.service import LEASE_NAME, LEASE_NAMESPACE, new_scheduler

__all__ = [
    "LEASE_NAME",
    "LEASE_NAMESPACE",
    "SCHEDULED",
    "Decision",
    "NodeInfo",
    "SchedulerController",
    "Snapshot",
    "build_snapshot",
    "new_scheduler",
    "schedule",
]
