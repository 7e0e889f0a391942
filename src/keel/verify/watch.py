"""Watch checker: watches are ordered, unique, gap-free and resumable, or say 410 Expired.

Replays each watcher's deliveries, restarts, expirations and relists against the store's own
commit log read after the run. Pure: a list of history lines in, a `Verdict` out.

Positions are counted in changes under the prefix, not in raw revisions: a watcher that has
seen everything through revision 10 and resumes from 13 skips nothing if nothing under its
prefix changed at 11..13 (a bookmark), so only resumes that skip or replay a change count.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from keel.verify._fields import (
    Process,
    choice,
    integer,
    lines_of,
    more,
    optional_integer,
    process,
    text,
)
from keel.verify.history import Event, HistoryError, Verdict

__all__ = ["check_watch"]

WORKLOAD = "watch"
KINDS = ("ADDED", "MODIFIED", "DELETED")
TYPES = ("commit", "start", "event", "expired", "relist", "disconnect")


@dataclass(frozen=True)
class _Change:
    revision: int
    key: str
    kind: str
    line: int


@dataclass
class _Log:
    """Every change the store committed under one prefix, in commit order."""

    changes: list[_Change] = field(default_factory=list)
    revisions: list[int] = field(default_factory=list)
    where: dict[tuple[int, str], int] = field(default_factory=dict)

    def through(self, revision: int) -> int:
        """How many changes a watcher knows once it knows the state at `revision`."""
        return bisect_right(self.revisions, revision)

    def describe(self, at: int) -> str:
        change = self.changes[at]
        return f"revision {change.revision} {change.kind} {change.key}"


@dataclass(frozen=True)
class _Line:
    """One watcher line, validated: `revision` is None on expired (optional) and disconnect."""

    index: int
    type: str
    revision: int | None = None
    key: str = ""
    kind: str = ""

    def delivered(self) -> str:
        return f"revision {self.revision} {self.kind} {self.key}"


@dataclass
class _Watcher:
    """One process watching one prefix. `cursor` counts the changes it knows, None until
    its first start or relist; `position_line` is the line that last moved it."""

    process: Process
    prefix: str
    lines: list[_Line] = field(default_factory=list)
    cursor: int | None = None
    position: int = 0
    position_line: int = 0
    # Where the watcher last learned a whole state (start or relist): what it covered.
    anchor_line: int = 0
    anchor_cursor: int = 0
    delivered_at: dict[int, int] = field(default_factory=dict)
    expired_line: int | None = None
    starts: int = 0

    def name(self) -> str:
        return f"watcher {self.process} on {self.prefix!r}"

    def anchor(self, cursor: int, revision: int, line: int) -> None:
        self.cursor = self.anchor_cursor = cursor
        self.position = revision
        self.position_line = self.anchor_line = line
        self.delivered_at = {}


@dataclass(frozen=True)
class _Violation:
    """`at` is the watcher's line where it went wrong; `lines` the counterexample."""

    kind: str
    at: int
    lines: list[int]
    explanation: str


def check_watch(history: Sequence[Event]) -> Verdict:
    """Check every watcher against the store's commits (lines of workload "watch").

    Ground truth, one line per change, written from the store after the run:
      {"type": "commit", "prefix": P, "revision": R, "key": K, "event": E}
    Per watcher process W:
      {"type": "start", "process": W, "prefix": P, "revision": R, "time": T}
          (re)watch P for every change after R
      {"type": "event", "process": W, "prefix": P, "revision": R, "key": K, "event": E,
       "time": T}                                      a delivered change
      {"type": "expired", "process": W, "prefix": P, "time": T, "revision": R?}   410 Gone
      {"type": "relist", "process": W, "prefix": P, "revision": R, "time": T}
          listed P at revision R: its state is now that snapshot
      {"type": "disconnect", "process": W, "prefix": P, "time": T}   informational
    E is "ADDED", "MODIFIED" or "DELETED". A watcher that stops early is fine.
    """
    logs: dict[str, _Log] = {}
    watchers: dict[tuple[Process, str], _Watcher] = {}
    commits = 0
    for index, event in lines_of(history, WORKLOAD):
        kind = choice(event, index, "type", TYPES)
        prefix = text(event, index, "prefix")
        if kind == "commit":
            _record_commit(logs.setdefault(prefix, _Log()), event, index)
            commits += 1
            continue
        who = process(event, index)
        watcher = watchers.setdefault((who, prefix), _Watcher(who, prefix))
        watcher.lines.append(_parse_line(event, index, kind))

    violations: list[_Violation] = []
    stats = {"watchers": len({who for who, _ in watchers}), "commits": commits}
    counts = dict.fromkeys(
        ("events_delivered", "resumes", "expirations", "relists", "disconnects"), 0
    )
    for watcher in watchers.values():
        found = _replay(watcher, logs.get(watcher.prefix, _Log()), history, counts)
        if found is not None:
            violations.append(found)
    stats.update(counts)

    if not violations:
        summary = (
            f"ordered, unique, gap-free: {stats['watchers']:,} watchers, "
            f"{counts['events_delivered']:,} events, {counts['resumes']:,} resumes, "
            f"{counts['expirations']:,} expired+relist"
        )
        return Verdict(WORKLOAD, True, summary, stats=stats)
    first = min(violations, key=lambda v: v.at)
    stats["violations"] = len(violations)
    return Verdict(
        WORKLOAD,
        False,
        f"watch violation: {first.kind}",
        counterexample=[history[i] for i in sorted(set(first.lines))],
        explanation=first.explanation + more(len(violations)),
        stats=stats,
    )


def _record_commit(log: _Log, event: Event, index: int) -> None:
    revision = integer(event, index, "revision")
    key = text(event, index, "key")
    kind = choice(event, index, "event", KINDS)
    if log.revisions and revision < log.revisions[-1]:
        raise HistoryError(
            f"history line {index + 1}: field 'revision' {revision} goes back from "
            f"{log.revisions[-1]}: commits must be listed in commit order"
        )
    if (revision, key) in log.where:
        raise HistoryError(
            f"history line {index + 1}: field 'key' {key!r} is committed twice at revision "
            f"{revision}"
        )
    log.where[revision, key] = len(log.changes)
    log.changes.append(_Change(revision, key, kind, index))
    log.revisions.append(revision)


def _parse_line(event: Event, index: int, kind: str) -> _Line:
    integer(event, index, "time")
    if kind == "event":
        revision = integer(event, index, "revision")
        return _Line(
            index, kind, revision, text(event, index, "key"), choice(event, index, "event", KINDS)
        )
    if kind in ("start", "relist"):
        return _Line(index, kind, integer(event, index, "revision"))
    if kind == "expired":
        return _Line(index, kind, optional_integer(event, index, "revision"))
    return _Line(index, kind)


def _replay(
    watcher: _Watcher, log: _Log, history: Sequence[Event], counts: dict[str, int]
) -> _Violation | None:
    """Walk one watcher's lines; the first violation ends it (its state is unknown after)."""
    for step, line in enumerate(watcher.lines):
        if line.type == "disconnect":
            counts["disconnects"] += 1
        elif line.type == "expired":
            counts["expirations"] += 1
            watcher.expired_line = line.index
        elif line.type == "relist":
            assert line.revision is not None
            counts["relists"] += 1
            watcher.expired_line = None
            watcher.anchor(log.through(line.revision), line.revision, line.index)
        elif line.type == "start":
            assert line.revision is not None
            found = _start(watcher, log, line.index, line.revision, counts)
            if found is not None:
                return found
        else:
            found = _deliver(watcher, log, history, line, watcher.lines[step + 1 :])
            if found is not None:
                return found
            counts["events_delivered"] += 1
    return None


def _start(
    watcher: _Watcher, log: _Log, index: int, revision: int, counts: dict[str, int]
) -> _Violation | None:
    watcher.starts += 1
    if watcher.starts > 1:
        counts["resumes"] += 1
    if watcher.expired_line is not None:
        return _Violation(
            "restart after 410 Expired without a relist",
            index,
            [watcher.expired_line, index],
            f"{watcher.name()} was told 410 Expired, then watched again from revision "
            f"{revision} without listing first: changes compacted away are lost to it.",
        )
    known = log.through(revision)
    if watcher.cursor is None or known == watcher.cursor:
        watcher.anchor(known, revision, index)
        return None
    cursor = watcher.cursor
    if known > cursor:
        skipped = known - cursor
        return _Violation(
            "gap",
            index,
            [watcher.position_line, index, log.changes[cursor].line],
            f"{watcher.name()} had seen everything through revision {watcher.position} but "
            f"resumed from revision {revision}, ahead of its position: it skips {skipped} "
            f"change{'s' if skipped != 1 else ''}, the first {log.describe(cursor)}.",
        )
    replayed = cursor - known
    return _Violation(
        "resumed behind its position",
        index,
        [watcher.position_line, index],
        f"{watcher.name()} had seen everything through revision {watcher.position} but "
        f"resumed from revision {revision}, behind its position: the {replayed} "
        f"change{'s' if replayed != 1 else ''} after revision {revision} would be "
        "delivered to it twice.",
    )


def _deliver(
    watcher: _Watcher, log: _Log, history: Sequence[Event], line: _Line, later: list[_Line]
) -> _Violation | None:
    index, revision, key, kind = line.index, line.revision, line.key, line.kind
    assert revision is not None
    what = line.delivered()
    if watcher.cursor is None:
        raise HistoryError(
            f"history line {index + 1}: {watcher.name()} received an event before any start "
            "or relist"
        )
    if watcher.expired_line is not None:
        return _Violation(
            "delivery after 410 Expired without a relist",
            index,
            [watcher.expired_line, index],
            f"{watcher.name()} was told 410 Expired and then received {what} without "
            "listing first: its state misses the changes compacted away.",
        )
    cursor = watcher.cursor
    at = log.where.get((revision, key))
    if at is None:
        last = log.revisions[-1] if log.revisions else 0
        beyond = (
            f"revision {revision} is beyond the last change committed under the prefix "
            f"(revision {last})"
            if revision > last
            else f"the store committed no change to {key} at revision {revision}"
        )
        return _Violation(
            "event never committed",
            index,
            [index],
            f"{watcher.name()} received {what}, an event never committed: {beyond}.",
        )
    change = log.changes[at]
    if change.kind != kind:
        return _Violation(
            "event never committed",
            index,
            [index, change.line],
            f"{watcher.name()} received {key} at revision {revision} as {kind}, but the store "
            f"committed it as {change.kind}.",
        )
    if at == cursor:
        watcher.cursor = cursor + 1
        watcher.position = revision
        watcher.position_line = index
        watcher.delivered_at[at] = index
        return None
    if at < cursor:
        if at in watcher.delivered_at:
            earlier = watcher.delivered_at[at]
            source = f"it was already delivered (history line {earlier + 1})"
        else:
            earlier = watcher.anchor_line
            how = "listed" if history[earlier]["type"] == "relist" else "started watching"
            source = (
                f"it {how} at revision {history[earlier]['revision']}, which already includes it"
            )
        return _Violation(
            "duplicate",
            index,
            [earlier, index],
            f"{watcher.name()} received {what} twice: {source}.",
        )
    # Ahead of the next change: out of order if a skipped change arrives later in the
    # same stream, a gap if it never does.
    for follow in later:
        if follow.type in ("start", "relist", "expired"):
            break
        if follow.type != "event":
            continue
        back = log.where.get((follow.revision or 0, follow.key))
        if back is not None and cursor <= back < at:
            return _Violation(
                "out of order",
                index,
                [index, follow.index],
                f"{watcher.name()} received {what} before {log.describe(back)}, which the "
                "store committed first.",
            )
    skipped = at - cursor
    return _Violation(
        "gap",
        index,
        [watcher.position_line, index, log.changes[cursor].line],
        f"{watcher.name()} had seen everything through revision {watcher.position}, then "
        f"received {what}: it never received the {skipped} change"
        f"{'s' if skipped != 1 else ''} in between, the first {log.describe(cursor)}.",
    )
