"""Deployments: keep `spec.replicas` Instances of the target revision, named
`{deployment}-{templateHash}-{index}`, replace those of other revisions (rolling or recreate),
record every template as an immutable Revision, and run the rollout state machine of
`keel.controllers.rollout` (progress deadline, pause, stable revisions, automatic rollback).
`plan` decides (pure); `execute` applies; the shell confirms instance actions with a live read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from keel.api.disruption import is_ready, rollout_budget
from keel.api.resources import (
    ABORT_ANNOTATION,
    API_VERSION,
    CLUSTERS_ANNOTATION,
    FAILOVER_PENDING,
    PROMOTE_ANNOTATION,
    STABLE_ANNOTATION,
    Cluster,
    Deployment,
    DeploymentCondition,
    DeploymentStatus,
    Instance,
    InstanceTemplate,
    Node,
    ObjectMeta,
    OwnerReference,
    Resource,
    ResourceQuota,
    Revision,
    RevisionSpec,
)
from keel.client import (
    AlreadyExists,
    Conflict,
    Forbidden,
    KeelClient,
    KeelClientError,
    NotFound,
    Preconditions,
)
from keel.clock import SystemClock, rfc3339
from keel.controllers.analysis import AnalysisRuns
from keel.controllers.progressive import Group, Split, Verdict, resolve_waves, split
from keel.controllers.rollout import (
    CRASH_LOOP_RESTARTS,
    MAX_STEPS,
    ROLLBACK_PHASES,
    Phase,
    Signal,
    step,
)
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer

__all__ = [
    "DEPLOYMENT_LABEL",
    "HASH_LABEL",
    "REPLICA_FAILURE",
    "REPLICA_FAILURE_TRANSITIONS",
    "CreateInstance",
    "CreateOutcome",
    "CreateRevision",
    "DeleteInstance",
    "DeleteRevision",
    "DeploymentController",
    "MarkStable",
    "RecordEvent",
    "RequeueAfter",
    "UpdateStatus",
    "confirm",
    "create_outcome",
    "execute",
    "hash_of",
    "instance_name",
    "is_available",
    "is_ready",
    "needs_confirmation",
    "new_instance",
    "new_revision",
    "plan",
    "plan_instances",
    "plan_split",
    "refusal_message",
    "revision_name",
    "rollout_budget",
    "selects",
    "settle_creates",
    "template_hash",
]

DEPLOYMENT_LABEL = "keel.dev/deployment"
HASH_LABEL = "keel.dev/template-hash"
HASH_LENGTH = 10
# While a rollout with autoRollback may still be judged, restart counts (telemetry, not
# watched) are looked at this often.
CRASH_LOOP_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class CreateInstance:
    instance: Instance


@dataclass(frozen=True)
class DeleteInstance:
    namespace: str
    name: str
    uid: str  # only this incarnation: a recreated Instance of that name is not ours to judge


@dataclass(frozen=True)
class UpdateStatus:
    status: DeploymentStatus


@dataclass(frozen=True)
class CreateRevision:
    revision: Revision


@dataclass(frozen=True)
class DeleteRevision:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class MarkStable:
    """Annotate the Revision stable (once: its spec is immutable, this is its one change)."""

    namespace: str
    name: str
    since: str


@dataclass(frozen=True)
class RecordEvent:
    """An event on the Deployment (telemetry, never stored): a rollout transition."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class RequeueAfter:
    """Look again after this long: a timer of the rollout (minReadySeconds, the progress
    deadline, the bake time, or a crash-loop check) runs out then."""

    seconds: float


Action = (
    CreateInstance
    | DeleteInstance
    | UpdateStatus
    | CreateRevision
    | DeleteRevision
    | MarkStable
    | RecordEvent
    | RequeueAfter
)


def template_hash(deployment: Deployment) -> str:
    """A short, stable hash of the template (the revision): equal templates, equal hashes."""
    return hash_of(deployment.spec.template)


def hash_of(template: InstanceTemplate) -> str:
    encoded = msgspec.json.encode(template, order="deterministic")
    return hashlib.sha256(encoded).hexdigest()[:HASH_LENGTH]


def instance_name(deployment: str, revision: str, index: int) -> str:
    return f"{deployment}-{revision}-{index}"


def revision_name(deployment: str, revision: str) -> str:
    return f"{deployment}-{revision}"


def parse_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_available(instance: Instance, now: float, min_ready_seconds: int) -> bool:
    """Ready for at least `min_ready_seconds` (by its Ready condition's lastTransitionTime)."""
    if not is_ready(instance):
        return False
    if min_ready_seconds <= 0:
        return True
    since = _ready_since(instance)
    return since is not None and now >= since + min_ready_seconds


def _ready_since(instance: Instance) -> float | None:
    for condition in instance.status.conditions:
        if condition.type == "Ready" and condition.status == "True":
            return parse_time(condition.last_transition_time)
    return None


def selects(deployment: Deployment, instance: Instance) -> bool:
    selector = deployment.spec.selector
    if selector is None:
        return True
    labels = instance.metadata.labels
    return all(labels.get(k) == v for k, v in selector.match_labels.items())


def revision_hash(revision: Revision) -> str:
    return revision.metadata.labels.get(HASH_LABEL, "")


# --------------------------------------------------------------------------- the plan


@dataclass
class _Rollout:
    """The rollout's state during one plan: what status holds, moved by table rows."""

    phase: Phase
    update_revision: str
    stable: str
    failed: str
    reason: str
    message: str
    progress_time: float
    step: int = 0
    wave: int = 0
    step_started: float = 0.0
    step_moved: bool = False  # the step or wave changed: status records when
    notes: dict[str, str] = field(default_factory=dict)
    transitioned: bool = False
    events: list[RecordEvent] = field(default_factory=list)


def plan(
    deployment: Deployment | None,
    revisions: Sequence[Revision],
    instances: Sequence[Instance],
    now: float,
    restarts: Mapping[str, int] | None = None,
    *,
    clusters: Mapping[str, Mapping[str, str]] | None = None,
    node_clusters: Mapping[str, str] | None = None,
    analysis: Verdict | None = None,
) -> list[Action]:
    """What to do about `deployment`, given its Revisions, the Instances it owns, the wall
    clock `now` and the restart counts of its Instances by name (agent telemetry); for
    canary steps and waves also the Clusters (name -> labels), the cluster of each Node, and
    the verdict of the analysis the current canary step runs (collected by the shell).

    1. The template gets a Revision (`{deployment}-{hash}`, number one above the highest).
    2. The rollout state machine (`keel.controllers.rollout.TRANSITIONS`) moves on the
       signals observed now; every transition is an event and a status change.
    3. The target revision (the update revision, or the stable one while rolling back) is
       converged to by `plan_instances` (frozen while Paused); while canary steps or waves
       remain, the update and stable revisions split as `progressive.split` says, and
       `plan_split` converges on that.
    4. Status and conditions are written only when they differ; unused Revisions beyond
       revisionHistoryLimit are pruned, oldest first; a timer still running is a
       `RequeueAfter`.
    """
    if deployment is None or deployment.metadata.deletion_timestamp:
        return []
    meta = deployment.metadata
    spec_hash = template_hash(deployment)
    instances = [i for i in instances if selects(deployment, i)]
    revs: dict[str, Revision] = {}
    for revision in revisions:
        if not revision.metadata.deletion_timestamp and revision_hash(revision):
            revs[revision_hash(revision)] = revision
    actions: list[Action] = []
    if spec_hash not in revs:
        number = max((r.spec.revision for r in revs.values()), default=0) + 1
        created_revision = new_revision(deployment, spec_hash, number)
        actions.append(CreateRevision(created_revision))
        revs[spec_hash] = created_revision

    status = deployment.status
    progressing = _condition(status, "Progressing")
    state = _Rollout(
        phase=status.phase or "Progressing",
        update_revision=status.update_revision,
        stable=status.stable_revision if status.stable_revision in revs else "",
        failed=status.failed_revision,
        reason=progressing.reason if progressing else "",
        message=progressing.message if progressing else "",
        progress_time=_progress_time(progressing, now),
        step=status.current_step,
        wave=status.current_wave,
        step_started=parse_time(status.step_started_at) or now,
    )
    waves = resolve_waves(deployment.spec.strategy.waves, clusters or {})
    # The state machine: signals from what runs now, rows from the table.
    for _ in range(MAX_STEPS):
        target = _target(state, spec_hash)
        parts = _split(deployment, state, spec_hash, waves)
        signals = _signals(
            deployment,
            state,
            spec_hash=spec_hash,
            target=target,
            instances=instances,
            now=now,
            restarts=restarts,
            parts=parts,
            node_clusters=node_clusters or {},
            analysis=analysis,
        )
        found = step(state.phase, signals)
        if found is None:
            break
        signal, row = found
        _transition(
            deployment,
            revs,
            state,
            spec_hash=spec_hash,
            target=target,
            signal=signal,
            row=row,
            now=now,
        )
        if row.mark_stable:
            state.stable = target

    target = _target(state, spec_hash)
    template = revs[target].spec.template
    parts = _split(deployment, state, spec_hash, waves)
    if parts is not None:
        templates = {h: r.spec.template for h, r in revs.items()}
        instance_actions, remaining = plan_split(
            deployment, parts, templates, instances, now, node_clusters=node_clusters or {}
        )
    else:
        fill = _paused_fill(status, target, instances, revs) if state.phase == "Paused" else None
        instance_actions, remaining = plan_instances(
            deployment, target, template, instances, now, paused_fill=fill
        )
    actions.extend(instance_actions)

    stable_rev = revs.get(state.stable)
    if stable_rev is not None and STABLE_ANNOTATION not in stable_rev.metadata.annotations:
        actions.append(MarkStable(meta.namespace, stable_rev.metadata.name, rfc3339(now)))

    new_status = _status(deployment, state, target, remaining, now)
    if new_status != status:
        actions.append(UpdateStatus(new_status))
    actions.extend(state.events)
    actions.extend(_prune(deployment, revs, {spec_hash, target, state.stable}, instances))
    wake = _wake(deployment, state, target, instances, now, parts=parts)
    if wake is not None:
        actions.append(RequeueAfter(max(0.05, wake - now)))
    return actions


def _target(state: _Rollout, spec_hash: str) -> str:
    if state.phase in ROLLBACK_PHASES and state.stable:
        return state.stable
    return spec_hash


def _steps(deployment: Deployment) -> int:
    canary = deployment.spec.strategy.canary
    return len(canary.steps) if canary is not None else 0


def _split(
    deployment: Deployment, state: _Rollout, spec_hash: str, waves: Sequence[tuple[str, ...]]
) -> Split | None:
    """How the update and stable revisions split now, while canary steps or waves remain
    in a rollout that has a stable revision to split with (the first rollout has none and
    goes straight through); None otherwise."""
    if not _steps(deployment) and not waves:
        return None
    if state.phase not in ("Progressing", "Paused", "Failed"):
        return None
    if not state.stable or state.stable == spec_hash:
        return None
    if state.step >= _steps(deployment) and state.wave >= len(waves):
        return None
    return split(
        deployment.spec.strategy,
        deployment.spec.replicas,
        update=spec_hash,
        stable=state.stable,
        step=state.step,
        wave=state.wave,
        waves=waves,
    )


def _progress_time(progressing: DeploymentCondition | None, now: float) -> float:
    if progressing is None:
        return now
    stamp = parse_time(progressing.last_update_time or progressing.last_transition_time)
    return now if stamp is None else stamp


def _signals(
    deployment: Deployment,
    state: _Rollout,
    *,
    spec_hash: str,
    target: str,
    instances: Sequence[Instance],
    now: float,
    restarts: Mapping[str, int] | None,
    parts: Split | None,
    node_clusters: Mapping[str, str],
    analysis: Verdict | None,
) -> list[Signal]:
    """What is true now, in priority order (the table decides what each means in a phase).
    Why a signal holds, where the event should say so, goes to `state.notes`."""
    spec = deployment.spec
    annotations = deployment.metadata.annotations
    signals: list[Signal] = []
    if spec_hash != state.update_revision:
        signals.append("NewTemplate")
    if annotations.get(ABORT_ANNOTATION) == spec_hash and state.stable != spec_hash:
        signals.append("Abort")
    complete = parts is None and _complete(deployment, target, instances, now)
    if spec.paused and not complete:
        signals.append("Pause")
    if not spec.paused:
        signals.append("Resume")
    can_roll_back = spec.auto_rollback and bool(state.stable) and state.stable != target
    steps = spec.strategy.canary.steps if spec.strategy.canary is not None else []
    current = steps[state.step] if parts is not None and state.step < len(steps) else None
    analysed = current is not None and current.analysis is not None and analysis is not None
    if analysed and analysis is not None and analysis.phase == "Failed":
        state.notes["AnalysisFailed"] = analysis.message
        signals.append("AnalysisFailed")
    waves = spec.strategy.waves
    if parts is not None and waves and state.wave < len(waves):
        failed = _wave_failures(parts.update[-1], instances, restarts)
        if failed > waves[state.wave].max_failures:
            state.notes["WaveFailed"] = f"{failed} failed"
            signals.append("WaveFailedRollback" if can_roll_back else "WaveFailed")
    elif can_roll_back and _crash_looping(target, instances, restarts):
        signals.append("CrashLoopRollback")
    if complete:
        signals.append("Complete")
    waiting = current is not None and current.kind != "setWeight"
    if not waiting and now >= state.progress_time + spec.progress_deadline_seconds:
        signals.append("DeadlineRollback" if can_roll_back else "Deadline")
    if parts is not None:
        promote = annotations.get(PROMOTE_ANNOTATION, "")
        if promote == f"{spec_hash}/full":
            signals.append("PromoteFull")
        elif promote == f"{spec_hash}/{state.step}.{state.wave}":
            signals.append("Promote")
        converged = _converged(parts, instances, now, spec.min_ready_seconds)
        if current is not None:
            if current.kind == "setWeight" and converged:
                signals.append("StepDone")
            elif current.pause is not None and current.pause.duration is not None:
                if now >= state.step_started + current.pause.duration:
                    signals.append("StepDone")
            elif analysed and analysis is not None and analysis.phase == "Passed":
                state.notes["StepDone"] = analysis.message
                signals.append("StepDone")
        elif state.wave < len(waves) and converged:
            # The last wave needs no bake here: nothing waits for it (bakeSeconds, the
            # Deployment's, still decides when the revision becomes stable).
            baked_from = max(state.progress_time, state.step_started)
            last = state.wave == len(waves) - 1
            if last or now >= baked_from + waves[state.wave].bake_seconds:
                signals.append("WaveDone")
    if target != state.stable:
        if complete and now >= state.progress_time + spec.bake_seconds:
            signals.append("Baked")
        if not complete:
            signals.append("Incomplete")
    return signals


def _wave_failures(
    group: Group, instances: Sequence[Instance], restarts: Mapping[str, int] | None
) -> int:
    """Instances of the current wave's group that failed or crash-loop."""
    counts = restarts or {}
    failed = 0
    for instance in instances:
        if instance.metadata.deletion_timestamp or not _member(instance, group):
            continue
        phase_failed = instance.status.phase == "Failed"
        if phase_failed or counts.get(instance.metadata.name, 0) >= CRASH_LOOP_RESTARTS:
            failed += 1
    return failed


def _member(instance: Instance, group: Group, *, any_pin: bool = False) -> bool:
    meta = instance.metadata
    if meta.labels.get(HASH_LABEL) != group.revision:
        return False
    return any_pin or meta.annotations.get(CLUSTERS_ANNOTATION) == group.pin


def _converged(
    parts: Split,
    instances: Sequence[Instance],
    now: float,
    min_ready: int,
) -> bool:
    """Every group has exactly its count, all available; nothing else runs or terminates."""
    if any(i.metadata.deletion_timestamp for i in instances):
        return False
    live = [i for i in instances if FAILOVER_PENDING not in i.metadata.annotations]
    seen = 0
    for group in parts.groups:
        members = [i for i in live if _member(i, group, any_pin=group is parts.stable)]
        if len(members) != group.count:
            return False
        if not all(is_available(i, now, min_ready) for i in members):
            return False
        seen += len(members)
    return seen == len(live)


def _transition(
    deployment: Deployment,
    revs: Mapping[str, Revision],
    state: _Rollout,
    *,
    spec_hash: str,
    target: str,
    signal: Signal,
    row: Any,
    now: float,
) -> None:
    if signal == "NewTemplate":
        state.update_revision = spec_hash
        state.step, state.wave = 0, 0
        state.step_started, state.step_moved = now, True
    if row.advance_step:
        if state.step < _steps(deployment):
            state.step += 1
        else:
            state.wave += 1
    if row.advance_wave:
        state.wave += 1
    if row.finish:
        state.step, state.wave = _steps(deployment), len(deployment.spec.strategy.waves)
    if row.advance_step or row.advance_wave or row.finish:
        state.step_started, state.step_moved = now, True
    if row.forget_failed:
        state.failed = ""
    if row.remember_failed:
        state.failed = spec_hash
    state.phase = row.next
    state.reason = row.reason
    state.message = _message(
        deployment, revs, state, spec_hash=spec_hash, target=target, reason=row.reason
    )
    note = state.notes.get(signal)
    if note:
        state.message = (
            f"{state.message}: {note}"
            if ";" not in state.message
            else (state.message.replace(";", f": {note};", 1))
        )
    state.progress_time = now  # any transition restarts the deadline and bake clocks
    state.transitioned = True
    state.events.append(RecordEvent(row.reason, state.message, row.warning))


def _number(revs: Mapping[str, Revision], revision: str) -> str:
    found = revs.get(revision)
    return f"revision {found.spec.revision} ({revision})" if found else f"revision {revision}"


def _message(
    deployment: Deployment,
    revs: Mapping[str, Revision],
    state: _Rollout,
    *,
    spec_hash: str,
    target: str,
    reason: str,
) -> str:
    spec = deployment.spec
    update = _number(revs, spec_hash)
    stable = _number(revs, state.stable)
    match reason:
        case "NewRevisionCreated":
            return f"rolling out {update}"
        case "DeploymentPaused":
            return f"rollout of {update} paused"
        case "DeploymentResumed":
            return f"rollout of {update} resumed"
        case "NewRevisionAvailable":
            return f"{_number(revs, target)} is rolled out and available"
        case "InstancesUnavailable":
            return f"{_number(revs, target)} lost availability before it became stable"
        case "RevisionStable":
            return f"{_number(revs, target)} is stable (available for {spec.bake_seconds}s)"
        case "ProgressDeadlineExceeded" if state.phase == "RollingBack":
            return (
                f"{update} made no progress for {spec.progress_deadline_seconds}s; "
                f"rolling back to stable {stable}"
            )
        case "ProgressDeadlineExceeded":
            return f"{update} made no progress for {spec.progress_deadline_seconds}s"
        case "CrashLoop":
            return (
                f"instances of {update} crash-loop (restarted {CRASH_LOOP_RESTARTS}+ times "
                f"or failed); rolling back to stable {stable}"
            )
        case "RolledBack":
            return (
                f"rolled back to stable {stable}; {update} is not retried until the "
                "template changes"
            )
        case "RolloutAborted":
            return f"rollout of {update} aborted; rolling back to stable {stable}"
        case "AnalysisFailed":
            return f"analysis of {update} failed; rolling back to stable {stable}"
        case "WaveFailed" if state.phase == "RollingBack":
            return (
                f"wave {state.wave + 1} of {update} failed; rolling back every wave to "
                f"stable {stable}"
            )
        case "WaveFailed":
            return f"wave {state.wave + 1} of {update} failed; later waves are not touched"
        case "PromotedFull":
            return f"{update} promoted: every remaining step and wave skipped"
        case "Promoted" | "CanaryStepComplete" | "WaveComplete":
            return f"rolling out {update}: {_where(deployment, state)}"
    return reason


def _where(deployment: Deployment, state: _Rollout) -> str:
    """The step and wave a rollout stands at, for messages: "step 3/5 (pause 30s)"."""
    strategy = deployment.spec.strategy
    steps = strategy.canary.steps if strategy.canary is not None else []
    parts: list[str] = []
    if state.step < len(steps):
        item = steps[state.step]
        if item.set_weight is not None:
            what = f"setWeight {item.set_weight}%"
        elif item.pause is not None:
            duration = item.pause.duration
            what = "pause until promoted" if duration is None else f"pause {duration}s"
        else:
            what = "analysis"
        parts.append(f"step {state.step + 1}/{len(steps)} ({what})")
    elif steps:
        parts.append("canary steps done")
    waves = strategy.waves
    if state.wave < len(waves):
        wave = waves[state.wave]
        label = wave.name or ",".join(wave.clusters) or "selected clusters"
        parts.append(f"wave {state.wave + 1}/{len(waves)} ({label})")
    elif waves:
        parts.append("every wave done")
    return ", ".join(parts) or "rolling out"


def _crash_looping(
    target: str, instances: Sequence[Instance], restarts: Mapping[str, int] | None
) -> bool:
    counts = restarts or {}
    for instance in instances:
        if instance.metadata.labels.get(HASH_LABEL) != target:
            continue
        if instance.metadata.deletion_timestamp:
            continue
        if instance.status.phase == "Failed":
            return True
        if counts.get(instance.metadata.name, 0) >= CRASH_LOOP_RESTARTS:
            return True
    return False


def _complete(
    deployment: Deployment, target: str, instances: Sequence[Instance], now: float
) -> bool:
    """Every replica runs `target` and is available, and nothing else runs."""
    live = [i for i in instances if not i.metadata.deletion_timestamp]
    if any(i.metadata.labels.get(HASH_LABEL) != target for i in live):
        return False
    if len(live) != deployment.spec.replicas:
        return False
    return all(is_available(i, now, deployment.spec.min_ready_seconds) for i in live)


def _paused_fill(
    status: DeploymentStatus,
    target: str,
    instances: Sequence[Instance],
    revs: Mapping[str, Revision],
) -> tuple[str, InstanceTemplate] | None:
    """While paused, scaling up adds Instances of the revision most old ones run."""
    counts = Counter(
        i.metadata.labels.get(HASH_LABEL, "")
        for i in instances
        if not i.metadata.deletion_timestamp and i.metadata.labels.get(HASH_LABEL) != target
    )
    choices = [h for h, _ in counts.most_common() if h in revs]
    if status.current_revision in choices:
        choices.insert(0, status.current_revision)
    if not choices:
        return None
    return choices[0], revs[choices[0]].spec.template


def plan_instances(
    deployment: Deployment,
    revision: str,
    template: InstanceTemplate,
    instances: Sequence[Instance],
    now: float,
    *,
    paused_fill: tuple[str, InstanceTemplate] | None = None,
) -> tuple[list[Action], list[Instance]]:
    """Converge the Instances on `replicas` of the target `revision` (with `template`);
    returns the actions and the live Instances as they will be once applied.

    Instances of the target are named by index 0..replicas-1: missing ones are created,
    extras deleted (highest index first). Instances of other revisions are replaced:
    "Recreate" deletes them all, and creates new ones once they are gone; "RollingUpdate"
    creates new ones up to replicas + maxSurge in total and deletes old ones while at least
    replicas - maxUnavailable stay available (unavailable old ones go first). With
    `paused_fill` (the rollout is paused) the split is frozen: no new target Instances
    beyond those there are, old ones kept, and scaling up adds Instances of `paused_fill`.

    A terminating Instance (an exclusive one waits, deleted, until its copy is certainly
    stopped) serves nobody and is not counted in the status, but still holds its name: one
    of the target keeps its index taken (neither created again nor counted as missing) and
    counts towards replicas + maxSurge; "Recreate" waits for old ones to go.

    An Instance marked `FAILOVER_PENDING` (being moved gracefully off an Unreachable
    cluster) is outgoing: it counts neither towards replicas nor the rollout budget, so a
    replacement is created under the lowest free index, while it keeps its own name (and
    runs, perhaps, behind a partition). This is the one way a Deployment has more Instances
    than replicas + maxSurge, bounded by the pending ones. Pending Instances are deleted as
    replacements become Ready: at most replicas - (Ready counted Instances) of them stay
    (unready ones go first). The failover controller deletes those left when their grace
    period ends.

    The indices that count ("slots") are the `replicas` lowest ones held by counted or
    terminating Instances of the target, topped up with the lowest free ones: 0..replicas-1
    while nothing was ever pending, and no renaming once a failover is over (a replacement
    keeps its higher index rather than move once more).
    """
    name = deployment.metadata.name
    replicas = deployment.spec.replicas
    min_ready = deployment.spec.min_ready_seconds
    live = [i for i in instances if not i.metadata.deletion_timestamp]
    pending = [i for i in live if FAILOVER_PENDING in i.metadata.annotations]
    counted = [i for i in live if FAILOVER_PENDING not in i.metadata.annotations]
    current: dict[int, Instance] = {}
    old: list[Instance] = []
    prefix = f"{name}-{revision}-"
    for instance in counted:
        index = _index(instance.metadata.name, prefix)
        if index is None:
            old.append(instance)
        else:
            current[index] = instance
    held: set[int] = set()  # indices whose Instance is terminating: their names are taken
    old_terminating = False
    for instance in instances:
        if instance.metadata.deletion_timestamp:
            index = _index(instance.metadata.name, prefix)
            if index is None:
                old_terminating = True
            else:
                held.add(index)
    taken = set(current) | held
    for instance in pending:
        index = _index(instance.metadata.name, prefix)
        if index is not None:
            taken.add(index)
    slots = _slots(sorted(set(current) | held), taken, replicas)
    held_slots = len(held & slots)

    actions: list[Action] = []
    deleted: set[str] = set()
    created: list[Instance] = []

    def delete(instance: Instance) -> None:
        meta = instance.metadata
        actions.append(DeleteInstance(meta.namespace, meta.name, meta.uid))
        deleted.add(meta.name)

    def available(instance: Instance) -> bool:
        return is_available(instance, now, min_ready)

    # Target extras: highest index first.
    for index in sorted((i for i in current if i not in slots), reverse=True):
        delete(current[index])
    missing = [i for i in sorted(slots) if i not in current and i not in held]

    if paused_fill is not None and (old or old_terminating):
        # Frozen: the target keeps the Instances it has, old ones fill up to replicas.
        creatable = 0
        kept_current = sum(1 for i in current if i in slots) + held_slots
        wanted_old = max(0, replicas - kept_current)
        by_name = sorted(old, key=lambda i: i.metadata.name, reverse=True)
        for instance in sorted(by_name, key=available)[: max(0, len(old) - wanted_old)]:
            delete(instance)
        fill_hash, fill_template = paused_fill
        fill_prefix = f"{name}-{fill_hash}-"
        fill_taken = {
            index for i in instances if (index := _index(i.metadata.name, fill_prefix)) is not None
        }
        free = (i for i in range(len(fill_taken) + replicas + 1) if i not in fill_taken)
        for _ in range(max(0, wanted_old - len(old))):
            instance = new_instance(deployment, fill_hash, next(free), fill_template)
            actions.append(CreateInstance(instance))
            created.append(instance)
    elif deployment.spec.strategy.type == "Recreate" and (old or old_terminating):
        for instance in sorted(old, key=lambda i: i.metadata.name):
            delete(instance)
        creatable = 0  # new ones only once every old one is gone, terminating ones too
    elif not old:
        creatable = len(missing)
    else:
        surge, unavailable = rollout_budget(deployment)
        kept_current = sum(1 for i in current if i in slots) + held_slots
        creatable = max(0, replicas + surge - (kept_current + len(old)))
        up = sum(1 for i, inst in current.items() if i in slots and available(inst))
        up += sum(1 for inst in old if available(inst))
        floor = replicas - unavailable
        # Unavailable old Instances serve nobody (or not long enough): they go first, then
        # available ones while enough stay available. Among equals, the highest name first.
        by_name = sorted(old, key=lambda i: i.metadata.name, reverse=True)
        for instance in sorted(by_name, key=available):
            if not available(instance):
                delete(instance)
            elif up - 1 >= floor:
                delete(instance)
                up -= 1

    for index in missing[:creatable]:
        instance = new_instance(deployment, revision, index, template)
        actions.append(CreateInstance(instance))
        created.append(instance)

    # Outgoing (failover-pending) Instances stay only while replacements are not yet Ready.
    ready_counted = sum(1 for i in counted if i.metadata.name not in deleted and is_ready(i))
    keep = max(0, replicas - ready_counted)
    by_name = sorted(pending, key=lambda i: i.metadata.name, reverse=True)
    for instance in sorted(by_name, key=is_ready)[: max(0, len(pending) - keep)]:
        delete(instance)

    remaining = [i for i in live if i.metadata.name not in deleted] + created
    return actions, remaining


def plan_split(
    deployment: Deployment,
    parts: Split,
    templates: Mapping[str, InstanceTemplate],
    instances: Sequence[Instance],
    now: float,
    *,
    node_clusters: Mapping[str, str],
) -> tuple[list[Action], list[Instance]]:
    """Converge on a canary or wave split (`progressive.split`): each update group gets
    exactly its count of Instances of the update revision pinned to its clusters, the
    stable group its count of the stable revision; everything else is outgoing. Returns the
    actions and the live Instances as they will be once applied.

    The budget is RollingUpdate's: at most replicas + maxSurge Instances (terminating ones
    included), and available ones are deleted only while replicas - maxUnavailable stay
    available, so a stable Instance goes only once its replacement is available (within
    the budget). Surplus Instances of an update group go at once (an abort, a lower
    weight). Surplus stable Instances go in this order: those in a started wave's clusters,
    those elsewhere, then those in later waves, the last wave's last; unavailable ones
    first, then the highest name. New Instances of an update group go before stable ones,
    each under the lowest index free for its revision.
    """
    name = deployment.metadata.name
    replicas = deployment.spec.replicas
    min_ready = deployment.spec.min_ready_seconds
    live = [i for i in instances if not i.metadata.deletion_timestamp]
    pending = [i for i in live if FAILOVER_PENDING in i.metadata.annotations]
    counted = [i for i in live if FAILOVER_PENDING not in i.metadata.annotations]
    terminating = sum(
        1
        for i in instances
        if i.metadata.deletion_timestamp and FAILOVER_PENDING not in i.metadata.annotations
    )
    actions: list[Action] = []
    deleted: set[str] = set()
    created: list[Instance] = []

    def delete(instance: Instance) -> None:
        meta = instance.metadata
        actions.append(DeleteInstance(meta.namespace, meta.name, meta.uid))
        deleted.add(meta.name)

    def available(instance: Instance) -> bool:
        return is_available(instance, now, min_ready)

    def by_name_desc(items: Sequence[Instance]) -> list[Instance]:
        return sorted(items, key=lambda i: i.metadata.name, reverse=True)

    later_rank = {c: 2 + len(parts.later) - n for n, w in enumerate(parts.later) for c in w}

    def stable_rank(instance: Instance) -> int:
        cluster = node_clusters.get(instance.spec.node_name, "")
        if cluster in parts.started:
            return 0
        return later_rank.get(cluster, 1)

    claimed: set[str] = set()
    outgoing: list[Instance] = []
    missing: list[tuple[Group, int]] = []
    for group in parts.groups:
        is_stable = group is parts.stable
        members = [
            i
            for i in counted
            if i.metadata.name not in claimed and _member(i, group, any_pin=is_stable)
        ]
        claimed.update(i.metadata.name for i in members)
        surplus = len(members) - group.count
        if surplus > 0 and is_stable:
            ranked = sorted(by_name_desc(members), key=lambda i: (available(i), stable_rank(i)))
            outgoing.extend(ranked[:surplus])
        elif surplus > 0:
            for instance in sorted(by_name_desc(members), key=available)[:surplus]:
                delete(instance)
        elif surplus < 0:
            missing.append((group, -surplus))
    outgoing.extend(i for i in counted if i.metadata.name not in claimed)

    surge, unavailable = rollout_budget(deployment)
    creatable = max(0, replicas + surge - len(counted) - terminating)
    taken: dict[str, set[int]] = {}
    for instance in instances:
        revision = instance.metadata.labels.get(HASH_LABEL, "")
        index = _index(instance.metadata.name, f"{name}-{revision}-")
        if index is not None:
            taken.setdefault(revision, set()).add(index)
    for group, count in missing:
        template = templates.get(group.revision)
        if template is None:
            continue
        used = taken.setdefault(group.revision, set())
        for _ in range(min(count, creatable)):
            index = next(i for i in range(len(used) + 1) if i not in used)
            used.add(index)
            instance = new_instance(deployment, group.revision, index, template)
            if group.pin is not None:
                meta = instance.metadata
                annotations = {**meta.annotations, CLUSTERS_ANNOTATION: group.pin}
                instance = msgspec.structs.replace(
                    instance, metadata=msgspec.structs.replace(meta, annotations=annotations)
                )
            actions.append(CreateInstance(instance))
            created.append(instance)
            creatable -= 1

    up = sum(1 for i in counted if i.metadata.name not in deleted and available(i))
    floor = replicas - unavailable
    for instance in sorted(outgoing, key=available):  # stable order otherwise kept
        if not available(instance):
            delete(instance)
        elif up - 1 >= floor:
            delete(instance)
            up -= 1

    # Outgoing (failover-pending) Instances stay only while replacements are not yet Ready.
    ready_counted = sum(1 for i in counted if i.metadata.name not in deleted and is_ready(i))
    keep = max(0, replicas - ready_counted)
    for instance in sorted(by_name_desc(pending), key=is_ready)[: max(0, len(pending) - keep)]:
        delete(instance)

    remaining = [i for i in live if i.metadata.name not in deleted] + created
    return actions, remaining


def _slots(occupied: list[int], taken: set[int], replicas: int) -> set[int]:
    """The indices that count: the `replicas` lowest `occupied` ones (ascending), topped up
    with the lowest indices not `taken` by any Instance."""
    chosen = occupied[:replicas]
    free = (i for i in range(replicas + len(taken) + 1) if i not in taken)
    while len(chosen) < replicas:
        chosen.append(next(free))
    return set(chosen)


def _index(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    tail = name[len(prefix) :]
    if not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        return None
    return int(tail)


def _owner(deployment: Deployment) -> OwnerReference:
    meta = deployment.metadata
    return OwnerReference(
        api_version=API_VERSION,
        kind="Deployment",
        name=meta.name,
        uid=meta.uid,
        controller=True,
        block_owner_deletion=True,
    )


def new_instance(
    deployment: Deployment,
    revision: str,
    index: int,
    template: InstanceTemplate | None = None,
) -> Instance:
    """The Instance `index` of `revision` (by default the spec's template), owned by the
    Deployment."""
    meta = deployment.metadata
    template = template or deployment.spec.template
    labels = {**template.metadata.labels, DEPLOYMENT_LABEL: meta.name, HASH_LABEL: revision}
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(
            name=instance_name(meta.name, revision, index),
            namespace=meta.namespace,
            labels=labels,
            annotations=dict(template.metadata.annotations),
            owner_references=[_owner(deployment)],
        ),
        spec=msgspec.structs.replace(template.spec, node_name=""),
    )


def new_revision(deployment: Deployment, revision: str, number: int) -> Revision:
    meta = deployment.metadata
    return Revision(
        kind="Revision",
        metadata=ObjectMeta(
            name=revision_name(meta.name, revision),
            namespace=meta.namespace,
            labels={DEPLOYMENT_LABEL: meta.name, HASH_LABEL: revision},
            owner_references=[_owner(deployment)],
        ),
        spec=RevisionSpec(revision=number, template=deployment.spec.template, deployment=meta.name),
    )


def _condition(status: DeploymentStatus, kind: str) -> DeploymentCondition | None:
    return next((c for c in status.conditions if c.type == kind), None)


def _set_condition(
    previous: DeploymentCondition | None,
    kind: str,
    value: Literal["True", "False", "Unknown"],
    *,
    reason: str,
    message: str,
    generation: int,
    now: float,
    update_time: float | None = None,
) -> DeploymentCondition:
    """A condition whose lastTransitionTime moves only when its status or reason does."""
    stamp = rfc3339(now)
    changed = previous is None or previous.status != value or previous.reason != reason
    return DeploymentCondition(
        type=kind,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=stamp
        if changed or previous is None
        else previous.last_transition_time,
        observed_generation=generation,
        last_update_time=rfc3339(update_time) if update_time is not None else None,
    )


# Progressing condition status by phase (Kubernetes: True while moving or done, False once
# failed, Unknown while paused).
_PROGRESSING_STATUS: dict[Phase, Literal["True", "False", "Unknown"]] = {
    "Progressing": "True",
    "Paused": "Unknown",
    "Complete": "True",
    "Failed": "False",
    "RollingBack": "True",
    "RolledBack": "False",
}


def _status(
    deployment: Deployment,
    state: _Rollout,
    target: str,
    instances: Sequence[Instance],
    now: float,
) -> DeploymentStatus:
    previous = deployment.status
    generation = deployment.metadata.generation
    min_ready = deployment.spec.min_ready_seconds
    updated = [i for i in instances if i.metadata.labels.get(HASH_LABEL) == target]
    ready = sum(1 for i in instances if is_ready(i))
    available = sum(1 for i in instances if is_available(i, now, min_ready))
    outdated = sorted({i.metadata.labels.get(HASH_LABEL, "") for i in instances} - {target, ""})
    if not outdated:
        current_revision = target
    elif previous.current_revision in outdated:
        current_revision = previous.current_revision
    else:
        current_revision = outdated[0]
    # Progress (for the deadline): more updated or available Instances, or fewer old ones,
    # while the rollout moves. Counted only when these counts change, so no extra write.
    if state.phase in ("Progressing", "RollingBack") and not state.transitioned:
        old_count = previous.replicas - previous.updated_replicas
        if (
            len(updated) > previous.updated_replicas
            or available > previous.available_replicas
            or len(instances) - len(updated) < old_count
        ):
            state.progress_time = now
    replicas = deployment.spec.replicas
    _, unavailable = rollout_budget(deployment)
    if deployment.spec.strategy.type == "Recreate":
        unavailable = 0
    enough = available >= replicas - unavailable
    conditions = [
        _set_condition(
            _condition(previous, "Available"),
            "Available",
            "True" if enough else "False",
            reason="MinimumReplicasAvailable" if enough else "MinimumReplicasUnavailable",
            message=f"{available} of {replicas} instances available",
            generation=generation,
            now=now,
        ),
        _set_condition(
            _condition(previous, "Progressing"),
            "Progressing",
            _PROGRESSING_STATUS[state.phase],
            reason=state.reason or "NewRevisionCreated",
            message=state.message,
            generation=generation,
            now=now,
            update_time=state.progress_time,
        ),
    ]
    if state.failed and state.phase in ROLLBACK_PHASES:
        # Why it was rolled back: set on the way into RollingBack, then kept.
        rolled = _condition(previous, "RolledBack")
        fresh = rolled is None or (state.transitioned and state.phase == "RollingBack")
        conditions.append(
            _set_condition(
                rolled,
                "RolledBack",
                "True",
                reason=state.reason if fresh or rolled is None else rolled.reason,
                message=state.message if fresh or rolled is None else rolled.message,
                generation=generation,
                now=now,
            )
        )
    failure = _condition(previous, REPLICA_FAILURE)
    if failure is not None:
        # Set and cleared by what the creates met (`settle_creates`), not by the plan.
        conditions.append(failure)
    return msgspec.structs.replace(
        previous,
        observed_generation=generation,
        replicas=len(instances),
        ready_replicas=ready,
        updated_replicas=len(updated),
        available_replicas=available,
        current_revision=current_revision,
        update_revision=state.update_revision,
        stable_revision=state.stable,
        failed_revision=state.failed,
        phase=state.phase,
        current_step=state.step,
        current_wave=state.wave,
        step_started_at=rfc3339(state.step_started)
        if state.step_moved
        else previous.step_started_at,
        conditions=conditions,
    )


# --------------------------------------------------------------------------- creates refused

REPLICA_FAILURE = "ReplicaFailure"

# What this reconcile's Instance creates met: a 403 (a ResourceQuota, most often), success,
# or nothing to create; "short" adds that the Deployment still has fewer Instances than
# replicas (a create not tried yet, e.g. a paused rollout).
CreateOutcome = Literal["refused", "created", "idle", "short"]
_Change = Literal["set", "keep", "clear"]

# (ReplicaFailure True now?, outcome) -> what becomes of the condition. Only "set" with a new
# message and "clear" of a present condition change the status: a retry refused alike
# writes nothing.
# fmt: off
REPLICA_FAILURE_TRANSITIONS: dict[tuple[bool, CreateOutcome], _Change] = {
    # Refused: say why, with the 403's message (it names the quota and the limit).
    (False, "refused"): "set",
    # Refused again: the same message keeps the condition as it is; another one (a
    # different quota or limit) replaces the message, lastTransitionTime kept.
    (True,  "refused"): "set",
    # Creates pass again (a limit raised, usage freed): the failure is over.
    (True,  "created"): "clear",
    # Nothing to create and as many Instances as replicas (scaled down, say): over too.
    (True,  "idle"):    "clear",
    # Still short but nothing tried this time (paused, a stale cache's plan not
    # confirmed): nothing learnt, so nothing written.
    (True,  "short"):   "keep",
    (False, "created"): "keep",
    (False, "idle"):    "keep",
    (False, "short"):   "keep",
}
# fmt: on


def create_outcome(
    deployment: Deployment, instances: Sequence[Instance], *, creates: int, refused: str | None
) -> CreateOutcome:
    """Classify what the reconcile's `creates` Instance creates met (`refused`: the first
    refusal's message), given the Instances the plan saw."""
    if refused is not None:
        return "refused"
    if creates:
        return "created"
    running = [i for i in instances if selects(deployment, i) and not i.metadata.deletion_timestamp]
    return "short" if len(running) < deployment.spec.replicas else "idle"


def settle_creates(
    deployment: Deployment,
    status: DeploymentStatus,
    outcome: CreateOutcome,
    *,
    refused: str | None,
    now: float,
) -> DeploymentStatus:
    """`status` (the planned one) with the ReplicaFailure condition as `outcome` leaves it:
    True with reason FailedCreate and the refusal's message, or removed. Pure; the shell
    writes the result only when it differs from the stored status."""
    current = _condition(status, REPLICA_FAILURE)
    present = current is not None and current.status == "True"
    change = REPLICA_FAILURE_TRANSITIONS[(present, outcome)]
    others = [c for c in status.conditions if c.type != REPLICA_FAILURE]
    if change == "keep":
        return status
    if change == "clear":
        return msgspec.structs.replace(status, conditions=others)
    failure = _set_condition(
        current,
        REPLICA_FAILURE,
        "True",
        reason="FailedCreate",
        message=refused or "",
        generation=deployment.metadata.generation,
        now=now,
    )
    return msgspec.structs.replace(status, conditions=[*others, failure])


def _prune(
    deployment: Deployment,
    revs: Mapping[str, Revision],
    keep: set[str],
    instances: Sequence[Instance],
) -> list[Action]:
    """Delete the oldest unused Revisions beyond revisionHistoryLimit. Used: the update,
    target and stable revisions, and any an Instance still runs."""
    used = keep | {i.metadata.labels.get(HASH_LABEL, "") for i in instances}
    unused = sorted(
        (r for h, r in revs.items() if h not in used and r.metadata.uid),
        key=lambda r: r.spec.revision,
    )
    excess = len(unused) - deployment.spec.revision_history_limit
    return [
        DeleteRevision(r.metadata.namespace, r.metadata.name, r.metadata.uid)
        for r in unused[: max(0, excess)]
    ]


def _wake(
    deployment: Deployment,
    state: _Rollout,
    target: str,
    instances: Sequence[Instance],
    now: float,
    *,
    parts: Split | None = None,
) -> float | None:
    """When the next timer runs out, if one runs."""
    spec = deployment.spec
    times: list[float] = []
    steps = spec.strategy.canary.steps if spec.strategy.canary is not None else []
    if parts is not None and state.phase == "Progressing":
        if state.step < len(steps):
            current = steps[state.step]
            if current.pause is not None and current.pause.duration is not None:
                times.append(state.step_started + current.pause.duration)
            if current.analysis is not None:
                times.append(now + current.analysis.interval_seconds)
        elif state.wave < len(spec.strategy.waves):
            bake = spec.strategy.waves[state.wave].bake_seconds
            times.append(max(state.progress_time, state.step_started) + bake)
            times.append(now + CRASH_LOOP_POLL_SECONDS)  # failures come from telemetry
    if spec.min_ready_seconds > 0:
        for instance in instances:
            since = _ready_since(instance) if is_ready(instance) else None
            if since is not None and since + spec.min_ready_seconds > now:
                times.append(since + spec.min_ready_seconds)
    if state.phase == "Progressing":
        times.append(state.progress_time + spec.progress_deadline_seconds)
    if state.phase == "Complete" and target != state.stable:
        times.append(state.progress_time + spec.bake_seconds)
    judged = state.phase in ("Progressing", "Complete") and target != state.stable
    if spec.auto_rollback and state.stable and judged:
        times.append(now + CRASH_LOOP_POLL_SECONDS)
    future = [t for t in times if t > now]
    return min(future) if future else (now if times else None)


# --------------------------------------------------------------------------- the shell


async def execute(
    client: KeelClient, deployment: Deployment, action: Action, *, now: float | None = None
) -> None:
    """Apply one action idempotently: a create finding the name taken, or a delete finding
    the object gone (or replaced by another incarnation), is done. A status write is
    conditional on the resourceVersion planned on (`Conflict`: look again)."""
    match action:
        case CreateInstance(instance=instance):
            with contextlib.suppress(AlreadyExists):
                await client.create(instance)
        case DeleteInstance(namespace=namespace, name=name, uid=uid):
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    Instance, name, namespace=namespace, preconditions=Preconditions(uid=uid)
                )
        case CreateRevision(revision=revision):
            with contextlib.suppress(AlreadyExists):
                await client.create(revision)
        case DeleteRevision(namespace=namespace, name=name, uid=uid):
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    Revision, name, namespace=namespace, preconditions=Preconditions(uid=uid)
                )
        case MarkStable(namespace=namespace, name=name, since=since):
            with contextlib.suppress(NotFound):
                patch = {"metadata": {"annotations": {STABLE_ANNOTATION: since}}}
                await client.patch(Revision, name, patch, namespace=namespace)
        case UpdateStatus(status=status):
            await client.update_status(msgspec.structs.replace(deployment, status=status))
        case RecordEvent(reason=reason, message=message, warning=warning):
            meta = deployment.metadata
            event = {
                "involvedObject": {
                    "kind": "Deployment",
                    "namespace": meta.namespace,
                    "name": meta.name,
                },
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
                "source": "keel-controller-manager/deployment",
                # the events endpoint requires it (and refuses involvedObject.uid): without
                # both fixes every Deployment event was refused with 422 and lost
                "time": rfc3339(SystemClock().wall() if now is None else now),
            }
            try:
                await client.record_event(event)
            except (KeelClientError, OSError) as exc:
                logging.getLogger(__name__).debug("event not recorded: %s", exc)
        case RequeueAfter():
            pass


_INSTANCE_ACTIONS = (CreateInstance, DeleteInstance)


class DeploymentController:
    """Reconciles Deployments: see the module docstring. Instances and Revisions map to
    their owner.

    The cache proposes, a live read confirms: when the plan on the (possibly stale) cache
    creates or deletes Instances, the Instances are listed from the API server and the same
    `plan` runs again; only instance actions both plans agree on are executed, and the rest
    (status, events) comes from the live plan. A stale cache therefore never deletes an old
    Instance whose replacement is not available, nor surges past replicas + maxSurge.
    """

    name = "deployment"
    primary = Deployment

    def __init__(self, cache: Callable[[type[Any]], Indexer[Any]] | None = None) -> None:
        self.analyses = AnalysisRuns()
        self._cache = cache
        # Nodes and Clusters: read by wave rollouts (which cluster runs what), no keys of
        # their own. A ResourceQuota's change (capacity freed, limits raised) concerns the
        # Deployments of its namespace still short of Instances: a create refused by the
        # quota is retried then, not only when its backoff ends.
        self.related = (
            Related(Instance),
            Related(Revision),
            Related(Node, to_keys=lambda _obj: ()),
            Related(Cluster, to_keys=lambda _obj: ()),
            Related(ResourceQuota, to_keys=self._short_of_instances),
        )

    def _short_of_instances(self, quota: Resource) -> Iterable[str]:
        if self._cache is None:
            return ()
        namespace = quota.metadata.namespace
        return [
            f"{namespace}/{d.metadata.name}"
            for d in self._cache(Deployment).by_index("namespace", namespace)
            if d.status.replicas < d.spec.replicas or _failing_creates(d)
        ]

    async def reconcile(self, ctx: Context, key: str) -> Result:
        deployment: Deployment | None = ctx.cache(Deployment).get(key)
        if deployment is None:
            self.analyses.forget(key)
            return Result()  # gone: the garbage collector takes its Instances
        meta = deployment.metadata
        owned = _owned(ctx.cache(Instance).by_index("owner", meta.uid), meta.namespace)
        revisions = _owned(ctx.cache(Revision).by_index("owner", meta.uid), meta.namespace)
        now = ctx.clock.wall()
        restarts = await _restarts(ctx, deployment)
        clusters: dict[str, dict[str, str]] = {}
        node_clusters: dict[str, str] = {}
        if deployment.spec.strategy.waves:
            for cluster in ctx.cache(Cluster).list():
                clusters[cluster.metadata.name] = dict(cluster.metadata.labels)
            for node in ctx.cache(Node).list():
                node_clusters[node.metadata.name] = node.spec.cluster
        analysis = await self._analysis(ctx, deployment, owned, now)
        inputs: dict[str, Any] = {
            "clusters": clusters,
            "node_clusters": node_clusters,
            "analysis": analysis,
        }
        actions = plan(deployment, revisions, owned, now, restarts, **inputs)
        seen: Sequence[Instance] = owned
        if needs_confirmation(actions):
            listed = await ctx.client.list(
                Instance, namespace=meta.namespace, label_selector={DEPLOYMENT_LABEL: meta.name}
            )
            live = [
                i
                for i in listed.items
                if any(r.uid == meta.uid for r in i.metadata.owner_references)
            ]
            actions = confirm(actions, plan(deployment, revisions, live, now, restarts, **inputs))
            seen = live
        requeue: float | None = None
        refused: Forbidden | None = None
        creates = 0
        written = False

        async def write_status(planned: DeploymentStatus) -> None:
            """The planned status with the ReplicaFailure condition as the creates (all
            before it in the plan's order) left it; nothing when that is what is stored."""
            nonlocal written
            written = True
            why = refusal_message(refused) if refused is not None else None
            outcome = create_outcome(deployment, seen, creates=creates, refused=why)
            settled = settle_creates(deployment, planned, outcome, refused=why, now=now)
            if settled != deployment.status:
                await execute(ctx.client, deployment, UpdateStatus(settled))

        for action in actions:
            if isinstance(action, RequeueAfter):
                requeue = action.seconds if requeue is None else min(requeue, action.seconds)
                continue
            if isinstance(action, UpdateStatus):
                await write_status(action.status)
                continue
            if isinstance(action, CreateInstance):
                if refused is not None:
                    continue  # the namespace's quota refused one: the others would fail alike
                creates += 1
            ctx.log.info("deployment %s: %s", key, _describe(action))
            try:
                await execute(ctx.client, deployment, action, now=ctx.clock.wall())
            except Forbidden as exc:
                if not isinstance(action, CreateInstance):
                    raise
                refused = exc
                await execute(ctx.client, deployment, failed_create(exc), now=ctx.clock.wall())
        if not written:  # the plan changed nothing in status; the creates may have
            await write_status(deployment.status)
        if refused is not None:
            # Everything else is done; failing the reconcile backs this key off
            # (exponentially) instead of retrying hot. A quota change brings it back early.
            raise refused
        return Result(requeue_after=requeue)

    async def _analysis(
        self, ctx: Context, deployment: Deployment, owned: Sequence[Instance], now: float
    ) -> Verdict | None:
        """The verdict of the analysis the rollout's current canary step runs, if it runs
        one (the step as status records it)."""
        status = deployment.status
        canary = deployment.spec.strategy.canary
        name = f"{deployment.metadata.namespace}/{deployment.metadata.name}"
        steps = canary.steps if canary is not None else []
        running = (
            status.phase == "Progressing"
            and status.stable_revision
            and status.update_revision == template_hash(deployment)
            and status.stable_revision != status.update_revision
            and status.current_step < len(steps)
        )
        analysis = steps[status.current_step].analysis if running else None
        if analysis is None:
            self.analyses.forget(name)
            return None
        canaries = [
            i
            for i in owned
            if i.metadata.labels.get(HASH_LABEL) == status.update_revision
            and not i.metadata.deletion_timestamp
        ]
        return await self.analyses.verdict(ctx, deployment, analysis, canaries, now)


def _failing_creates(deployment: Deployment) -> bool:
    """Its creates were refused (status counts the Instances it planned, so only the
    condition tells it is short)."""
    failure = _condition(deployment.status, REPLICA_FAILURE)
    return failure is not None and failure.status == "True"


def refusal_message(error: Forbidden) -> str:
    """Why the API server refused a create: its message, which for a quota names the quota
    and every limit exceeded."""
    return error.message or str(error)


def failed_create(error: Forbidden) -> RecordEvent:
    """The Warning event of a create the API server refused (a quota, most often)."""
    return RecordEvent("FailedCreate", f"Error creating: {refusal_message(error)}", True)


def needs_confirmation(actions: Sequence[Action]) -> bool:
    return any(isinstance(a, _INSTANCE_ACTIONS) for a in actions)


def confirm(proposed: Sequence[Action], confirmed: Sequence[Action]) -> list[Action]:
    """The live plan's actions, its instance actions only where the cached plan proposed
    them too (the cache proposes, a live read confirms)."""
    keys = {_instance_key(a) for a in proposed}
    return [
        a for a in confirmed if not isinstance(a, _INSTANCE_ACTIONS) or _instance_key(a) in keys
    ]


def _instance_key(action: Action) -> tuple[str, ...]:
    match action:
        case CreateInstance(instance=instance):
            return ("create", instance.metadata.name)
        case DeleteInstance(name=name, uid=uid):
            return ("delete", name, uid)
    return ()


def _owned(objects: Any, namespace: str) -> list[Any]:
    return [o for o in objects if o.metadata.namespace == namespace]


async def _restarts(ctx: Context, deployment: Deployment) -> dict[str, int] | None:
    """Restart counts of the Deployment's Instances (agent telemetry), read only while a
    rollout with autoRollback may still be judged; None when unknown."""
    status = deployment.status
    judged = deployment.spec.auto_rollback or deployment.spec.strategy.waves
    if not judged or not status.stable_revision:
        return None
    if status.phase in ROLLBACK_PHASES or status.stable_revision == template_hash(deployment):
        return None
    try:
        items = await ctx.client.get_telemetry(
            "instanceusages", namespace=deployment.metadata.namespace
        )
    except (KeelClientError, OSError):
        return None
    prefix = f"{deployment.metadata.name}-"
    counts: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        name = item.get("instance")
        restarts = item.get("restarts")
        if isinstance(name, str) and name.startswith(prefix) and isinstance(restarts, int):
            counts[name] = max(counts.get(name, 0), restarts)
    return counts


def _describe(action: Action) -> str:
    match action:
        case CreateInstance(instance=instance):
            return f"create instance {instance.metadata.name}"
        case DeleteInstance(name=name):
            return f"delete instance {name}"
        case CreateRevision(revision=revision):
            return f"create revision {revision.metadata.name} ({revision.spec.revision})"
        case DeleteRevision(name=name):
            return f"prune revision {name}"
        case MarkStable(name=name):
            return f"revision {name} is stable"
        case RecordEvent(reason=reason, message=message):
            return f"{reason}: {message}"
        case _:
            return type(action).__name__
