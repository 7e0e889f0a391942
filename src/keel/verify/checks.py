"""Which checker judges which part of a run, and `keel verify check --model M FILE`.

Every checker is a pure function from history events to a `Verdict`; this module only picks
the events each one reads out of a run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from keel.verify.convergence import check_convergence
from keel.verify.exclusive import check_duplicates, check_exclusive, check_surge
from keel.verify.fencing import check_fencing
from keel.verify.history import Event, HistoryError, Verdict, load_history
from keel.verify.linearizability import check_register
from keel.verify.watch import check_watch

__all__ = ["MODELS", "check_all", "check_file"]

MODELS: dict[str, Callable[[Sequence[Event]], Verdict]] = {
    "register": check_register,
    "watch": check_watch,
    "fencing": check_fencing,
    "exclusive": check_exclusive,
    "duplicates": check_duplicates,
    "surge": check_surge,
    "convergence": check_convergence,
}


def check_file(model: str, path: Path) -> Verdict:
    """Check a history file from anywhere against one model."""
    if model not in MODELS:
        raise HistoryError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    return MODELS[model](load_history(path))


def check_all(run_dir: Path) -> list[Verdict]:
    """Every checker over what a run recorded (a workload that did not run is skipped)."""
    history = _load(run_dir / "history.jsonl")
    by_workload: dict[str, list[Event]] = {}
    for event in history:
        by_workload.setdefault(str(event.get("workload", "")), []).append(event)
    verdicts: list[Verdict] = []
    if by_workload.get("register"):
        verdicts.append(_named(check_register(by_workload["register"]), "register (HTTP API)"))
    if by_workload.get("store-register"):
        as_register = [{**e, "workload": "register"} for e in by_workload["store-register"]]
        verdicts.append(_named(check_register(as_register), "register (store client)"))
    for model in ("watch", "fencing", "surge"):
        if by_workload.get(model):
            verdicts.append(MODELS[model](by_workload[model]))
    for model in ("exclusive", "duplicates"):
        lines = _load(run_dir / f"{model}.jsonl")
        if lines:
            verdicts.append(MODELS[model](lines))
    if by_workload.get("convergence"):
        verdicts.append(check_convergence(by_workload["convergence"]))
    errors = by_workload.get("errors", [])
    if errors:
        verdicts.append(
            Verdict(
                model="workload errors",
                valid=False,
                summary=f"{len(errors)} workload task(s) failed; the histories may be incomplete",
                counterexample=errors[:5],
                explanation="A workload raised an unexpected error (see the events).",
            )
        )
    return verdicts


def _named(verdict: Verdict, model: str) -> Verdict:
    from dataclasses import replace

    return replace(verdict, model=model)


def _load(path: Path) -> list[Event]:
    return load_history(path) if path.exists() else []
