"""Informer: one kind mirrored into an indexed local cache by list + watch (resuming from the
last resourceVersion, relisting after 410 with jitter, or starting from a checkpoint); tells
handlers what changed and periodically re-delivers the cache (resync, no API calls).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from keel.api.resources import Resource
from keel.client import Expired, KeelClient, Watch, WatchEvent
from keel.client._client import Selector
from keel.clock import Clock
from keel.runtime.checkpoint import Checkpoint, gc_relaxed

__all__ = [
    "EventType",
    "Handler",
    "Indexer",
    "Informer",
    "InformerMetrics",
    "object_key",
    "relist_delay",
]

R = TypeVar("R", bound=Resource)

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED", "RESYNC"]
Handler = Callable[[EventType, R | None, R | None], None]
IndexFunc = Callable[[R], Iterable[str]]

# Objects applied (from a list, a relist or a resync) between yields to the event loop, so a
# 100,000-object list never blocks lease renewals for long.
CHUNK = 4096
TOMBSTONES = 10_000  # deleted keys remembered to ignore late events about them


def object_key(obj: Resource) -> str:
    """The work-queue key of an object: "namespace/name", or "name" if cluster-scoped."""
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


def relist_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]. Informers that all lost
    their watch at once (an API server restart) spread their relists over that window."""
    ceiling = cap if attempt > 62 else min(cap, base * 2.0**attempt)
    return rng.uniform(0.0, ceiling)


def _rv(value: str) -> int:
    """A resourceVersion as a number (-1 if it is not one: then only equality is known)."""
    return int(value) if value.isdigit() else -1


def _index_namespace(obj: Resource) -> Iterable[str]:
    return (obj.metadata.namespace,)


def _index_owner(obj: Resource) -> Iterable[str]:
    return [ref.uid for ref in obj.metadata.owner_references if ref.uid]


def _index_node_name(obj: Resource) -> Iterable[str]:
    node = getattr(getattr(obj, "spec", None), "node_name", "")
    return (node,) if node else ()


BUILTIN_INDEXES: Mapping[str, Callable[[Resource], Iterable[str]]] = {
    "namespace": _index_namespace,
    "owner": _index_owner,
    "nodeName": _index_node_name,
}
LABEL_INDEX = "label:"  # by_index("label:app", "web"): objects labelled app=web


class Indexer(Generic[R]):
    """The informer's cache: objects by key, plus indexes from a value to the keys of the
    objects that have it. Built in: "namespace", "owner" (ownerReference uid), "nodeName"
    (`spec.nodeName`) and "label:<key>" (that label's value). Read-only for controllers."""

    def __init__(self) -> None:
        self._items: dict[str, R] = {}
        self._funcs: dict[str, Callable[[R], Iterable[str]]] = dict(BUILTIN_INDEXES)
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self._funcs}
        self._labels: dict[str, dict[str, set[str]]] = {}  # label key -> value -> keys

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> R | None:
        return self._items.get(key)

    def list(self, namespace: str | None = None) -> builtins.list[R]:
        """Every object, or those of one namespace."""
        if namespace is None:
            return list(self._items.values())
        return self.by_index("namespace", namespace)

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def index_keys(self, name: str, value: str) -> builtins.list[str]:
        """Keys of the objects whose index `name` yields `value`, sorted: iteration order of a
        set depends on PYTHONHASHSEED, and reconcilers (and simulation replays) must not."""
        if name.startswith(LABEL_INDEX):
            keys = self._labels.get(name[len(LABEL_INDEX) :], {}).get(value, ())
        else:
            try:
                keys = self._indexes[name].get(value, ())
            except KeyError:
                raise KeyError(f"no index {name!r} (have: {sorted(self._indexes)})") from None
        return sorted(keys)

    def by_index(self, name: str, value: str) -> builtins.list[R]:
        items = self._items
        return [items[key] for key in self.index_keys(name, value)]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[R]:
        return iter(list(self._items.values()))

    def add_index(self, name: str, func: Callable[[R], Iterable[str]]) -> None:
        """A custom index (also over the objects already cached)."""
        if name in self._funcs or name.startswith(LABEL_INDEX):
            raise ValueError(f"index {name!r} exists already")
        self._funcs[name] = func
        index: dict[str, set[str]] = {}
        self._indexes[name] = index
        for key, obj in self._items.items():
            for value in func(obj):
                index.setdefault(value, set()).add(key)

    # ------------------------------------------------------------------ writes (informer)

    def _put(self, key: str, obj: R) -> R | None:
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = obj
        indexes = self._indexes
        for name, func in self._funcs.items():
            index = indexes[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is None:
                    index[value] = {key}
                else:
                    keys.add(key)
        labels = self._labels
        for label, value in obj.metadata.labels.items():
            by_value = labels.get(label)
            if by_value is None:
                labels[label] = {value: {key}}
            else:
                keys = by_value.get(value)
                if keys is None:
                    by_value[value] = {key}
                else:
                    keys.add(key)
        return old

    def _pop(self, key: str) -> R | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _unindex(self, key: str, obj: R) -> None:
        for name, func in self._funcs.items():
            _discard(self._indexes[name], func(obj), key)
        for label, value in obj.metadata.labels.items():
            by_value = self._labels.get(label)
            if by_value is not None:
                _discard(by_value, (value,), key)
                if not by_value:
                    del self._labels[label]


def _discard(index: dict[str, set[str]], values: Iterable[str], key: str) -> None:
    for value in values:
        keys = index.get(value)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del index[value]


@dataclass
class InformerMetrics:
    lists: int = 0  # successful LIST calls (the first one and relists)
    relists: int = 0  # lists after 410 Expired (ours or the client's RELIST events)
    watches: int = 0  # watch streams opened by the informer
    watch_errors: int = 0
    events: int = 0  # ADDED/MODIFIED/DELETED delivered to handlers (resyncs not included)
    stale_events: int = 0  # duplicates or older versions, ignored
    resyncs: int = 0
    checkpoint_loads: int = 0
    checkpoint_saves: int = 0
    handler_errors: int = 0


class Informer(Generic[R]):
    """List + watch of one kind (optionally one namespace and selectors) into `cache`.

    Handlers get ("ADDED"|"MODIFIED"|"DELETED"|"RESYNC", old, new) and should only enqueue
    keys: reconcilers read the cache, never the event. `run()` works until cancelled; on
    the way out it saves the checkpoint, if one was given; run again, it resumes the watch.
    `page_size=None` (the default) lists in one request, which the API server answers from
    its watch cache; with pages, every page after the first is read from the store.
    """

    def __init__(
        self,
        client: KeelClient,
        kind: type[R],
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        resync_period: float = 300.0,
        clock: Clock,
        rng: random.Random | None = None,
        checkpoint: Checkpoint | None = None,
        checkpoint_interval: float = 60.0,
        page_size: int | None = None,
        relist_base: float = 1.0,
        relist_cap: float = 30.0,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.clock = clock
        self.rng = rng or random.Random()
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval
        self.page_size = page_size
        self.relist_base = relist_base
        self.relist_cap = relist_cap
        self.cache: Indexer[R] = Indexer()
        self.resource_version = ""
        self.metrics = InformerMetrics()
        self._handlers: list[Handler[R]] = []
        self._synced = asyncio.Event()
        self._consistent = True  # False while a (re)list is half applied
        self._saved_version = ""
        # Stale-event guards: the version of the last complete list (or checkpoint), and
        # the deleting version of recently deleted keys.
        self._floor = -1
        self._tombstones: dict[str, int] = {}
        # A watch opened while the checkpoint loaded, and its pending first event.
        self._resumed: tuple[Watch[R], asyncio.Future[WatchEvent[R]]] | None = None
        self._relists = 0  # consecutive relists (or failed lists) without a working watch
        self._errors = 0  # consecutive watch failures

    @property
    def scope(self) -> str:
        """What this informer mirrors, for matching checkpoints."""
        labels = self.label_selector
        if isinstance(labels, Mapping):
            labels = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return f"ns={self.namespace or ''};labels={labels or ''};fields={self.field_selector or ''}"

    def add_handler(self, on_event: Handler[R]) -> None:
        self._handlers.append(on_event)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until the cache holds a complete list (or a confirmed checkpoint); False if
        `timeout` seconds of the informer's clock pass first."""
        if self._synced.is_set():
            return True
        if timeout is None:
            await self._synced.wait()
            return True
        waiter = asyncio.ensure_future(self._synced.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return self._synced.is_set()

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._list_and_watch())
                if self.resync_period > 0:
                    group.create_task(self._resync_loop())
                if self.checkpoint is not None and self.checkpoint_interval > 0:
                    group.create_task(self._checkpoint_loop())
        finally:
            if self.checkpoint is not None:
                self.save_checkpoint()

    async def _list_and_watch(self) -> None:
        if self.resource_version and self._consistent:
            need_list = False  # run() again after a cancel: resume the watch
        else:
            need_list = not await self._resume_from_checkpoint()
        while True:
            if need_list:
                if self._relists:  # after 410 or a failed list: spread out, back off
                    await self.clock.sleep(
                        relist_delay(self._relists - 1, self.relist_base, self.relist_cap, self.rng)
                    )
                if not await self._list():
                    self._relists += 1
                    continue
                need_list = False
            try:
                await self._watch()
                self._errors += 1  # an endless watch ended: resume after a short pause
            except Expired:
                need_list = True
                self._relists += 1
                self.metrics.relists += 1
                continue
            except Exception as exc:
                self._errors += 1
                self.metrics.watch_errors += 1
                log.warning("%s informer: watch failed: %r", self.kind.kind_name, exc)
            await self.clock.sleep(relist_delay(min(self._errors, 8), 0.05, 5.0, self.rng))

    async def _list(self) -> bool:
        with gc_relaxed():  # decoding and indexing a large list
            try:
                listed = await self.client.list(
                    self.kind,
                    namespace=self.namespace,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    limit=self.page_size,
                )
            except Exception as exc:
                log.warning("%s informer: list failed: %r", self.kind.kind_name, exc)
                return False
            self.metrics.lists += 1
            await self._replace(listed.items, listed.resource_version)
        self._synced.set()
        return True

    def _open_watch(self) -> Watch[R]:
        self.metrics.watches += 1
        return self.client.watch(
            self.kind,
            namespace=self.namespace,
            resource_version=self.resource_version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            bookmarks=True,
            emit_bookmarks=True,
        )

    async def _watch(self) -> None:
        if self._resumed is not None:
            stream, first = self._resumed
            self._resumed = None
        else:
            stream, first = self._open_watch(), None
        try:
            if first is not None:
                await self._on_event(await first)
            async for event in stream:
                await self._on_event(event)
        finally:
            if first is not None and not first.done():
                await _abandon(stream, first)
            else:
                await stream.aclose()

    async def _on_event(self, event: WatchEvent[R]) -> None:
        self._relists = self._errors = 0  # the watch works
        await self._apply(event)
        if not self._synced.is_set():
            # Started from a checkpoint: the server accepted its resourceVersion (or the
            # watch relisted), so the cache is a true state now.
            self._synced.set()

    async def _apply(self, event: WatchEvent[R]) -> None:
        kind = event.type
        if kind == "BOOKMARK":
            self._advance(event.resource_version)
        elif kind == "RELIST":
            if 0 <= _rv(event.resource_version) < _rv(self.resource_version):
                self.metrics.stale_events += 1  # older than what we have seen: an echo
                return
            self.metrics.relists += 1
            self.metrics.lists += 1
            with gc_relaxed():
                await self._replace(list(event.objects), event.resource_version)
        elif event.object is not None:
            self._apply_change(kind, event.object)

    def _advance(self, resource_version: str) -> None:
        if _rv(resource_version) >= _rv(self.resource_version) or not self.resource_version:
            self.resource_version = resource_version

    def _apply_change(self, kind: str, obj: R) -> None:
        key = object_key(obj)
        version = obj.metadata.resource_version
        self._advance(version)
        if self._is_stale(key, kind, _rv(version), version):
            self.metrics.stale_events += 1
            return
        old = self.cache.get(key)
        if kind == "DELETED":
            self._bury(key, _rv(version))
            if old is None:
                self.metrics.stale_events += 1
                return
            self.cache._pop(key)
            self._deliver("DELETED", obj, None)
        else:
            self._tombstones.pop(key, None)
            self.cache._put(key, obj)
            self._deliver("ADDED" if old is None else "MODIFIED", old, obj)

    def _is_stale(self, key: str, kind: str, version: int, raw: str) -> bool:
        """Whether an event says nothing new: a watch never repeats or reorders changes,
        but a resumed connection, a relist's ADDED echoes or a faulty transport may."""
        if 0 <= version <= self._floor:
            return True  # the last complete list already reflected it
        old = self.cache.get(key)
        if old is not None:
            cached = old.metadata.resource_version
            # A DELETED event carries the deleting revision; one with the cached version
            # (some servers send the last state as is) still deletes.
            if _rv(cached) > version or (cached == raw and kind != "DELETED"):
                return True
        buried = self._tombstones.get(key)
        return buried is not None and buried >= version >= 0

    def _bury(self, key: str, version: int) -> None:
        tombstones = self._tombstones
        tombstones.pop(key, None)
        tombstones[key] = version
        if len(tombstones) > TOMBSTONES:
            del tombstones[next(iter(tombstones))]  # the oldest; the floor covers the rest

    async def _replace(self, objects: Sequence[R], resource_version: str) -> None:
        """Make the cache equal to a complete list, telling handlers the differences."""
        self._consistent = False
        cache = self.cache
        seen: set[str] = set()
        for start in range(0, len(objects), CHUNK):
            for obj in objects[start : start + CHUNK]:
                key = object_key(obj)
                seen.add(key)
                old = cache.get(key)
                if old is None:
                    cache._put(key, obj)
                    self._deliver("ADDED", None, obj)
                elif old.metadata.resource_version != obj.metadata.resource_version:
                    cache._put(key, obj)
                    self._deliver("MODIFIED", old, obj)
            if len(objects) > CHUNK:
                await asyncio.sleep(0)
        if len(seen) < len(cache):
            cached_keys = cache.keys()
            for key in cached_keys:
                if key not in seen:
                    gone = cache._pop(key)
                    self._deliver("DELETED", gone, None)
        self.resource_version = resource_version
        self._floor = max(self._floor, _rv(resource_version))
        self._tombstones.clear()
        self._consistent = True

    def _deliver(self, kind: EventType, old: R | None, new: R | None) -> None:
        if kind != "RESYNC":
            self.metrics.events += 1
        for handler in self._handlers:
            try:
                handler(kind, old, new)
            except Exception:
                self.metrics.handler_errors += 1
                log.exception("%s informer: handler failed on %s", self.kind.kind_name, kind)

    # ------------------------------------------------------------------ resync

    async def _resync_loop(self) -> None:
        await self._synced.wait()
        while True:
            await self.clock.sleep(self.resync_period * (1.0 - 0.1 * self.rng.random()))
            await self.resync()

    async def resync(self) -> None:
        """Deliver RESYNC(obj, obj) for every cached object: no API call. Level-based
        controllers thereby revisit every key now and then, whatever events were missed."""
        keys = self.cache.keys()
        for start in range(0, len(keys), CHUNK):
            for key in keys[start : start + CHUNK]:
                obj = self.cache.get(key)
                if obj is not None:
                    self._deliver("RESYNC", obj, obj)
            if len(keys) > CHUNK:
                await asyncio.sleep(0)
        self.metrics.resyncs += 1

    # ------------------------------------------------------------------ checkpoints

    async def _resume_from_checkpoint(self) -> bool:
        """Fill the cache from the checkpoint and leave a watch from its resourceVersion
        ready for `_watch`; False if there is no usable checkpoint.

        The watch starts before the objects are decoded (in a thread), so the server's
        first answer (a change, a bookmark, or a relist after 410) arrives meanwhile. The
        informer counts as synced only once that answer has been applied.
        """
        checkpoint = self.checkpoint
        if checkpoint is None:
            return False
        version = checkpoint.peek(self.kind, scope=self.scope)
        if version is None:
            return False
        self.resource_version = version
        stream = self._open_watch()
        first = asyncio.ensure_future(anext(stream))
        try:
            loaded = await asyncio.to_thread(checkpoint.load, self.kind, scope=self.scope)
        except BaseException:
            self.resource_version = ""  # nothing loaded: a later run() must start over
            await _abandon(stream, first)
            raise
        if loaded is None or loaded[0] != version:  # damaged, or replaced meanwhile
            await _abandon(stream, first)
            self.resource_version = ""
            return False
        with gc_relaxed():
            for obj in loaded[1]:
                key = object_key(obj)
                self.cache._put(key, obj)
                self._deliver("ADDED", None, obj)
        self._saved_version = version
        self._floor = _rv(version)
        self.metrics.checkpoint_loads += 1
        self._resumed = (stream, first)
        return True

    def _snapshot(self) -> tuple[str, list[R]] | None:
        if not self._consistent or not self.resource_version:
            return None
        if self.resource_version == self._saved_version:
            return None
        return self.resource_version, self.cache.list()

    def save_checkpoint(self) -> bool:
        """Write the checkpoint now if the cache changed since the last save."""
        snapshot = self._snapshot()
        if self.checkpoint is None or snapshot is None:
            return False
        self._write(self.checkpoint, *snapshot)
        return True

    def _write(self, checkpoint: Checkpoint, resource_version: str, objects: list[R]) -> None:
        try:
            checkpoint.save(resource_version, objects, kind=self.kind, scope=self.scope)
        except Exception:  # a checkpoint is an optimisation: never let it stop the informer
            log.exception("%s informer: checkpoint not saved", self.kind.kind_name)
            return
        self._saved_version = resource_version
        self.metrics.checkpoint_saves += 1

    async def _checkpoint_loop(self) -> None:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        while True:
            await self.clock.sleep(self.checkpoint_interval)
            snapshot = self._snapshot() if self._synced.is_set() else None
            if snapshot is not None:
                # Encoding and fsync happen off the event loop; the objects are immutable.
                await asyncio.to_thread(self._write, checkpoint, *snapshot)


async def _abandon(stream: Watch[Any], first: asyncio.Future[Any]) -> None:
    """Close a watch whose first event is no longer wanted. The pending `__anext__` must
    end before `aclose` (an async generator cannot be closed while it runs); its result or
    error, if it had one, is dropped."""
    first.cancel()
    await asyncio.wait((first,))  # unlike `await first`, never swallows our own cancel
    if not first.cancelled():
        first.exception()  # retrieved, so asyncio does not log it as lost
    await stream.aclose()
