"""The convergence checker against hand-written histories: converging within the bound and
staying there passes; never converging, converging late, flapping and probing too briefly
all fail and say what was still missing."""

from __future__ import annotations

import re

import pytest

from keel.verify import Event, HistoryError, check_convergence

S = 1_000_000_000
HEAL = 100 * S


def heal(seconds: float = 100) -> Event:
    return {"workload": "convergence", "type": "heal", "time": round(seconds * S)}


def bound(seconds: float = 30) -> Event:
    return {"workload": "convergence", "type": "bound", "seconds": seconds}


def probe(after_heal: float, converged: bool, *missing: str) -> Event:
    return {
        "workload": "convergence",
        "type": "probe",
        "time": HEAL + round(after_heal * S),
        "converged": converged,
        "missing": list(missing),
    }


def test_converging_within_the_bound_and_staying_is_valid() -> None:
    verdict = check_convergence(
        [
            bound(),
            probe(-50, False, "node n2 partitioned"),  # before the heal: ignored
            heal(),
            probe(1, False, "deployment web: 2 of 3 ready"),
            probe(2.5, True),
            probe(5, True),
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.stats["convergence_seconds"] == pytest.approx(2.5)
    assert verdict.stats["probes"] == 3
    assert verdict.stats["probes_before_heal"] == 1
    assert verdict.summary == (
        "converged 2.500s after the heal, within the bound of 30s, and stayed converged over "
        "3 probes"
    )


def test_never_converging_is_a_violation_naming_what_is_missing() -> None:
    lines = [
        heal(),
        bound(),
        probe(10, False, "deployment web: 2 of 3 ready"),
        probe(40, False, "deployment web: 2 of 3 ready", "instance db-0 unscheduled"),
    ]
    verdict = check_convergence(lines)
    assert not verdict.valid
    assert verdict.summary == "convergence violation: never converged"
    assert verdict.counterexample == [lines[0], lines[3]]
    assert verdict.explanation == (
        "never converged: 2 probes up to 40.000s after the heal, beyond the bound of 30s, none "
        "converged; the last probe was still missing: deployment web: 2 of 3 ready; instance "
        "db-0 unscheduled."
    )
    assert verdict.stats["convergence_seconds"] is None


def test_converging_after_the_bound_is_too_late() -> None:
    lines = [heal(), bound(), probe(20, False, "service api: no endpoints"), probe(31, True)]
    verdict = check_convergence(lines)
    assert verdict.summary == "convergence violation: converged too late"
    assert verdict.counterexample == [lines[0], lines[2], lines[3]]
    assert verdict.explanation == (
        "converged too late: first converged 31.000s after the heal, beyond the promised bound "
        "of 30s; the probe before it (20.000s after the heal) was still missing: service api: "
        "no endpoints."
    )
    assert verdict.stats["convergence_seconds"] == pytest.approx(31)


def test_converging_exactly_at_the_bound_is_in_time() -> None:
    assert check_convergence([heal(), bound(), probe(30, True)]).valid


def test_losing_convergence_again_is_flapping() -> None:
    lines = [
        heal(),
        bound(),
        probe(3, True),
        probe(6, False, "instance web-1 restarting"),
        probe(9, True),
    ]
    verdict = check_convergence(lines)
    assert verdict.summary == "convergence violation: flapping after converging"
    assert verdict.counterexample == [lines[0], lines[2], lines[3]]
    assert verdict.explanation == (
        "converged 3.000s after the heal but did not stay converged: the probe 6.000s after the "
        "heal was missing: instance web-1 restarting; the last probe was converged again "
        "(1 time lost in all)."
    )
    assert verdict.stats["flaps"] == 1


def test_probing_that_stops_before_the_bound_does_not_show_convergence() -> None:
    lines = [heal(), bound(), probe(5, False)]
    verdict = check_convergence(lines)
    assert verdict.summary == "convergence not shown: probing stopped before the bound"
    assert "the last probe was still missing: (no reason given)" in verdict.explanation


def test_no_probe_after_the_heal_does_not_show_convergence() -> None:
    lines = [probe(-1, True), heal(), bound()]
    verdict = check_convergence(lines)
    assert verdict.summary == "convergence not shown: no probe after the heal"
    assert verdict.counterexample == [lines[1]]


def test_the_last_heal_is_the_final_one() -> None:
    # Faults healed at 50s, struck again, healed for good at 100s.
    verdict = check_convergence([heal(50), heal(), bound(), probe(10, True)])
    assert verdict.valid
    assert verdict.stats["convergence_seconds"] == pytest.approx(10)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([bound(), probe(1, True)], "convergence history has no line with 'type' 'heal'"),
        ([heal(), probe(1, True)], "convergence history has no line with 'type' 'bound'"),
        ([heal(), bound(), {**probe(1, True), "converged": "yes"}],
         "history line 3: field 'converged' must be true or false, got 'yes'"),
        ([heal(), {**bound(), "seconds": "30s"}],
         "history line 2: field 'seconds' must be a non-negative number, got '30s'"),
        ([heal(), bound(), {**probe(1, False), "missing": "x"}],
         "history line 3: field 'missing' must be a list of strings, got 'x'"),
        ([heal(), bound(30), bound(60)],
         "history line 3: field 'seconds' 60 contradicts the bound of 30 given before"),
        ([{"workload": "convergence", "type": "heal"}], "history line 1: field 'time' is missing"),
    ],
)  # fmt: skip
def test_malformed_lines_name_the_line_and_field(lines: list[Event], message: str) -> None:
    with pytest.raises(HistoryError, match="^" + re.escape(message)):
        check_convergence(lines)


def test_other_workloads_lines_are_skipped() -> None:
    other = {"workload": "watch", "type": "heal"}
    assert check_convergence([heal(), bound(), probe(1, True), other]).valid
