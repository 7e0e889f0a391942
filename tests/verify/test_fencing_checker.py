"""The fencing checker against hand-written histories: a stale or missing fencing token on an
accepted write, tokens that do not rise, and an old holder's write after the new holder's
are each caught; rejected and unknown writes constrain nothing."""

from __future__ import annotations

import re
from typing import Any

import pytest

from keel.verify import Event, HistoryError, check_fencing

S = 1_000_000_000


def lease(holder: str, token: int, revision: int) -> Event:
    return {
        "workload": "fencing",
        "process": "store",
        "type": "lease",
        "holder": holder,
        "token": token,
        "revision": revision,
    }


def acquired(c: Any, token: int, time: int) -> Event:
    return {"workload": "fencing", "process": c, "type": "acquired", "token": token, "time": time}


def invoke(c: Any, token: int | None, time: int, value: int = 1) -> Event:
    return {
        "workload": "fencing",
        "process": c,
        "type": "invoke",
        "f": "write",
        "token": token,
        "key": "/fenced/counter",
        "value": value,
        "time": time,
    }


def done(c: Any, kind: str, time: int, revision: int | None = None, **extra: Any) -> Event:
    line = {"workload": "fencing", "process": c, "type": kind, "f": "write", "time": time}
    if revision is not None:
        line["revision"] = revision
    return {**line, **extra}


LEASES = [lease("a", 1, 5), lease("b", 2, 20)]


def test_writes_with_the_current_token_and_rejected_stale_writes_are_valid() -> None:
    verdict = check_fencing(
        [
            *LEASES,
            acquired("a", 1, 1 * S),
            invoke("a", 1, 2 * S),
            done("a", "ok", 3 * S, revision=10),
            acquired("b", 2, 4 * S),
            invoke("b", 2, 5 * S),
            done("b", "ok", 6 * S, revision=21),
            invoke("a", 1, 7 * S),
            done("a", "fail", 8 * S, reason="stale-token"),
            invoke("a", 1, 9 * S),
            done("a", "info", 10 * S),
            invoke("b", 2, 11 * S),  # never completed: unknown outcome
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.summary == (
        "no stale write accepted: 2 writes ok under 2 lease tokens, 1 stale writes rejected"
    )
    assert verdict.stats == {
        "holders": 2,
        "token_transitions": 1,
        "acquisitions": 2,
        "writes_ok": 2,
        "writes_fail": 1,
        "writes_info": 2,
        "rejected_stale_writes": 1,
    }


def test_an_accepted_write_with_a_stale_token_is_a_violation() -> None:
    lines = [
        *LEASES,
        invoke("a", 1, 2 * S),
        done("a", "ok", 3 * S, revision=10),
        invoke("a", 1, 30 * S),  # the old leader wakes from a pause
        done("a", "ok", 31 * S, revision=25),
    ]
    verdict = check_fencing(lines)
    assert not verdict.valid
    assert verdict.summary == "fencing violation: accepted with a stale fencing token"
    assert verdict.counterexample == [LEASES[1], lines[4], lines[5]]
    assert verdict.explanation == (
        "write accepted with a stale fencing token: process a's write with token 1 committed "
        "at revision 25, when token 2 of b was current (from revision 20)."
    )


def test_an_accepted_write_without_a_token_is_a_violation() -> None:
    lines = [*LEASES, invoke("c", None, 2 * S), done("c", "ok", 3 * S, revision=11)]
    verdict = check_fencing(lines)
    assert verdict.summary == "fencing violation: accepted without a fencing token"
    assert verdict.counterexample == [lines[2], lines[3]]
    assert "carried no token and the store acknowledged it" in verdict.explanation


def test_a_rejected_write_without_a_token_is_fine() -> None:
    verdict = check_fencing([*LEASES, invoke("c", None, 2 * S), done("c", "fail", 3 * S)])
    assert verdict.valid, verdict.explanation


def test_tokens_that_do_not_rise_with_a_new_holder_are_a_violation() -> None:
    lines = [lease("a", 1, 5), lease("b", 3, 20), lease("c", 3, 30)]
    verdict = check_fencing(lines)
    assert verdict.summary == "fencing violation: tokens did not rise"
    assert verdict.counterexample == [lines[1], lines[2]]
    assert verdict.explanation == (
        "fencing tokens did not rise: holder c got token 3 at revision 30, not above token 3 "
        "that b held from revision 20."
    )


def test_the_lease_history_is_taken_in_revision_order() -> None:
    verdict = check_fencing([lease("b", 2, 20), lease("a", 1, 5)])
    assert verdict.valid, verdict.explanation


def test_an_old_holders_write_committed_after_the_new_holders_first_write_is_a_violation() -> None:
    # Without the lease history, rule (c) still convicts it by commit revisions.
    lines = [
        invoke("b", 2, 5 * S),
        done("b", "ok", 6 * S, revision=21),
        invoke("a", 1, 4 * S, value=7),
        done("a", "ok", 7 * S, revision=22),
    ]
    verdict = check_fencing(lines)
    assert verdict.summary == (
        "fencing violation: older holder's write accepted after a newer holder's"
    )
    assert verdict.counterexample == lines
    assert verdict.explanation == (
        "a write of an older holder was accepted after a newer holder's first write: process "
        "a's write with token 1 was committed at revision 22, after revision 21, where process "
        "b first wrote with token 2."
    )


def test_an_old_write_committed_before_the_new_holders_first_write_is_fine() -> None:
    verdict = check_fencing(
        [
            invoke("a", 1, 4 * S),
            invoke("b", 2, 5 * S),
            done("b", "ok", 6 * S, revision=21),
            done("a", "ok", 7 * S, revision=20),
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.summary.endswith("(no lease history: token-at-commit check skipped)")


def test_without_revisions_an_old_write_invoked_after_the_new_first_write_completed_fails() -> None:
    lines = [
        invoke("b", 2, 5 * S),
        done("b", "ok", 6 * S),
        invoke("a", 1, 7 * S),
        done("a", "ok", 8 * S),
    ]
    verdict = check_fencing(lines)
    assert verdict.summary == (
        "fencing violation: older holder's write accepted after a newer holder's"
    )
    assert "was invoked at 7.000s, after the newer write completed at 6.000s" in (
        verdict.explanation
    )


def test_without_revisions_an_old_write_concurrent_with_the_new_first_write_is_fine() -> None:
    verdict = check_fencing(
        [
            invoke("a", 1, 4 * S),
            invoke("b", 2, 5 * S),
            done("b", "ok", 6 * S),
            done("a", "ok", 8 * S),  # may have committed before b's write
        ]
    )
    assert verdict.valid, verdict.explanation


def test_a_write_committed_before_any_lease_is_a_violation() -> None:
    lines = [*LEASES, invoke("a", 1, 2 * S), done("a", "ok", 3 * S, revision=4)]
    verdict = check_fencing(lines)
    assert verdict.summary == "fencing violation: accepted before any lease holder"
    assert verdict.counterexample == [LEASES[0], lines[2], lines[3]]


def test_other_workloads_lines_are_skipped() -> None:
    other = {"workload": "watch", "type": "start", "process": 1, "prefix": "/", "revision": 0}
    verdict = check_fencing([*LEASES, other])
    assert verdict.valid, verdict.explanation


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{**lease("a", 1, 5), "token": None}], "history line 1: field 'token' must be an integer"),
        ([lease("a", 1, 5), {**invoke("a", 1, 1), "f": "cas"}],
         "history line 2: field 'f' must be one of 'write', got 'cas'"),
        ([done("a", "ok", 1, revision=3)],
         "history line 1: field 'type' 'ok' completes a write that process a never invoked"),
        ([invoke("a", 1, 1), invoke("a", 1, 2)],
         "history line 2: process a invoked a write while its write at history line 1 had not"),
        ([{**invoke("a", 1, 1), "time": 1.5}], "history line 1: field 'time' must be an integer"),
        ([{"workload": "fencing", "type": "grant"}], "history line 1: field 'type' must be one of"),
    ],
)  # fmt: skip
def test_malformed_lines_name_the_line_and_field(lines: list[Event], message: str) -> None:
    with pytest.raises(HistoryError, match="^" + re.escape(message)):
        check_fencing(lines)
