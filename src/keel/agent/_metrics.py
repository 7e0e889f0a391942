"""The node agent's Prometheus metrics: its instances by phase, restarts, health-check
results and node-lease renewals. The agent counts plain numbers (`AgentStats`) as it works;
`AgentMetrics` reads them, and the records, only when /metrics is scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keel.metrics import Registry

if TYPE_CHECKING:
    from keel.agent._agent import Agent
    from keel.agent._plan import Record

__all__ = ["PHASES", "AgentMetrics", "AgentStats", "phase_of"]

PHASES = ("Pending", "Running", "Succeeded", "Failed")


@dataclass
class AgentStats:
    restarts: int = 0  # processes started again for an Instance that had run before
    checks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (check, result)
    lease_acquisitions: int = 0
    lease_renewals: int = 0
    lease_misses: int = 0  # renewals that failed or timed out
    lease_losses: int = 0  # the lease was gone or taken: acquired again


def phase_of(record: Record) -> str:
    """The phase the agent reports for a record: Pending until its first start."""
    if record.terminal:
        return record.terminal
    return "Running" if record.starts > 0 else "Pending"


def count_phases(records: Iterable[Record]) -> dict[str, int]:
    counts = dict.fromkeys(PHASES, 0)
    for record in records:
        phase = phase_of(record)
        counts[phase] = counts.get(phase, 0) + 1
    return counts


class AgentMetrics:
    """Binds an `Agent` to `registry`."""

    def __init__(self, agent: Agent, registry: Registry | None = None) -> None:
        self.agent = agent
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.instances = r.gauge(
            "keel_agent_instances",
            "Instances this node runs (or ran), by the phase the agent reports.",
            ("phase",),
        )
        self.ready = r.gauge("keel_agent_instances_ready", "Instances on this node that are Ready.")
        self.restarts = r.counter(
            "keel_agent_instance_restarts_total",
            "Processes started again for an Instance (after an exit or a failed liveness check).",
        )
        self.checks = r.counter(
            "keel_agent_health_checks_total",
            "Health checks run, by check (readiness, liveness) and result (success, failure).",
            ("check", "result"),
        )
        self.acquisitions = r.counter(
            "keel_agent_lease_acquisitions_total", "Times the node lease was acquired."
        )
        self.renewals = r.counter(
            "keel_agent_lease_renewals_total",
            "Node lease renewals that succeeded (keep-alives: never store writes).",
        )
        self.misses = r.counter(
            "keel_agent_lease_misses_total", "Node lease renewals that failed or timed out."
        )
        self.losses = r.counter(
            "keel_agent_lease_losses_total",
            "Times the node lease was found gone or held by another (then acquired again).",
        )
        self.held = r.gauge(
            "keel_agent_lease_held", "1 while the agent holds a fresh node lease, else 0."
        )
        self.since_renewal = r.gauge(
            "keel_agent_lease_seconds_since_renewal",
            "Seconds since the node lease was last renewed (or acquired).",
        )
        for check in ("readiness", "liveness"):
            for result in ("success", "failure"):
                self.checks.labels(check, result)
        r.add_collector(self._collect)

    def _collect(self) -> None:
        agent = self.agent
        stats = agent.stats
        records = list(agent.records.values())
        for phase, count in count_phases(records).items():
            self.instances.labels(phase).set(count)
        self.ready.set(sum(1 for r in records if r.running and r.ready))
        self.restarts.labels().set_total(stats.restarts)
        for (check, result), count in stats.checks.items():
            self.checks.labels(check, result).set_total(count)
        self.acquisitions.labels().set_total(stats.lease_acquisitions)
        self.renewals.labels().set_total(stats.lease_renewals)
        self.misses.labels().set_total(stats.lease_misses)
        self.losses.labels().set_total(stats.lease_losses)
        self.held.set(1 if agent.lease_fresh else 0)
        if agent.lease is not None:
            self.since_renewal.set(max(0.0, agent.clock.now() - agent.lease_ok_at))

    def render(self) -> str:
        return self.registry.render()
