"""The rollout state machine of a Deployment: a transition table from (phase, signal) to the
next phase, pure and I/O-free. `keel.controllers.deployment.plan` observes the signals,
asks `step` for the transitions, and derives from the phase what to run (the target
revision) and which conditions to write; only transitions reach the store.

Canary steps and waves across clusters (`keel.controllers.progressive`) move within the
Progressing phase: a row may advance the step or the wave (written in status with the time
it got there), finish them all (promote --full), or leave for RollingBack (a failed
analysis, a failed wave with autoRollback, an abort). The split between the update and the
stable revision at each step and wave is `progressive.split`'s.
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
    "Abort",  # `keel rollout abort` for this template
    "AnalysisFailed",  # the analysis of the current canary step failed
    "WaveFailed",  # more Instances of the current wave failed than its maxFailures
    "WaveFailedRollback",  # ... with autoRollback and a stable revision to return to
    "PromoteFull",  # `keel rollout promote --full`: every remaining step and wave
    "Promote",  # `keel rollout promote`: the current step (or wave's bake)
    "StepDone",  # the current canary step's goal is met (weight reached, pause over, passed)
    "WaveDone",  # the current wave is fully available and baked
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
    advance_step: bool = False  # the next canary step (or, steps done, the next wave)
    advance_wave: bool = False
    finish: bool = False  # every step and wave done: the rest rolls out at once


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
    # Canary and waves. An abort returns to the stable revision from any unfinished phase;
    # the aborted template is not retried until it changes.
    ("Progressing", "Abort"):             Row("RollingBack", "RolloutAborted", warning=True,
                                              remember_failed=True),
    ("Paused",      "Abort"):             Row("RollingBack", "RolloutAborted", warning=True,
                                              remember_failed=True),
    ("Failed",      "Abort"):             Row("RollingBack", "RolloutAborted", warning=True,
                                              remember_failed=True),
    # A failed analysis aborts, autoRollback or not: that is what an analysis is for.
    ("Progressing", "AnalysisFailed"):    Row("RollingBack", "AnalysisFailed", warning=True,
                                              remember_failed=True),
    # A failed wave stops the rollout before later waves are touched...
    ("Progressing", "WaveFailed"):        Row("Failed", "WaveFailed", warning=True),
    # ... and with autoRollback returns every wave to the stable revision.
    ("Progressing", "WaveFailedRollback"): Row("RollingBack", "WaveFailed", warning=True,
                                               remember_failed=True),
    ("Failed",      "WaveFailedRollback"): Row("RollingBack", "WaveFailed", warning=True,
                                               remember_failed=True),
    ("Progressing", "PromoteFull"):       Row("Progressing", "PromotedFull", finish=True),
    ("Progressing", "Promote"):           Row("Progressing", "Promoted", advance_step=True),
    ("Progressing", "StepDone"):          Row("Progressing", "CanaryStepComplete",
                                              advance_step=True),
    ("Progressing", "WaveDone"):          Row("Progressing", "WaveComplete", advance_wave=True),
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
