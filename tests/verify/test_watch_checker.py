"""The watch checker against hand-written histories: every way a watch can go wrong is
caught and named, and the legitimate paths (resume, 410 Expired then relist) pass."""

from __future__ import annotations

import re
from typing import Any

import pytest

from keel.verify import Event, HistoryError, check_watch

P = "/registry/pods/"


def commit(revision: int, key: str, event: str = "ADDED", prefix: str = P) -> Event:
    return {
        "workload": "watch",
        "process": "store",
        "type": "commit",
        "prefix": prefix,
        "revision": revision,
        "key": key,
        "event": event,
    }


def start(w: Any, revision: int, prefix: str = P) -> Event:
    return {"type": "start", "process": w, "prefix": prefix, "revision": revision}


def got(w: Any, revision: int, key: str, event: str = "ADDED", prefix: str = P) -> Event:
    return {
        "type": "event",
        "process": w,
        "prefix": prefix,
        "revision": revision,
        "key": key,
        "event": event,
    }


def expired(w: Any, prefix: str = P) -> Event:
    return {"type": "expired", "process": w, "prefix": prefix}


def relist(w: Any, revision: int, prefix: str = P) -> Event:
    return {"type": "relist", "process": w, "prefix": prefix, "revision": revision}


def disconnect(w: Any, prefix: str = P) -> Event:
    return {"type": "disconnect", "process": w, "prefix": prefix}


def history(*lines: Event) -> list[Event]:
    """Watcher lines get the workload and a rising monotonic time, as the recorder writes."""
    return [
        line if line["type"] == "commit" else {"workload": "watch", "time": 10**9 + i, **line}
        for i, line in enumerate(lines)
    ]


# Five changes under P; revision 13 is a change elsewhere in the store.
COMMITS = [
    commit(10, P + "a"),
    commit(11, P + "b"),
    commit(12, P + "a", "MODIFIED"),
    commit(14, P + "b", "DELETED"),
    commit(15, P + "c"),
]


def test_in_order_delivery_with_a_resume_is_valid() -> None:
    verdict = check_watch(
        history(
            *COMMITS,
            start(1, 9),
            got(1, 10, P + "a"),
            got(1, 11, P + "b"),
            disconnect(1),
            start(1, 11),
            got(1, 12, P + "a", "MODIFIED"),
            got(1, 14, P + "b", "DELETED"),
            start(2, 12),
            got(2, 14, P + "b", "DELETED"),
            got(2, 15, P + "c"),
        )
    )
    assert verdict.valid, verdict.explanation
    assert (
        verdict.summary
        == "ordered, unique, gap-free: 2 watchers, 6 events, 1 resumes, 0 expired+relist"
    )
    assert verdict.stats["commits"] == 5
    assert verdict.stats["disconnects"] == 1
    assert verdict.counterexample == []


def test_resuming_from_a_bookmark_with_no_change_in_between_is_not_a_gap() -> None:
    # Nothing under P changed at 13: resuming from 13 after seeing 12 skips nothing.
    verdict = check_watch(
        history(*COMMITS, start(1, 11), got(1, 12, P + "a", "MODIFIED"), start(1, 13))
    )
    assert verdict.valid, verdict.explanation


def test_a_skipped_change_is_a_gap() -> None:
    lines = history(*COMMITS, start(1, 9), got(1, 10, P + "a"), got(1, 12, P + "a", "MODIFIED"))
    verdict = check_watch(lines)
    assert not verdict.valid
    assert verdict.summary == "watch violation: gap"
    # Its position, the delivery that jumped, and the change it never got.
    assert verdict.counterexample == [COMMITS[1], lines[6], lines[7]]
    assert "never received the 1 change in between, the first revision 11 ADDED" in (
        verdict.explanation
    )
    assert "watcher 1 on '/registry/pods/'" in verdict.explanation


def test_a_change_delivered_twice_is_a_duplicate() -> None:
    lines = history(*COMMITS, start(1, 9), got(1, 10, P + "a"), got(1, 10, P + "a"))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: duplicate"
    assert verdict.counterexample == [lines[6], lines[7]]
    assert "received revision 10 ADDED /registry/pods/a twice" in verdict.explanation
    assert "already delivered (history line 7)" in verdict.explanation


def test_a_change_already_in_the_start_state_is_a_duplicate() -> None:
    lines = history(*COMMITS, start(1, 11), got(1, 11, P + "b"))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: duplicate"
    assert verdict.counterexample == [lines[5], lines[6]]
    assert "started watching at revision 11, which already includes it" in verdict.explanation


def test_changes_delivered_in_the_wrong_order_are_out_of_order() -> None:
    lines = history(
        *COMMITS, start(1, 9), got(1, 11, P + "b"), got(1, 10, P + "a"), got(1, 12, P + "a")
    )
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: out of order"
    assert verdict.counterexample == [lines[6], lines[7]]
    assert (
        "received revision 11 ADDED /registry/pods/b before revision 10 ADDED "
        "/registry/pods/a, which the store committed first" in verdict.explanation
    )


def test_resuming_ahead_of_the_position_is_a_gap() -> None:
    lines = history(*COMMITS, start(1, 9), got(1, 10, P + "a"), disconnect(1), start(1, 12))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: gap"
    assert verdict.counterexample == [COMMITS[1], lines[6], lines[8]]
    assert "resumed from revision 12, ahead of its position: it skips 2 changes" in (
        verdict.explanation
    )
    assert verdict.stats["resumes"] == 1


def test_resuming_behind_the_position_is_flagged() -> None:
    lines = history(*COMMITS, start(1, 9), got(1, 10, P + "a"), got(1, 11, P + "b"), start(1, 10))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: resumed behind its position"
    assert verdict.counterexample == [lines[7], lines[8]]
    assert "had seen everything through revision 11 but resumed from revision 10" in (
        verdict.explanation
    )
    assert "would be delivered to it twice" in verdict.explanation


def test_expired_then_relist_then_resume_from_the_relist_is_valid() -> None:
    verdict = check_watch(
        history(
            *COMMITS,
            start(1, 9),
            got(1, 10, P + "a"),
            disconnect(1),
            start(1, 10),
            expired(1),
            relist(1, 13),
            start(1, 13),
            got(1, 14, P + "b", "DELETED"),
            got(1, 15, P + "c"),
        )
    )
    assert verdict.valid, verdict.explanation
    assert verdict.stats["expirations"] == 1
    assert verdict.stats["relists"] == 1
    assert verdict.summary.endswith("1 expired+relist")


def test_a_relist_first_then_watch_is_valid() -> None:
    verdict = check_watch(
        history(*COMMITS, relist(1, 12), start(1, 12), got(1, 14, P + "b", "DELETED"))
    )
    assert verdict.valid, verdict.explanation


def test_deliveries_after_expired_without_relist_are_a_violation() -> None:
    lines = history(*COMMITS, start(1, 9), expired(1), got(1, 10, P + "a"))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: delivery after 410 Expired without a relist"
    assert verdict.counterexample == [lines[6], lines[7]]
    assert "was told 410 Expired and then received revision 10 ADDED" in verdict.explanation


def test_restarting_after_expired_without_relist_is_a_violation() -> None:
    lines = history(*COMMITS, start(1, 9), got(1, 10, P + "a"), expired(1), start(1, 10))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: restart after 410 Expired without a relist"
    assert verdict.counterexample == [lines[7], lines[8]]


def test_an_event_beyond_the_last_commit_was_never_committed() -> None:
    lines = history(*COMMITS, start(1, 15), got(1, 16, P + "d"))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: event never committed"
    assert verdict.counterexample == [lines[6]]
    assert "revision 16 is beyond the last change committed under the prefix (revision 15)" in (
        verdict.explanation
    )


def test_an_event_of_the_wrong_kind_was_never_committed() -> None:
    lines = history(*COMMITS, start(1, 11), got(1, 12, P + "a", "DELETED"))
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: event never committed"
    assert verdict.counterexample == [COMMITS[2], lines[6]]
    assert "as DELETED, but the store committed it as MODIFIED" in verdict.explanation


def test_a_watcher_that_stops_early_is_fine_and_other_workloads_are_skipped() -> None:
    other = {"workload": "register", "process": 1, "type": "invoke", "f": "read", "key": "x"}
    verdict = check_watch([*history(*COMMITS, start(1, 9), got(1, 10, P + "a")), other])
    assert verdict.valid, verdict.explanation


def test_watchers_of_different_prefixes_are_checked_against_their_own_commits() -> None:
    q = "/registry/nodes/"
    lines = history(
        *COMMITS,
        commit(13, q + "n1", prefix=q),
        start(1, 12, prefix=q),
        got(1, 13, q + "n1", prefix=q),
        start(1, 12),
        got(1, 13, q + "n1"),
    )
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: event never committed"
    assert verdict.counterexample == [lines[9]]
    assert "committed no change to /registry/nodes/n1 at revision 13" in verdict.explanation


def test_every_violating_watcher_is_counted_and_the_first_is_shown() -> None:
    lines = history(
        *COMMITS,
        start(1, 9),
        got(1, 11, P + "b"),
        start(2, 9),
        got(2, 10, P + "a"),
        got(2, 10, P + "a"),
    )
    verdict = check_watch(lines)
    assert verdict.summary == "watch violation: gap"
    assert verdict.stats["violations"] == 2
    assert "(1 more violation found; this is the first.)" in verdict.explanation


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"type": "event", "process": 1, "prefix": P, "key": "k", "event": "ADDED", "time": 1},
         "history line 2: field 'revision' is missing"),
        ({"type": "start", "process": 1, "prefix": P, "revision": "9", "time": 1},
         "history line 2: field 'revision' must be an integer, got '9'"),
        ({"type": "start", "process": True, "prefix": P, "revision": 9, "time": 1},
         "history line 2: field 'process' must be a string or an integer"),
        ({"type": "event", "process": 1, "prefix": P, "revision": 10, "key": "k",
          "event": "UPDATED", "time": 1},
         "history line 2: field 'event' must be one of 'ADDED', 'MODIFIED', 'DELETED'"),
        ({"type": "resync", "process": 1, "prefix": P, "time": 1},
         "history line 2: field 'type' must be one of"),
        ({"type": "relist", "process": 1, "prefix": P, "revision": 3},
         "history line 2: field 'time' is missing"),
    ],
)  # fmt: skip
def test_malformed_lines_name_the_line_and_field(line: Event, message: str) -> None:
    with pytest.raises(HistoryError, match="^" + re.escape(message)):
        check_watch([commit(10, P + "a"), {"workload": "watch", **line}])


def test_an_event_before_any_start_is_malformed() -> None:
    with pytest.raises(HistoryError, match=r"history line 2: .* received an event before any"):
        check_watch(history(commit(10, P + "a"), got(1, 10, P + "a")))


def test_commits_out_of_commit_order_are_malformed() -> None:
    with pytest.raises(HistoryError, match="history line 2: field 'revision' 9 goes back"):
        check_watch([commit(10, P + "a"), commit(9, P + "b")])


def test_the_store_commits_may_come_after_the_watchers_lines() -> None:
    # The recorder reads the store's log once the run is over and appends it.
    watchers = history(start(1, 9), got(1, 10, P + "a"), got(1, 12, P + "a", "MODIFIED"))
    verdict = check_watch([*watchers, *COMMITS])
    assert verdict.summary == "watch violation: gap"
    assert verdict.counterexample == [watchers[1], watchers[2], COMMITS[1]]
