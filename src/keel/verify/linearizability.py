"""Linearizability of single-key registers: the checker behind `keel verify`'s register model.

A history is split by key (linearizability is compositional, so a history is linearizable iff
every key's subhistory is) and each key is searched with Wing & Gong's algorithm in Lowe's
just-in-time form, memoizing (linearized set, register value). A violation is shrunk to a small
history that fails on its own. Pure: events in, `Verdict` out; the clock is read only to honour
`time_limit` and the shrinking budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from keel.verify.history import Event, HistoryError, Verdict

__all__ = ["check_register"]

READ, WRITE, CAS = 0, 1, 2
_KINDS = {"read": READ, "write": WRITE, "cas": CAS}
_TYPES = frozenset({"invoke", "ok", "fail", "info"})

SHRINK_BUDGET = 5.0
"""Seconds spent at most on shrinking a violation (less if `time_limit` leaves less): the
search is exact, shrinking is a courtesy to the reader and must not hold up the verdict."""

_CLOCK_EVERY = 4096
"""Search steps between two reads of the clock: reading it each step would cost more than
the step."""


@dataclass(frozen=True, slots=True)
class _Op:
    """One operation on one key, as the search sees it.

    `ret` is None when the outcome is unknown (an `info` completion, no completion, or an `ok`
    relaxed away while shrinking): such an op may take effect at any instant after `call`, or
    never. `a`/`b` are the frozen argument values: the value read or written, or the cas's
    expected and new values.
    """

    kind: int
    a: Hashable
    b: Hashable
    call: float
    ret: float | None
    process: Any
    invoke: Event
    completion: Event | None
    order: tuple[int, int]  # positions of invoke and completion, to print lines in order


class _OutOfTime(Exception):
    pass


def check_register(history: Sequence[Event], *, time_limit: float | None = None) -> Verdict:
    """Check that a history of single-key register operations is linearizable.

    Each key is a register that starts absent (`null`). `read` returns the value, `write` sets
    it, `cas [expected, new]` sets it iff it holds `expected`. An `ok` read must be explained by
    some order of the operations that respects real time; a `fail` completion means the
    operation did not happen at all; an `info` completion or none (the process's next invoke
    comes first, or the history ends) means it may have happened at any instant after its
    invoke, or never. Lines whose `workload` is set to something other than `"register"` are
    skipped, so a combined history can be passed as is; other extra fields are ignored.

    A violation names every failing key; for the first, `counterexample` is a short history,
    itself failing this check, made of original lines: an operation shown by its invoke alone
    was found not to matter whether or when it took effect. `stats` counts operations (`ok`,
    `fail`, `info` for indeterminate ones), `keys`, `largest_key_operations` and `seconds`.

    `time_limit` bounds the search in seconds. When it runs out before every key is decided and
    no key was found non-linearizable, the verdict is *unknown*: `valid` is False (nothing was
    shown), `summary` starts with "unknown" and `stats["unknown"]` is True. A key found
    non-linearizable before the limit still gives a definite "not linearizable".

    Raises `HistoryError` naming the event (1-based position in `history`) for a line that is
    not a register operation or breaks the invoke/completion pairing.
    """
    started = time.monotonic()
    deadline = math.inf if time_limit is None else started + time_limit
    by_key, counts = _collect(history)

    failed: list[Hashable] = []
    undecided: list[Hashable] = []
    for key, ops in by_key.items():
        if time.monotonic() >= deadline:
            undecided.append(key)
            continue
        try:
            if not _linearizable(ops, deadline):
                failed.append(key)
        except _OutOfTime:
            undecided.append(key)

    stats: dict[str, Any] = {
        **counts,
        "keys": len(by_key),
        "largest_key_operations": max((len(ops) for ops in by_key.values()), default=0),
    }
    if undecided:
        stats["undecided_keys"] = undecided
    described = (
        f"{_count(counts['operations'], 'operation')} on {_count(len(by_key), 'key')} "
        f"({counts['info']:,} indeterminate)"
    )
    if failed:
        key = failed[0]
        stats["failed_keys"] = failed
        shrink_deadline = min(deadline, time.monotonic() + SHRINK_BUDGET)
        witness = _shrink(by_key[key], shrink_deadline)
        explanation = _explain(key, witness, max(shrink_deadline, time.monotonic() + 1.0))
        stats["seconds"] = round(time.monotonic() - started, 6)
        others = failed[1:]
        if others:
            explanation += " Also not linearizable: " + ", ".join(_show_key(k) for k in others)
            explanation += "."
        keys_word = "key" if len(failed) == 1 else "keys"
        return Verdict(
            model="register",
            valid=False,
            summary=f"not linearizable: {keys_word} {', '.join(_show_key(k) for k in failed)}",
            counterexample=_events(witness.ops),
            explanation=explanation,
            stats=stats,
        )
    stats["seconds"] = round(time.monotonic() - started, 6)
    if undecided:
        stats["unknown"] = True
        return Verdict(
            model="register",
            valid=False,
            summary=(
                f"unknown: search exceeded {time_limit:g} s with {len(undecided):,} of "
                f"{len(by_key):,} keys undecided ({described})"
            ),
            explanation="No violation was found in the keys that were decided; the search "
            "gave up before the others were, so nothing is claimed about them.",
            stats=stats,
        )
    return Verdict(model="register", valid=True, summary=f"linearizable: {described}", stats=stats)


# --- reading the history -------------------------------------------------------------------


def _collect(history: Sequence[Event]) -> tuple[dict[Hashable, list[_Op]], dict[str, int]]:
    """Pair invokes with completions and group the resulting operations by key.

    Failed operations and reads of unknown outcome are dropped here: neither constrains the
    register. Validation happens once, at this edge, so the search can trust its input.
    """
    open_ops: dict[Any, tuple[int, Event]] = {}
    by_key: dict[Hashable, list[_Op]] = {}
    counts = {"operations": 0, "ok": 0, "fail": 0, "info": 0, "skipped": 0}

    def add(order: tuple[int, int], invoke: Event, completion: Event | None) -> None:
        kind = _KINDS[invoke["f"]]
        outcome = "info" if completion is None else completion["type"]
        counts["operations"] += 1
        counts[outcome] += 1
        if outcome == "fail" or (kind == READ and outcome == "info"):
            return
        if kind == READ:
            assert completion is not None
            a: Hashable = _freeze(completion.get("value"))
            b: Hashable = None
        elif kind == WRITE:
            a, b = _freeze(invoke["value"]), None
        else:
            a, b = _freeze(invoke["value"][0]), _freeze(invoke["value"][1])
        ret = None if outcome == "info" else completion["time"]  # type: ignore[index]
        op = _Op(kind, a, b, invoke["time"], ret, invoke["process"], invoke, completion, order)
        by_key.setdefault(invoke["key"], []).append(op)

    for index, event in enumerate(history):
        where = f"event {index + 1}"
        if not isinstance(event, dict):
            raise HistoryError(f"{where}: expected a JSON object, got {event!r:.60}")
        workload = event.get("workload")
        if workload is not None and workload != "register":
            counts["skipped"] += 1
            continue
        _validate(event, where)
        process = event["process"]
        where = f"{where} (process {process!r})"
        if event["type"] == "invoke":
            if process in open_ops:
                # The process gave up on its open op without recording it: that op has no
                # completion, so its outcome is unknown, exactly as if the process had crashed.
                # (Counterexamples rely on this: they show relaxed ops by their invoke alone.)
                start, invoke = open_ops.pop(process)
                add((start, index), invoke, None)
            if event["f"] == "cas":
                value = event.get("value")
                if not (isinstance(value, list) and len(value) == 2):
                    raise HistoryError(
                        f"{where}: cas value must be [expected, new], got {value!r:.60}"
                    )
            elif event["f"] == "write" and "value" not in event:
                raise HistoryError(f"{where}: write invoke without a value")
            open_ops[process] = (index, event)
            continue
        if process not in open_ops:
            raise HistoryError(f"{where}: {event['type']} completion without an invoke")
        start, invoke = open_ops.pop(process)
        for name in ("f", "key"):
            if event[name] != invoke[name]:
                raise HistoryError(
                    f"{where}: completion has {name}={event[name]!r} but its invoke "
                    f"(event {start + 1}) has {name}={invoke[name]!r}"
                )
        if event["time"] < invoke["time"]:
            raise HistoryError(f"{where}: completes at {event['time']} before its invoke")
        if event["f"] == "read" and event["type"] == "ok" and "value" not in event:
            raise HistoryError(f"{where}: ok read without the value read")
        add((start, index), invoke, event)
    for start, invoke in open_ops.values():
        add((start, len(history)), invoke, None)  # never completed: outcome unknown
    return by_key, counts


def _validate(event: Event, where: str) -> None:
    for name in ("process", "type", "f", "key", "time"):
        if name not in event:
            raise HistoryError(f"{where}: missing field {name!r} for the register model")
    if event["type"] not in _TYPES:
        raise HistoryError(f"{where}: type must be invoke, ok, fail or info, got {event['type']!r}")
    if event["f"] not in _KINDS:
        raise HistoryError(f"{where}: f must be read, write or cas, got {event['f']!r}")
    if not isinstance(event["process"], int | str) or isinstance(event["process"], bool):
        raise HistoryError(f"{where}: process must be an integer or string")
    if not isinstance(event["key"], int | str) or isinstance(event["key"], bool):
        raise HistoryError(f"{where}: key must be a string or integer")
    if not isinstance(event["time"], int | float) or isinstance(event["time"], bool):
        raise HistoryError(f"{where}: time must be a number of nanoseconds")


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a JSON value that compares as JSON does.

    Scalars stay themselves, so the common case costs nothing; `true` is kept apart from `1`
    (Python says they are equal, JSON does not); lists and objects become their canonical text.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if value is None or isinstance(value, int | float | str):
        return value
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")))


# --- the search --------------------------------------------------------------------------


def _prune(ops: Sequence[_Op]) -> list[_Op]:
    """Drop operations of unknown outcome whose value nothing could have observed.

    An indeterminate write (or cas) of v matters only if some read of v or cas expecting v
    could come after it, that is, ends no earlier than it begins. Otherwise leaving it out of a
    linearization changes no result, so dropping it keeps the verdict and spares the search
    from trying it at every step: without this, each pending write is retried after each op.
    """
    observed: dict[Hashable, float] = {}  # value -> latest end of an op that observes it
    for op in ops:
        if op.kind == WRITE:
            continue
        end = math.inf if op.ret is None else op.ret
        if observed.get(op.a, -math.inf) < end:
            observed[op.a] = end
    kept = []
    for op in ops:
        if op.ret is None and op.kind != READ:
            written = op.a if op.kind == WRITE else op.b
            if observed.get(written, -math.inf) < op.call:
                continue
        kept.append(op)
    return kept


def _linearizable(ops: Sequence[_Op], deadline: float, *, from_any: bool = False) -> bool:
    """Lowe's just-in-time WGL search over one key's operations.

    Calls and returns sit in a doubly linked list ordered by time (calls before returns at the
    same instant, which gives the history the benefit of the doubt). Walking from the head, a
    call whose op the register allows is linearized: both its entries are lifted out and the
    walk restarts. Reaching a return means that op was not linearized before it ended, so the
    last choice is undone. Indeterminate ops have no return entry: they may be linearized at
    any later step or never, and the search succeeds once every determinate op is placed.
    (linearized set, value) pairs already explored are not explored again; the set is a Python
    int used as a bitset. Raises `_OutOfTime` past `deadline`.

    With `from_any`, the register starts holding an unknown value, pinned by the first op that
    observes it: the history passes iff it is linearizable from some initial value. Shrinking
    uses this to judge a window of a history without the ops before it.
    """
    ops = _prune(ops)
    remaining = sum(1 for op in ops if op.ret is not None)
    if remaining == 0:
        return True
    # Values become small ints so that comparing and hashing states is cheap.
    interned: dict[Hashable, int] = {None: 0}
    kind = [op.kind for op in ops]
    arg_a = [interned.setdefault(op.a, len(interned)) for op in ops]
    arg_b = [interned.setdefault(op.b, len(interned)) for op in ops]

    points: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        points.append((op.call, 0, i))
        if op.ret is not None:
            points.append((op.ret, 1, i))
    points.sort()
    size = len(points)
    tail = size + 1
    # Entry 0 is the head sentinel, 1..size the entries, size+1 the tail sentinel.
    nxt = [*range(1, size + 2), -1]
    prv = [-1, *range(0, size + 1)]
    is_call = [False] * (size + 2)
    op_of = [0] * (size + 2)
    match = [0] * (size + 2)  # a call's return entry, 0 for an indeterminate op
    call_entry = [0] * len(ops)
    for entry, (_, is_return, i) in enumerate(points, start=1):
        op_of[entry] = i
        if is_return:
            match[call_entry[i]] = entry
        else:
            is_call[entry] = True
            call_entry[i] = entry

    state = -1 if from_any else 0
    linearized = 0
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[int, int]] = []
    steps = 0
    entry = nxt[0]
    while True:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and time.monotonic() >= deadline:
            raise _OutOfTime
        if is_call[entry]:
            i = op_of[entry]
            k = kind[i]
            if k == WRITE:
                allowed, after = True, arg_a[i]
            elif k == READ:
                allowed, after = state == arg_a[i] or state < 0, arg_a[i]
            else:
                allowed, after = state == arg_a[i] or state < 0, arg_b[i]
            if allowed:
                grown = linearized | (1 << i)
                if (grown, after) not in seen:
                    seen.add((grown, after))
                    stack.append((entry, state))
                    linearized, state = grown, after
                    before, behind = prv[entry], nxt[entry]
                    nxt[before], prv[behind] = behind, before
                    ret = match[entry]
                    if ret:
                        before, behind = prv[ret], nxt[ret]
                        nxt[before], prv[behind] = behind, before
                        remaining -= 1
                        if remaining == 0:
                            return True
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
        else:
            # A return (never the tail: a determinate op still unplaced has its return ahead).
            # Undo choices; a read is undone together with the choice before it, because
            # taking a read that the register allows is never wrong: it changes nothing, and
            # any linearization from here could be reordered to take it first. Skipping its
            # alternatives is what keeps many concurrent clients from blowing up the search.
            assert entry != tail
            while True:
                if not stack:
                    return False
                entry, state = stack.pop()
                i = op_of[entry]
                linearized &= ~(1 << i)
                ret = match[entry]
                if ret:
                    nxt[prv[ret]] = ret
                    prv[nxt[ret]] = ret
                    remaining += 1
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
                if kind[i] != READ or state < 0:  # a read of an unknown value pins it
                    break
            entry = nxt[entry]


# --- shrinking and explaining a violation ------------------------------------------------


def _prefix(ops: Sequence[_Op], cut: float) -> list[_Op]:
    """The history as it stood at instant `cut`: ops begun by then, those still running
    treated as indeterminate (and reads still running dropped). If this is not linearizable,
    no continuation of it is."""
    kept = []
    for op in ops:
        if op.call > cut:
            continue
        if op.ret is None or op.ret <= cut:
            kept.append(op)
        elif op.kind != READ:
            kept.append(_relaxed(op))
    return kept


def _relaxed(op: _Op) -> _Op:
    """The op with its outcome forgotten: it may have taken effect at any instant after its
    invoke, or never. Whatever explains the op explains the relaxed one, so a history that
    stays non-linearizable after relaxing proves the original non-linearizable too."""
    return replace(op, ret=None, completion=None)


def _window(ops: Sequence[_Op], start: float) -> list[_Op]:
    """The history from instant `start` on: ops that ended before it are dropped, ops still
    running at it lose their outcome (they may have taken effect before it or after). If this
    is not linearizable from any initial value, neither is the whole history: in a
    linearization of the whole, whatever the register held at `start` would be such a value.
    """
    kept = []
    for op in ops:
        if op.call >= start:
            kept.append(op)
        elif (op.ret is None or op.ret >= start) and op.kind != READ:
            kept.append(_relaxed(op))
    return kept


def _fails(ops: Sequence[_Op], deadline: float, from_any: bool = False) -> bool:
    return not _linearizable(ops, deadline, from_any=from_any)


def _first_failing_cut(ops: Sequence[_Op], deadline: float, from_any: bool = False) -> float:
    """The earliest completion time at which the history is already non-linearizable."""
    cuts = sorted({op.ret for op in ops if op.ret is not None})
    lo, hi = 0, len(cuts) - 1  # invariant: the cut at `hi` fails
    while lo < hi:
        mid = (lo + hi) // 2
        if _fails(_prefix(ops, cuts[mid]), deadline, from_any):
            hi = mid
        else:
            lo = mid + 1
    return cuts[hi]


@dataclass
class _Witness:
    """A shrunk violation: `ops` fail on their own, from the initial `null` or, when `since`
    is set, from whatever the register held at that instant."""

    ops: list[_Op]
    since: float | None = None


def _shrink(ops: Sequence[_Op], deadline: float) -> _Witness:
    """A small non-linearizable history that implies the key's history is not linearizable.

    Three steps, each keeping the history failing and each only weakening it, so what remains
    still proves the violation. Cut the end at the earliest completion that makes the history
    fail. Cut the start at the latest instant from which the rest fails whatever the register
    held then (`_window`); this is what makes a stale read buried in a long history come out
    small. Then, delta-debugging style over shrinking chunk sizes, relax operations while the
    result still fails: a read is dropped, a write or cas forgets its outcome (only its invoke
    is shown). Indeterminate ops that nothing can observe any more are dropped, which changes
    no verdict. Past `deadline`, the best witness so far is returned.
    """
    witness = _Witness(list(ops))
    try:
        current = _prune(_prefix(ops, _first_failing_cut(ops, deadline)))
        witness = _Witness(current)
        starts = sorted({op.call for op in current})
        lo, hi = -1, len(starts) - 1  # invariant: the window at `lo` fails (-1: the whole)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _fails(_window(current, starts[mid]), deadline, from_any=True):
                lo = mid
            else:
                hi = mid - 1
        if lo >= 0:
            current = _prune(_window(current, starts[lo]))
            witness = _Witness(current, starts[lo])
        from_any = witness.since is not None
        chunk = max(1, len(current) // 2)
        while True:
            changed = False
            start = 0
            while start < len(current):
                window = current[start : start + chunk]
                if all(op.ret is None for op in window):
                    start += chunk
                    continue
                relaxed = [_relaxed(op) for op in window if op.kind != READ or op.ret is None]
                trial = _prune([*current[:start], *relaxed, *current[start + chunk :]])
                if _fails(trial, deadline, from_any):
                    changed = True
                    current = trial
                    witness = _Witness(current, witness.since)
                    # The same start now holds later ops; chunk positions shift with pruning.
                else:
                    start += chunk
            if chunk == 1 and not changed:
                return witness
            chunk = max(1, chunk // 2)
    except _OutOfTime:
        return witness


def _events(ops: Sequence[_Op]) -> list[Event]:
    """The history lines of `ops` in history order: invokes, and completions that were kept."""
    lines: list[tuple[int, Event]] = []
    for op in ops:
        lines.append((op.order[0], op.invoke))
        if op.completion is not None:
            lines.append((op.order[1], op.completion))
    lines.sort(key=lambda line: line[0])
    return [event for _, event in lines]


def _explain(key: Hashable, witness: _Witness, deadline: float) -> str:
    """Say in words which completion cannot be explained, from the shrunk history alone."""
    name = _show_key(key)
    ops, from_any = witness.ops, witness.since is not None
    try:
        cut = _first_failing_cut(ops, deadline, from_any)
    except _OutOfTime:
        return (
            f"No order of the {len(ops):,} operations on {name} shown respects real time and "
            "explains every result (shrinking and explaining ran out of time)."
        )
    # Several ops may end at the cut; blame the one a reader expects: a read, then a cas.
    blame = {READ: 0, CAS: 1, WRITE: 2}
    culprit = min((op for op in ops if op.ret == cut), key=lambda op: blame[op.kind])
    writes = [op for op in ops if op.kind != READ and op.ret is not None and op.ret < culprit.call]
    before = max(writes, key=lambda op: op.ret or 0, default=None)
    who = f"by process {culprit.process!r}"
    at = f"invoked at t={_show_time(culprit.call)}, ok at t={_show_time(cut)}"
    alternatives: list[str] = []
    if culprit.kind == READ:
        read = culprit.completion.get("value") if culprit.completion else None
        told = (
            f"the read of {name} {who} ({at}) returned {json.dumps(read)}, but no order of these "
            "operations that respects real time allows it"
        )
        alternatives = _alternatives(ops, culprit, deadline, from_any)
        could = "it could have returned"
    elif culprit.kind == CAS:
        expected, new = (json.dumps(v) for v in culprit.invoke["value"])
        told = (
            f"the cas of {name} {who} from {expected} to {new} ({at}) succeeded, but no order of "
            f"these operations that respects real time lets the register hold {expected} then"
        )
        alternatives = _alternatives(ops, culprit, deadline, from_any)
        could = "it could have held"
    else:
        told = (
            f"the write of {json.dumps(culprit.invoke['value'])} to {name} {who} ({at}) completed, "
            "after which no order of these operations that respects real time explains "
            "every result"
        )
    parts = [told[0].upper() + told[1:]]
    if alternatives:
        parts.append(f"{could} {' or '.join(alternatives)}")
    if before is not None:
        parts.append(
            f"the last write to complete before it began was {_describe(before)} by process "
            f"{before.process!r} (ok at t={_show_time(before.ret or 0)})"
        )
    elif culprit.kind != WRITE:
        parts.append("no write shown had completed before it began")
    text = "; ".join(parts) + "."
    if from_any:
        text += (
            f" This holds whatever {name} held at t={_show_time(witness.since or 0)}, so the "
            "operations that ended before then are left out."
        )
    if any(op.completion is None for op in ops):
        text += (
            " Operations shown without a completion may or may not have taken effect; "
            "the violation holds either way."
        )
    return text


def _alternatives(ops: Sequence[_Op], culprit: _Op, deadline: float, from_any: bool) -> list[str]:
    """Values that, observed by the culprit instead, would make the history pass."""
    candidates: dict[Hashable, Any] = {None: None}
    for op in ops:
        if op.kind == WRITE:
            candidates.setdefault(op.a, op.invoke["value"])
        elif op.kind == CAS:
            candidates.setdefault(op.a, op.invoke["value"][0])
            candidates.setdefault(op.b, op.invoke["value"][1])
        elif op.completion is not None:
            candidates.setdefault(op.a, op.completion.get("value"))
    found = []
    try:
        for frozen, raw in candidates.items():
            if frozen == culprit.a:
                continue
            trial = [replace(op, a=frozen) if op is culprit else op for op in ops]
            if _linearizable(trial, deadline, from_any=from_any):
                found.append(json.dumps(raw))
    except _OutOfTime:
        return []
    return found


def _describe(op: _Op) -> str:
    if op.kind == WRITE:
        return f"write {json.dumps(op.invoke['value'])}"
    expected, new = op.invoke["value"]
    return f"cas {json.dumps(expected)}->{json.dumps(new)}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _show_key(key: Hashable) -> str:
    return key if isinstance(key, str) else repr(key)


def _show_time(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t)
