"""In-memory store backend (`memory://`): etcd v3 semantics for simulations and tests.

No threads, no I/O and no real time: every call completes on the event loop without waiting,
watchers are fed by the commit itself, and lease deadlines and progress notifications run on
an injected `keel.clock.Clock`. The same calls in the same order, at the same clock readings,
give the same results. Not durable; the data lives and dies with one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from itertools import islice
from operator import attrgetter
from urllib.parse import urlencode

from keel.clock import Clock, SystemClock
from keel.store._embedded import (
    Alarm,
    SortedKeys,
    bounds,
    check_key,
    check_put,
    check_ttl,
    check_txn,
    parse_options,
)
from keel.store._protocol import Store
from keel.store._types import (
    CompactedError,
    Compare,
    DeleteResponse,
    Event,
    EventType,
    FutureRevisionError,
    InvalidRequest,
    KeyValue,
    Lease,
    LeaseNotFound,
    Op,
    OpKind,
    OpResponse,
    PutResponse,
    RangeResult,
    StoreClosed,
    StoreStatus,
    TxnResult,
    WatchBatch,
)

HISTORY_CHUNK = 1_000  # events per batch when a watch catches up from the log
# Lease ids look like etcd's (random 63-bit) but repeat from run to run.
LEASE_ID_SEED = 0x6B65656C
# Deadlines this close to "now" count as reached: `now + (deadline - now)` need not equal
# `deadline` in floating point, and a ManualClock moved exactly to a deadline must fire it.
SLACK = 1e-9

_MOD_REVISION = attrgetter("mod_revision")


class _LeaseState:
    __slots__ = ("deadline", "keys", "ttl")

    def __init__(self, ttl: int, deadline: float) -> None:
        self.ttl = ttl
        self.deadline = deadline
        self.keys: set[bytes] = set()  # live keys attached to it


class _Watcher:
    __slots__ = (
        "closed",
        "last_sent",
        "overflow",
        "pending",
        "prefix",
        "progress",
        "progress_due",
        "queue",
        "wake",
    )

    def __init__(self, prefix: bytes, progress: bool, now: float) -> None:
        self.prefix = prefix
        self.progress = progress  # wants progress notifications
        self.queue: deque[WatchBatch] = deque()  # one batch per revision, fed by commits
        self.pending = 0  # events in `queue`
        self.overflow = False  # the queue was dropped (or never used): read the log
        self.closed = False
        self.progress_due = False
        self.last_sent = now  # on the store's clock
        self.wake = asyncio.Event()


class MemoryStore(Store):
    """See the module docstring. `options` are the URL's (`progress_interval`,
    `watch_buffer`, as for sqlite); `clock` runs lease deadlines and progress notifications.

    State: the live keys (a dict, and their sorted index for ranges), every key's versions
    since the compaction (for reads at old revisions) and the log of each revision's events
    since the compaction (for watches that start in the past).
    """

    def __init__(
        self, options: dict[str, str] | None = None, *, clock: Clock | None = None
    ) -> None:
        options = dict(options or {})
        self._progress_interval, self._watch_buffer = parse_options(options, "memory")
        self.url = "memory://" + ("?" + urlencode(options) if options else "")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._closed = False
        self._revision = 1  # as in etcd, the first write gets revision 2
        self._compact = 0
        self._kv: dict[bytes, KeyValue] = {}
        self._live = SortedKeys()
        # Per key, its versions in mod_revision order; a deletion is a version 0 entry.
        self._versions: dict[bytes, list[KeyValue]] = {}
        self._known = SortedKeys()  # the keys of _versions
        # _log[i] holds the events of revision _log_base + i; each revision has some.
        self._log: list[list[Event]] = []
        self._log_base = 2
        self._leases: dict[int, _LeaseState] = {}
        self._lease_ids = random.Random(LEASE_ID_SEED)
        self._expiry: list[tuple[float, int]] = []  # (deadline, id); may be stale, see below
        self._alarm = Alarm(self._clock, self._on_lease_due)
        self._watchers: dict[_Watcher, None] = {}  # a dict: wake-ups in a fixed order
        self._progress_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.url} is closed")

    async def close(self) -> None:
        """End watches (they raise StoreClosed) and stop the timers. Closing twice is a
        no-op; any other call raises StoreClosed."""
        if self._closed:
            return
        self._closed = True
        await self._alarm.stop()
        task, self._progress_task = self._progress_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for watcher in self._watchers:
            watcher.closed = True
            watcher.wake.set()

    async def status(self) -> StoreStatus:
        self._check_open()
        self._expire_due()
        return StoreStatus(
            revision=self._revision,
            compact_revision=self._compact,
            backend="memory",
            members=1,
        )

    # ------------------------------------------------------------------ reads

    async def get(self, key: bytes) -> KeyValue | None:
        self._check_open()
        if not key:
            raise InvalidRequest("get: key is empty")
        self._expire_due()
        return self._kv.get(key)

    async def range(
        self,
        prefix: bytes,
        *,
        revision: int | None = None,
        limit: int | None = None,
        start: bytes | None = None,
    ) -> RangeResult:
        self._check_open()
        if limit is not None and limit < 0:
            raise InvalidRequest(f"range: limit must be >= 0, got {limit}")
        self._expire_due()
        current = self._revision
        lo, hi = bounds(prefix)
        if start is not None and start > lo:
            lo = start
            if hi is not None and lo >= hi:
                return RangeResult([], current, False)
        if revision is None or revision <= 0 or revision == current:
            kv = self._kv
            keys = self._live.irange(lo, hi)
            if limit:
                kvs = [kv[k] for k in islice(keys, limit)]
                return RangeResult(kvs, current, next(keys, None) is not None)
            return RangeResult([kv[k] for k in keys], current, False)
        if revision > current:
            raise FutureRevisionError(revision, current)
        if revision < self._compact:
            raise CompactedError(self._compact)
        found: list[KeyValue] = []
        versions = self._versions
        for key in self._known.irange(lo, hi):
            history = versions[key]
            kv_at = history[-1]
            if kv_at.mod_revision > revision:
                i = bisect_right(history, revision, key=_MOD_REVISION) - 1
                if i < 0:
                    continue  # created later
                kv_at = history[i]
            if not kv_at.version:
                continue  # deleted as of `revision`
            if limit and len(found) == limit:
                return RangeResult(found, current, True)
            found.append(kv_at)
        return RangeResult(found, current, False)

    # ------------------------------------------------------------------ writes

    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> int:
        self._check_open()
        check_put(key, value)
        self._expire_due()
        lease_id = lease or 0
        if lease_id and lease_id not in self._leases:
            raise LeaseNotFound(lease_id)
        rev = self._revision + 1
        events: list[Event] = []
        self._put_one(key, value, lease_id, rev, events)
        self._commit(rev, events)
        return rev

    async def delete(self, key: bytes) -> int:
        self._check_open()
        check_key("delete", key)
        self._expire_due()
        prev = self._kv.get(key)
        if prev is None:
            return self._revision
        rev = self._revision + 1
        events: list[Event] = []
        self._delete_one(prev, rev, events)
        self._commit(rev, events)
        return rev

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self._check_open()
        compare_list, success_list, failure_list = check_txn(compares, success, failure)
        self._expire_due()
        kv = self._kv
        succeeded = all(c.holds(kv.get(c.key)) for c in compare_list)
        ops = success_list if succeeded else failure_list
        # Everything that can refuse the txn is checked before anything changes.
        for op in ops:
            if op.kind is OpKind.PUT and op.lease and op.lease not in self._leases:
                raise LeaseNotFound(op.lease)
        rev = self._revision + 1
        events: list[Event] = []
        # Per op what it read, replaced or deleted; responses need the final revision.
        done: list[tuple[OpKind, list[KeyValue] | KeyValue | None]] = []
        for op in ops:
            if op.kind is OpKind.GET:
                done.append((OpKind.GET, self._select(op)))
            elif op.kind is OpKind.PUT:
                done.append((OpKind.PUT, self._put_one(op.key, op.value, op.lease, rev, events)))
            else:
                victims = self._select(op)
                for prev in victims:
                    self._delete_one(prev, rev, events)
                done.append((OpKind.DELETE, victims))
        if events:
            self._commit(rev, events)
        rev = self._revision
        responses: list[OpResponse] = []
        for kind, data in done:
            if kind is OpKind.PUT:
                assert not isinstance(data, list)
                responses.append(PutResponse(rev, data))
            else:
                assert isinstance(data, list)
                if kind is OpKind.GET:
                    responses.append(RangeResult(data, rev))
                else:
                    responses.append(DeleteResponse(rev, len(data), data))
        return TxnResult(succeeded, rev, responses)

    def _select(self, op: Op) -> list[KeyValue]:
        """The live keys a txn get or delete addresses."""
        kv = self._kv
        if op.prefix:
            lo, hi = bounds(op.key)
            return [kv[k] for k in self._live.irange(lo, hi)]
        found = kv.get(op.key)
        return [found] if found is not None else []

    async def compact(self, revision: int) -> None:
        self._check_open()
        self._expire_due()
        if revision <= self._compact:
            raise CompactedError(self._compact)
        if revision > self._revision:
            raise FutureRevisionError(revision, self._revision)
        self._compact = revision
        # Only keys changed since the last compaction can have versions to drop; the log
        # names them. The compact revision's own events stay: a watch may start there.
        through = revision - self._log_base + 1  # log entries at or below `revision`
        if through <= 0:
            return
        touched = {event.kv.key for events in self._log[:through] for event in events}
        for key in touched:
            self._prune(key, revision)
        del self._log[: through - 1]
        self._log_base = revision

    def _prune(self, key: bytes, revision: int) -> None:
        """Drop the versions of `key` that no read at `revision` or later can see."""
        history = self._versions[key]
        keep = bisect_right(history, revision, key=_MOD_REVISION) - 1  # visible at revision
        if keep >= 0 and not history[keep].version:
            keep += 1  # a deletion: without it the key is just as absent
        if keep > 0:
            del history[:keep]
        if not history:
            del self._versions[key]
            self._known.remove(key)

    # One revision's changes: _put_one and _delete_one change the keyspace and collect the
    # events, _commit publishes them. Nothing awaits in between, so no caller sees half.

    def _put_one(
        self, key: bytes, value: bytes, lease: int, rev: int, events: list[Event]
    ) -> KeyValue | None:
        prev = self._kv.get(key)
        if prev is None:
            kv = KeyValue(key, value, rev, rev, 1, lease)
            self._live.add(key)
        else:
            kv = KeyValue(key, value, prev.create_revision, rev, prev.version + 1, lease)
            if prev.lease:
                self._detach(prev)
        self._kv[key] = kv
        if lease:
            self._leases[lease].keys.add(key)
        self._remember(kv)
        events.append(Event(EventType.PUT, kv, prev))
        return prev

    def _delete_one(self, prev: KeyValue, rev: int, events: list[Event]) -> None:
        key = prev.key
        del self._kv[key]
        self._live.remove(key)
        if prev.lease:
            self._detach(prev)
        gone = KeyValue(key, b"", 0, rev, 0, 0)
        self._remember(gone)
        events.append(Event(EventType.DELETE, gone, prev))

    def _detach(self, kv: KeyValue) -> None:
        state = self._leases.get(kv.lease)
        if state is not None:
            state.keys.discard(kv.key)

    def _remember(self, kv: KeyValue) -> None:
        history = self._versions.get(kv.key)
        if history is None:
            self._versions[kv.key] = [kv]
            self._known.add(kv.key)
        else:
            history.append(kv)

    def _commit(self, rev: int, events: list[Event]) -> None:
        self._revision = rev
        self._log.append(events)
        if self._watchers:
            self._dispatch(rev, events)

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl: int) -> Lease:
        self._check_open()
        check_ttl(ttl)
        self._expire_due()
        while True:
            lease_id = self._lease_ids.getrandbits(63)
            if lease_id and lease_id not in self._leases:
                break
        deadline = self._clock.now() + ttl
        self._leases[lease_id] = _LeaseState(ttl, deadline)
        heapq.heappush(self._expiry, (deadline, lease_id))
        self._alarm.set(deadline)
        return Lease(lease_id, ttl)

    async def keepalive(self, lease_id: int) -> int:
        # Moves the deadline only: no revision, no event. The expiry heap keeps the old
        # deadline; that entry comes due early and is pushed back (see _expire_due).
        self._check_open()
        self._expire_due()
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseNotFound(lease_id)
        state.deadline = self._clock.now() + state.ttl
        return state.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        self._check_open()
        self._expire_due()
        if lease_id not in self._leases:
            raise LeaseNotFound(lease_id)
        self._revoke(lease_id)

    def _revoke(self, lease_id: int) -> None:
        """Forget the lease and delete its keys, in key order, in one revision."""
        state = self._leases.pop(lease_id)
        if not state.keys:
            return
        rev = self._revision + 1
        events: list[Event] = []
        for key in sorted(state.keys):
            self._delete_one(self._kv[key], rev, events)
        self._commit(rev, events)

    def _expire_due(self) -> None:
        """Revoke every lease whose deadline has passed. Every call does this first, so what
        a caller sees depends on the clock's reading, never on when the alarm task ran."""
        heap = self._expiry
        if not heap:
            return
        now = self._clock.now() + SLACK
        while heap and heap[0][0] <= now:
            _, lease_id = heapq.heappop(heap)
            state = self._leases.get(lease_id)
            if state is None:
                continue  # revoked already
            if state.deadline > now:  # kept alive since this entry was pushed
                heapq.heappush(heap, (state.deadline, lease_id))
                continue
            self._revoke(lease_id)

    def _on_lease_due(self) -> None:
        if self._closed:
            return
        self._expire_due()
        if self._expiry:
            self._alarm.set(self._expiry[0][0])

    # ------------------------------------------------------------------ watches

    def watch(
        self, prefix: bytes, *, start_revision: int, progress_notify: bool = False
    ) -> AsyncIterator[WatchBatch]:
        # "From the next revision" means the next one after this call, not after the
        # caller first iterates.
        first = start_revision if start_revision > 0 else self._revision + 1
        return self._watch(prefix, start_revision, first, progress_notify)

    async def _watch(
        self, prefix: bytes, start_revision: int, next_rev: int, progress_notify: bool
    ) -> AsyncGenerator[WatchBatch, None]:
        self._check_open()
        if start_revision < 0:
            raise InvalidRequest(f"watch: start_revision must be >= 0, got {start_revision}")
        if next_rev < self._compact:
            raise CompactedError(self._compact)
        clock = self._clock
        watcher = _Watcher(prefix, progress_notify, clock.now() if progress_notify else 0.0)
        # Revisions up to now come from the log, later ones through the queue.
        watcher.overflow = next_rev <= self._revision
        self._watchers[watcher] = None
        if progress_notify and self._progress_task is None:
            self._progress_task = asyncio.get_running_loop().create_task(self._notify_progress())
        try:
            while True:
                if watcher.closed:
                    raise StoreClosed(f"store {self.url} was closed")
                if watcher.overflow:
                    watcher.overflow = False
                    watcher.queue.clear()
                    watcher.pending = 0
                    upto = self._revision
                    while next_rev <= upto:
                        if watcher.closed:
                            raise StoreClosed(f"store {self.url} was closed")
                        events, covered = self._read_log(prefix, next_rev, upto)
                        next_rev = covered + 1
                        if events:
                            if progress_notify:
                                watcher.last_sent = clock.now()
                            yield WatchBatch(events, covered)
                    continue
                if watcher.queue:
                    batch = watcher.queue.popleft()
                    watcher.pending -= len(batch.events)
                    if batch.revision < next_rev:
                        continue  # the watch starts later than this revision
                    next_rev = batch.revision + 1
                    if progress_notify:
                        watcher.last_sent = clock.now()
                        watcher.progress_due = False  # this batch says as much
                    yield batch
                    continue
                if watcher.progress_due:
                    # The queue is empty: everything up to the current revision is out.
                    watcher.progress_due = False
                    revision = self._revision
                    next_rev = max(next_rev, revision + 1)
                    watcher.last_sent = clock.now()
                    yield WatchBatch([], revision)
                    continue
                watcher.wake.clear()
                await watcher.wake.wait()
        finally:
            self._watchers.pop(watcher, None)

    def _read_log(self, prefix: bytes, first: int, last: int) -> tuple[list[Event], int]:
        """Events under `prefix` of revisions first..last, whole revisions only, about
        HISTORY_CHUNK at most; returns them and the revision they cover to."""
        if first < self._compact:
            raise CompactedError(self._compact)
        log, base = self._log, self._log_base
        events: list[Event] = []
        for rev in range(max(first, base), last + 1):
            events.extend(e for e in log[rev - base] if e.kv.key.startswith(prefix))
            if len(events) >= HISTORY_CHUNK and rev < last:
                return events, rev
        return events, last

    def _dispatch(self, rev: int, events: list[Event]) -> None:
        """Queue one revision's events for every watcher they concern."""
        limit = self._watch_buffer
        by_prefix: dict[bytes, list[Event]] = {}  # watchers often share a prefix
        for watcher in self._watchers:
            if watcher.overflow:
                continue
            prefix = watcher.prefix
            found = by_prefix.get(prefix)
            if found is None:
                found = by_prefix[prefix] = [e for e in events if e.kv.key.startswith(prefix)]
            if not found:
                continue
            if watcher.pending + len(found) > limit:
                # Too far behind: drop the queue; the watcher re-reads the log.
                watcher.overflow = True
                watcher.queue.clear()
                watcher.pending = 0
            else:
                watcher.queue.append(WatchBatch(list(found), rev))  # each batch owns its list
                watcher.pending += len(found)
            watcher.wake.set()

    async def _notify_progress(self) -> None:
        """While any watcher wants progress notifications, mark those that have been quiet
        for the interval (on the store's clock) as due one."""
        interval = self._progress_interval
        clock = self._clock
        try:
            while True:
                watching = [w for w in self._watchers if w.progress]
                if not watching:
                    return
                now = clock.now()
                due = min(w.last_sent for w in watching) + interval
                if due > now + SLACK:
                    await clock.sleep(due - now)
                    continue
                for watcher in watching:
                    if watcher.last_sent + interval <= now + SLACK:
                        watcher.last_sent = now
                        watcher.progress_due = True
                        watcher.wake.set()
        finally:
            if self._progress_task is asyncio.current_task():
                self._progress_task = None
