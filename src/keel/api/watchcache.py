"""The API server's watch cache: ONE store watch on /registry/ feeds, per kind, an indexed
snapshot (gets and lists) and a ring of recent changes from which many client watches are
served. Each change is decoded, stamped and encoded once; its watch line is shared by all.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from keel.api.registry import BY_PLURAL, REGISTRY_PREFIX, KindInfo
from keel.api.resources import API_VERSION, Lease, Resource
from keel.clock import Clock, SystemClock
from keel.store import CompactedError, Event, EventType, KeyValue, Store, WatchBatch

__all__ = [
    "ADDED",
    "DELETED",
    "MODIFIED",
    "CacheWatch",
    "CachedObject",
    "Expired",
    "KindStats",
    "Predicate",
    "WatchCache",
    "bookmark_line",
    "encode_object",
    "expired_line",
]

log = logging.getLogger(__name__)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

# Backlog entries turned into lines per wakeup of a resumed watch: large enough to batch,
# small enough that one resumed watch does not hold the event loop for long.
_BACKLOG_CHUNK = 512
_SYSTEM_CLOCK = SystemClock()

_API_VERSION_FIELD = b'{"apiVersion":"' + API_VERSION.encode() + b'"'


class Expired(Exception):
    """The requested revision is older than the history this cache (or the store) retains."""

    def __init__(self, oldest: int, message: str = "") -> None:
        super().__init__(message or f"too old resource version: the oldest available is {oldest}")
        self.oldest = oldest  # oldest revision a watch may start from (exclusive start)


@dataclass(frozen=True, slots=True)
class CachedObject:
    key: bytes
    namespace: str
    name: str
    obj: Resource  # with resourceVersion (and Lease fencingToken) filled in
    data: bytes  # the wire JSON of obj, encoded once
    mod_revision: int
    create_revision: int
    lease: int  # store lease id (Lease objects)


Predicate = Callable[[CachedObject], bool]
Listener = Callable[[bytes, Resource | None], None]


@dataclass(frozen=True, slots=True)
class KindStats:
    """What /metrics exports per kind."""

    objects: int
    events: int  # ring size
    watchers: int


def _line(type_: str, data: bytes) -> bytes:
    return b'{"type":"' + type_.encode() + b'","object":' + data + b"}\n"


def encode_object(obj: Resource) -> bytes:
    """The wire form of a stored object. The models omit fields equal to their defaults, and
    apiVersion always equals its default, so it is put back here: clients expect it."""
    data = msgspec.json.encode(obj)
    if data.startswith(b'{"apiVersion"'):
        return data
    if data == b"{}":
        return _API_VERSION_FIELD + b"}"
    return _API_VERSION_FIELD + b"," + data[1:]


def expired_line(message: str) -> bytes:
    """The last line of a watch that can no longer be served (the client relists)."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Expired",
        "code": 410,
    }
    return msgspec.json.encode({"type": "ERROR", "object": status}) + b"\n"


def bookmark_line(kind: str, revision: int) -> bytes:
    return (
        b'{"type":"BOOKMARK","object":{"kind":"'
        + kind.encode()
        + b'","apiVersion":"'
        + API_VERSION.encode()
        + b'","metadata":{"resourceVersion":"'
        + str(revision).encode()
        + b'"}}}\n'
    )


class _Change:
    """One change of one object, as every watcher of its kind may be sent it. For DELETED,
    `obj` is the last state stamped with the deleting revision."""

    __slots__ = (
        "_as_added",
        "_as_deleted",
        "line",
        "namespace",
        "obj",
        "prev",
        "revision",
        "time",
        "type",
    )

    def __init__(
        self, type_: str, obj: CachedObject, prev: CachedObject | None, revision: int, now: float
    ) -> None:
        self.type = type_
        self.obj = obj
        self.prev = prev
        self.revision = revision
        self.namespace = obj.namespace
        self.time = now
        self.line = _line(type_, obj.data)
        self._as_added: bytes | None = None
        self._as_deleted: bytes | None = None

    def as_added(self) -> bytes:
        if self._as_added is None:
            self._as_added = _line(ADDED, self.obj.data)
        return self._as_added

    def as_deleted(self) -> bytes:
        if self._as_deleted is None:
            self._as_deleted = _line(DELETED, self.obj.data)
        return self._as_deleted


def _line_for(change: _Change, predicate: Predicate | None) -> bytes | None:
    """The line a watcher with `predicate` gets for `change`, if any. An object leaving the
    watcher's selection looks DELETED to it, one entering looks ADDED (as Kubernetes does)."""
    if predicate is None:
        return change.line
    try:
        now = predicate(change.obj)
        if change.type == DELETED:
            return change.line if now else None
        before = change.prev is not None and predicate(change.prev)
    except Exception:
        log.exception("watch predicate failed on %r; treating it as no match", change.obj.key)
        return None
    if now:
        return change.line if before or change.type == ADDED else change.as_added()
    return change.as_deleted() if before else None


class _Index:
    """Objects by key with a lazily sorted key list (rebuilt only when keys come or go)."""

    __slots__ = ("items", "sorted_keys")

    def __init__(self) -> None:
        self.items: dict[bytes, CachedObject] = {}
        self.sorted_keys: list[bytes] | None = []

    def put(self, cached: CachedObject) -> CachedObject | None:
        prev = self.items.get(cached.key)
        self.items[cached.key] = cached
        if prev is None:
            self.sorted_keys = None
        return prev

    def remove(self, key: bytes) -> CachedObject | None:
        prev = self.items.pop(key, None)
        if prev is not None:
            self.sorted_keys = None
        return prev

    def ordered(self) -> list[CachedObject]:
        if self.sorted_keys is None:
            self.sorted_keys = sorted(self.items)
        items = self.items
        return [items[k] for k in self.sorted_keys]


# Changes per ring segment. A resumed watch holds its backlog as references to segments
# (which are only ever appended to), never as a copy of the ring.
_SEGMENT = 1024

_Slice = tuple[list[_Change], int, int]  # changes segment[start:end]


class _Ring:
    """Recent changes of one kind in revision order, in append-only segments."""

    __slots__ = ("head", "segments", "size")

    def __init__(self) -> None:
        self.segments: deque[list[_Change]] = deque()
        self.head = 0  # index of the oldest live change in segments[0]
        self.size = 0

    def extend(self, changes: Iterable[_Change]) -> None:
        segments = self.segments
        for change in changes:
            if not segments or len(segments[-1]) >= _SEGMENT:
                segments.append([])
            segments[-1].append(change)
            self.size += 1

    def oldest(self) -> _Change:
        return self.segments[0][self.head]

    def drop_oldest(self) -> None:
        self.head += 1
        self.size -= 1
        first = self.segments[0]
        if self.head >= len(first) and len(first) >= _SEGMENT:
            self.segments.popleft()
            self.head = 0

    def after(self, revision: int) -> list[_Slice]:
        """The changes with a revision above `revision`, oldest first."""
        out: list[_Slice] = []
        segments = self.segments
        # From the newest segment back: resumes are mostly from recent revisions.
        for i in range(len(segments) - 1, -1, -1):
            segment = segments[i]
            lo = self.head if i == 0 else 0
            if lo >= len(segment):
                break
            if segment[lo].revision > revision:
                out.append((segment, lo, len(segment)))
                continue
            at = bisect.bisect_right(segment, revision, lo=lo, key=_revision_of)
            if at < len(segment):
                out.append((segment, at, len(segment)))
            break
        out.reverse()
        return out


def _revision_of(change: _Change) -> int:
    return change.revision


class _KindCache:
    """Snapshot, ring and watchers of one kind."""

    def __init__(self, info: KindInfo, horizon: int) -> None:
        self.info = info
        self.decoder: msgspec.json.Decoder[Resource] = msgspec.json.Decoder(info.model)
        self.all = _Index()
        self.by_ns: dict[str, _Index] = {}
        self.ring = _Ring()
        # Every change with revision > horizon is in the ring: the oldest exclusive start.
        self.horizon = horizon
        # Watchers by namespace (None: all) and predicate (None: everything). A predicate is
        # evaluated once per change for its whole group, so watchers sharing a selector
        # (the server passes one predicate object per selector) cost a list extend each.
        self.groups: dict[str | None, dict[Predicate | None, dict[CacheWatch, None]]] = {}
        # Watchers starting ahead of the cache, which must skip changes one by one.
        self.slow: dict[CacheWatch, None] = {}
        # Told every object as the cache now holds it (None: gone), by store key.
        self.listeners: list[Listener] = []

    def put(self, cached: CachedObject) -> CachedObject | None:
        index = self.by_ns.get(cached.namespace)
        if index is None:
            index = self.by_ns[cached.namespace] = _Index()
        index.put(cached)
        for listener in self.listeners:
            listener(cached.key, cached.obj)
        return self.all.put(cached)

    def remove(self, key: bytes, namespace: str) -> CachedObject | None:
        index = self.by_ns.get(namespace)
        if index is not None:
            index.remove(key)
            if not index.items:
                del self.by_ns[namespace]
        removed = self.all.remove(key)
        if removed is not None:
            for listener in self.listeners:
                listener(key, None)
        return removed

    def ring_len(self) -> int:
        return self.ring.size

    def trim(self, now: float, seconds: float, min_events: int, max_events: int | None) -> None:
        """Drop the oldest changes while more than `min_events` are held and the oldest is
        older than `seconds` (so both guarantees hold), or beyond the hard cap."""
        ring = self.ring
        while ring.size > 0 and (
            (max_events is not None and ring.size > max_events)
            or (ring.size > min_events and now - ring.oldest().time > seconds)
        ):
            # Changes of this revision may remain, but a start before it can't be served.
            self.horizon = max(self.horizon, ring.oldest().revision)
            ring.drop_oldest()

    def clear_ring(self, horizon: int) -> None:
        self.ring = _Ring()
        self.horizon = max(self.horizon, horizon)

    def watchers(self) -> Iterable[CacheWatch]:
        for by_predicate in self.groups.values():
            for group in by_predicate.values():
                yield from group
        yield from self.slow

    def watcher_count(self) -> int:
        grouped = sum(len(g) for by_pred in self.groups.values() for g in by_pred.values())
        return grouped + len(self.slow)


class CacheWatch:
    """One client watch: an async iterator of bytes, each item one or more complete JSON
    lines (b"\\n"-terminated), in revision order. Lines pending for a slow reader are joined
    into one item, so the HTTP layer writes one chunk per wakeup, not per event."""

    def __init__(
        self,
        cache: WatchCache,
        kind: _KindCache,
        *,
        namespace: str | None,
        after: int,
        predicate: Predicate | None,
        backlog: list[_Slice] | None,
        bookmarks: bool,
        bookmark_interval: float,
        limit: int,
    ) -> None:
        self._cache = cache
        self._kind = kind
        self.namespace = namespace or None
        self.after = after  # only changes with a higher revision are sent
        self.predicate = predicate
        # Ring changes from before registration, turned into lines lazily by the reader.
        # A segment may grow after this; its slice's end keeps those changes out.
        self._backlog = backlog
        self._bookmarks = bookmarks
        self._bookmark_interval = bookmark_interval
        self._next_bookmark = 0.0
        self._limit = limit
        self._queue: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._due = False  # in the cache's list of readers to wake
        self._finished = False
        self.expired = False  # cut off with a 410 line

    # -- the feeder's side (synchronous, in the event loop)

    def _push(self, lines: list[bytes]) -> bool:
        """Queue lines; False when this pushes the watcher over its limit. A waiting reader
        is woken by the cache's next delivery round."""
        queue = self._queue
        queue.extend(lines)
        if len(queue) > self._limit:
            return False
        if self._waiter is not None and not self._due:
            self._due = True
            self._cache._due.append(self)
        return True

    def _finish(self, last_line: bytes | None) -> None:
        """End the watch: pending lines are dropped (the client relists after a 410)."""
        if self._finished:
            return
        self._finished = True
        self._backlog = None
        self._queue = [last_line] if last_line is not None else []
        self._cache._unregister(self)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _expire(self, message: str) -> None:
        self.expired = True
        self._finish(expired_line(message))

    # -- the consumer's side

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._bookmarks and not self._next_bookmark:
            self._next_bookmark = loop.time() + self._bookmark_interval
        while True:
            if self._backlog is not None:
                chunk = self._drain_backlog()
                if chunk:
                    return chunk
                await asyncio.sleep(0)  # a long run of non-matching changes: let others run
                continue
            queue = self._queue
            if queue:
                self._queue = []
                return queue[0] if len(queue) == 1 else b"".join(queue)
            if self._finished:
                raise StopAsyncIteration
            if self._bookmarks and loop.time() >= self._next_bookmark:
                self._next_bookmark = loop.time() + self._bookmark_interval
                # Nothing is pending, so every change up to the cache revision has been
                # handed over: the bookmark may carry it (unless the client is ahead of us).
                revision = self._cache.revision
                if revision >= self.after:
                    return bookmark_line(self._kind.info.kind, revision)
                continue
            waiter = loop.create_future()
            self._waiter = waiter
            timer = loop.call_at(self._next_bookmark, _wake, waiter) if self._bookmarks else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def _drain_backlog(self) -> bytes:
        """Lines for the next part of the backlog (at most one segment's worth)."""
        backlog = self._backlog
        assert backlog is not None
        segment, start, end = backlog[0]
        stop = min(end, start + _BACKLOG_CHUNK)
        if stop < end:
            backlog[0] = (segment, stop, end)
        else:
            del backlog[0]
            if not backlog:
                self._backlog = None
        namespace, after, predicate = self.namespace, self.after, self.predicate
        out: list[bytes] = []
        for change in itertools.islice(segment, start, stop):
            if change.revision <= after or (namespace and change.namespace != namespace):
                continue
            line = _line_for(change, predicate)
            if line is not None:
                out.append(line)
        return b"".join(out)

    def close(self) -> None:
        self._finish(None)

    @property
    def pending(self) -> int:
        return len(self._queue)


def _push_groups(
    by_predicate: dict[Predicate | None, dict[CacheWatch, None]],
    changes: Sequence[_Change],
    behind: list[CacheWatch],
) -> None:
    """Give each group of watchers its lines: decided once per group, shared by members."""
    for predicate, members in by_predicate.items():
        if predicate is None:
            lines = [c.line for c in changes]
        else:
            lines = [line for c in changes if (line := _line_for(c, predicate)) is not None]
            if not lines:
                continue
        for watcher in members:
            if not watcher._push(lines):
                behind.append(watcher)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class WatchCache:
    """Every kind's cache, fed by ONE store watch on /registry/ (demultiplexed by kind).

    The ring keeps at least `ring_seconds` of changes or `ring_min_events` per kind, whichever
    is more (`ring_max_events`, if set, is a hard cap). A watcher with more than
    `max_pending_per_watcher` lines unread is cut off with a 410 line. Readers are woken in
    rounds at least `delivery_interval` apart (the first change after a quiet spell goes
    out at once), so a busy stream is written in chunks of many lines. If the store watch
    fails, it resumes from the next revision; only when the store has compacted that away
    (or a batch was half applied) does the cache relist.
    """

    def __init__(
        self,
        store: Store,
        *,
        ring_seconds: float = 75.0,
        ring_min_events: int = 10_000,
        ring_max_events: int | None = None,
        max_pending_per_watcher: int = 10_000,
        delivery_interval: float = 0.05,
        clock: Clock = _SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._ring_seconds = ring_seconds
        self._ring_min_events = ring_min_events
        self._ring_max_events = ring_max_events
        self._max_pending = max_pending_per_watcher
        self._clock = clock
        self.revision = 0  # last store revision applied (events or progress)
        self.compacted = 0  # the store's compaction as far as we know
        self._kinds: dict[str, _KindCache] = {
            plural: _KindCache(info, 0) for plural, info in BY_PLURAL.items()
        }
        self._delivery_interval = delivery_interval
        self._due: list[CacheWatch] = []  # readers to wake in the next delivery round
        self._delivery: asyncio.TimerHandle | None = None
        self._last_delivery = float("-inf")
        self._fresh: list[tuple[int, int, asyncio.Future[bool]]] = []  # heap by revision
        self._fresh_seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._applying = False  # set while a batch is half applied
        self.synced = False  # the store watch is running (for /readyz)
        # Counters for /metrics and tests.
        self.relists = 0
        self.watchers_expired = 0
        self.decode_errors = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every object under /registry/ and follow the store from there on."""
        result = await self._store.range(REGISTRY_PREFIX)
        for kv in result.kvs:
            decoded = self._decode(kv)
            if decoded is not None:
                decoded[0].put(decoded[1])
        self.revision = result.revision
        for kind in self._kinds.values():
            kind.horizon = result.revision
        self.synced = True
        self._task = asyncio.create_task(self._feed(), name="keel-watch-cache")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.synced = False
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None
        self._due.clear()
        for kind in self._kinds.values():
            for watcher in list(kind.watchers()):
                watcher._finish(None)
        for _, _, future in self._fresh:
            if not future.done():
                future.set_result(False)
        self._fresh.clear()

    # ------------------------------------------------------------------ reads

    async def wait_fresh(self, revision: int, timeout: float = 3.0) -> bool:
        """Wait until the cache has applied `revision`; False on timeout."""
        if self.revision >= revision:
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._fresh, (revision, next(self._fresh_seq), future))
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            if len(self._fresh) > 1024:  # drop abandoned waits while the cache is stuck
                self._fresh = [entry for entry in self._fresh if not entry[2].done()]
                heapq.heapify(self._fresh)
            return False

    def get(self, info: KindInfo, namespace: str, name: str) -> CachedObject | None:
        return self._kinds[info.plural].all.items.get(info.key(namespace, name))

    def follow(self, info: KindInfo, listener: Listener) -> None:
        """Tell `listener` every object of `info`'s kind the cache holds from now on, and
        each later change (store key, object or None when gone), as the cache applies it."""
        kind = self._kinds[info.plural]
        kind.listeners.append(listener)
        for key, cached in kind.all.items.items():
            listener(key, cached.obj)

    def list(
        self,
        info: KindInfo,
        namespace: str | None,
        predicate: Predicate | None = None,
    ) -> tuple[list[CachedObject], int]:
        """Objects sorted by key, with the cache revision they are current as of."""
        kind = self._kinds[info.plural]
        if namespace and info.namespaced:
            index = kind.by_ns.get(namespace)
            objects = index.ordered() if index is not None else []
        else:
            objects = kind.all.ordered()
        if predicate is not None:
            objects = [o for o in objects if predicate(o)]
        return objects, self.revision

    def watch(  # noqa: PLR0917 (the contract's signature)
        self,
        info: KindInfo,
        namespace: str | None,
        from_revision: int,
        predicate: Predicate | None = None,
        bookmarks: bool = False,
        bookmark_interval: float = 1.0,
    ) -> CacheWatch:
        """Every change with revision > from_revision (0: from now). Raises Expired when
        from_revision is older than the ring or the store's compaction."""
        if self._task is None:
            raise RuntimeError("the watch cache is not running")
        if from_revision < 0:
            raise ValueError(f"from_revision must be >= 0, got {from_revision}")
        kind = self._kinds[info.plural]
        backlog: list[_Slice] | None = None
        if from_revision == 0:
            after = self.revision
        else:
            oldest = max(kind.horizon, self.compacted)
            if from_revision < oldest:
                raise Expired(
                    oldest,
                    f"too old resource version: {from_revision} (the oldest available is {oldest})",
                )
            after = from_revision
            if from_revision < self.revision:
                backlog = kind.ring.after(from_revision) or None
        watcher = CacheWatch(
            self,
            kind,
            namespace=namespace if info.namespaced else None,
            after=after,
            predicate=predicate,
            backlog=backlog,
            bookmarks=bookmarks,
            bookmark_interval=bookmark_interval,
            limit=self._max_pending,
        )
        self._register(watcher)
        return watcher

    # ------------------------------------------------------------------ metrics

    def object_count(self, info: KindInfo) -> int:
        return len(self._kinds[info.plural].all.items)

    def event_count(self, info: KindInfo) -> int:
        return self._kinds[info.plural].ring_len()

    def watcher_count(self, info: KindInfo) -> int:
        return self._kinds[info.plural].watcher_count()

    def stats(self) -> dict[str, KindStats]:
        """Per kind name: objects, ring size, watchers."""
        return {
            k.info.kind: KindStats(len(k.all.items), k.ring_len(), k.watcher_count())
            for k in self._kinds.values()
        }

    def note_compacted(self, revision: int) -> None:
        """The store was compacted at `revision` (by our compactor or another's)."""
        self.compacted = max(self.compacted, revision)

    # ------------------------------------------------------------------ watchers

    def _register(self, watcher: CacheWatch) -> None:
        kind = watcher._kind
        if watcher.after > self.revision:
            kind.slow[watcher] = None
        else:
            by_predicate = kind.groups.setdefault(watcher.namespace, {})
            by_predicate.setdefault(watcher.predicate, {})[watcher] = None

    def _unregister(self, watcher: CacheWatch) -> None:
        kind = watcher._kind
        if watcher in kind.slow:
            del kind.slow[watcher]
            return
        by_predicate = kind.groups.get(watcher.namespace)
        if by_predicate is None:
            return
        group = by_predicate.get(watcher.predicate)
        if group is not None:
            group.pop(watcher, None)
            if not group:
                del by_predicate[watcher.predicate]
                if not by_predicate:
                    del kind.groups[watcher.namespace]

    def _fan_out(self, kind: _KindCache, changes: Sequence[_Change]) -> None:
        """Hand a batch of one kind's changes to its watchers. Per watcher this is a list
        extend, plus a predicate call for filtered watchers: no encoding here."""
        behind: list[CacheWatch] = []
        groups = kind.groups
        if groups:
            everywhere = groups.get(None)
            if everywhere:
                _push_groups(everywhere, changes, behind)
            if len(groups) > (1 if everywhere else 0):
                by_ns: dict[str, list[_Change]] = {}
                for c in changes:
                    if c.namespace in groups:
                        by_ns.setdefault(c.namespace, []).append(c)
                for ns, ns_changes in by_ns.items():
                    _push_groups(groups[ns], ns_changes, behind)
        if kind.slow:
            for watcher in kind.slow:
                namespace, after, predicate = watcher.namespace, watcher.after, watcher.predicate
                lines = []
                for c in changes:
                    if c.revision <= after or (namespace and c.namespace != namespace):
                        continue
                    line = _line_for(c, predicate)
                    if line is not None:
                        lines.append(line)
                if lines and not watcher._push(lines):
                    behind.append(watcher)
        for watcher in behind:
            self.watchers_expired += 1
            watcher._expire(
                f"watch fell behind: more than {self._max_pending} events pending; relist"
            )
        if self._due and self._delivery is None:
            loop = asyncio.get_running_loop()
            at = self._last_delivery + self._delivery_interval
            if at <= loop.time():
                self._deliver()  # the first change after a quiet spell goes out at once
            else:
                self._delivery = loop.call_at(at, self._deliver)

    def _deliver(self) -> None:
        """Wake every reader with new lines. Rounds are at least `delivery_interval` apart,
        so under load each wakeup (and HTTP chunk) carries many changes, not one."""
        self._delivery = None
        self._last_delivery = asyncio.get_running_loop().time()
        due, self._due = self._due, []
        for watcher in due:
            watcher._due = False
            waiter = watcher._waiter
            if waiter is not None:
                watcher._waiter = None
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------------ applying changes

    def _locate(self, key: bytes) -> tuple[_KindCache, str, str] | None:
        """Kind, namespace and name of a /registry/ key, or None for a foreign key (such
        keys are not the API server's: they are ignored, not an error)."""
        parts = key[len(REGISTRY_PREFIX) :].split(b"/")
        kind = self._kinds.get(parts[0].decode(errors="replace"))
        if kind is None or len(parts) != (3 if kind.info.namespaced else 2):
            return None
        try:
            names = [part.decode() for part in parts[1:]]
        except UnicodeDecodeError:
            return None
        if kind.info.namespaced:
            return kind, names[0], names[1]
        return kind, "", names[0]

    def _stamp(
        self, kind: _KindCache, namespace: str, name: str, obj: Resource, kv: KeyValue
    ) -> CachedObject:
        changes: dict[str, object] = {
            "metadata": msgspec.structs.replace(obj.metadata, resource_version=str(kv.mod_revision))
        }
        if not obj.kind:
            changes["kind"] = kind.info.kind
        if isinstance(obj, Lease):
            changes["status"] = msgspec.structs.replace(
                obj.status, fencing_token=kv.create_revision
            )
        stamped = msgspec.structs.replace(obj, **changes)
        return CachedObject(
            kv.key,
            namespace,
            name,
            stamped,
            encode_object(stamped),
            kv.mod_revision,
            kv.create_revision,
            kv.lease,
        )

    def _decode(self, kv: KeyValue) -> tuple[_KindCache, CachedObject] | None:
        located = self._locate(kv.key)
        if located is None:
            return None
        kind, namespace, name = located
        try:
            obj = kind.decoder.decode(kv.value)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            self.decode_errors += 1
            log.warning("watch cache: skipping %r at revision %d: %s", kv.key, kv.mod_revision, exc)
            return None
        return kind, self._stamp(kind, namespace, name, obj, kv)

    def _apply_put(self, kv: KeyValue, now: float) -> tuple[_KindCache, _Change] | None:
        decoded = self._decode(kv)
        if decoded is None:
            return None
        kind, cached = decoded
        prev = kind.put(cached)
        # A key unknown to the cache is news to every watcher, whatever its version says.
        change = _Change(ADDED if prev is None else MODIFIED, cached, prev, kv.mod_revision, now)
        return kind, change

    def _apply_delete(
        self, key: bytes, revision: int, now: float
    ) -> tuple[_KindCache, _Change] | None:
        located = self._locate(key)
        if located is None:
            return None
        kind, namespace, _ = located
        prev = kind.remove(key, namespace)
        if prev is None:
            return None
        return kind, _Change(DELETED, self._tombstone(kind, prev, revision), prev, revision, now)

    def _tombstone(self, kind: _KindCache, prev: CachedObject, revision: int) -> CachedObject:
        """The last state of a deleted object, stamped with the deleting revision."""
        obj = msgspec.structs.replace(
            prev.obj,
            metadata=msgspec.structs.replace(prev.obj.metadata, resource_version=str(revision)),
        )
        return CachedObject(
            prev.key,
            prev.namespace,
            prev.name,
            obj,
            encode_object(obj),
            revision,
            prev.create_revision,
            prev.lease,
        )

    def _apply_event(self, event: Event, now: float) -> tuple[_KindCache, _Change] | None:
        if event.type is EventType.PUT:
            return self._apply_put(event.kv, now)
        return self._apply_delete(event.kv.key, event.kv.mod_revision, now)

    def _apply(self, batch: WatchBatch) -> None:
        self._applying = True
        now = self._clock.now()
        if batch.events:
            per_kind: dict[_KindCache, list[_Change]] = {}
            for event in batch.events:
                applied = self._apply_event(event, now)
                if applied is not None:
                    kind, change = applied
                    changes = per_kind.get(kind)
                    if changes is None:
                        per_kind[kind] = [change]
                    else:
                        changes.append(change)
            for kind, changes in per_kind.items():
                kind.ring.extend(changes)
                kind.trim(now, self._ring_seconds, self._ring_min_events, self._ring_max_events)
                self._fan_out(kind, changes)
        else:
            # A quiet moment: let idle kinds age out their old changes too.
            for kind in self._kinds.values():
                kind.trim(now, self._ring_seconds, self._ring_min_events, self._ring_max_events)
        self._advance(batch.revision)
        self._applying = False

    def _advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        fresh = self._fresh
        while fresh and fresh[0][0] <= self.revision:
            future = heapq.heappop(fresh)[2]
            if not future.done():
                future.set_result(True)

    # ------------------------------------------------------------------ the feeder

    async def _feed(self) -> None:
        failures = 0
        relist = expire_all = False
        while True:
            try:
                if relist:
                    await self._relist(expire_all=expire_all)
                    relist = expire_all = False
                watch = self._store.watch(
                    REGISTRY_PREFIX, start_revision=self.revision + 1, progress_notify=True
                )
                try:
                    async for batch in watch:
                        self._apply(batch)
                        failures = 0
                        self.synced = True
                finally:
                    aclose = getattr(watch, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
                raise RuntimeError("the store watch ended")
            except asyncio.CancelledError:
                raise
            except CompactedError as exc:
                self.note_compacted(exc.compact_revision)
                log.warning("watch cache: store history compacted (%s); relisting", exc)
                relist = True
            except Exception as exc:
                failures += 1
                self.synced = False
                if self._applying:
                    # Half applied: nobody knows what each watcher was sent. Rebuild.
                    relist = expire_all = True
                log.warning(
                    "watch cache: store watch failed (%s: %s); %s",
                    type(exc).__name__,
                    exc,
                    "relisting" if relist else f"resuming from revision {self.revision + 1}",
                    exc_info=expire_all,
                )
                # Resuming from revision + 1 loses nothing; the store says Compacted if it can't.
                await self._clock.sleep(min(0.05 * 2 ** min(failures, 6), 2.0))

    async def _relist(self, *, expire_all: bool = False) -> None:
        """Rebuild the snapshot from a fresh list. Current watchers get the differences as
        synthetic events; history before the list is no longer served (Expired)."""
        self.synced = False
        if expire_all:
            for kind in self._kinds.values():
                for watcher in list(kind.watchers()):
                    self.watchers_expired += 1
                    watcher._expire("the watch cache lost its place in the store; relist")
        self._applying = False
        failures = 0
        while True:
            try:
                result = await self._store.range(REGISTRY_PREFIX)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("watch cache: relist failed (%s); retrying", exc)
                await self._clock.sleep(min(0.05 * 2 ** min(failures, 6), 2.0))
        self.relists += 1
        self._applying = True
        self._apply_relist(result.kvs, result.revision)
        self._applying = False
        self.synced = True

    def _apply_relist(self, kvs: Sequence[KeyValue], revision: int) -> None:
        now = self._clock.now()
        was = self.revision
        revision = max(revision, was)
        seen: dict[_KindCache, set[bytes]] = {kind: set() for kind in self._kinds.values()}
        synthetic: dict[_KindCache, list[_Change]] = {}
        for kv in kvs:
            located = self._locate(kv.key)
            if located is None:
                continue
            kind = located[0]
            current = kind.all.items.get(kv.key)
            if current is not None and current.mod_revision == kv.mod_revision:
                seen[kind].add(kv.key)
                continue
            applied = self._apply_put(kv, now)
            if applied is not None:
                seen[kind].add(kv.key)
                synthetic.setdefault(kind, []).append(applied[1])
        for kind, keys in seen.items():
            for key in [k for k in kind.all.items if k not in keys]:
                applied = self._apply_delete(key, revision, now)
                if applied is not None:
                    synthetic.setdefault(kind, []).append(applied[1])
        for kind in self._kinds.values():
            # The changes between `was` and `revision` are known only in summary: a start
            # inside that span could get a gap or a duplicate, so it is Expired from now on.
            kind.clear_ring(revision)
            for watcher in [w for w in kind.slow if was < w.after < revision]:
                self.watchers_expired += 1
                watcher._expire("the watch cache relisted past this watch's position; relist")
            changes = synthetic.get(kind)
            if changes:
                changes.sort(key=lambda c: (c.revision, c.obj.key))
                self._fan_out(kind, changes)
        self._advance(revision)
