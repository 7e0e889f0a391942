"""Embedded store backend (`sqlite:///PATH`): an etcd-style MVCC log in one SQLite file.

One writer thread group-commits every pending request (WAL, synchronous=FULL), the current
keyspace is mirrored in memory so reads run on the event loop without a thread hop, and
history (old revisions, watch catch-up) is read from disk by a reader thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import heapq
import os
import queue
import secrets
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any
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
    StoreError,
    StoreLocked,
    StoreStatus,
    TxnResult,
    Unavailable,
    WatchBatch,
)

# A log row's id packs (revision, position within the revision) into one integer primary
# key, so the log is an append-only rowid table and "everything up to revision R" is a
# plain id range.
SUB_BITS = 20
HISTORY_CHUNK = 1_000  # events per catch-up read
GC_CHUNK = 4_096  # log rows examined per compaction step, between write batches

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,     -- revision << SUB_BITS | position within the revision
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,   -- 0 marks a deletion (tombstone)
    lease INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key ON log (key, id);
CREATE TABLE IF NOT EXISTS lease (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- compact: the logical compact revision; gc: up to which revision old rows are gone
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compact', 0), ('gc', 0);
"""

_INSERT_LOG = "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)"
_PREV_ROW = (
    "SELECT value, create_rev, version, lease, id FROM log WHERE key = ? AND id < ? "
    "ORDER BY id DESC LIMIT 1"
)


def _key_filter(hi: bytes | None) -> str:
    return " AND key >= ? AND key < ?" if hi is not None else " AND key >= ?"


def _key_params(lo: bytes, hi: bytes | None) -> tuple[bytes, ...]:
    return (lo, hi) if hi is not None else (lo,)


class _LeaseState:
    __slots__ = ("deadline", "expiring", "keys", "ttl")

    def __init__(self, ttl: int, deadline: float) -> None:
        self.ttl = ttl
        self.deadline = deadline  # on the store's clock; memory only, never written
        self.keys: set[bytes] = set()
        self.expiring = False  # its revocation has been queued


# ---------------------------------------------------------------------------- requests


class _Req:
    """One queued write; the writer thread fills `result` or `error`."""

    __slots__ = ("error", "fut", "result")

    def __init__(self, fut: asyncio.Future[Any] | None) -> None:
        self.fut = fut
        self.result: object = None
        self.error: BaseException | None = None


class _PutReq(_Req):
    __slots__ = ("key", "lease", "value")

    def __init__(self, fut: asyncio.Future[Any], key: bytes, value: bytes, lease: int) -> None:
        super().__init__(fut)
        self.key = key
        self.value = value
        self.lease = lease


class _DeleteReq(_Req):
    __slots__ = ("key",)

    def __init__(self, fut: asyncio.Future[Any], key: bytes) -> None:
        super().__init__(fut)
        self.key = key


class _TxnReq(_Req):
    __slots__ = ("compares", "failure", "success")

    def __init__(
        self,
        fut: asyncio.Future[Any],
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op],
    ) -> None:
        super().__init__(fut)
        self.compares = compares
        self.success = success
        self.failure = failure


class _GrantReq(_Req):
    __slots__ = ("ttl",)

    def __init__(self, fut: asyncio.Future[Any], ttl: int) -> None:
        super().__init__(fut)
        self.ttl = ttl


class _RevokeReq(_Req):
    __slots__ = ("lease_id",)

    def __init__(self, fut: asyncio.Future[Any] | None, lease_id: int) -> None:
        super().__init__(fut)
        self.lease_id = lease_id


class _CompactReq(_Req):
    __slots__ = ("revision",)

    def __init__(self, fut: asyncio.Future[Any], revision: int) -> None:
        super().__init__(fut)
        self.revision = revision


class _Batch:
    """The writer's overlay for one group commit: state changes not yet on disk, which the
    batch's later requests see and readers do not until the commit is published."""

    __slots__ = ("compact", "events", "grants", "kvs", "lease_drops", "leases", "rev", "rows")

    def __init__(self, rev: int, compact: int) -> None:
        self.rev = rev
        self.compact = compact
        self.kvs: dict[bytes, KeyValue | None] = {}  # None: deleted in this batch
        self.leases: dict[int, int | None] = {}  # id -> ttl, None: revoked in this batch
        self.rows: list[tuple[int, bytes, bytes, int, int, int]] = []
        self.grants: list[tuple[int, int]] = []
        self.lease_drops: list[tuple[int]] = []
        self.events: list[Event] = []


class _Watcher:
    __slots__ = ("closed", "overflow", "pending", "prefix", "queue", "wake")

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.queue: deque[WatchBatch] = deque()
        self.pending = 0  # events in `queue`
        self.overflow = False  # queue dropped: catch up from the log
        self.closed = False
        self.wake = asyncio.Event()


# ---------------------------------------------------------------------------- opening


def _acquire_lock(path: str) -> int:
    """Take an exclusive flock on PATH.lock; the kernel drops it when the owner dies."""
    lock_path = path + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        who = f"process {owner}" if owner else "another process"
        if owner == str(os.getpid()):
            who += " (this process: another open store handle)"
        raise StoreLocked(f"store {path} is in use by {who}; lock file {lock_path}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class _Loaded:
    __slots__ = ("compact", "gc", "kvs", "leases", "revision", "sorted_keys")

    def __init__(self) -> None:
        self.revision = 1
        self.compact = 0
        self.gc = 0
        self.kvs: dict[bytes, KeyValue] = {}
        self.sorted_keys: list[bytes] = []
        self.leases: list[tuple[int, int]] = []


def _open_db(path: str) -> tuple[sqlite3.Connection, _Loaded]:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA journal_size_limit=67108864")  # shrink the WAL after bursts
        con.executescript(_SCHEMA)
        # The file (and its WAL) may be new: make their directory entries durable too.
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        loaded = _Loaded()
        meta = dict(con.execute("SELECT name, value FROM meta").fetchall())
        loaded.revision = int(meta["revision"])
        loaded.compact = int(meta["compact"])
        loaded.gc = int(meta["gc"])
        loaded.leases = [(int(i), int(t)) for i, t in con.execute("SELECT id, ttl FROM lease")]
        # The newest row per key is its current state (bare columns come from the max row).
        rows = con.execute(
            "SELECT key, value, create_rev, version, lease, max(id) FROM log "
            "GROUP BY key ORDER BY key"
        )
        kvs = loaded.kvs
        keys = loaded.sorted_keys
        for key, value, crev, ver, lease, rid in rows:
            if ver:
                kvs[key] = KeyValue(key, value, crev, rid >> SUB_BITS, ver, lease)
                keys.append(key)
    except BaseException:
        con.close()
        raise
    return con, loaded


# ---------------------------------------------------------------------------- the store


class SqliteStore(Store):
    """See the module docstring. Threads: the event loop (reads, keep-alives, watch
    delivery, lease deadlines), one writer (all writes, group commit), one reader
    (history). Closing the store ends active watches by raising StoreClosed in them.
    Lease deadlines are kept on `clock`, and read only on the event loop."""

    def __init__(
        self,
        path: str,
        options: dict[str, str],
        lock_fd: int,
        con: sqlite3.Connection,
        loaded: _Loaded,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self.url = "sqlite:///" + path + ("?" + urlencode(options) if options else "")
        self._progress_interval, self._watch_buffer = parse_options(options, "sqlite")
        self._loop = asyncio.get_running_loop()
        self._lock_fd = lock_fd
        self._con = con
        self._closed = False
        self._broken: BaseException | None = None
        # Published state: written by the writer thread under _state_lock after each
        # commit. Point reads use the dicts as they are (one dict lookup is atomic);
        # anything reading more than one entry takes the lock.
        self._state_lock = threading.Lock()
        self._kv: dict[bytes, KeyValue] = loaded.kvs
        self._sorted = SortedKeys(loaded.sorted_keys)
        self._revision = loaded.revision
        self._compact = loaded.compact
        self._clock: Clock = clock if clock is not None else SystemClock()
        now = self._clock.now()
        self._leases: dict[int, _LeaseState] = {}
        for lease_id, ttl in loaded.leases:
            # As etcd does, a restart gives every lease a fresh full TTL.
            self._leases[lease_id] = _LeaseState(ttl, now + ttl)
        for kv in self._kv.values():
            if kv.lease and kv.lease in self._leases:
                self._leases[kv.lease].keys.add(kv.key)
        self._committed = loaded.revision  # writer thread only
        # Compaction is logical at once and physical in steps between write batches, so
        # dropping a long history never stalls writes; rows below the compact revision
        # that are still on disk are invisible to every read (see _gc_step).
        self._gc_target = loaded.compact if loaded.gc < loaded.compact else 0
        self._gc_cursor = 0
        self.commit_count = 0  # group commits so far (tests and benchmarks read it)
        self.gc_passes = 0  # completed physical compactions
        self.watch_resyncs = 0  # times a lagging watcher dropped its queue for the log
        # Loop-side state.
        self._dispatched = loaded.revision  # every event up to here reached the watchers
        self._watchers: set[_Watcher] = set()
        self._pending: list[_Req] = []
        self._flush_scheduled = False
        self._expiry_heap: list[tuple[float, int]] = [
            (st.deadline, lease_id) for lease_id, st in self._leases.items()
        ]
        heapq.heapify(self._expiry_heap)
        self._expiry_alarm = Alarm(self._clock, self._on_lease_due)
        if self._expiry_heap:
            self._expiry_alarm.set(self._expiry_heap[0][0])
        # Threads.
        self._queue: queue.SimpleQueue[list[_Req] | None] = queue.SimpleQueue()
        self._writer_done: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main, name=f"keel-sqlite-writer:{path}", daemon=True
        )
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="keel-sqlite-reader")
        self._reader_con: sqlite3.Connection | None = None
        self._writer.start()

    @classmethod
    async def open(
        cls, path: str, options: dict[str, str], *, clock: Clock | None = None
    ) -> SqliteStore:
        parse_options(options, "sqlite")  # fail on a bad URL before touching the file
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        lock_fd = _acquire_lock(path)
        try:
            con, loaded = await asyncio.to_thread(_open_db, path)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            return cls(path, options, lock_fd, con, loaded, clock=clock)
        except BaseException:
            con.close()
            os.close(lock_fd)
            raise

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path} is closed")

    async def close(self) -> None:
        """Finish queued writes, end watches (they raise StoreClosed), stop the threads
        and release the file. Closing twice is a no-op; any other call raises StoreClosed."""
        if self._closed:
            return
        self._closed = True
        await self._expiry_alarm.stop()
        self._flush()
        self._queue.put(None)
        await self._writer_done
        for watcher in self._watchers:
            watcher.closed = True
            watcher.wake.set()
        await self._loop.run_in_executor(self._reader, self._close_reader)
        await asyncio.to_thread(self._reader.shutdown)
        os.close(self._lock_fd)

    def _close_reader(self) -> None:
        if self._reader_con is not None:
            self._reader_con.close()
            self._reader_con = None

    # ------------------------------------------------------------------ reads

    async def get(self, key: bytes) -> KeyValue | None:
        self._check_open()
        if not key:
            raise InvalidRequest("get: key is empty")
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
        lo, hi = bounds(prefix)
        if start is not None and start > lo:
            lo = start
            if hi is not None and lo >= hi:
                return RangeResult([], self._revision, False)
        with self._state_lock:
            current = self._revision
            if revision is None or revision <= 0 or revision == current:
                kv = self._kv
                keys = self._sorted.irange(lo, hi)
                if limit:
                    kvs = [kv[k] for k in islice(keys, limit)]
                    more = next(keys, None) is not None
                else:
                    kvs = [kv[k] for k in keys]
                    more = False
                return RangeResult(kvs, current, more)
        if revision > current:
            raise FutureRevisionError(revision, current)
        if revision < self._compact:
            raise CompactedError(self._compact)
        kvs, more = await self._loop.run_in_executor(
            self._reader, self._read_range, lo, hi, revision, limit or 0
        )
        return RangeResult(kvs, self._revision, more)

    def _reader_connection(self) -> sqlite3.Connection:
        con = self._reader_con
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None)
            con.execute("PRAGMA query_only=1")
            self._reader_con = con
        return con

    def _read_range(
        self, lo: bytes, hi: bytes | None, revision: int, limit: int
    ) -> tuple[list[KeyValue], bool]:
        """Reader thread: the keyspace as of `revision`, from the log."""
        con = self._reader_connection()
        con.execute("BEGIN")
        try:
            self._check_history(con, revision)
            rows = con.execute(
                "SELECT key, value, create_rev, version, lease, max(id) FROM log "
                "WHERE id < ?" + _key_filter(hi) + " GROUP BY key ORDER BY key",
                ((revision + 1) << SUB_BITS, *_key_params(lo, hi)),
            )
            kvs: list[KeyValue] = []
            for key, value, crev, ver, lease, rid in rows:
                if not ver:
                    continue
                if limit and len(kvs) == limit:
                    return kvs, True
                kvs.append(KeyValue(key, value, crev, rid >> SUB_BITS, ver, lease))
            return kvs, False
        finally:
            con.execute("COMMIT")

    @staticmethod
    def _check_history(con: sqlite3.Connection, revision: int) -> None:
        """Inside a read transaction: is `revision` still in the log of this snapshot?"""
        (compact,) = con.execute("SELECT value FROM meta WHERE name = 'compact'").fetchone()
        if revision < compact:
            raise CompactedError(compact)

    async def status(self) -> StoreStatus:
        self._check_open()
        try:
            size = os.stat(self.path).st_size
        except OSError:
            size = 0
        return StoreStatus(
            revision=self._revision,
            compact_revision=self._compact,
            backend="sqlite",
            db_size=size,
            leader=None,
            members=1,
            version=sqlite3.sqlite_version,
        )

    # ------------------------------------------------------------------ writes (loop side)

    def _submit(self, req: _Req) -> None:
        # Requests made in one loop iteration reach the writer as one list, so the
        # writers woken by one commit all join the next commit.
        self._pending.append(req)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            reqs = self._pending
            self._pending = []
            self._queue.put(reqs)

    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> int:
        self._check_open()
        check_put(key, value)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._submit(_PutReq(fut, key, value, lease or 0))
        return await fut

    async def delete(self, key: bytes) -> int:
        self._check_open()
        check_key("delete", key)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._submit(_DeleteReq(fut, key))
        return await fut

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self._check_open()
        compares, success, failure = check_txn(compares, success, failure)
        fut: asyncio.Future[TxnResult] = self._loop.create_future()
        self._submit(_TxnReq(fut, compares, success, failure))
        return await fut

    async def grant_lease(self, ttl: int) -> Lease:
        self._check_open()
        check_ttl(ttl)
        fut: asyncio.Future[Lease] = self._loop.create_future()
        self._submit(_GrantReq(fut, ttl))
        return await fut

    async def keepalive(self, lease_id: int) -> int:
        # Memory only: a keep-alive moves the deadline and never touches the file.
        self._check_open()
        state = self._leases.get(lease_id)
        now = self._clock.now()
        if state is None or state.expiring or state.deadline <= now:
            raise LeaseNotFound(lease_id)
        state.deadline = now + state.ttl
        return state.ttl

    async def revoke_lease(self, lease_id: int) -> None:
        self._check_open()
        fut: asyncio.Future[None] = self._loop.create_future()
        self._submit(_RevokeReq(fut, lease_id))
        await fut

    async def compact(self, revision: int) -> None:
        self._check_open()
        fut: asyncio.Future[None] = self._loop.create_future()
        self._submit(_CompactReq(fut, revision))
        await fut

    def _on_lease_due(self) -> None:
        """Revoke leases whose deadline passed. The heap holds one entry per lease; an
        entry that comes due early (a keep-alive moved the deadline) is pushed back."""
        if self._closed:
            return
        heap = self._expiry_heap
        now = self._clock.now()
        while heap and heap[0][0] <= now:
            _, lease_id = heapq.heappop(heap)
            state = self._leases.get(lease_id)
            if state is None or state.expiring:
                continue
            if state.deadline > now:
                heapq.heappush(heap, (state.deadline, lease_id))
                continue
            state.expiring = True
            self._submit(_RevokeReq(None, lease_id))
        if heap:
            self._expiry_alarm.set(heap[0][0])

    def _on_batch_done(self, reqs: list[_Req], batch: _Batch, granted: list[int]) -> None:
        """Loop thread, after a commit was published: answer the callers, wake watchers."""
        for req in reqs:
            fut = req.fut
            if fut is None or fut.done():
                continue
            if req.error is not None:
                fut.set_exception(req.error)
            else:
                fut.set_result(req.result)
        if granted and not self._closed:
            # A lease's TTL runs from when its grant is answered, on the loop's clock.
            now = self._clock.now()
            for lease_id in granted:
                state = self._leases.get(lease_id)
                if state is not None:
                    state.deadline = now + state.ttl
                    heapq.heappush(self._expiry_heap, (state.deadline, lease_id))
            if self._expiry_heap:
                self._expiry_alarm.set(self._expiry_heap[0][0])
        events = batch.events
        if events and self._watchers:
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
                matched = list(found)  # each batch owns its list
                if watcher.pending + len(matched) > limit:
                    # Too far behind: drop the queue; the watcher re-reads the log.
                    watcher.overflow = True
                    watcher.queue.clear()
                    watcher.pending = 0
                else:
                    watcher.queue.append(WatchBatch(matched, batch.rev))
                    watcher.pending += len(matched)
                watcher.wake.set()
        self._dispatched = max(self._dispatched, batch.rev)

    # ------------------------------------------------------------------ writer thread

    def _writer_main(self) -> None:
        q = self._queue
        try:
            stop = False
            while not stop:
                if self._gc_target and self._broken is None:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        self._gc_step()
                        continue
                else:
                    item = q.get()
                if item is None:
                    break
                reqs = item
                while True:
                    try:
                        more = q.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    reqs.extend(more)
                self._process(reqs)
                if self._gc_target and self._broken is None:
                    self._gc_step()  # progress even when writes never pause
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(_resolve, self._writer_done)

    def _process(self, reqs: list[_Req]) -> None:
        batch = _Batch(self._committed, self._compact)
        try:
            if self._broken is not None:
                raise Unavailable(f"store {self.path} failed: {self._broken}", ambiguous=False)
            for req in reqs:
                try:
                    req.result = self._apply(batch, req)
                except StoreError as exc:
                    req.error = exc
            granted: list[int] = []
            if batch.rows or batch.grants or batch.lease_drops or batch.compact != self._compact:
                self._commit(batch)
                try:
                    granted = self._publish(batch)
                except BaseException as exc:
                    # On disk but not in memory: never serve from this state again.
                    self._broken = exc
                    raise
        except Exception as exc:
            # A failed commit (or a bug) fails the whole batch; nothing of it is published.
            error: BaseException = exc
            if isinstance(exc, sqlite3.Error):
                error = Unavailable(f"store write failed: {exc!r}", ambiguous=True)
            for req in reqs:
                req.error = error
            batch = _Batch(self._committed, self._compact)
            granted = []
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._on_batch_done, reqs, batch, granted)

    def _commit(self, batch: _Batch) -> None:
        con = self._con
        try:
            con.execute("BEGIN")
            if batch.rows:
                con.executemany(_INSERT_LOG, batch.rows)
            if batch.grants:
                con.executemany("INSERT INTO lease VALUES (?, ?)", batch.grants)
            if batch.lease_drops:
                con.executemany("DELETE FROM lease WHERE id = ?", batch.lease_drops)
            if batch.rev != self._committed:
                con.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (batch.rev,))
            if batch.compact != self._compact:
                con.execute("UPDATE meta SET value = ? WHERE name = 'compact'", (batch.compact,))
            con.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            # After a failed fsync the file's state is unknown: refuse further writes.
            self._broken = exc
            raise
        self._committed = batch.rev
        self.commit_count += 1
        if batch.compact != self._compact:
            self._gc_target = batch.compact
            self._gc_cursor = 0

    def _gc_step(self) -> None:
        """Physically drop up to GC_CHUNK old log rows (in id order) below the compact
        revision R: per key keep only its newest row at or below R, and drop even that
        when it is a deletion older than R (a deletion at exactly R stays, so a watch
        starting at the compact revision still sees it). Every step is its own short
        transaction; a crash midway just leaves invisible rows for the next pass."""
        target = self._gc_target
        con = self._con
        cut = (target + 1) << SUB_BITS
        lo = self._gc_cursor
        try:
            row = con.execute(
                "SELECT id FROM log WHERE id >= ? AND id < ? ORDER BY id LIMIT 1 OFFSET ?",
                (lo, cut, GC_CHUNK),
            ).fetchone()
            hi = cut if row is None else int(row[0])
            con.execute("BEGIN")
            con.execute(
                "DELETE FROM log WHERE id >= ?1 AND id < ?2 AND id < "
                "(SELECT max(p.id) FROM log AS p WHERE p.key = log.key AND p.id < ?3)",
                (lo, hi, cut),
            )
            con.execute(
                "DELETE FROM log WHERE id >= ? AND id < ? AND version = 0",
                (lo, min(hi, target << SUB_BITS)),
            )
            if hi == cut:
                con.execute("UPDATE meta SET value = ? WHERE name = 'gc'", (target,))
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            self._broken = exc
            return
        self._gc_cursor = hi
        if hi == cut:
            self._gc_target = 0
            self.gc_passes += 1

    def _publish(self, batch: _Batch) -> list[int]:
        """Make a committed batch visible to readers, all at once; returns the new leases'
        ids, whose deadlines the event loop sets (the clock is read only there)."""
        granted: list[int] = []
        with self._state_lock:
            kv = self._kv
            sorted_keys = self._sorted
            leases = self._leases
            for lease_id, ttl in batch.leases.items():
                if ttl is not None and lease_id not in leases:
                    leases[lease_id] = _LeaseState(ttl, float("inf"))
                    granted.append(lease_id)
            for key, new in batch.kvs.items():
                old = kv.get(key)
                if old is not None and old.lease:
                    state_or_none = leases.get(old.lease)
                    if state_or_none is not None:
                        state_or_none.keys.discard(key)
                if new is None:
                    if old is not None:
                        del kv[key]
                        sorted_keys.remove(key)
                    continue
                if old is None:
                    sorted_keys.add(key)
                kv[key] = new
                if new.lease:
                    leases[new.lease].keys.add(key)
            for lease_id, ttl in batch.leases.items():
                if ttl is None:
                    leases.pop(lease_id, None)
            self._revision = batch.rev
            self._compact = batch.compact
        return granted

    # Each _apply_* validates everything first and only then changes the batch, so a
    # refused request leaves no trace and fails alone.

    def _apply(self, batch: _Batch, req: _Req) -> object:
        if type(req) is _PutReq:
            return self._apply_put(batch, req)
        if type(req) is _TxnReq:
            return self._apply_txn(batch, req)
        if type(req) is _DeleteReq:
            return self._apply_delete(batch, req)
        if type(req) is _GrantReq:
            return self._apply_grant(batch, req)
        if type(req) is _RevokeReq:
            self._apply_revoke(batch, req)
            return None
        if type(req) is _CompactReq:
            self._apply_compact(batch, req)
            return None
        raise TypeError(f"unknown request {req!r}")

    def _lookup(self, batch: _Batch, key: bytes) -> KeyValue | None:
        kvs = batch.kvs
        if key in kvs:
            return kvs[key]
        return self._kv.get(key)

    def _lease_live(self, batch: _Batch, lease_id: int) -> bool:
        if lease_id in batch.leases:
            return batch.leases[lease_id] is not None
        return lease_id in self._leases

    def _batch_range(self, batch: _Batch, prefix: bytes) -> list[KeyValue]:
        """Current keys under `prefix` as this batch sees them."""
        lo, hi = bounds(prefix)
        keys = set(self._sorted.irange(lo, hi))  # only this thread changes _sorted
        keys.update(k for k in batch.kvs if k >= lo and (hi is None or k < hi))
        out = []
        for key in sorted(keys):
            kv = self._lookup(batch, key)
            if kv is not None:
                out.append(kv)
        return out

    def _put_one(  # noqa: PLR0917 (hot path: positional on purpose)
        self, batch: _Batch, key: bytes, value: bytes, lease: int, rev: int, sub: int
    ) -> KeyValue | None:
        prev = self._lookup(batch, key)
        if prev is None:
            kv = KeyValue(key, value, rev, rev, 1, lease)
        else:
            kv = KeyValue(key, value, prev.create_revision, rev, prev.version + 1, lease)
        batch.kvs[key] = kv
        batch.rows.append(
            ((rev << SUB_BITS) | sub, key, value, kv.create_revision, kv.version, lease)
        )
        batch.events.append(Event(EventType.PUT, kv, prev))
        return prev

    @staticmethod
    def _delete_one(batch: _Batch, prev: KeyValue, rev: int, sub: int) -> None:
        key = prev.key
        batch.kvs[key] = None
        batch.rows.append(((rev << SUB_BITS) | sub, key, b"", 0, 0, 0))
        batch.events.append(Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0, 0), prev))

    def _apply_put(self, batch: _Batch, req: _PutReq) -> int:
        if req.lease and not self._lease_live(batch, req.lease):
            raise LeaseNotFound(req.lease)
        rev = batch.rev + 1
        self._put_one(batch, req.key, req.value, req.lease, rev, 0)
        batch.rev = rev
        return rev

    def _apply_delete(self, batch: _Batch, req: _DeleteReq) -> int:
        prev = self._lookup(batch, req.key)
        if prev is None:
            return batch.rev
        rev = batch.rev + 1
        self._delete_one(batch, prev, rev, 0)
        batch.rev = rev
        return rev

    def _apply_txn(self, batch: _Batch, req: _TxnReq) -> TxnResult:
        succeeded = all(c.holds(self._lookup(batch, c.key)) for c in req.compares)
        ops = req.success if succeeded else req.failure
        for op in ops:
            if op.kind is OpKind.PUT and op.lease and not self._lease_live(batch, op.lease):
                raise LeaseNotFound(op.lease)
        rev = batch.rev + 1
        sub = 0
        # (kind, data) per op; responses are built once the txn's revision is known.
        done: list[tuple[OpKind, Any]] = []
        for op in ops:
            if op.kind is OpKind.GET:
                if op.prefix:
                    done.append((OpKind.GET, self._batch_range(batch, op.key)))
                else:
                    kv = self._lookup(batch, op.key)
                    done.append((OpKind.GET, [kv] if kv is not None else []))
            elif op.kind is OpKind.PUT:
                done.append(
                    (OpKind.PUT, self._put_one(batch, op.key, op.value, op.lease, rev, sub))
                )
                sub += 1
            else:
                if op.prefix:
                    victims = self._batch_range(batch, op.key)
                else:
                    kv = self._lookup(batch, op.key)
                    victims = [kv] if kv is not None else []
                for prev in victims:
                    self._delete_one(batch, prev, rev, sub)
                    sub += 1
                done.append((OpKind.DELETE, victims))
        if sub:
            batch.rev = rev
        rev = batch.rev
        responses: list[OpResponse] = []
        for kind, data in done:
            if kind is OpKind.GET:
                responses.append(RangeResult(data, rev))
            elif kind is OpKind.PUT:
                responses.append(PutResponse(rev, data))
            else:
                responses.append(DeleteResponse(rev, len(data), data))
        return TxnResult(succeeded, rev, responses)

    def _apply_grant(self, batch: _Batch, req: _GrantReq) -> Lease:
        while True:
            lease_id = secrets.randbits(63)
            if lease_id and lease_id not in batch.leases and lease_id not in self._leases:
                break
        batch.leases[lease_id] = req.ttl
        batch.grants.append((lease_id, req.ttl))
        return Lease(lease_id, req.ttl)

    def _apply_revoke(self, batch: _Batch, req: _RevokeReq) -> None:
        lease_id = req.lease_id
        if not self._lease_live(batch, lease_id):
            raise LeaseNotFound(lease_id)
        state = self._leases.get(lease_id)
        keys = set(state.keys) if state is not None else set()
        keys.update(k for k, v in batch.kvs.items() if v is not None and v.lease == lease_id)
        victims = []
        for key in sorted(keys):
            kv = self._lookup(batch, key)
            if kv is not None and kv.lease == lease_id:
                victims.append(kv)
        if victims:
            rev = batch.rev + 1
            for sub, prev in enumerate(victims):
                self._delete_one(batch, prev, rev, sub)
            batch.rev = rev
        batch.leases[lease_id] = None
        batch.lease_drops.append((lease_id,))

    def _apply_compact(self, batch: _Batch, req: _CompactReq) -> None:
        if req.revision <= batch.compact:
            raise CompactedError(batch.compact)
        if req.revision > batch.rev:
            raise FutureRevisionError(req.revision, batch.rev)
        batch.compact = req.revision

    # ------------------------------------------------------------------ watches

    def watch(
        self, prefix: bytes, *, start_revision: int, progress_notify: bool = False
    ) -> AsyncIterator[WatchBatch]:
        return self._watch(prefix, start_revision, progress_notify)

    async def _watch(
        self, prefix: bytes, start_revision: int, progress_notify: bool
    ) -> AsyncGenerator[WatchBatch, None]:
        self._check_open()
        next_rev = start_revision if start_revision > 0 else self._dispatched + 1
        if next_rev < self._compact:
            raise CompactedError(self._compact)
        watcher = _Watcher(prefix)
        self._watchers.add(watcher)
        lo, hi = bounds(prefix)
        loop = self._loop
        interval = self._progress_interval
        catch_up = next_rev <= self._dispatched
        last_sent = loop.time()
        try:
            while True:
                if watcher.closed:
                    raise StoreClosed(f"store {self.path} was closed")
                if catch_up or watcher.overflow:
                    # The seam: everything after `upto` arrives through the queue (emptied
                    # here, in the same loop step), everything up to it comes from the log.
                    if watcher.overflow:
                        self.watch_resyncs += 1
                    catch_up = False
                    upto = self._dispatched
                    watcher.queue.clear()
                    watcher.pending = 0
                    watcher.overflow = False
                    while next_rev <= upto:
                        if self._closed:
                            raise StoreClosed(f"store {self.path} was closed")
                        events, covered = await loop.run_in_executor(
                            self._reader, self._read_events, lo, hi, next_rev, upto
                        )
                        next_rev = covered + 1
                        if events:
                            yield WatchBatch(events, covered)
                            last_sent = loop.time()
                    continue
                if watcher.queue:
                    batch = watcher.queue.popleft()
                    watcher.pending -= len(batch.events)
                    events = batch.events
                    if events[0].kv.mod_revision < next_rev:  # a start in the future
                        events = [e for e in events if e.kv.mod_revision >= next_rev]
                    next_rev = max(next_rev, batch.revision + 1)
                    if events:
                        yield WatchBatch(events, batch.revision)
                        last_sent = loop.time()
                    continue
                watcher.wake.clear()
                if not progress_notify:
                    await watcher.wake.wait()
                    continue
                try:
                    async with asyncio.timeout(max(0.0, last_sent + interval - loop.time())):
                        await watcher.wake.wait()
                except TimeoutError:
                    if not watcher.queue and not watcher.overflow and not watcher.closed:
                        revision = self._dispatched
                        next_rev = max(next_rev, revision + 1)
                        yield WatchBatch([], revision)
                        last_sent = loop.time()
        finally:
            self._watchers.discard(watcher)

    def _read_events(
        self, lo: bytes, hi: bytes | None, first: int, last: int
    ) -> tuple[list[Event], int]:
        """Reader thread: events of revisions first..last under [lo, hi), whole revisions
        only, about HISTORY_CHUNK at most; returns them and the revision they cover to."""
        con = self._reader_connection()
        con.execute("BEGIN")
        try:
            self._check_history(con, first)
            sql = (
                "SELECT id, key, value, create_rev, version, lease FROM log "
                "WHERE id >= ? AND id < ?" + _key_filter(hi) + " ORDER BY id"
            )
            params = (first << SUB_BITS, (last + 1) << SUB_BITS, *_key_params(lo, hi))
            rows = con.execute(sql + " LIMIT ?", (*params, HISTORY_CHUNK + 1)).fetchall()
            covered = last
            if len(rows) > HISTORY_CHUNK:
                cut = rows[-1][0] >> SUB_BITS
                rows = [r for r in rows if r[0] >> SUB_BITS < cut]
                if rows:
                    covered = cut - 1
                else:  # one revision bigger than a chunk: read it whole
                    covered = cut
                    whole = (cut << SUB_BITS, (cut + 1) << SUB_BITS, *_key_params(lo, hi))
                    rows = con.execute(sql, whole).fetchall()
            prevs: dict[bytes, KeyValue | None] = {}
            events: list[Event] = []
            for rid, key, value, crev, ver, lease in rows:
                rev = rid >> SUB_BITS
                if key in prevs:
                    prev = prevs[key]
                else:
                    row = con.execute(_PREV_ROW, (key, rid)).fetchone()
                    prev = (
                        KeyValue(key, row[0], row[1], row[4] >> SUB_BITS, row[2], row[3])
                        if row is not None and row[2]
                        else None
                    )
                if ver:
                    kv = KeyValue(key, value, crev, rev, ver, lease)
                    events.append(Event(EventType.PUT, kv, prev))
                    prevs[key] = kv
                else:
                    events.append(Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0, 0), prev))
                    prevs[key] = None
            return events, covered
        finally:
            con.execute("COMMIT")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
