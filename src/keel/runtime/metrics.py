"""Prometheus metrics of a controller process (the controller-manager, and the scheduler,
which runs on the same runtime): work queues, reconciles, leadership and fencing.

The hot path keeps plain integers (`ControllerMetrics`, `WorkQueueMetrics`, the elector's
counts); `ControllerManagerMetrics` copies them into a `keel.metrics.Registry` only when
/metrics is scraped, so instrumentation costs an integer add and never a store write.
"""

from __future__ import annotations

from keel.metrics import Registry
from keel.runtime.manager import ControllerManager
from keel.runtime.workqueue import LATENCY_BUCKETS

__all__ = ["ControllerManagerMetrics"]


class ControllerManagerMetrics:
    """Binds a `ControllerManager` (its runner and its election) to `registry`."""

    def __init__(self, manager: ControllerManager, registry: Registry | None = None) -> None:
        self.manager = manager
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.depth = r.gauge(
            "keel_workqueue_depth",
            "Keys waiting in a controller's work queue (ready, delayed or re-added).",
            ("controller",),
        )
        self.adds = r.counter(
            "keel_workqueue_adds_total",
            "Keys queued for a controller (a key already pending is not counted again).",
            ("controller",),
        )
        self.retries = r.counter(
            "keel_workqueue_retries_total",
            "Keys queued again after a failed reconcile (with backoff).",
            ("controller",),
        )
        self.reconciles = r.counter(
            "keel_reconciles_total", "Reconciles that succeeded, per controller.", ("controller",)
        )
        self.errors = r.counter(
            "keel_reconcile_errors_total",
            "Reconciles that raised (and were retried), per controller.",
            ("controller",),
        )
        self.latency = r.histogram(
            "keel_reconcile_duration_seconds",
            "Time one reconcile of one key took, per controller.",
            ("controller",),
            buckets=LATENCY_BUCKETS,
        )
        self.is_leader = r.gauge(
            "keel_leader_is_leader",
            "1 while this replica holds the lease (namespace/name) and may act, else 0.",
            ("lease",),
        )
        self.transitions = r.counter(
            "keel_leader_transitions_total",
            "Times this replica started or stopped leading under the lease.",
            ("lease",),
        )
        self.fenced = r.counter(
            "keel_fencing_rejections_total",
            "Writes the store rejected because this replica's fencing token was no longer "
            "current (each stops the work done under that token).",
        )
        self._transitions: dict[str, int] = {}
        self._leases: list[str] = []
        namespace = manager.namespace
        if manager.elector is not None:
            lease = f"{namespace}/{manager.lease_name}"
            self._leases.append(lease)
            manager.elector.on_change(lambda _token: self._count(lease))
        elif manager.coordinator is not None:
            coordinator = manager.coordinator
            self._leases.extend(
                f"{namespace}/{coordinator.shard_name(s)}" for s in range(manager.shards)
            )
            coordinator.on_acquired(
                lambda shard, _token: self._count(f"{namespace}/{coordinator.shard_name(shard)}")
            )
            coordinator.on_lost(
                lambda shard: self._count(f"{namespace}/{coordinator.shard_name(shard)}")
            )
        for lease in self._leases:
            self._transitions[lease] = 0
        for name in manager.runner.controllers:
            # Every series exists from the first scrape (a dashboard's rate() needs a zero).
            self.errors.labels(name)
            self.retries.labels(name)
        r.add_collector(self._collect)

    def _count(self, lease: str) -> None:
        self._transitions[lease] = self._transitions.get(lease, 0) + 1

    def _collect(self) -> None:
        manager = self.manager
        runner = manager.runner
        for name in runner.controllers:
            depth, adds, retries = runner.queue_counts(name)
            stats = runner.metrics[name]
            self.depth.labels(name).set(depth)
            self.adds.labels(name).set_total(adds)
            self.retries.labels(name).set_total(retries)
            self.reconciles.labels(name).set_total(stats.reconciles)
            self.errors.labels(name).set_total(stats.errors)
            latency = stats.latency
            self.latency.labels(name).copy_from(latency.counts, latency.sum, latency.count)
        if manager.elector is not None:
            lease = self._leases[0]
            self.is_leader.labels(lease).set(1 if manager.elector.is_leader() else 0)
        elif manager.coordinator is not None:
            owned = manager.coordinator.owned
            for shard, lease in enumerate(self._leases):
                self.is_leader.labels(lease).set(1 if shard in owned else 0)
        for lease, count in self._transitions.items():
            self.transitions.labels(lease).set_total(count)
        self.fenced.labels().set_total(runner.metrics_fenced)

    def render(self) -> str:
        return self.registry.render()
