"""Convergence checker: after faults heal, actual state converges to desired state within
the stated bound, and stays there.

Reads the heal, the promised bound and the probes of desired against actual state taken
after it. Pure: a list of history lines in, a `Verdict` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from keel.verify._fields import boolean, choice, integer, lines_of, number, strings
from keel.verify.history import Event, HistoryError, Verdict

__all__ = ["check_convergence"]

WORKLOAD = "convergence"


@dataclass(frozen=True)
class _Probe:
    time: int
    converged: bool
    missing: list[str]
    line: int


def check_convergence(history: Sequence[Event]) -> Verdict:
    """Converged within the bound after the heal, and stayed so (workload "convergence").

    Lines:
      {"type": "heal", "time": T}          the final heal of all faults (the last one counts)
      {"type": "bound", "seconds": B}      the promised bound
      {"type": "probe", "time": T, "converged": bool, "missing": [reasons]}
    Valid iff a converged probe comes at most B seconds after the heal and every later probe
    is converged too. Probes before the heal are counted and otherwise ignored.
    """
    heal: tuple[int, int] | None = None
    bound: float | None = None
    probes: list[_Probe] = []
    for index, event in lines_of(history, WORKLOAD):
        kind = choice(event, index, "type", ("heal", "probe", "bound"))
        if kind == "bound":
            seconds = number(event, index, "seconds")
            if bound is not None and seconds != bound:
                raise HistoryError(
                    f"history line {index + 1}: field 'seconds' {seconds:g} contradicts the "
                    f"bound of {bound:g} given before"
                )
            bound = seconds
            continue
        time = integer(event, index, "time")
        if kind == "heal":
            if heal is None or time >= heal[0]:
                heal = (time, index)
            continue
        converged = boolean(event, index, "converged")
        missing = strings(event, index, "missing", default=[])
        probes.append(_Probe(time, converged, missing, index))
    if heal is None:
        raise HistoryError("convergence history has no line with 'type' 'heal'")
    if bound is None:
        raise HistoryError("convergence history has no line with 'type' 'bound'")

    healed, heal_line = heal
    deadline = healed + round(bound * 1e9)
    after = sorted((p for p in probes if p.time >= healed), key=lambda p: (p.time, p.line))
    first = next((p for p in after if p.converged), None)
    flaps = sum(1 for before, now in pairwise(after) if before.converged and not now.converged)
    stats: dict[str, Any] = {
        "bound_seconds": bound,
        "convergence_seconds": (first.time - healed) / 1e9 if first is not None else None,
        "probes": len(after),
        "probes_before_heal": len(probes) - len(after),
        "flaps": flaps,
    }

    def since(probe: _Probe) -> str:
        return f"{(probe.time - healed) / 1e9:.3f}s after the heal"

    def violation(summary: str, lines: list[int], explanation: str) -> Verdict:
        return Verdict(
            WORKLOAD,
            False,
            summary,
            counterexample=[history[i] for i in sorted(set(lines))],
            explanation=explanation,
            stats=stats,
        )

    if not after:
        return violation(
            "convergence not shown: no probe after the heal",
            [heal_line],
            "no probe of actual against desired state was taken after the heal, so convergence "
            "was never shown.",
        )
    if first is None:
        last = after[-1]
        if last.time < deadline:
            return violation(
                "convergence not shown: probing stopped before the bound",
                [heal_line, last.line],
                f"probing stopped {since(last)}, before the bound of {bound:g}s ran out, and no "
                f"probe had converged; the last probe was still missing: {_reasons(last)}.",
            )
        return violation(
            "convergence violation: never converged",
            [heal_line, last.line],
            f"never converged: {len(after):,} probes up to {since(last)}, beyond the bound of "
            f"{bound:g}s, none converged; the last probe was still missing: {_reasons(last)}.",
        )
    if first.time > deadline:
        waiting = [p for p in after if p.time < first.time]
        lines = [heal_line, first.line]
        detail = ""
        if waiting:
            lines.append(waiting[-1].line)
            detail = f"; the probe before it ({since(waiting[-1])}) was still missing: " + (
                _reasons(waiting[-1])
            )
        return violation(
            "convergence violation: converged too late",
            lines,
            f"converged too late: first converged {since(first)}, beyond the promised bound "
            f"of {bound:g}s{detail}.",
        )
    lost = next((p for p in after if p.time >= first.time and not p.converged), None)
    if lost is not None:
        last = after[-1]
        end = (
            "the last probe was converged again"
            if last.converged
            else f"the last probe ({since(last)}) was still missing: {_reasons(last)}"
        )
        return violation(
            "convergence violation: flapping after converging",
            [heal_line, first.line, lost.line],
            f"converged {since(first)} but did not stay converged: the probe {since(lost)} was "
            f"missing: {_reasons(lost)}; {end} ({flaps:,} time{'s' if flaps != 1 else ''} lost "
            "in all).",
        )
    return Verdict(
        WORKLOAD,
        True,
        f"converged {since(first)}, within the bound of {bound:g}s, and stayed converged "
        f"over {len(after):,} probes",
        stats=stats,
    )


def _reasons(probe: _Probe) -> str:
    return "; ".join(probe.missing) if probe.missing else "(no reason given)"
