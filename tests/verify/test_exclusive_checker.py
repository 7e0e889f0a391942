"""The exclusive, duplicates and surge checkers against hand-written histories: two copies of
one instance at once are caught whether or not the first copy recorded its stop, touching
lives are not an overlap, gaps are measured, and a rollout over its surge limit is caught."""

from __future__ import annotations

import re
from typing import Any

import pytest

from keel.verify import Event, HistoryError, check_duplicates, check_exclusive, check_surge

S = 1_000_000_000


def life(copy: str, node: str, kind: str, seconds: float, instance: str = "db-0") -> Event:
    return {
        "workload": "exclusive",
        "copy": copy,
        "node": node,
        "instance": instance,
        "type": kind,
        "time": round(seconds * S),
    }


def test_copies_one_after_another_are_valid_and_gaps_are_measured() -> None:
    verdict = check_exclusive(
        [
            life("n1/10/1", "n1", "start", 1),
            life("n1/10/1", "n1", "beat", 2),
            life("n1/10/1", "n1", "stop", 3),
            life("n2/20/4", "n2", "start", 4.5),  # 1.5s with no copy running
            life("n2/20/4", "n2", "stop", 6),
            life("n3/30/6", "n3", "start", 6),  # touches: starts the instant the last stopped
            life("n3/30/6", "n3", "beat", 7),
            life("n1/11/7", "n1", "start", 7.5),  # after n3's last beat, n3 never stopped
            life("n1/11/7", "n1", "stop", 8),
            life("n1/12/2", "n1", "start", 2, instance="db-1"),
            life("n1/12/2", "n1", "stop", 9, instance="db-1"),
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.stats["overlaps"] == 0
    assert verdict.stats["gap_count"] == 2
    assert verdict.stats["gap_max_seconds"] == pytest.approx(1.5)
    assert verdict.stats["gap_total_seconds"] == pytest.approx(2.0)
    assert verdict.stats["gaps"]["db-1"] == {"count": 0, "max_seconds": 0, "total_seconds": 0}
    assert verdict.stats["copies_without_stop"] == 1
    assert verdict.summary == (
        "never two copies at once: 2 instances, 5 copies, 1 ended without a stop "
        "(true end unknown), longest gap 1.500s"
    )


def test_two_stopped_copies_overlapping_are_a_violation() -> None:
    lines = [
        life("n1/10/1", "n1", "start", 1),
        life("n1/10/1", "n1", "beat", 2),
        life("n2/20/3", "n2", "start", 3),
        life("n1/10/1", "n1", "beat", 4),
        life("n1/10/1", "n1", "beat", 6),
        life("n1/10/1", "n1", "stop", 7),
        life("n2/20/3", "n2", "stop", 8),
    ]
    verdict = check_exclusive(lines)
    assert not verdict.valid
    assert verdict.summary == "exclusive violation: instance db-0 ran on two nodes at once"
    # Both starts, n1's stop ending the overlap, and n2's stop showing it ran until then.
    assert verdict.counterexample == [lines[0], lines[2], lines[5], lines[6]]
    assert verdict.explanation == (
        "instance db-0 ran as two copies at once for 4.000s: copy n1/10/1 on node n1 from "
        "1.000s to 7.000s (stopped), and copy n2/20/3 on node n2 from 3.000s to 8.000s (stopped)."
    )


def test_a_copy_without_a_stop_overlaps_until_its_last_beat() -> None:
    lines = [
        life("n1/10/1", "n1", "start", 1),
        life("n1/10/1", "n1", "beat", 2),
        life("n2/20/3", "n2", "start", 3),
        life("n1/10/1", "n1", "beat", 4),  # partitioned away, still running, then killed
        life("n2/20/3", "n2", "beat", 5),
    ]
    verdict = check_exclusive(lines)
    assert not verdict.valid
    assert verdict.counterexample == [lines[0], lines[2], lines[3], lines[4]]
    assert "for 1.000s" in verdict.explanation
    assert "copy n1/10/1 on node n1 from 1.000s to 4.000s (no stop recorded: last beat)" in (
        verdict.explanation
    )
    assert verdict.explanation.endswith(
        "A copy without a stop ran at least until its last beat; its true end is unknown."
    )


def test_a_copy_starting_the_instant_another_stops_does_not_overlap() -> None:
    verdict = check_exclusive(
        [
            life("a", "n1", "start", 1),
            life("a", "n1", "stop", 2),
            life("b", "n2", "start", 2),
            life("b", "n2", "stop", 3),
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.stats["gap_count"] == 0


def test_beat_interval_reports_possible_overlaps_without_failing() -> None:
    lines = [
        life("a", "n1", "start", 1),
        life("a", "n1", "beat", 2),  # killed some time before its next beat at 4
        life("b", "n2", "start", 3),
        life("b", "n2", "stop", 5),
    ]
    verdict = check_exclusive(lines, beat_interval=2.0)
    assert verdict.valid
    assert verdict.stats["possible_overlaps"] == 1
    assert verdict.stats["gap_max_seconds"] == pytest.approx(1.0)
    assert verdict.summary.endswith(
        "; 1 more overlap possible if unstopped copies ran a full beat interval (2s) past "
        "their last beat"
    )


def test_each_overlap_is_counted_and_the_earliest_shown() -> None:
    lines = [
        life("c", "n3", "start", 5, instance="db-1"),
        life("d", "n4", "start", 6, instance="db-1"),
        life("c", "n3", "stop", 7, instance="db-1"),
        life("a", "n1", "start", 1),
        life("b", "n2", "start", 2),
        life("a", "n1", "stop", 3),
        life("d", "n4", "stop", 8, instance="db-1"),
        life("b", "n2", "stop", 9),
    ]
    verdict = check_exclusive(lines)
    assert verdict.stats["overlaps"] == 2
    assert verdict.summary == "exclusive violation: instance db-0 ran on two nodes at once"
    assert verdict.explanation.endswith("(1 more violation found; this is the first.)")


def dup(copy: str, kind: str, seconds: float, uid: str = "u1") -> Event:
    return {
        "workload": "duplicates",
        "uid": uid,
        "instance": "web-7",
        "copy": copy,
        "type": kind,
        "time": round(seconds * S),
    }


def test_one_copy_per_instance_uid_at_a_time_is_valid() -> None:
    verdict = check_duplicates(
        [
            dup("n1/1", "start", 1),
            dup("n1/1", "stop", 2),
            dup("n2/2", "start", 2),  # restarted elsewhere after the first stopped
            dup("n2/3", "start", 2.5, uid="u2"),  # a replacement: a new uid, same name
            dup("n2/2", "stop", 3),
            dup("n2/3", "stop", 4, uid="u2"),
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.summary == "no instance ran twice at once: 2 instance uids, 3 copies"


def test_an_instance_started_twice_at_once_is_a_duplicate() -> None:
    lines = [
        dup("n1/1", "start", 1),
        dup("n1/1", "beat", 2),
        {**dup("n1/9", "start", 2.5), "node": "n1"},  # a replayed event started it again
        dup("n1/1", "beat", 3),
        dup("n1/9", "stop", 4),
    ]
    verdict = check_duplicates(lines)
    assert not verdict.valid
    assert verdict.summary == "duplicates violation: instance web-7 (uid u1) ran twice at once"
    assert verdict.counterexample == [lines[0], lines[2], lines[3], lines[4]]
    assert verdict.explanation.startswith(
        "instance web-7 (uid u1) ran as two copies at once for 0.500s: copy n1/1 from 1.000s "
        "to 3.000s (no stop recorded: last beat), and copy n1/9 on node n1 from 2.500s"
    )


def sample(instances: list[str], revision: int, **extra: Any) -> Event:
    return {
        "workload": "surge",
        "type": "sample",
        "deployment": "web",
        "replicas": 3,
        "max_surge": 1,
        "instances": instances,
        "revision": revision,
        "time": revision * S,
        **extra,
    }


def test_a_rollout_within_replicas_plus_max_surge_is_valid() -> None:
    verdict = check_surge(
        [
            sample(["a", "b", "c"], 1),
            sample(["a", "b", "c", "d"], 2),
            # a is terminating: its slot is being handed over, not counted
            sample(["a", "b", "c", "d", "e"], 3, terminating=["a"]),
        ]
    )
    assert verdict.valid, verdict.explanation
    assert verdict.stats["peak_instances"] == {"web": 4}
    assert verdict.summary == "never above replicas + maxSurge: 1 deployments, 3 samples"


def test_a_rollout_above_replicas_plus_max_surge_is_a_violation() -> None:
    lines = [
        sample(["a", "b", "c", "d"], 2),
        sample(["a", "b", "c", "d", "e", "f"], 3, terminating=["a"]),
    ]
    verdict = check_surge(lines)
    assert not verdict.valid
    assert verdict.summary == "surge violation: deployment web ran more than replicas + maxSurge"
    assert verdict.counterexample == [lines[1]]
    assert verdict.explanation == (
        "deployment web ran 5 instances at revision 3 (3.000s), above replicas 3 + maxSurge 1 "
        "= 4: b, c, d, e, f (terminating, not counted: a)."
    )
    assert verdict.stats["samples_over_limit"] == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{**life("a", "n1", "start", 1), "node": None}],
         "history line 1: field 'node' must be a non-empty string, got None"),
        ([life("a", "n1", "beat", 1)],
         "history line 1: field 'type' is 'beat', but copy a has no start before it"),
        ([life("a", "n1", "start", 1), life("a", "n1", "start", 2)],
         "history line 2: field 'type': copy a starts a second time"),
        ([life("a", "n1", "start", 1), life("a", "n1", "stop", 2), life("a", "n1", "beat", 3)],
         "history line 3: field 'type': copy a has a beat after its stop"),
        ([life("a", "n1", "start", 1), life("a", "n2", "beat", 2)],
         "history line 2: field 'node' is 'n2', but copy a started with 'n1'"),
        ([life("a", "n1", "start", 2), life("a", "n1", "beat", 1)],
         "history line 2: field 'time' goes back within copy a"),
        ([{**life("a", "n1", "start", 1), "type": "running"}],
         "history line 1: field 'type' must be one of 'start', 'beat', 'stop'"),
    ],
)  # fmt: skip
def test_malformed_exclusive_lines_name_the_line_and_field(
    lines: list[Event], message: str
) -> None:
    with pytest.raises(HistoryError, match="^" + re.escape(message)):
        check_exclusive(lines)


def test_malformed_duplicates_and_surge_lines_name_the_line_and_field() -> None:
    with pytest.raises(HistoryError, match=r"^history line 1: field 'uid' is missing"):
        check_duplicates([{k: v for k, v in dup("a", "start", 1).items() if k != "uid"}])
    with pytest.raises(
        HistoryError, match=r"^history line 1: field 'instances' must be a list of strings"
    ):
        check_surge([sample("abc", 1)])  # type: ignore[arg-type]
    with pytest.raises(HistoryError, match=r"^history line 1: field 'max_surge' is missing"):
        check_surge([{k: v for k, v in sample([], 1).items() if k != "max_surge"}])


def test_other_workloads_lines_are_skipped() -> None:
    other = {"workload": "surge", "type": "sample"}
    assert check_exclusive([life("a", "n1", "start", 1), other]).valid
    assert check_duplicates([other]).valid
    assert check_surge([life("a", "n1", "start", 1)]).valid
