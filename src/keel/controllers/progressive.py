"""Progressive delivery for Deployments, pure: canary steps (setWeight, pause, analysis) and
waves across clusters. `keel.controllers.deployment.plan` asks this module how the replicas
split between the update and the stable revision at the step and wave a rollout stands at
(`split`), and whether an analysis passed (`evaluate`, over samples its shell collected).

The split, for `replicas` R and waves W1..Wn (the clusters each names or selects):
- each wave's share of R is proportional to its number of clusters (largest remainder,
  earlier waves first); without waves there is one wave of every cluster, unpinned;
- waves before the current one run their share on the update revision, pinned to their
  clusters; the current wave too, except while canary steps remain (they run inside the
  first wave): then ceil(share x weight / 100) of it, at least one for a non-zero weight;
- the stable revision runs the rest, new stable Instances pinned to the waves not started.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from keel.api.resources import Analysis, CanaryStep, Strategy, Wave

__all__ = [
    "Group",
    "Sample",
    "Split",
    "Verdict",
    "canary_count",
    "evaluate",
    "resolve_waves",
    "shares",
    "split",
    "weight_at",
]


@dataclass(frozen=True)
class Group:
    """So many Instances of `revision`; `clusters` pins new ones (None: anywhere)."""

    revision: str
    count: int
    clusters: tuple[str, ...] | None = None

    @property
    def pin(self) -> str | None:
        return ",".join(self.clusters) if self.clusters is not None else None


@dataclass(frozen=True)
class Split:
    """The update groups (one per started wave, or one), the stable group, and the clusters
    of the started waves (stable Instances there go first) and of the later ones (in wave
    order: the last wave's go last)."""

    update: tuple[Group, ...]
    stable: Group
    started: frozenset[str]
    later: tuple[tuple[str, ...], ...]

    @property
    def groups(self) -> tuple[Group, ...]:
        return (*self.update, self.stable)


def resolve_waves(
    waves: Sequence[Wave], clusters: Mapping[str, Mapping[str, str]]
) -> list[tuple[str, ...]]:
    """The cluster names of each wave: those it names, or the Clusters (name -> labels)
    its selector matches, sorted; a cluster already in an earlier wave is not repeated."""
    seen: set[str] = set()
    resolved: list[tuple[str, ...]] = []
    for wave in waves:
        if wave.cluster_selector is not None:
            wanted = wave.cluster_selector.match_labels
            names = sorted(
                n
                for n, labels in clusters.items()
                if all(labels.get(k) == v for k, v in wanted.items())
            )
        else:
            names = list(wave.clusters)
        names = [n for n in names if n not in seen]
        seen.update(names)
        resolved.append(tuple(names))
    return resolved


def shares(replicas: int, waves: Sequence[Sequence[str]]) -> list[int]:
    """Replicas per wave, proportional to its clusters; remainders to the largest
    fractions, earlier waves first among equals. A wave without clusters gets none."""
    weights = [len(w) for w in waves]
    total = sum(weights)
    if total == 0:
        return [0 for _ in waves]
    exact = [replicas * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    left = replicas - sum(counts)
    order = sorted(range(len(waves)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def canary_count(weight: int, base: int) -> int:
    """Instances of the new revision at `weight` percent of `base`: rounded up, so that a
    non-zero weight runs at least one canary."""
    if weight <= 0 or base <= 0:
        return 0
    return min(base, max(1, math.ceil(base * weight / 100)))


def weight_at(steps: Sequence[CanaryStep], step: int) -> int:
    """The canary weight in force at `step`: the last setWeight up to it (0 before any),
    100 once every step is done."""
    if step >= len(steps):
        return 100
    weight = 0
    for item in steps[: step + 1]:
        if item.set_weight is not None:
            weight = item.set_weight
    return weight


def split(
    strategy: Strategy,
    replicas: int,
    *,
    update: str,
    stable: str,
    step: int,
    wave: int,
    waves: Sequence[tuple[str, ...]],
) -> Split:
    """How the replicas split at (`step`, `wave`): see the module docstring."""
    steps = strategy.canary.steps if strategy.canary is not None else []
    if not waves:
        count = canary_count(weight_at(steps, step), replicas)
        return Split(
            update=(Group(update, count),),
            stable=Group(stable, replicas - count),
            started=frozenset(),
            later=(),
        )
    per_wave = shares(replicas, waves)
    groups: list[Group] = []
    for index in range(min(wave + 1, len(waves))):
        count = per_wave[index]
        if index == 0 and step < len(steps):
            count = canary_count(weight_at(steps, step), count)
        groups.append(Group(update, count, waves[index]))
    later = tuple(waves[wave + 1 :])
    pinned = tuple(c for w in later for c in w)
    return Split(
        update=tuple(groups),
        stable=Group(stable, replicas - sum(g.count for g in groups), pinned or None),
        started=frozenset(c for w in waves[: wave + 1] for c in w),
        later=later,
    )


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Sample:
    """One look at the canary Instances: how many are Ready of how many, their restarts
    summed (agent telemetry), and the probe's result (None without a probe)."""

    at: float
    ready: int
    total: int
    restarts: int
    probe_ok: bool | None = None


@dataclass(frozen=True)
class Verdict:
    phase: Literal["Running", "Passed", "Failed"]
    message: str


def evaluate(analysis: Analysis, samples: Sequence[Sample], started: float, now: float) -> Verdict:
    """The verdict of `analysis` begun at `started`: Failed as soon as a gate cannot hold
    any more (restarts or probe failures beyond their limits), else Running until the
    window ends, then Passed if the mean ready ratio reached minReadyRatio."""
    if samples:
        restarts = max(s.restarts for s in samples) - samples[0].restarts
        if restarts > analysis.max_restarts:
            return Verdict(
                "Failed",
                f"canary instances restarted {restarts} times "
                f"(maxRestarts {analysis.max_restarts})",
            )
        failures = sum(1 for s in samples if s.probe_ok is False)
        if failures > analysis.max_probe_failures:
            return Verdict(
                "Failed",
                f"the {analysis.probe.type if analysis.probe else ''} probe failed "
                f"{failures} times (maxProbeFailures {analysis.max_probe_failures})",
            )
    if now < started + analysis.window_seconds:
        return Verdict(
            "Running",
            f"{len(samples)} samples; window ends in "
            f"{started + analysis.window_seconds - now:.0f}s",
        )
    if not samples:
        return Verdict("Failed", "no samples were taken during the window")
    ratio = sum(s.ready / s.total if s.total else 0.0 for s in samples) / len(samples)
    if ratio < analysis.min_ready_ratio:
        return Verdict(
            "Failed",
            f"canary instances were ready {ratio:.0%} of the window "
            f"(minReadyRatio {analysis.min_ready_ratio:.0%})",
        )
    return Verdict("Passed", f"{len(samples)} samples, ready {ratio:.0%}, gates held")
