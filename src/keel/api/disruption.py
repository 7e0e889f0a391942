"""How many of a Deployment's Instances may be unavailable, and whether evicting one now keeps
within that: the disruption budget behind the `eviction` subresource and `keel drain`.

Pure: the API server reads the Instance, its Deployment and the Deployment's Instances, asks
`decide_eviction`, and deletes in one store transaction that compares every Instance the
decision counted as available, so two evictions racing on one budget cannot both pass. The
deployment controller counts availability with the same `is_ready` and `rollout_budget`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from keel.api.resources import Deployment, Instance, OwnerReference

__all__ = [
    "Budget",
    "EvictionDecision",
    "controller_ref",
    "decide_eviction",
    "is_ready",
    "rollout_budget",
]


def is_ready(instance: Instance) -> bool:
    """Serving: Ready, and not terminating."""
    if instance.metadata.deletion_timestamp:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in instance.status.conditions)


def rollout_budget(deployment: Deployment) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in Instances; percentages round surge up and unavailability
    down (as the familiar rolling update), and both zero would stall, so surge becomes 1."""
    replicas = deployment.spec.replicas
    rolling = deployment.spec.strategy.rolling_update
    surge = _resolve(rolling.max_surge, replicas, round_up=True)
    unavailable = _resolve(rolling.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        surge = 1
    return surge, unavailable


def _resolve(value: str | int, total: int, *, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    if value.endswith("%"):
        fraction = total * int(value[:-1]) / 100
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return int(value)


def controller_ref(instance: Instance) -> OwnerReference | None:
    """The Deployment that controls `instance`, as its owner reference says."""
    for ref in instance.metadata.owner_references:
        if ref.controller and ref.kind == "Deployment":
            return ref
    return None


@dataclass(frozen=True)
class Budget:
    """A Deployment's disruption budget as of one decision."""

    deployment: str
    available: int  # Ready Instances of the Deployment, the evicted one included
    replicas: int
    max_unavailable: int

    def describe(self) -> str:
        return (
            f"{self.available} of {self.replicas} available, "
            f"at most {self.max_unavailable} may be unavailable"
        )


@dataclass(frozen=True)
class EvictionDecision:
    allowed: bool
    message: str  # why, for the 429 or the success Status
    budget: Budget | None  # None: no owning Deployment, nothing checked
    counted: tuple[str, ...] = ()  # names of the Instances counted as available


def decide_eviction(
    instance: Instance, deployment: Deployment | None, siblings: Sequence[Instance]
) -> EvictionDecision:
    """May `instance` be evicted now? `deployment` is the one its controller reference names
    (None if it has none or it is gone); `siblings` are the Instances of its namespace (the
    ones that Deployment controls are picked out here; `instance` may be among them).

    Evicting a Ready Instance is allowed while at least replicas - maxUnavailable of the
    Deployment's Instances stay Ready without it. An Instance that is not Ready serves nobody,
    so evicting it takes nothing available away and is always allowed (otherwise a node whose
    instances are failing could never be drained); so is one already terminating. An Instance
    without an owning Deployment has no budget: it is evicted without a check.
    """
    name = instance.metadata.name
    if instance.metadata.deletion_timestamp:
        return EvictionDecision(True, f"instance {name} is already terminating", None)
    ref = controller_ref(instance)
    if ref is None:
        return EvictionDecision(
            True, f"instance {name} has no owning Deployment: no disruption budget checked", None
        )
    if deployment is None or deployment.metadata.uid != ref.uid:
        return EvictionDecision(
            True,
            f"the owning deployment {ref.name} of instance {name} is gone: "
            "no disruption budget checked",
            None,
        )
    owned = [
        s
        for s in siblings
        if (r := controller_ref(s)) is not None and r.uid == deployment.metadata.uid
    ]
    ready = sorted(s.metadata.name for s in owned if is_ready(s))
    _surge, max_unavailable = rollout_budget(deployment)
    replicas = deployment.spec.replicas
    budget = Budget(deployment.metadata.name, len(ready), replicas, max_unavailable)
    if not is_ready(instance):
        return EvictionDecision(
            True,
            f"instance {name} is not ready, so evicting it takes nothing available away "
            f"(deployment {budget.deployment}: {budget.describe()})",
            budget,
            tuple(ready),
        )
    remaining = len(ready) - (1 if name in ready else 0)
    if remaining < replicas - max_unavailable:
        return EvictionDecision(
            False,
            f"would violate the disruption budget of deployment {budget.deployment}: "
            f"{budget.describe()}",
            budget,
            tuple(ready),
        )
    return EvictionDecision(
        True,
        f"within the disruption budget of deployment {budget.deployment} ({budget.describe()})",
        budget,
        tuple(ready),
    )
