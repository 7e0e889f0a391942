"""`simulate()` under faults: a correct level-based controller converges and never runs a
dangerous action twice; broken ones are caught; a seed replays to the identical trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.runtime.controller import Controller
from keel.sim import FaultMix, Mutation, SimResult, check_fencing, check_once, simulate
from keel.sim.examples import (
    IncrementingReplicas,
    RandomNameReplicas,
    Replicas,
    churn_workload,
    deployments_setup,
    exclusive_slot,
    replicas_converged,
)

MIXES = {
    "none": FaultMix.none(),
    "watch": FaultMix.watch_chaos(),
    "process": FaultMix.process_chaos(),
    "everything": FaultMix.everything(),
    "pauses": FaultMix(pause=0.3, max_pause=5.0, latency=0.01),
    "stalled-writes": FaultMix(stall=0.1, max_pause=5.0, latency=0.01),
    "crashes": FaultMix(crash=0.3, latency=0.01),
    "lease-expiry": FaultMix(lease_expiry=0.3),
    "partitions": FaultMix(partition=0.2, max_partition=8.0, latency=0.01),
    "lost-answers": FaultMix.network_chaos(),
}


def run(
    seed: int, mix: FaultMix, controller: type[Controller] = Replicas, duration: float = 30.0
) -> SimResult:
    return simulate(
        seed,
        controller,
        deployments_setup(count=3, replicas=3),
        replicas_converged,
        faults=mix,
        duration=duration,
        settle=30.0,
        dangerous=exclusive_slot,
        workload=churn_workload(until=duration - 5.0),
    )


# ---------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_identical_trace() -> None:
    first = run(5, MIXES["everything"])
    second = run(5, MIXES["everything"])
    assert first.trace == second.trace
    assert first.mutations == second.mutations
    assert first.digest == second.digest
    assert len(first.trace) > 100


def test_another_seed_gives_another_trace() -> None:
    assert run(5, MIXES["everything"]).trace != run(6, MIXES["everything"]).trace


def test_a_seed_replays_in_a_fresh_interpreter_with_another_hash_seed(tmp_path: Path) -> None:
    """Replaying a failing seed later (another process, another PYTHONHASHSEED) gives the
    same trace: nothing in a run depends on set order, wall time or global randomness."""
    script = tmp_path / "replay.py"
    script.write_text(
        "from keel.sim import FaultMix, simulate\n"
        "from keel.sim.examples import *\n"
        "r = simulate(9, Replicas, deployments_setup(count=3, replicas=3), replicas_converged,"
        " faults=FaultMix.everything(), duration=30.0, settle=30.0, dangerous=exclusive_slot,"
        " workload=churn_workload(until=25.0))\n"
        "print(r.digest)\n"
    )
    here = run(9, MIXES["everything"]).digest
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here


# ---------------------------------------------------------------------- a correct controller


@pytest.mark.parametrize("mix", MIXES, ids=list(MIXES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_level_based_controller_converges_under_every_fault_mix(seed: int, mix: str) -> None:
    result = run(seed, MIXES[mix])
    assert result.ok, result.explain()
    assert result.converged_after is not None and result.converged_after <= 10.0


def test_a_paused_leaders_late_writes_are_fenced_off() -> None:
    """With leaders stalled past their TTL between deciding to write and sending the write,
    some writes arrive with a stale token: the double rejects them, the standby's work
    converges, and nothing ran twice."""
    rejected = 0
    for seed in range(5):
        result = run(seed, MIXES["stalled-writes"])
        assert result.ok, result.explain()
        rejected += result.stats["rejected-fencing"]
    assert rejected > 0


# ---------------------------------------------------------------------- broken controllers


def _first_failure(controller: type[Controller], mix: FaultMix) -> SimResult:
    for seed in range(20):
        result = run(seed, mix, controller)
        if not result.ok:
            return result
    raise AssertionError(f"the harness never caught {controller.__name__}")


def test_random_names_are_caught_as_duplicate_dangerous_actions() -> None:
    failure = _first_failure(RandomNameReplicas, MIXES["watch"])
    assert any("dangerous action executed twice" in v for v in failure.violations)
    replay = run(failure.seed, MIXES["watch"], RandomNameReplicas)
    assert replay.trace == failure.trace  # the failing seed replays exactly
    assert replay.violations == failure.violations


def test_incrementing_instead_of_setting_is_caught_by_convergence() -> None:
    failure = _first_failure(IncrementingReplicas, MIXES["watch"])
    assert any("status.replicas" in v for v in failure.violations), failure.explain(0)


@pytest.mark.parametrize(
    ("controller", "symptom"),
    [(RandomNameReplicas, "dangerous action executed twice"), (IncrementingReplicas, "status")],
)
def test_broken_controllers_are_caught_even_without_injected_faults(
    controller: type[Controller], symptom: str
) -> None:
    """The real server's watch delivers a write's event after the write's answer, so a
    controller that trusts its cache to know what it just did repeats it, faults or not
    (the old in-memory double hid this by delivering synchronously)."""
    result = run(0, MIXES["none"], controller)
    assert any(symptom in v for v in result.violations), result.explain(0)


# ---------------------------------------------------------------------- checkers


def _mutation(seq: int, verb: str, kind: str, name: str, **extra: object) -> Mutation:
    fields: dict[str, object] = {
        "time": float(seq),
        "caller": "cm-0#1",
        "namespace": "keel-system",
        "fencing": None,
        "outcome": "ok",
        "revision": seq,
        "obj": None,
    }
    fields.update(extra)
    return Mutation(seq=seq, verb=verb, kind=kind, name=name, **fields)  # type: ignore[arg-type]


def test_the_fencing_checker_finds_a_write_accepted_with_a_stale_token() -> None:
    log = [
        _mutation(5, "create", "Lease", "cm"),
        _mutation(6, "create", "Instance", "a", fencing=("keel-system/cm", 5)),
        _mutation(9, "create", "Lease", "cm"),
        _mutation(10, "create", "Instance", "b", fencing=("keel-system/cm", 5)),
        _mutation(11, "create", "Instance", "c", fencing=("keel-system/cm", 5), outcome="x"),
    ]
    found = check_fencing(log)
    assert len(found) == 1 and "Instance keel-system/b" in found[0]
    assert check_fencing(log[:3]) == []


def test_the_once_checker_ignores_rejected_and_harmless_actions() -> None:
    def dangerous(m: Mutation) -> str | None:
        return f"create {m.name}" if m.verb == "create" else None

    log = [
        _mutation(1, "create", "Instance", "a"),
        _mutation(2, "create", "Instance", "a", outcome="AlreadyExists"),
        _mutation(3, "patch", "Instance", "a"),
        _mutation(4, "patch", "Instance", "a"),
    ]
    assert check_once(log, dangerous) == []
    assert len(check_once([*log, _mutation(5, "create", "Instance", "a")], dangerous)) == 1


# ---------------------------------------------------------------------- exploration


def mixes(high: float) -> st.SearchStrategy[FaultMix]:
    """Fault mixes with every probability and rate up to `high`."""
    p = st.floats(min_value=0.0, max_value=high)
    return st.builds(
        FaultMix,
        delay=p,
        drop=p,
        duplicate=p,
        expire=st.floats(min_value=0.0, max_value=high / 3),
        crash=p,
        pause=p,
        partition=p,
        lose=st.floats(min_value=0.0, max_value=high / 3),
        lease_expiry=p,
        stall=st.floats(min_value=0.0, max_value=high / 3),
        latency=st.floats(min_value=0.0, max_value=0.02),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), mix=mixes(0.3))
def test_hypothesis_finds_no_seed_that_breaks_the_controller(seed: int, mix: FaultMix) -> None:
    result = run(seed, mix)
    assert result.ok, result.explain()


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), mix=mixes(0.5))
def test_long_exploration_of_seeds_and_fault_mixes(seed: int, mix: FaultMix) -> None:
    result = run(seed, mix)
    assert result.ok, result.explain()
