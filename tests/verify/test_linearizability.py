"""The register linearizability checker: hand-written histories for each rule of the model,
histories from a simulated real register (always linearizable) and broken copies of them, and
counterexamples small enough to read."""

from __future__ import annotations

import itertools
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keel.verify import Event, HistoryError, Verdict, check_register, parse_history

ROOT = Path(__file__).resolve().parents[2]


def op(
    process: int,
    f: str,
    value: Any,
    start: int,
    end: int | None,
    *,
    outcome: str = "ok",
    key: str = "k1",
) -> list[Event]:
    """One operation as its history lines. For a read `value` is the value read; `end=None`
    leaves the invoke without a completion."""
    base = {"process": process, "f": f, "key": key}
    lines = [{**base, "type": "invoke", "value": None if f == "read" else value, "time": start}]
    if end is not None:
        lines.append({**base, "type": outcome, "value": value, "time": end})
    return lines


def history(*ops: list[Event]) -> list[Event]:
    return sorted((line for lines in ops for line in lines), key=lambda line: line["time"])


def assert_violation(verdict: Verdict) -> None:
    """Not linearizable, and the counterexample is a history that fails on its own."""
    assert not verdict.valid
    assert verdict.summary.startswith("not linearizable")
    assert verdict.counterexample
    assert not check_register(verdict.counterexample).valid


# --- the model, one rule at a time ----------------------------------------------------------


def test_sequential_history_of_reads_writes_and_cas_is_linearizable() -> None:
    verdict = check_register(
        history(
            op(1, "read", None, 0, 10),
            op(1, "write", 1, 20, 30),
            op(2, "read", 1, 40, 50),
            op(2, "cas", [1, 2], 60, 70),
            op(1, "cas", [1, 3], 80, 90, outcome="fail"),
            op(1, "read", 2, 100, 110),
        )
    )
    assert verdict.valid, verdict.explanation
    assert verdict.model == "register"
    assert verdict.summary == "linearizable: 6 operations on 1 key (0 indeterminate)"
    assert verdict.stats["ok"] == 5
    assert verdict.stats["fail"] == 1


@pytest.mark.parametrize("seen", [None, 1])
def test_read_concurrent_with_a_write_may_see_either_value(seen: int | None) -> None:
    verdict = check_register(history(op(1, "write", 1, 0, 100), op(2, "read", seen, 10, 50)))
    assert verdict.valid


def test_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    write_1 = op(1, "write", 1, 0, 10)
    write_2 = op(1, "write", 2, 20, 30)
    stale = op(2, "read", 1, 40, 50)
    verdict = check_register(history(write_1, write_2, stale))
    assert_violation(verdict)
    assert verdict.summary == "not linearizable: key k1"
    # The first write is not needed: whatever k1 held before the second, the read is stale.
    assert verdict.counterexample == history(write_2, stale)
    assert "returned 1" in verdict.explanation
    assert "could have returned 2" in verdict.explanation
    assert "last write to complete before it began was write 2 by process 1" in (
        verdict.explanation
    )


def test_two_successful_cas_from_the_same_value_is_a_lost_update() -> None:
    verdict = check_register(
        history(
            op(1, "write", 0, 0, 10),
            op(2, "cas", [0, 1], 20, 40),
            op(3, "cas", [0, 2], 30, 50),
        )
    )
    assert_violation(verdict)
    assert "The cas of k1 by process 3 from 0 to 2" in verdict.explanation
    assert "could have held 1" in verdict.explanation


def test_indeterminate_write_that_took_effect_is_linearizable() -> None:
    verdict = check_register(
        history(op(1, "write", 1, 0, 10, outcome="info"), op(2, "read", 1, 100, 110))
    )
    assert verdict.valid
    assert verdict.stats["info"] == 1
    assert "(1 indeterminate)" in verdict.summary


def test_indeterminate_write_that_did_not_take_effect_is_linearizable() -> None:
    verdict = check_register(
        history(
            op(1, "write", 1, 0, 10, outcome="info"),
            op(2, "read", None, 100, 110),
            op(2, "read", None, 200, 210),
        )
    )
    assert verdict.valid


def test_indeterminate_write_may_take_effect_long_after_its_client_gave_up() -> None:
    verdict = check_register(
        history(
            op(1, "write", 1, 0, 10, outcome="info"),
            op(2, "read", None, 100, 110),
            op(2, "read", 1, 200, 210),
        )
    )
    assert verdict.valid


def test_indeterminate_write_seen_then_unseen_is_not_linearizable() -> None:
    verdict = check_register(
        history(
            op(1, "write", 1, 0, 10, outcome="info"),
            op(2, "read", 1, 100, 110),
            op(2, "read", None, 200, 210),
        )
    )
    assert_violation(verdict)
    assert "returned null" in verdict.explanation


def test_failed_cas_does_not_take_effect() -> None:
    failed = op(1, "cas", [None, 5], 0, 10, outcome="fail")
    assert check_register(history(failed, op(2, "read", None, 20, 30))).valid
    verdict = check_register(history(failed, op(2, "read", 5, 20, 30)))
    assert_violation(verdict)
    assert verdict.stats["fail"] == 1


def test_failed_write_and_indeterminate_read_constrain_nothing() -> None:
    verdict = check_register(
        history(
            op(1, "write", 7, 0, 10, outcome="fail"),
            op(2, "read", 7, 20, 30, outcome="info"),
            op(2, "read", None, 40, 50),
        )
    )
    assert verdict.valid


@pytest.mark.parametrize(("seen", "valid"), [(None, True), (0, False)])
def test_read_of_an_absent_key_returns_null(seen: int | None, valid: bool) -> None:
    assert check_register(history(op(1, "read", seen, 0, 10))).valid is valid


def test_successful_cas_from_absent_sets_the_value() -> None:
    verdict = check_register(history(op(1, "cas", [None, 3], 0, 10), op(2, "read", 3, 20, 30)))
    assert verdict.valid


def test_violation_on_one_key_is_found_among_interleaved_valid_keys() -> None:
    verdict = check_register(
        history(
            op(1, "write", 1, 0, 10, key="a"),
            op(2, "write", 1, 5, 15, key="b"),
            op(3, "read", 1, 20, 30, key="a"),
            op(4, "read", None, 25, 35, key="b"),  # stale: b was written before it began
            op(5, "write", 2, 40, 50, key="c"),
            op(5, "read", 2, 60, 70, key="c"),
        )
    )
    assert_violation(verdict)
    assert verdict.summary == "not linearizable: key b"
    assert {event["key"] for event in verdict.counterexample} == {"b"}
    assert verdict.stats["keys"] == 3
    assert verdict.stats["failed_keys"] == ["b"]


def test_every_failing_key_is_named() -> None:
    verdict = check_register(
        history(
            op(1, "read", 1, 0, 10, key="a"),
            op(2, "read", 1, 0, 10, key="b"),
            op(3, "read", None, 0, 10, key="c"),
        )
    )
    assert verdict.summary == "not linearizable: keys a, b"
    assert "Also not linearizable: b." in verdict.explanation


def test_keys_are_registers_of_their_own() -> None:
    """The same value written to one key does not explain a read of another."""
    verdict = check_register(history(op(1, "write", 1, 0, 10, key="a"), op(2, "read", 1, 20, 30)))
    assert_violation(verdict)
    assert verdict.summary == "not linearizable: key k1"


def test_invoke_without_completion_is_indeterminate() -> None:
    took_effect = history(op(1, "write", 1, 0, None), op(2, "read", 1, 100, 110))
    assert check_register(took_effect).valid
    did_not = history(op(1, "write", 1, 0, None), op(2, "read", None, 100, 110))
    assert check_register(did_not).valid
    verdict = check_register(
        history(
            op(1, "write", 1, 0, None),
            op(2, "read", 1, 100, 110),
            op(2, "read", None, 200, 210),
        )
    )
    assert_violation(verdict)
    assert verdict.stats["info"] == 1


def test_second_invoke_by_a_process_leaves_its_first_operation_indeterminate() -> None:
    lines = history(
        op(1, "write", 1, 0, None),
        op(1, "write", 2, 20, 30),
        op(2, "read", 1, 40, 50),  # the first write landed late
    )
    verdict = check_register(lines)
    assert verdict.valid
    assert verdict.stats["info"] == 1


def test_process_may_start_a_new_operation_after_an_info() -> None:
    verdict = check_register(
        history(
            op(1, "write", 1, 0, 10, outcome="info"),
            op(1, "write", 2, 20, 30),
            op(2, "read", 1, 40, 50),  # the first write landed late
        )
    )
    assert verdict.valid


def test_json_values_compare_as_json() -> None:
    lists = history(op(1, "write", [1, {"a": 2}], 0, 10), op(2, "read", [1, {"a": 2}], 20, 30))
    assert check_register(lists).valid
    assert not check_register(history(op(1, "write", 1, 0, 10), op(2, "read", True, 20, 30))).valid


def test_extra_fields_are_ignored_and_other_workloads_are_skipped() -> None:
    lines = history(op(1, "write", 1, 0, 10), op(2, "read", 1, 20, 30))
    for line in lines:
        line.update(workload="register", server="api-2", revision=17)
    lines.append({"workload": "watch", "process": 9, "type": "ok", "f": "event", "time": 5})
    verdict = check_register(lines)
    assert verdict.valid
    assert verdict.stats["skipped"] == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [{"process": 1, "type": "invoke", "f": "read", "time": 0}],
            "event 1: missing field 'key'",
        ),
        (
            [{"process": 1, "type": "begin", "f": "read", "key": "k", "time": 0}],
            "event 1: type must be invoke, ok, fail or info",
        ),
        (
            [{"process": 1, "type": "invoke", "f": "incr", "key": "k", "time": 0}],
            "event 1: f must be read, write or cas, got 'incr'",
        ),
        (
            [{"process": 1, "type": "ok", "f": "read", "key": "k", "value": 1, "time": 0}],
            "event 1 (process 1): ok completion without an invoke",
        ),
        (op(1, "cas", 5, 0, 10), "event 1 (process 1): cas value must be [expected, new]"),
        (op(1, "write", 1, 10, 5), "event 2 (process 1): completes at 5 before its invoke"),
        (
            [*op(1, "write", 1, 0, None), *op(1, "read", 1, 5, 10)[1:]],
            "event 2 (process 1): completion has f='read' but its invoke (event 1) has f='write'",
        ),
        (
            [{"process": 1, "type": "invoke", "f": "read", "key": "k", "time": "noon"}],
            "event 1: time must be a number",
        ),
    ],
    ids=[
        "missing-key",
        "unknown-type",
        "unknown-f",
        "completion-without-invoke",
        "cas-value-not-a-pair",
        "completion-before-invoke",
        "completion-of-another-f",
        "time-not-a-number",
    ],
)
def test_malformed_lines_raise_history_error_naming_them(lines: list[Event], message: str) -> None:
    with pytest.raises(HistoryError, match=re.escape(message)):
        check_register(lines)


def test_history_read_from_json_lines_is_checked() -> None:
    text = [
        '{"process": 0, "type": "invoke", "f": "write", "key": "x", "value": 4, "time": 1}',
        "",
        '{"process": 0, "type": "ok", "f": "write", "key": "x", "value": 4, "time": 2}',
        '{"process": 1, "type": "invoke", "f": "read", "key": "x", "value": null, "time": 3}',
        '{"process": 1, "type": "ok", "f": "read", "key": "x", "value": 4, "time": 4}',
    ]
    assert check_register(parse_history(text)).valid


# --- simulated registers --------------------------------------------------------------------


def simulated_history(
    seed: int, *, keys: int = 3, clients: int = 4, ops: int = 60, at: int = 0
) -> list[Event]:
    """Clients run ops against real registers; each op takes effect at a random instant inside
    its interval, so the history is linearizable by construction. A tenth of the outcomes are
    lost: the op took effect or not at random, and its completion says `info` or is missing
    (then the client carries on under a new process id). Times start at `at`."""
    rng = random.Random(seed)
    lines: list[tuple[int, Event]] = []
    process = 0
    for k in range(keys):
        key = f"k{k}"
        planned = []
        for _ in range(clients):
            process += 1
            t = at + rng.randrange(50)
            for _ in range(ops // clients):
                start = t + rng.randrange(1, 30)
                end = start + rng.randrange(2, 120)
                fate = "ok" if rng.random() >= 0.1 else rng.choice(["info", "silent"])
                planned.append((rng.randrange(start + 1, end), start, end, process, fate))
                t = end
                if fate == "silent":
                    process += 1
        planned.sort()
        value: Any = None
        for _point, start, end, proc, fate in planned:
            f = rng.choice(["read", "read", "write", "cas"])
            arg: Any = None
            if f == "write":
                arg = rng.randrange(4)
            elif f == "cas":
                arg = [rng.choice([None, 0, 1, 2, 3]), rng.randrange(4)]
            applies = fate == "ok" or rng.random() < 0.5
            outcome, result = "ok", arg
            if f == "read":
                result = value
            elif f == "write" and applies:
                value = arg
            elif f == "cas" and value != arg[0]:
                outcome = "fail"
            elif f == "cas" and applies:
                value = arg[1]
            base = {"process": proc, "f": f, "key": key}
            lines.append((start, {**base, "type": "invoke", "value": arg, "time": start}))
            if fate != "silent":
                outcome = "info" if fate == "info" else outcome
                lines.append((end, {**base, "type": outcome, "value": result, "time": end}))
    lines.sort(key=lambda line: line[0])
    return [event for _, event in lines]


@pytest.mark.parametrize("seed", range(20))
def test_histories_of_a_simulated_register_are_linearizable(seed: int) -> None:
    events = simulated_history(seed)
    verdict = check_register(events)
    assert verdict.valid, (verdict.summary, verdict.explanation, verdict.counterexample)
    assert verdict.stats["operations"] == sum(1 for e in events if e["type"] == "invoke")


@pytest.mark.parametrize("seed", range(10))
def test_read_of_a_value_never_written_is_caught_in_a_simulated_history(seed: int) -> None:
    events = simulated_history(seed)
    reads = [e for e in events if e["f"] == "read" and e["type"] == "ok"]
    mutated = random.Random(seed).choice(reads)
    mutated["value"] = 99
    verdict = check_register(events)
    assert_violation(verdict)
    assert mutated in verdict.counterexample
    assert "returned 99" in verdict.explanation


def test_stale_read_buried_in_200_operations_has_a_small_counterexample() -> None:
    before = simulated_history(7, keys=1, clients=5, ops=100)
    t = max(e["time"] for e in before)
    stale = history(
        op(100, "write", "old", t + 10, t + 20),
        op(100, "write", "new", t + 30, t + 40),
        op(101, "read", "old", t + 50, t + 60),
    )
    after = simulated_history(8, keys=1, clients=5, ops=100, at=t + 70)
    for line in after:
        line["process"] += 1000
    verdict = check_register(before + stale + after)
    assert_violation(verdict)
    assert len(verdict.counterexample) <= 6, verdict.counterexample
    assert stale[-1] in verdict.counterexample
    assert 'returned "old"' in verdict.explanation


def random_small_history(rng: random.Random) -> list[Event]:
    """A few overlapping ops with random results, valid or not, with ties in time."""
    lines = []
    for process in range(3):
        t = rng.randrange(4)
        for _ in range(2):
            start, end = t + rng.randrange(3), t + 3 + rng.randrange(6)
            f = rng.choice(["read", "write", "cas"])
            value: Any = rng.choice([None, 0, 1])
            if f == "cas":
                value = [rng.choice([None, 0, 1]), rng.choice([0, 1])]
            outcome = rng.choice(["ok", "ok", "ok", "info", "fail", "none"])
            lines += op(process, f, value, start, None if outcome == "none" else end)
            if outcome not in ("ok", "none"):
                lines[-1]["type"] = outcome
            t = end + 1
    return sorted(lines, key=lambda line: line["time"])


def brute_force_linearizable(lines: list[Event]) -> bool:
    """Every order of every choice of indeterminate ops, straight from the definition."""
    ops, open_ops = [], {}
    for line in lines:
        if line["type"] == "invoke":
            if line["process"] in open_ops:  # the open op never completed
                ops.append((open_ops[line["process"]], None))
            open_ops[line["process"]] = line
            continue
        invoke = open_ops.pop(line["process"])
        if line["type"] != "fail":
            ops.append((invoke, line if line["type"] == "ok" else None))
    ops += [(invoke, None) for invoke in open_ops.values()]
    ops = [(i, c) for i, c in ops if c is not None or i["f"] != "read"]
    sure = [o for o in ops if o[1] is not None]
    unsure = [o for o in ops if o[1] is None]
    for taken in itertools.product([False, True], repeat=len(unsure)):
        chosen = sure + [o for o, take in zip(unsure, taken, strict=True) if take]
        for order in itertools.permutations(chosen):
            ends = [math.inf if c is None else c["time"] for _, c in order]
            if any(ends[j] < order[i][0]["time"] for j in range(len(order)) for i in range(j)):
                continue  # op j finished before op i began, yet comes after it
            value, ok = None, True
            for invoke, completion in order:
                if invoke["f"] == "read":
                    ok = completion is not None and completion["value"] == value
                elif invoke["f"] == "write":
                    value = invoke["value"]
                elif value == invoke["value"][0]:
                    value = invoke["value"][1]
                else:
                    ok = completion is None  # an indeterminate cas that did not apply
                if not ok:
                    break
            if ok:
                return True
    return False


@pytest.mark.parametrize("batch", range(8))
def test_verdict_agrees_with_brute_force_on_small_random_histories(batch: int) -> None:
    """About half of these histories are not linearizable; each counterexample must fail the
    definition too, which checks the shrinking as much as the search."""
    for seed in range(batch * 500, (batch + 1) * 500):
        lines = random_small_history(random.Random(seed))
        verdict = check_register(lines)
        assert verdict.valid is brute_force_linearizable(lines), (seed, lines)
        if not verdict.valid:
            assert not brute_force_linearizable(verdict.counterexample), (seed, verdict)


# --- limits and the benchmark ---------------------------------------------------------------


def test_search_past_its_time_limit_says_unknown() -> None:
    """Twenty concurrent writes and a read of a value none of them wrote: the search must try
    every order of the writes before giving up, far more than a tenth of a second."""
    events = history(*(op(p, "write", p, 0, 100) for p in range(20)), op(20, "read", 99, 0, 100))
    verdict = check_register(events, time_limit=0.1)
    assert not verdict.valid
    assert verdict.summary.startswith("unknown: search exceeded 0.1 s")
    assert verdict.stats["unknown"] is True
    assert verdict.counterexample == []
    assert verdict.stats["seconds"] < 2


def test_benchmark_quick_run_prints_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linearizability.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for figure in ("decode JSON lines (baseline)", "check, sequential", "ops/s", "linearizable:"):
        assert figure in proc.stdout, proc.stdout
