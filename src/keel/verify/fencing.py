"""Fencing checker: at most one leader acts per lease, because the store rejects a write
carrying a stale fencing token, even after a pause of the old leader.

Checks the contenders' fenced writes against the lease history the store recorded. Pure: a
list of history lines in, a `Verdict` out.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from keel.verify._fields import (
    Process,
    choice,
    integer,
    lines_of,
    more,
    optional_integer,
    process,
    seconds,
    text,
)
from keel.verify.history import Event, HistoryError, Verdict

__all__ = ["check_fencing"]

WORKLOAD = "fencing"
TYPES = ("lease", "acquired", "invoke", "ok", "fail", "info")


@dataclass(frozen=True)
class _Lease:
    holder: str
    token: int
    revision: int
    line: int


@dataclass(frozen=True)
class _Write:
    """One completed write: `token` None means it carried none; `revision` only on ok."""

    process: Process
    token: int | None
    invoked: int
    invoke_line: int
    done: int
    line: int
    outcome: str
    revision: int | None


@dataclass(frozen=True)
class _Violation:
    kind: str
    lines: list[int]
    explanation: str


def check_fencing(history: Sequence[Event]) -> Verdict:
    """Check fenced writes against the lease history (lines of workload "fencing").

    Ground truth, from the store after the run, one line per change of holder:
      {"type": "lease", "holder": H, "token": N, "revision": R}   token N current from R on
    Per contender process C:
      {"type": "acquired", "process": C, "token": N, "time": T}   what C believed
      {"type": "invoke", "process": C, "f": "write", "token": N|null, "key": K, "value": V,
       "time": T}
      {"type": "ok"|"fail"|"info", "process": C, "f": "write", "time": T,
       "revision": R (ok only, optional), "reason": "stale-token" (fail, optional)}
    A process has at most one write outstanding; the invoke's token is the write's token.

    Rules: (a) tokens strictly rise along the lease history; (b) every ok write carries the
    token current at its commit revision; (c) no ok write with token t is committed after the
    first ok write of a larger token. Rule (c) compares commit revisions when both writes have
    one; otherwise it compares real time, which only convicts an old write invoked after the
    newer holder's first acknowledged write had completed. Fail and info writes, and invokes
    never completed, constrain nothing. Of several violations, the counterexample shows the
    first by rule, (a) before (b) before (c); stats["violations"] counts them all.
    """
    leases: list[_Lease] = []
    writes: list[_Write] = []
    open_writes: dict[Process, tuple[int, int | None, int]] = {}
    acquisitions = rejected_stale = 0
    for index, event in lines_of(history, WORKLOAD):
        kind = choice(event, index, "type", TYPES)
        if kind == "lease":
            leases.append(
                _Lease(
                    text(event, index, "holder"),
                    integer(event, index, "token"),
                    integer(event, index, "revision"),
                    index,
                )
            )
            continue
        who = process(event, index)
        time = integer(event, index, "time")
        if kind == "acquired":
            integer(event, index, "token")
            acquisitions += 1
            continue
        choice(event, index, "f", ("write",))
        if kind == "invoke":
            if who in open_writes:
                raise HistoryError(
                    f"history line {index + 1}: process {who} invoked a write while its write "
                    f"at history line {open_writes[who][0] + 1} had not completed"
                )
            text(event, index, "key")
            open_writes[who] = (index, optional_integer(event, index, "token"), time)
            continue
        if who not in open_writes:
            raise HistoryError(
                f"history line {index + 1}: field 'type' {kind!r} completes a write that "
                f"process {who} never invoked"
            )
        invoke_line, token, invoked = open_writes.pop(who)
        revision = optional_integer(event, index, "revision") if kind == "ok" else None
        if kind == "fail" and event.get("reason") == "stale-token":
            rejected_stale += 1
        writes.append(_Write(who, token, invoked, invoke_line, time, index, kind, revision))

    leases.sort(key=lambda lease: lease.revision)
    acknowledged = [w for w in writes if w.outcome == "ok"]
    violations = [
        *_tokens_rise(leases),
        *_token_current_at_commit(leases, acknowledged),
        *_no_old_write_after_newer(acknowledged),
    ]
    outcomes = [w.outcome for w in writes]
    stats = {
        "holders": len({lease.holder for lease in leases}),
        "token_transitions": max(len(leases) - 1, 0),
        "acquisitions": acquisitions,
        "writes_ok": outcomes.count("ok"),
        "writes_fail": outcomes.count("fail"),
        "writes_info": outcomes.count("info") + len(open_writes),
        "rejected_stale_writes": rejected_stale,
    }
    if not violations:
        summary = (
            f"no stale write accepted: {stats['writes_ok']:,} writes ok under "
            f"{len(leases):,} lease tokens, {rejected_stale:,} stale writes rejected"
        )
        if not leases:
            summary += " (no lease history: token-at-commit check skipped)"
        return Verdict(WORKLOAD, True, summary, stats=stats)
    first = violations[0]
    stats["violations"] = len(violations)
    return Verdict(
        WORKLOAD,
        False,
        f"fencing violation: {first.kind}",
        counterexample=[history[i] for i in sorted(set(first.lines))],
        explanation=first.explanation + more(len(violations)),
        stats=stats,
    )


def _tokens_rise(leases: list[_Lease]) -> list[_Violation]:
    return [
        _Violation(
            "tokens did not rise",
            [before.line, after.line],
            f"fencing tokens did not rise: holder {after.holder} got token {after.token} at "
            f"revision {after.revision}, not above token {before.token} that {before.holder} "
            f"held from revision {before.revision}.",
        )
        for before, after in pairwise(leases)
        if after.token <= before.token
    ]


def _token_current_at_commit(leases: list[_Lease], writes: list[_Write]) -> list[_Violation]:
    found: list[_Violation] = []
    revisions = [lease.revision for lease in leases]
    for write in writes:
        if write.token is None:
            found.append(
                _Violation(
                    "accepted without a fencing token",
                    [write.invoke_line, write.line],
                    f"write accepted without a fencing token: process {write.process}'s write "
                    "carried no token and the store acknowledged it.",
                )
            )
            continue
        if not leases or write.revision is None:
            continue
        at = bisect_right(revisions, write.revision) - 1
        if at < 0:
            found.append(
                _Violation(
                    "accepted before any lease holder",
                    [write.invoke_line, write.line, leases[0].line],
                    f"write accepted before any lease holder: process {write.process}'s write "
                    f"with token {write.token} committed at revision {write.revision}, before "
                    f"the first lease at revision {leases[0].revision}.",
                )
            )
        elif leases[at].token != write.token:
            current = leases[at]
            stale = "stale" if write.token < current.token else "not yet granted"
            found.append(
                _Violation(
                    f"accepted with a {stale} fencing token",
                    [write.invoke_line, write.line, current.line],
                    f"write accepted with a {stale} fencing token: process {write.process}'s "
                    f"write with token {write.token} committed at revision {write.revision}, "
                    f"when token {current.token} of {current.holder} was current (from "
                    f"revision {current.revision}).",
                )
            )
    return found


def _no_old_write_after_newer(writes: list[_Write]) -> list[_Violation]:
    tokened = [(w.token, w) for w in writes if w.token is not None]
    # Each token's first acknowledged write: by commit revision, and by completion time.
    by_revision: dict[int, tuple[int, _Write]] = {}
    by_completion: dict[int, _Write] = {}
    for token, write in tokened:
        if write.revision is not None and (
            token not in by_revision or write.revision < by_revision[token][0]
        ):
            by_revision[token] = (write.revision, write)
        if token not in by_completion or write.done < by_completion[token].done:
            by_completion[token] = write
    found: list[_Violation] = []
    for token, old in tokened:
        newer = _earliest_newer(token, old, by_revision, by_completion)
        if newer is not None:
            how = (
                f"committed at revision {old.revision}, after revision {newer.revision}"
                if old.revision is not None and newer.revision is not None
                else f"invoked at {seconds(old.invoked)}, after the newer write completed at "
                f"{seconds(newer.done)}"
            )
            found.append(
                _Violation(
                    "older holder's write accepted after a newer holder's",
                    [newer.invoke_line, newer.line, old.invoke_line, old.line],
                    "a write of an older holder was accepted after a newer holder's first "
                    f"write: process {old.process}'s write with token {old.token} was {how}, "
                    f"where process {newer.process} first wrote with token {newer.token}.",
                )
            )
    return found


def _earliest_newer(
    token: int,
    old: _Write,
    by_revision: dict[int, tuple[int, _Write]],
    by_completion: dict[int, _Write],
) -> _Write | None:
    """The first ok write of a larger token that `old` came after, if any."""
    for larger in sorted(t for t in by_completion if t > token):
        if old.revision is not None and larger in by_revision:
            revision, first = by_revision[larger]
            if revision < old.revision:
                return first
            continue
        first = by_completion[larger]
        if old.invoked > first.done:
            return first
    return None
