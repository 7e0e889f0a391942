"""The scheduler's Prometheus metrics: its own counts (placements, pending-to-bound latency,
binding conflicts, unschedulable decisions, preemptions) and each namespace's dominant
share, on top of the runtime's (work queue, reconciles, leadership, fencing). Counted as
plain numbers by `SchedulerController`, copied into the registry only when /metrics is
scraped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from keel.api.resources import Instance
from keel.metrics import Registry
from keel.runtime.informer import Indexer
from keel.runtime.manager import ControllerManager
from keel.runtime.metrics import ControllerManagerMetrics
from keel.runtime.workqueue import Histogram
from keel.scheduler.fairness import dominant_share
from keel.scheduler.state import ClusterState

__all__ = ["PENDING_BUCKETS", "SchedulerMetrics", "SchedulerStats"]

# Pending to bound: from an immediate placement to one that waited for capacity.
PENDING_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


@dataclass
class SchedulerStats:
    placements: int = 0  # bindings the API server accepted
    conflicts: int = 0  # bindings refused with 409 (the Instance changed, or no room left)
    plans: int = 0  # binding plans the API server answered
    unschedulable: int = 0  # decisions that found no node
    preemptions: int = 0  # lower-priority Instances evicted to make room for others
    preemptions_stopped: int = 0  # preemptions given up on a refused write (retried later)
    pending_to_bound: Histogram = field(default_factory=lambda: Histogram(PENDING_BUCKETS))


@runtime_checkable
class _Tenants(Protocol):
    """What the dominant-share gauges read from the scheduler's controller."""

    state: ClusterState

    def weight(self, namespace: str) -> float: ...


class SchedulerMetrics(ControllerManagerMetrics):
    """The runtime's metrics of the scheduler's manager, plus `stats` and the pending count
    read from the Instance cache at scrape time."""

    def __init__(self, manager: ControllerManager, registry: Registry | None = None) -> None:
        super().__init__(manager, registry)
        controller = manager.runner.controllers.get("scheduler")
        stats = getattr(controller, "stats", None)
        if not isinstance(stats, SchedulerStats):
            raise ValueError("SchedulerMetrics: the manager runs no scheduler controller")
        self.stats = stats
        self.tenants = controller if isinstance(controller, _Tenants) else None
        r = self.registry
        self.pending = r.gauge(
            "keel_scheduler_pending_instances",
            "Instances waiting for a node: unbound, not terminal, not being deleted.",
        )
        self.placements = r.counter(
            "keel_scheduler_placements_total", "Instances bound to a node by this scheduler."
        )
        self.pending_latency = r.histogram(
            "keel_scheduler_pending_to_bound_seconds",
            "Time from this scheduler first seeing an Instance unbound to its binding.",
            buckets=PENDING_BUCKETS,
        )
        self.conflicts = r.counter(
            "keel_scheduler_binding_conflicts_total",
            "Bindings refused with 409 Conflict (optimistic concurrency: retried).",
        )
        self.plans = r.counter(
            "keel_scheduler_binding_plans_total",
            "Binding plans answered by the API server (each one store transaction).",
        )
        self.unschedulable = r.counter(
            "keel_scheduler_unschedulable_total",
            "Scheduling attempts that found no feasible node (retried later).",
        )
        self.preemptions = r.counter(
            "keel_scheduler_preemptions_total",
            "Lower-priority Instances evicted to make room for higher-priority ones.",
        )
        self.dominant_share = r.gauge(
            "keel_scheduler_dominant_share",
            "A namespace's largest share of any one resource of the schedulable capacity, "
            "held by its bound Instances.",
            ("namespace",),
        )
        self.weighted_share = r.gauge(
            "keel_scheduler_weighted_dominant_share",
            "The dominant share divided by the namespace's spec.scheduling.weight: "
            "fairness serves the lowest first.",
            ("namespace",),
        )
        self.preemptions_stopped = r.counter(
            "keel_scheduler_preemptions_stopped_total",
            "Preemptions given up because a write was refused (a disruption budget's 429, a "
            "conflict): the room is given back and the preemptor looks again later.",
        )
        r.add_collector(self._collect_scheduler)

    def _collect_scheduler(self) -> None:
        stats = self.stats
        self.placements.labels().set_total(stats.placements)
        self.conflicts.labels().set_total(stats.conflicts)
        self.plans.labels().set_total(stats.plans)
        self.unschedulable.labels().set_total(stats.unschedulable)
        self.preemptions.labels().set_total(stats.preemptions)
        self.preemptions_stopped.labels().set_total(stats.preemptions_stopped)
        hist = stats.pending_to_bound
        self.pending_latency.labels().copy_from(hist.counts, hist.sum, hist.count)
        self._collect_shares()
        try:
            instances: Indexer[Instance] = self.manager.runner.cache(Instance)
        except KeyError:
            return
        self.pending.set(
            sum(
                1
                for i in instances
                if not i.spec.node_name
                and not i.metadata.deletion_timestamp
                and i.status.phase not in ("Succeeded", "Failed")
            )
        )

    def _collect_shares(self) -> None:
        self.dominant_share.clear()
        self.weighted_share.clear()
        tenants = self.tenants
        if tenants is None:
            return
        state = tenants.state
        capacity = state.schedulable_capacity()
        for namespace, used in sorted(state.namespace_used.items()):
            share = dominant_share(used, capacity)
            self.dominant_share.labels(namespace).set(share)
            self.weighted_share.labels(namespace).set(share / tenants.weight(namespace))
