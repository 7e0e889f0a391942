"""What the in-process backends (sqlite, memory) share: request checks, URL options, the
sorted index of live keys and the lease alarm.

The etcd backend leaves these checks to etcd itself; the limits here copy etcd's defaults so
that code which works on an embedded store also works on etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator, Sequence
from itertools import islice

from keel.clock import Clock
from keel.store._types import (
    MAX_REQUEST_BYTES,
    Compare,
    InvalidRequest,
    Op,
    OpKind,
    ValueTooLarge,
    prefix_end,
    request_size,
)

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops, so code that works here works on etcd
MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL
DEFAULT_PROGRESS_INTERVAL = 10.0
DEFAULT_WATCH_BUFFER = 10_000  # pending events per watcher before it falls back to the log


def bounds(prefix: bytes) -> tuple[bytes, bytes | None]:
    """[lo, hi) of a prefix; hi None means the end of the keyspace."""
    if not prefix:
        return b"", None
    end = prefix_end(prefix)
    return prefix, None if end == b"\0" else end


def parse_options(options: dict[str, str], backend: str) -> tuple[float, int]:
    """URL options: progress_interval (seconds between progress notifications of a quiet
    watch, default 10) and watch_buffer (events a watcher may lag before it re-reads the
    log, default 10000)."""
    progress = DEFAULT_PROGRESS_INTERVAL
    buffer = DEFAULT_WATCH_BUFFER
    for name, raw in options.items():
        if name == "progress_interval":
            try:
                progress = float(raw)
            except ValueError:
                progress = 0.0
            if not 0 < progress < float("inf"):
                raise ValueError(f"store url: progress_interval must be seconds > 0, got {raw!r}")
        elif name == "watch_buffer":
            buffer = int(raw) if raw.isdigit() else 0
            if buffer < 1:
                raise ValueError(f"store url: watch_buffer must be an integer > 0, got {raw!r}")
        else:
            raise ValueError(
                f"store url: unknown {backend} option {name!r} (known: progress_interval, "
                "watch_buffer)"
            )
    return progress, buffer


# ---------------------------------------------------------------------------- request checks
# Everything a request can be refused for before it touches any state.


def check_key(call: str, key: bytes) -> None:
    if not isinstance(key, bytes):
        raise TypeError(f"{call}: key must be bytes")
    if not key:
        raise InvalidRequest(f"{call}: key is empty")


def check_put(key: bytes, value: bytes) -> None:
    if not isinstance(key, bytes) or not isinstance(value, bytes):
        raise TypeError("put: key and value must be bytes")
    if not key:
        raise InvalidRequest("put: key is empty")
    size = len(key) + len(value)
    if size > MAX_REQUEST_BYTES:
        raise ValueTooLarge(size)


def check_txn(
    compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> tuple[list[Compare], list[Op], list[Op]]:
    """The txn's parts as lists, once they pass etcd's checks."""
    compare_list, success_list, failure_list = list(compares), list(success), list(failure)
    if max(len(compare_list), len(success_list), len(failure_list)) > MAX_TXN_OPS:
        raise InvalidRequest(f"txn: too many operations (at most {MAX_TXN_OPS} each)")
    for compare in compare_list:
        if not isinstance(compare, Compare):
            raise TypeError(f"txn: expected Compare, got {type(compare).__name__}")
    _check_branch(success_list)
    _check_branch(failure_list)
    size = request_size([*success_list, *failure_list])
    if size > MAX_REQUEST_BYTES:
        raise ValueTooLarge(size)
    return compare_list, success_list, failure_list


def _check_branch(ops: list[Op]) -> None:
    """etcd's request checks: no empty key, no key written twice in one branch."""
    puts: set[bytes] = set()
    deletes: list[Op] = []
    for op in ops:
        if not isinstance(op, Op):
            raise TypeError(f"txn: expected Op, got {type(op).__name__}")
        if not op.key and not op.prefix:
            raise InvalidRequest("txn: key is empty")
        if op.kind is OpKind.PUT:
            if op.key in puts:
                raise InvalidRequest("txn: duplicate key given in txn request")
            puts.add(op.key)
        elif op.kind is OpKind.DELETE:
            deletes.append(op)
    for op in deletes:
        for key in puts:
            if key == op.key or (op.prefix and key.startswith(op.key)):
                raise InvalidRequest("txn: duplicate key given in txn request")


def check_ttl(ttl: int) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_LEASE_TTL:
        raise InvalidRequest(f"grant_lease: ttl must be 1..{MAX_LEASE_TTL} seconds")


# ---------------------------------------------------------------------------- sorted keys


class SortedKeys:
    """Keys in order, kept in chunks so an insert or removal moves at most a few hundred
    pointers even with millions of keys (a flat list would memmove them all)."""

    CHUNK = 512

    def __init__(self, keys: list[bytes] | None = None) -> None:
        keys = keys or []
        c = self.CHUNK
        self._chunks = [keys[i : i + c] for i in range(0, len(keys), c)]
        self._maxes = [chunk[-1] for chunk in self._chunks]

    def add(self, key: bytes) -> None:
        """Insert a key that is not present."""
        chunks, maxes = self._chunks, self._maxes
        if not chunks:
            chunks.append([key])
            maxes.append(key)
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            chunks[i].append(key)
            maxes[i] = key
        else:
            insort(chunks[i], key)
        chunk = chunks[i]
        if len(chunk) > 2 * self.CHUNK:
            half = len(chunk) // 2
            chunks[i : i + 1] = [chunk[:half], chunk[half:]]
            maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, key: bytes) -> None:
        """Remove a key that is present."""
        chunks, maxes = self._chunks, self._maxes
        i = bisect_left(maxes, key)
        chunk = chunks[i]
        del chunk[bisect_left(chunk, key)]
        if chunk:
            maxes[i] = chunk[-1]
        else:
            del chunks[i]
            del maxes[i]

    def irange(self, lo: bytes, hi: bytes | None) -> Iterator[bytes]:
        """Keys k with lo <= k < hi, in order."""
        chunks = self._chunks
        i = bisect_left(self._maxes, lo)
        if i == len(chunks):
            return
        start = bisect_left(chunks[i], lo)
        for chunk in islice(chunks, i, None):
            if hi is not None and chunk[-1] >= hi:
                yield from chunk[start : bisect_left(chunk, hi, start)]
                return
            yield from chunk[start:] if start else chunk
            start = 0


# ---------------------------------------------------------------------------- lease alarm


class Alarm:
    """Calls `on_due()` once `clock` reaches a deadline: one task sleeping on the clock, so
    lease expiry runs in real time, on a ManualClock and in a simulation's virtual time alike.

    `set` only ever moves the alarm earlier; a caller whose deadlines moved later lets it
    ring early and sets it again from `on_due`. Unset, it holds no timer, so a simulation
    that waits on nothing else is still seen to be stuck.
    """

    def __init__(self, clock: Clock, on_due: Callable[[], None]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._task: asyncio.Task[None] | None = None
        self._at = 0.0

    def set(self, deadline: float) -> None:
        if self._task is not None:
            if self._at <= deadline:
                return
            self._task.cancel()
        self._at = deadline
        self._task = asyncio.get_running_loop().create_task(self._ring(deadline))

    async def _ring(self, deadline: float) -> None:
        await self._clock.sleep(deadline - self._clock.now())
        self._task = None
        self._on_due()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
