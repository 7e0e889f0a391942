"""Keel's scheduler: a columnar snapshot kept current from watch events (`ClusterState`), a
pure policy over it (`schedule`, `preempt`), weighted dominant-resource fairness across
namespaces for its queue (`FairLane`, `dominant_share`), its shell on the controller runtime
(`SchedulerController`), and `new_scheduler` to run it under leader election with fenced
bindings.
"""

from keel.scheduler.controller import SCHEDULED, SchedulerController
from keel.scheduler.fairness import FairLane, dominant_share, next_tenant, weighted_share
from keel.scheduler.policy import (
    Decision,
    Preemption,
    SchedulerConfig,
    Snapshot,
    build_snapshot,
    feasible_nodes,
    preempt,
    schedule,
)
from keel.scheduler.service import LEASE_NAME, LEASE_NAMESPACE, new_scheduler
from keel.scheduler.state import ClusterState

__all__ = [
    "LEASE_NAME",
    "LEASE_NAMESPACE",
    "SCHEDULED",
    "ClusterState",
    "Decision",
    "FairLane",
    "Preemption",
    "SchedulerConfig",
    "SchedulerController",
    "Snapshot",
    "build_snapshot",
    "dominant_share",
    "feasible_nodes",
    "new_scheduler",
    "next_tenant",
    "preempt",
    "schedule",
    "weighted_share",
]
