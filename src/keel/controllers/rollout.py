"""The rollout state machine of a Deployment: a transition table from (phase, signal) to the
next phase, pure and I/O-free. `keel.controllers.deployment.plan` observes the signals,
asks `step` for the transitions, and derives from the phase what to run (the target
revision) and which conditions to write; only transitions reach the store.

Extension points (canary steps, waves across clusters), for the strategies to come:
- a strategy adds phases to `Phase`, signals to `Signal` (observed in
  `deployment._signals`, in priority order) and rows to `TRANSITIONS`, e.g.
  ("CanaryStep", "StepDone") -> "CanaryStep" with the step index advanced in status, or
  ("CanaryStep", "AnalysisFailed") -> "RollingBack" with `remember_failed`;
- `deployment._target` picks the revision a phase runs (`ROLLBACK_PHASES` run the stable
  one); `deployment.plan_instances` converges the Instances on that revision within the
  surge/unavailability budget, and is where a per-revision split (a canary weight: so many
  Instances of the update revision, the rest on the stable one) or a per-wave set of
  clusters would be applied;
- every transition already becomes a status change and an event, so new rows need no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CRASH_LOOP_RESTARTS",
    "ROLLBACK_PHASES",
    "TRANSITIONS",
    "Phase",
    "Row",
    "Signal",
    "step",
]

Phase = Literal["Progressing", "Paused", "Complete", "Failed", "RollingBack", "RolledBack"]
Signal = Literal[
    "NewTemplate",  # spec.template hashes differently from status.updateRevision
    "Pause",  # spec.paused set while a rollout has work left
    "Resume",  # spec.paused cleared
    "Complete",  # every replica runs the target revision and is available, nothing else runs
    "Incomplete",  # no longer so, before the revision was marked stable
    "Baked",  # complete for bakeSeconds: the target revision becomes stable
    "Deadline",  # no progress for progressDeadlineSeconds
    "DeadlineRollback",  # ... with autoRollback and a stable revision to return to
    "CrashLoopRollback",  # new Instances crash-loop, with autoRollback and a stable revision
]

# A new Instance restarting this often (agent telemetry), or ending Failed, crash-loops.
CRASH_LOOP_RESTARTS = 3

# Phases that run the stable revision rather than the one the spec asks for.
ROLLBACK_PHASES: frozenset[Phase] = frozenset({"RollingBack", "RolledBack"})


@dataclass(frozen=True)
class Row:
    next: Phase
    reason: str  # the Progressing condition's reason (and the event's) after this row
    warning: bool = False  # the event's type
    mark_stable: bool = False  # the target revision becomes the stable one
    remember_failed: bool = False  # the update revision is not retried until it changes
    forget_failed: bool = False


ANY: Literal["*"] = "*"

# (phase, signal) -> row; ANY matches every phase. The comment says why the row exists.
# fmt: off
TRANSITIONS: dict[tuple[Phase | Literal["*"], Signal], Row] = {
    # A new template starts a new rollout from wherever the last one was, forgetting a
    # failed revision: it is a different template (the same one would not signal).
    (ANY,           "NewTemplate"):       Row("Progressing", "NewRevisionCreated",
                                              forget_failed=True),
    # Paused: no progress and no deadline (as Kubernetes, a paused rollout cannot fail).
    ("Progressing", "Pause"):             Row("Paused", "DeploymentPaused"),
    ("Failed",      "Pause"):             Row("Paused", "DeploymentPaused"),
    # Resumed: the deadline counts from now, not from before the pause.
    ("Paused",      "Resume"):            Row("Progressing", "DeploymentResumed"),
    ("Progressing", "Complete"):          Row("Complete", "NewRevisionAvailable"),
    # A rollout that exceeded its deadline may still finish (a node came back, say).
    ("Failed",      "Complete"):          Row("Complete", "NewRevisionAvailable"),
    # Lost full availability while baking: not stable, and the deadline counts again.
    ("Complete",    "Incomplete"):        Row("Progressing", "InstancesUnavailable"),
    # Fully rolled out and available for bakeSeconds: the revision to return to.
    ("Complete",    "Baked"):             Row("Complete", "RevisionStable", mark_stable=True),
    ("Progressing", "Deadline"):          Row("Failed", "ProgressDeadlineExceeded", warning=True),
    # With autoRollback: back to the stable revision, and the bad one is remembered.
    ("Progressing", "DeadlineRollback"):  Row("RollingBack", "ProgressDeadlineExceeded",
                                              warning=True, remember_failed=True),
    ("Progressing", "CrashLoopRollback"): Row("RollingBack", "CrashLoop",
                                              warning=True, remember_failed=True),
    # A revision that crash-loops once complete but before it is stable is as bad.
    ("Complete",    "CrashLoopRollback"): Row("RollingBack", "CrashLoop",
                                              warning=True, remember_failed=True),
    # autoRollback set after the deadline passed: roll back now.
    ("Failed",      "DeadlineRollback"):  Row("RollingBack", "ProgressDeadlineExceeded",
                                              warning=True, remember_failed=True),
    # The stable revision runs again in full.
    ("RollingBack", "Complete"):          Row("RolledBack", "RolledBack", warning=True),
}
# fmt: on

# At most this many transitions per look: enough for NewTemplate then Pause, say; a table
# that loops (a bug) cannot spin a reconcile.
MAX_STEPS = 4


def lookup(phase: Phase, signal: Signal) -> Row | None:
    return TRANSITIONS.get((phase, signal)) or TRANSITIONS.get((ANY, signal))


def step(phase: Phase, signals: Iterable[Signal]) -> tuple[Signal, Row] | None:
    """The first signal (in the caller's priority order) with a row for `phase`."""
    for signal in signals:
        row = lookup(phase, signal)
        if row is not None:
            return signal, row
    return None
