"""Checkers over the lives of instance copies, as the workload's own processes wrote them:
an exclusive instance never runs on two nodes at once (`check_exclusive`), no instance runs
twice at once after replays or controller restarts (`check_duplicates`), and a rollout never
runs more than replicas + maxSurge instances (`check_surge`).

A copy runs from its start to its stop. A copy killed without a stop ran at least until its
last beat; that is taken as its end, and the verdict says its true end is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.verify._fields import choice, integer, lines_of, more, seconds, strings, text
from keel.verify.history import Event, HistoryError, Verdict

__all__ = ["check_duplicates", "check_exclusive", "check_surge"]

TYPES = ("start", "beat", "stop")


@dataclass
class _Copy:
    """One process copy: `seen` holds (time, line) of its start, beats and stop, in order."""

    name: str
    group: str
    instance: str
    node: str | None
    seen: list[tuple[int, int]] = field(default_factory=list)
    stopped: bool = False

    @property
    def start(self) -> int:
        return self.seen[0][0]

    @property
    def end(self) -> int:
        return self.seen[-1][0]

    def ran_until(self, time: int) -> int:
        """The first line showing this copy still ran at `time` (or its last line)."""
        return next((line for at, line in self.seen if at >= time), self.seen[-1][1])

    def describe(self) -> str:
        where = f" on node {self.node}" if self.node is not None else ""
        until = "stopped" if self.stopped else "no stop recorded: last beat"
        return (
            f"copy {self.name}{where} from {seconds(self.start)} to {seconds(self.end)} ({until})"
        )


@dataclass(frozen=True)
class _Overlap:
    first: _Copy
    second: _Copy

    @property
    def begins(self) -> int:
        return max(self.first.start, self.second.start)

    @property
    def ends(self) -> int:
        return min(self.first.end, self.second.end)


def check_exclusive(history: Sequence[Event], *, beat_interval: float | None = None) -> Verdict:
    """Two copies of one exclusive instance never run at once (lines of workload "exclusive").

    Each line, written by the workload's process itself (outside Keel):
      {"copy": ID, "node": N, "instance": NAME, "type": "start"|"beat"|"stop", "time": T}
    ID is unique per process copy. Intervals are half-open: a copy that starts at the instant
    another stops does not overlap it. The gaps with no copy of an instance running, after
    its first start, are measured (stats "gap_count", "gap_max_seconds", "gap_total_seconds",
    and per instance "gaps").

    `beat_interval` (seconds) is not used to extend unstopped copies; the verdict only
    reports how many more overlaps would appear if each had run one interval past its last
    beat ("possible_overlaps").
    """
    copies = _read_copies(history, "exclusive", group="instance", node_required=True)
    overlaps, possible = _overlaps(copies, beat_interval)
    instances = sorted({c.group for c in copies})
    unstopped = sum(1 for c in copies if not c.stopped)
    stats: dict[str, Any] = {
        "instances": len(instances),
        "copies": len(copies),
        "copies_without_stop": unstopped,
        "overlaps": len(overlaps),
        **_gaps(copies),
    }
    unknown = f", {unstopped:,} ended without a stop (true end unknown)" if unstopped else ""
    possibly = ""
    if beat_interval is not None:
        stats["beat_interval_seconds"] = beat_interval
        stats["possible_overlaps"] = possible
        if possible:
            possibly = (
                f"; {possible:,} more overlap{'s' if possible != 1 else ''} possible if "
                f"unstopped copies ran a full beat interval ({beat_interval:g}s) past their "
                "last beat"
            )
    if not overlaps:
        summary = (
            f"never two copies at once: {len(instances):,} instances, {len(copies):,} copies"
            f"{unknown}, longest gap {stats['gap_max_seconds']:.3f}s{possibly}"
        )
        return Verdict("exclusive", True, summary, stats=stats)
    first = overlaps[0]
    return Verdict(
        "exclusive",
        False,
        f"exclusive violation: instance {first.first.instance} ran on two nodes at once{possibly}",
        counterexample=_evidence(first, history),
        explanation=_explain(first, f"instance {first.first.instance}")
        + _unknown_end(first)
        + more(len(overlaps)),
        stats=stats,
    )


def check_duplicates(history: Sequence[Event], *, beat_interval: float | None = None) -> Verdict:
    """Replaying events and controller restarts never start one instance twice at once
    (lines of workload "duplicates"); any instance, not only exclusive ones.

    Each line: {"uid": UID, "instance": NAME, "copy": ID, "type": "start"|"beat"|"stop",
    "time": T, "node": N (optional)}. Two copies of the same instance uid whose intervals
    overlap are a violation; a new uid under the same name (a replacement) is not.
    `beat_interval` is reported as in `check_exclusive`, never used to extend a copy.
    """
    copies = _read_copies(history, "duplicates", group="uid", node_required=False)
    overlaps, possible = _overlaps(copies, beat_interval)
    unstopped = sum(1 for c in copies if not c.stopped)
    stats: dict[str, Any] = {
        "uids": len({c.group for c in copies}),
        "copies": len(copies),
        "copies_without_stop": unstopped,
        "overlaps": len(overlaps),
    }
    if beat_interval is not None:
        stats["beat_interval_seconds"] = beat_interval
        stats["possible_overlaps"] = possible
    if not overlaps:
        unknown = f", {unstopped:,} ended without a stop (true end unknown)" if unstopped else ""
        summary = (
            f"no instance ran twice at once: {stats['uids']:,} instance uids, "
            f"{len(copies):,} copies{unknown}"
        )
        return Verdict("duplicates", True, summary, stats=stats)
    first = overlaps[0]
    subject = f"instance {first.first.instance} (uid {first.first.group})"
    return Verdict(
        "duplicates",
        False,
        f"duplicates violation: {subject} ran twice at once",
        counterexample=_evidence(first, history),
        explanation=_explain(first, subject) + _unknown_end(first) + more(len(overlaps)),
        stats=stats,
    )


def check_surge(history: Sequence[Event]) -> Verdict:
    """A deployment never runs more than replicas + maxSurge instances (workload "surge").

    Each line is a sample of one deployment:
      {"type": "sample", "deployment": D, "replicas": N, "max_surge": S,
       "instances": [names], "terminating": [names] (optional), "revision": R, "time": T}
    Instances listed in "terminating" are not counted: their replacement may already run.
    """
    over: list[tuple[int, str]] = []
    peak: dict[str, int] = {}
    samples = 0
    for index, event in lines_of(history, "surge"):
        choice(event, index, "type", ("sample",))
        deployment = text(event, index, "deployment")
        replicas = integer(event, index, "replicas")
        surge = integer(event, index, "max_surge")
        instances = strings(event, index, "instances")
        terminating = set(strings(event, index, "terminating", default=[]))
        revision = integer(event, index, "revision")
        time = integer(event, index, "time")
        samples += 1
        running = [name for name in instances if name not in terminating]
        peak[deployment] = max(peak.get(deployment, 0), len(running))
        if len(running) > replicas + surge:
            left_out = sorted(terminating & set(instances))
            aside = f" (terminating, not counted: {', '.join(left_out)})" if left_out else ""
            over.append(
                (
                    index,
                    f"deployment {deployment} ran {len(running)} instances at revision "
                    f"{revision} ({seconds(time)}), above replicas {replicas} + maxSurge "
                    f"{surge} = {replicas + surge}: {', '.join(running)}{aside}.",
                )
            )
    stats: dict[str, Any] = {
        "deployments": len(peak),
        "samples": samples,
        "samples_over_limit": len(over),
        "peak_instances": peak,
    }
    if not over:
        summary = f"never above replicas + maxSurge: {len(peak):,} deployments, {samples:,} samples"
        return Verdict("surge", True, summary, stats=stats)
    index, explanation = over[0]
    deployment = history[index]["deployment"]
    return Verdict(
        "surge",
        False,
        f"surge violation: deployment {deployment} ran more than replicas + maxSurge",
        counterexample=[history[index]],
        explanation=explanation + more(len(over)),
        stats=stats,
    )


def _read_copies(
    history: Sequence[Event], workload: str, *, group: str, node_required: bool
) -> list[_Copy]:
    copies: dict[str, _Copy] = {}
    for index, event in lines_of(history, workload):
        kind = choice(event, index, "type", TYPES)
        name = text(event, index, "copy")
        instance = text(event, index, "instance")
        key = text(event, index, group)
        node = text(event, index, "node") if node_required or "node" in event else None
        time = integer(event, index, "time")
        copy = copies.get(name)
        if copy is None:
            if kind != "start":
                raise HistoryError(
                    f"history line {index + 1}: field 'type' is {kind!r}, but copy {name} has "
                    "no start before it"
                )
            copies[name] = copy = _Copy(name, key, instance, node)
        elif kind == "start":
            raise HistoryError(
                f"history line {index + 1}: field 'type': copy {name} starts a second time"
            )
        elif copy.stopped:
            raise HistoryError(
                f"history line {index + 1}: field 'type': copy {name} has a {kind} after its stop"
            )
        else:
            for label, value, was in (
                ("instance", instance, copy.instance),
                (group, key, copy.group),
                ("node", node, copy.node),
            ):
                if value is not None and value != was:
                    raise HistoryError(
                        f"history line {index + 1}: field {label!r} is {value!r}, but copy "
                        f"{name} started with {was!r}"
                    )
            if time < copy.end:
                raise HistoryError(
                    f"history line {index + 1}: field 'time' goes back within copy {name}"
                )
        copy.seen.append((time, index))
        copy.stopped = kind == "stop"
    return list(copies.values())


def _overlaps(copies: list[_Copy], beat_interval: float | None) -> tuple[list[_Overlap], int]:
    """Every pair of copies of one group running at once, earliest first; and, if
    `beat_interval` is given, how many more pairs would overlap had each unstopped copy run
    one interval past its last beat."""
    extension = round(beat_interval * 1e9) if beat_interval is not None else 0
    found: list[_Overlap] = []
    possible = 0
    by_group: dict[str, list[_Copy]] = {}
    for copy in copies:
        by_group.setdefault(copy.group, []).append(copy)
    for group in by_group.values():
        group.sort(key=lambda c: (c.start, c.seen[0][1]))
        for at, later in enumerate(group):
            for earlier in group[:at]:
                if earlier.end > later.start and later.end > earlier.start:
                    found.append(_Overlap(earlier, later))
                elif (
                    extension
                    and _stretched(earlier, extension) > later.start
                    and (_stretched(later, extension) > earlier.start)
                ):
                    possible += 1
    found.sort(key=lambda o: (o.begins, o.first.seen[0][1]))
    return found, possible


def _stretched(copy: _Copy, extension: int) -> int:
    return copy.end if copy.stopped else copy.end + extension


def _gaps(copies: list[_Copy]) -> dict[str, Any]:
    """Spells with no copy of an instance running, between its first start and last end."""
    per_instance: dict[str, dict[str, float]] = {}
    every: list[int] = []
    by_group: dict[str, list[_Copy]] = {}
    for copy in copies:
        by_group.setdefault(copy.group, []).append(copy)
    for instance, group in sorted(by_group.items()):
        group.sort(key=lambda c: c.start)
        covered = group[0].end
        gaps: list[int] = []
        for copy in group[1:]:
            if copy.start > covered:
                gaps.append(copy.start - covered)
            covered = max(covered, copy.end)
        every.extend(gaps)
        per_instance[instance] = {
            "count": len(gaps),
            "max_seconds": max(gaps, default=0) / 1e9,
            "total_seconds": sum(gaps) / 1e9,
        }
    return {
        "gap_count": len(every),
        "gap_max_seconds": max(every, default=0) / 1e9,
        "gap_total_seconds": sum(every) / 1e9,
        "gaps": per_instance,
    }


def _evidence(overlap: _Overlap, history: Sequence[Event]) -> list[Event]:
    """Both starts, and the line of each copy showing it still ran when the overlap ended."""
    lines = {overlap.first.seen[0][1], overlap.second.seen[0][1]}
    lines.add(overlap.first.ran_until(overlap.ends))
    lines.add(overlap.second.ran_until(overlap.ends))
    return [history[i] for i in sorted(lines)]


def _explain(overlap: _Overlap, subject: str) -> str:
    return (
        f"{subject} ran as two copies at once for {seconds(overlap.ends - overlap.begins)}: "
        f"{overlap.first.describe()}, and {overlap.second.describe()}."
    )


def _unknown_end(overlap: _Overlap) -> str:
    if overlap.first.stopped and overlap.second.stopped:
        return ""
    return " A copy without a stop ran at least until its last beat; its true end is unknown."
