"""The watch cache and the compactor against real stores (a sqlite file, real etcd): what
watchers see (ordered, unique, gap-free, resumable or 410), lists, freshness, relists."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import ManualClock

from keel.api.compactor import Compactor, choose_compaction
from keel.api.registry import BY_PLURAL
from keel.api.resources import Lease, LeaseSpec, ObjectMeta, Service, ServiceSpec
from keel.api.watchcache import CachedObject, CacheWatch, Expired, WatchCache
from keel.dev.etcd_cluster import EtcdCluster
from keel.store import (
    CompactedError,
    Compare,
    KeyValue,
    Op,
    RangeResult,
    Store,
    StoreStatus,
    TxnResult,
    Unavailable,
    WatchBatch,
    open_store,
)
from keel.store import Lease as StoreLease

LEASES = BY_PLURAL["leases"]
SERVICES = BY_PLURAL["services"]
NAMESPACES = BY_PLURAL["namespaces"]
TIMEOUT = 20.0


# ---------------------------------------------------------------------------- helpers


def lease_value(namespace: str, name: str, holder: str = "a") -> bytes:
    spec = LeaseSpec(holder_identity=holder, lease_duration_seconds=30)
    return msgspec.json.encode(
        Lease(metadata=ObjectMeta(name=name, namespace=namespace), spec=spec)
    )


def service_value(namespace: str, name: str, labels: dict[str, str] | None = None) -> bytes:
    meta = ObjectMeta(name=name, namespace=namespace, labels=labels or {})
    return msgspec.json.encode(Service(metadata=meta, spec=ServiceSpec(selector={"app": name})))


async def put_lease(store: Store, namespace: str, name: str, holder: str = "a") -> int:
    return await store.put(LEASES.key(namespace, name), lease_value(namespace, name, holder))


async def put_service(
    store: Store, namespace: str, name: str, labels: dict[str, str] | None = None
) -> int:
    return await store.put(SERVICES.key(namespace, name), service_value(namespace, name, labels))


Line = dict[str, Any]


def summary(lines: Sequence[Line]) -> list[tuple[str, str, str]]:
    """(type, name, resourceVersion) of each line."""
    return [
        (
            line["type"],
            line["object"]["metadata"].get("name", ""),
            line["object"]["metadata"]["resourceVersion"],
        )
        for line in lines
    ]


async def read_lines(
    watch: CacheWatch, count: int, timeout: float = TIMEOUT, *, skip_bookmarks: bool = True
) -> list[Line]:
    """At least `count` lines from `watch` (bookmarks left out unless asked for)."""
    lines: list[Line] = []
    if count == 0:
        return lines
    async with asyncio.timeout(timeout):
        async for chunk in watch:
            assert chunk.endswith(b"\n"), "every item is made of complete lines"
            for raw in chunk.splitlines():
                line = msgspec.json.decode(raw)
                if skip_bookmarks and line["type"] == "BOOKMARK":
                    continue
                lines.append(line)
            if len(lines) >= count:
                break
    return lines


async def read_until_end(watch: CacheWatch, timeout: float = TIMEOUT) -> list[Line]:
    lines: list[Line] = []
    async with asyncio.timeout(timeout):
        async for chunk in watch:
            lines.extend(msgspec.json.decode(raw) for raw in chunk.splitlines())
    return lines


async def settle(store: Store, cache: WatchCache) -> None:
    """Wait until the cache has applied everything the store has now."""
    assert await cache.wait_fresh((await store.range(b"/registry/", limit=1)).revision)


@pytest.fixture
def ns() -> str:
    """A namespace of this test's own: tests share an etcd cluster and its /registry/."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "etcd"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        # Frequent progress notifications, so bookmarks on an idle store come quickly.
        return f"sqlite:///{tmp_path / 'k.db'}?progress_interval=0.2"
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster_1")
    return cluster.url


@pytest.fixture
def private_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, new_etcd_cluster: Callable[[int], EtcdCluster]
) -> Callable[[str], str]:
    """For tests that compact the store: a sqlite file or an etcd cluster of their own."""

    def url(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / 'k.db'}?progress_interval=0.2"
        return new_etcd_cluster(1).url

    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def cache_factory(store: Store) -> AsyncIterator[Callable[..., Any]]:
    started: list[WatchCache] = []

    async def make(source: Store | None = None, **options: Any) -> WatchCache:
        cache = WatchCache(source or store, **options)
        await cache.start()
        started.append(cache)
        return cache

    yield make
    for cache in started:
        await cache.stop()


@pytest.fixture
async def cache(cache_factory: Callable[..., Any]) -> WatchCache:
    made: WatchCache = await cache_factory()
    return made


# ---------------------------------------------------------------------------- delivery


async def test_every_watcher_gets_every_change_once_in_order(
    store: Store, cache: WatchCache, ns: str
) -> None:
    watchers = [cache.watch(LEASES, ns, 0) for _ in range(50)]
    all_namespaces = cache.watch(LEASES, None, 0)
    expected: list[tuple[str, str, str]] = []
    alive: set[str] = set()
    for i in range(40):
        name = f"l{i % 7}"
        if i % 5 == 4 and name in alive:
            rev = await store.delete(LEASES.key(ns, name))
            expected.append(("DELETED", name, str(rev)))
            alive.discard(name)
        else:
            rev = await put_lease(store, ns, name, holder=f"h{i}")
            expected.append(("MODIFIED" if name in alive else "ADDED", name, str(rev)))
            alive.add(name)
    # One revision with several keys (a txn) arrives whole, in the order of its ops.
    txn = await store.txn(
        [],
        [
            Op.put(LEASES.key(ns, "x1"), lease_value(ns, "x1")),
            Op.put(LEASES.key(ns, "x2"), lease_value(ns, "x2")),
        ],
    )
    expected += [("ADDED", "x1", str(txn.revision)), ("ADDED", "x2", str(txn.revision))]

    for watch in watchers:
        assert summary(await read_lines(watch, len(expected))) == expected
    mine = [
        line
        for line in await read_lines(all_namespaces, len(expected))
        if line["object"]["metadata"]["namespace"] == ns
    ]
    assert summary(mine) == expected
    assert cache.watcher_count(LEASES) == 51
    for watch in watchers:
        watch.close()
    assert cache.watcher_count(LEASES) == 1


async def test_ten_thousand_watchers_each_get_every_change(
    store: Store, cache: WatchCache, ns: str
) -> None:
    watchers = [cache.watch(LEASES, ns, 0) for _ in range(10_000)]
    expected = []
    for i in range(10):
        rev = await put_lease(store, ns, f"l{i}")
        expected.append(("ADDED", f"l{i}", str(rev)))
    assert await cache.wait_fresh(rev)
    # Everything is pending now, so each watcher's next item holds all of it.
    first = await anext(watchers[0])
    assert summary([msgspec.json.decode(line) for line in first.splitlines()]) == expected
    for watch in watchers[1:]:
        assert await anext(watch) == first
        assert watch.pending == 0
    for watch in watchers:
        watch.close()
    assert cache.watcher_count(LEASES) == 0


async def test_objects_carry_resource_version_fencing_token_and_kind(
    store: Store, cache: WatchCache, ns: str
) -> None:
    watch = cache.watch(LEASES, ns, 0)
    created = await put_lease(store, ns, "lock")
    renewed_holder = await put_lease(store, ns, "lock", holder="b")
    [added, modified] = await read_lines(watch, 2)
    for line, rev in ((added, created), (modified, renewed_holder)):
        obj = line["object"]
        assert obj["apiVersion"] == "keel.dev/v1"
        assert obj["kind"] == "Lease"
        assert obj["metadata"]["resourceVersion"] == str(rev)
        assert obj["status"]["fencingToken"] == created  # the create revision: per holder
    cached = cache.get(LEASES, ns, "lock")
    assert cached is not None
    assert cached.mod_revision == renewed_holder
    assert cached.create_revision == created
    assert isinstance(cached.obj, Lease)
    assert cached.obj.status.fencing_token == created
    assert msgspec.json.decode(cached.data)["metadata"]["resourceVersion"] == str(renewed_holder)


async def test_deleted_event_carries_last_state_at_the_deleting_revision(
    store: Store, cache: WatchCache, ns: str
) -> None:
    await put_lease(store, ns, "gone", holder="last")
    await settle(store, cache)
    watch = cache.watch(LEASES, ns, 0)
    deleted_at = await store.delete(LEASES.key(ns, "gone"))
    [line] = await read_lines(watch, 1)
    assert line["type"] == "DELETED"
    assert line["object"]["spec"]["holderIdentity"] == "last"
    assert line["object"]["metadata"]["resourceVersion"] == str(deleted_at)
    assert cache.get(LEASES, ns, "gone") is None


async def test_expired_store_lease_deletes_the_lease_object_with_a_deleted_event(
    store: Store, cache: WatchCache, ns: str
) -> None:
    store_lease = await store.grant_lease(5)
    await store.put(LEASES.key(ns, "held"), lease_value(ns, "held"), lease=store_lease.id)
    await store.put(LEASES.key(ns, "held2"), lease_value(ns, "held2"), lease=store_lease.id)
    await settle(store, cache)
    cached = cache.get(LEASES, ns, "held")
    assert cached is not None
    assert cached.lease == store_lease.id
    watch = cache.watch(LEASES, ns, 0)
    await store.revoke_lease(store_lease.id)
    lines = await read_lines(watch, 2)
    assert {(t, n) for t, n, _ in summary(lines)} == {("DELETED", "held"), ("DELETED", "held2")}
    assert (
        lines[0]["object"]["metadata"]["resourceVersion"]
        == lines[1]["object"]["metadata"]["resourceVersion"]
    )


async def test_list_is_sorted_and_filtered_by_namespace_and_predicate(
    store: Store, cache: WatchCache, ns: str
) -> None:
    other = ns + "z"
    for name in ("c", "a", "b"):
        await put_service(store, ns, name, {"tier": "web" if name != "b" else "db"})
    last = await put_service(store, other, "a")
    assert await cache.wait_fresh(last)
    objects, revision = cache.list(SERVICES, ns)
    assert [o.name for o in objects] == ["a", "b", "c"]
    assert revision >= last
    web, _ = cache.list(SERVICES, ns, lambda o: o.obj.metadata.labels.get("tier") == "web")
    assert [o.name for o in web] == ["a", "c"]
    everywhere, _ = cache.list(SERVICES, None)
    mine = [(o.namespace, o.name) for o in everywhere if o.namespace in (ns, other)]
    assert mine == [(ns, "a"), (ns, "b"), (ns, "c"), (other, "a")]
    assert [o.key for o in everywhere] == sorted(o.key for o in everywhere)
    assert cache.get(SERVICES, other, "a") is not None
    assert cache.get(SERVICES, other, "b") is None


async def test_cluster_scoped_objects_are_cached_by_name(
    store: Store, cache: WatchCache, ns: str
) -> None:
    watch = cache.watch(NAMESPACES, None, 0)
    rev = await store.put(NAMESPACES.key("", ns), b'{"metadata": {"name": "%s"}}' % ns.encode())
    [line] = await read_lines(watch, 1)
    assert (line["type"], line["object"]["kind"], line["object"]["metadata"]["name"]) == (
        "ADDED",
        "Namespace",
        ns,
    )
    cached = cache.get(NAMESPACES, "", ns)
    assert cached is not None
    assert cached.mod_revision == rev
    await store.delete(NAMESPACES.key("", ns))


async def test_undecodable_value_is_skipped_and_the_cache_keeps_going(
    store: Store, cache: WatchCache, ns: str
) -> None:
    watch = cache.watch(LEASES, ns, 0)
    errors = cache.decode_errors
    await store.put(LEASES.key(ns, "bad"), b'{"spec": {"holderIdentity": 7}}')
    await store.put(LEASES.key(ns, "worse"), b"not json")
    # Keys that are not an object's: an unknown kind, a bad shape, bytes that aren't UTF-8.
    await store.put(b"/registry/widgets/" + ns.encode() + b"/w", lease_value(ns, "w"))
    await store.put(LEASES.key(ns, "x") + b"/extra", lease_value(ns, "x"))
    await store.put(LEASES.key_prefix(ns) + b"\xff\xfe", lease_value(ns, "y"))
    good = await put_lease(store, ns, "good")
    assert summary(await read_lines(watch, 1)) == [("ADDED", "good", str(good))]
    assert cache.decode_errors == errors + 2
    assert cache.get(LEASES, ns, "bad") is None
    assert cache.relists == 0
    await store.txn([], [Op.delete(b"/registry/widgets/" + ns.encode() + b"/", prefix=True)])
    await store.txn([], [Op.delete(LEASES.key_prefix(ns), prefix=True)])


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_histories_reach_every_watcher_exactly_as_the_store_had_them(
    seed: int, store: Store, cache: WatchCache, ns: str
) -> None:
    """Random puts, deletes and multi-key txns; watchers join at random revisions (some
    resumed from the ring), some with a selector. Each must see exactly the changes after its
    start, as its selector sees them, in order: nothing missing, nothing twice."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(8)]
    state: dict[str, dict[str, str]] = {}  # name -> labels
    history: list[tuple[int, str, dict[str, str] | None]] = []  # (revision, name, labels)
    watchers: list[tuple[CacheWatch, int, Callable[[dict[str, str]], bool] | None]] = []
    selectors: list[Callable[[dict[str, str]], bool] | None] = [
        None,
        lambda labels: labels.get("app") == "a",
    ]
    revision = (await store.range(b"/registry/", limit=1)).revision
    for step in range(120):
        if step % 15 == 0:
            assert await cache.wait_fresh(revision)
            start = rng.choice(
                [0, revision, max(1, history[-rng.randint(1, 10)][0] - 1)]
                if len(history) > 10
                else [0]
            )
            select = rng.choice(selectors)
            predicate = None if select is None else (lambda o, s=select: s(o.obj.metadata.labels))
            watch = cache.watch(SERVICES, ns, start, predicate)
            watchers.append((watch, start or cache.revision, select))
        picked = rng.sample(names, rng.randint(1, 3))
        ops: list[tuple[str, dict[str, str] | None]] = []
        for name in picked:
            if name in state and rng.random() < 0.3:
                ops.append((name, None))
            else:
                ops.append((name, {"app": rng.choice("ab"), "n": str(step)}))
        if len(ops) == 1:
            name, labels = ops[0]
            if labels is None:
                revision = await store.delete(SERVICES.key(ns, name))
            else:
                revision = await put_service(store, ns, name, labels)
        else:
            txn = await store.txn(
                [],
                [
                    Op.delete(SERVICES.key(ns, name))
                    if labels is None
                    else Op.put(SERVICES.key(ns, name), service_value(ns, name, labels))
                    for name, labels in ops
                ],
            )
            revision = txn.revision
        for name, labels in ops:
            history.append((revision, name, labels))
            if labels is None:
                state.pop(name)
            else:
                state[name] = labels

    assert await cache.wait_fresh(revision)
    for watch, start, select in watchers:
        expected: list[tuple[str, str, str]] = []
        seen: dict[str, dict[str, str]] = {}
        for rev, name, labels in history:
            before = seen.get(name)
            if labels is None:
                seen.pop(name, None)
            else:
                seen[name] = labels
            if rev <= start:
                continue
            was_in = before is not None and (select is None or select(before))
            now_in = labels is not None and (select is None or select(labels))
            if labels is None:
                if was_in:
                    expected.append(("DELETED", name, str(rev)))
            elif now_in:
                expected.append(("MODIFIED" if was_in else "ADDED", name, str(rev)))
            elif was_in:
                expected.append(("DELETED", name, str(rev)))
        assert summary(await read_lines(watch, len(expected))) == expected
        assert watch.pending == 0
    cached, _ = cache.list(SERVICES, ns)
    assert {o.name: o.obj.metadata.labels for o in cached} == state


# ---------------------------------------------------------------------------- resume, 410


async def test_watch_resumes_from_a_revision_in_the_ring(
    store: Store, cache: WatchCache, ns: str
) -> None:
    revisions = [await put_lease(store, ns, f"l{i}") for i in range(10)]
    assert await cache.wait_fresh(revisions[-1])
    watch = cache.watch(LEASES, ns, revisions[4])
    later = await put_lease(store, ns, "l0", holder="b")
    lines = await read_lines(watch, 6)
    assert summary(lines) == [("ADDED", f"l{i}", str(revisions[i])) for i in range(5, 10)] + [
        ("MODIFIED", "l0", str(later))
    ]


async def test_resume_deep_in_a_large_ring_is_complete_and_joins_live_changes(
    store: Store, cache_factory: Callable[..., Any], ns: str
) -> None:
    clock = ManualClock()
    cache: WatchCache = await cache_factory(ring_min_events=1500, clock=clock)
    expected: list[tuple[str, str, str]] = []
    for batch in range(30):  # 3,000 changes in 30 revisions: several ring segments
        names = [f"b{batch}-{i}" for i in range(100)]
        txn = await store.txn([], [Op.put(LEASES.key(ns, n), lease_value(ns, n)) for n in names])
        expected += [("ADDED", n, str(txn.revision)) for n in names]
    assert await cache.wait_fresh(txn.revision)
    clock.advance(100.0)
    trimmed = await put_lease(store, ns, "trim")  # trims to the newest 1,500 changes
    expected.append(("ADDED", "trim", str(trimmed)))
    assert await cache.wait_fresh(trimmed)
    assert cache.event_count(LEASES) <= 1500
    oldest = int(expected[-1501][2])  # a revision whose changes were partly trimmed
    with pytest.raises(Expired):
        cache.watch(LEASES, ns, oldest - 1)
    start = int(expected[-1001][2])
    resumed = cache.watch(LEASES, ns, start)
    live = await put_lease(store, ns, "live")
    expected.append(("ADDED", "live", str(live)))
    tail = [e for e in expected if int(e[2]) > start]
    assert summary(await read_lines(resumed, len(tail))) == tail


async def test_watch_from_before_the_ring_is_expired(
    store: Store, cache_factory: Callable[..., Any], ns: str
) -> None:
    clock = ManualClock()
    before = await put_lease(store, ns, "old")
    cache: WatchCache = await cache_factory(ring_seconds=75.0, ring_min_events=5, clock=clock)
    # Before the cache's first list there is no history at all.
    with pytest.raises(Expired) as info:
        cache.watch(LEASES, ns, before - 1)
    assert info.value.oldest >= before
    revisions = [await put_lease(store, ns, f"l{i}") for i in range(8)]
    assert await cache.wait_fresh(revisions[-1])
    # All 8 changes are younger than ring_seconds: all kept although over ring_min_events.
    assert summary(await read_lines(cache.watch(LEASES, ns, revisions[0]), 7))[0][1] == "l1"
    clock.advance(76.0)
    newest = await put_lease(store, ns, "l8")
    assert await cache.wait_fresh(newest)
    # Now only the newest ring_min_events changes are kept.
    assert cache.event_count(LEASES) == 5
    with pytest.raises(Expired) as info:
        cache.watch(LEASES, ns, revisions[2])
    assert info.value.oldest == revisions[3]
    resumed = cache.watch(LEASES, ns, info.value.oldest)
    names = [n for _, n, _ in summary(await read_lines(resumed, 5))]
    assert names == ["l4", "l5", "l6", "l7", "l8"]


async def test_ring_hard_cap_bounds_memory_and_expires_older_starts(
    store: Store, cache_factory: Callable[..., Any], ns: str
) -> None:
    cache: WatchCache = await cache_factory(ring_min_events=2, ring_max_events=4)
    revisions = [await put_lease(store, ns, f"l{i}") for i in range(8)]
    assert await cache.wait_fresh(revisions[-1])
    assert cache.event_count(LEASES) == 4  # although younger than ring_seconds
    with pytest.raises(Expired) as info:
        cache.watch(LEASES, ns, revisions[2])
    assert info.value.oldest == revisions[3]


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
async def test_watch_below_the_store_compaction_is_expired(
    backend: str, private_store_url: Callable[[str], str], ns: str
) -> None:
    async with await open_store(private_store_url(backend)) as store:
        cache = WatchCache(store)
        await cache.start()
        try:
            revisions = [await put_lease(store, ns, f"l{i}") for i in range(6)]
            assert await cache.wait_fresh(revisions[-1])
            clock = ManualClock()
            compactor = Compactor(
                store, retention=300.0, clock=clock, on_compact=cache.note_compacted
            )
            await compactor.tick()
            clock.advance(300.0)
            compacted_at = await compactor.tick()
            assert compacted_at == revisions[-1]
            # The ring still holds these changes, but the store's history does not.
            with pytest.raises(Expired) as info:
                cache.watch(LEASES, ns, revisions[2])
            assert info.value.oldest == compacted_at
            with pytest.raises(CompactedError):
                await store.range(LEASES.key_prefix(ns), revision=revisions[2])
            after = await put_lease(store, ns, "l9")
            watch = cache.watch(LEASES, ns, compacted_at)
            assert summary(await read_lines(watch, 1)) == [("ADDED", "l9", str(after))]
        finally:
            await cache.stop()


async def test_slow_watcher_is_cut_off_with_410_while_others_keep_up(
    store: Store, cache_factory: Callable[..., Any], ns: str
) -> None:
    limit = 20
    cache: WatchCache = await cache_factory(max_pending_per_watcher=limit)
    slow = cache.watch(LEASES, ns, 0)
    fast = [cache.watch(LEASES, ns, 0) for _ in range(5)]
    received: list[list[Line]] = [[] for _ in fast]
    high_water = 0
    expected = []
    for i in range(60):
        rev = await put_lease(store, ns, f"l{i}")
        expected.append(("ADDED", f"l{i}", str(rev)))
        assert await cache.wait_fresh(rev)
        high_water = max(high_water, slow.pending)
        for watch, got in zip(fast, received, strict=True):
            got.extend(await read_lines(watch, 1))
    # Memory stayed bounded: never more than the limit queued, then one line.
    assert high_water <= limit + 1
    assert slow.expired
    assert slow.pending == 1
    assert cache.watcher_count(LEASES) == len(fast)
    [error] = await read_until_end(slow)
    assert error["type"] == "ERROR"
    assert error["object"]["code"] == 410
    assert error["object"]["reason"] == "Expired"
    assert error["object"]["kind"] == "Status"
    assert "behind" in error["object"]["message"]
    for got in received:
        assert summary(got) == expected


# ---------------------------------------------------------------------------- predicates


def app_is(value: str) -> Callable[[CachedObject], bool]:
    return lambda o: o.obj.metadata.labels.get("app") == value


async def test_predicate_transitions_send_added_and_deleted(
    store: Store, cache: WatchCache, ns: str
) -> None:
    watch = cache.watch(SERVICES, ns, 0, app_is("web"))
    await put_service(store, ns, "s", {"app": "db"})  # not selected: nothing
    entered = await put_service(store, ns, "s", {"app": "web"})  # enters: ADDED
    changed = await put_service(store, ns, "s", {"app": "web", "v": "2"})  # MODIFIED
    left = await put_service(store, ns, "s", {"app": "db"})  # leaves: DELETED
    await put_service(store, ns, "s", {"app": "db", "v": "3"})  # outside: nothing
    await store.delete(SERVICES.key(ns, "s"))  # deleted while outside: nothing
    born = await put_service(store, ns, "t", {"app": "web"})
    died = await store.delete(SERVICES.key(ns, "t"))
    lines = await read_lines(watch, 5)
    assert summary(lines) == [
        ("ADDED", "s", str(entered)),
        ("MODIFIED", "s", str(changed)),
        ("DELETED", "s", str(left)),
        ("ADDED", "t", str(born)),
        ("DELETED", "t", str(died)),
    ]
    # The DELETED of a transition carries the new state: the reason it left.
    assert lines[2]["object"]["metadata"]["labels"] == {"app": "db"}


async def test_a_shared_predicate_is_evaluated_per_change_not_per_watcher(
    store: Store, cache: WatchCache, ns: str
) -> None:
    calls = 0

    def web(o: CachedObject) -> bool:
        nonlocal calls
        calls += 1
        return o.obj.metadata.labels.get("app") == "web"

    watchers = [cache.watch(SERVICES, ns, 0, web) for _ in range(200)]
    first = await put_service(store, ns, "s", {"app": "web"})
    second = await put_service(store, ns, "s", {"app": "web", "v": "2"})
    for watch in watchers:
        assert summary(await read_lines(watch, 2)) == [
            ("ADDED", "s", str(first)),
            ("MODIFIED", "s", str(second)),
        ]
    assert calls <= 4  # new and previous state of two changes, for all 200 watchers


async def test_a_failing_predicate_hides_the_object_but_breaks_nothing(
    store: Store, cache: WatchCache, ns: str
) -> None:
    def picky(o: CachedObject) -> bool:
        if o.name == "boom":
            raise KeyError("boom")
        return True

    watch = cache.watch(SERVICES, ns, 0, picky)
    others = cache.watch(SERVICES, ns, 0)
    boom = await put_service(store, ns, "boom")
    fine = await put_service(store, ns, "fine")
    assert summary(await read_lines(watch, 1)) == [("ADDED", "fine", str(fine))]
    assert summary(await read_lines(others, 2)) == [
        ("ADDED", "boom", str(boom)),
        ("ADDED", "fine", str(fine)),
    ]


async def test_watch_from_a_revision_ahead_of_the_cache_gets_only_later_changes(
    store: Store, cache: WatchCache, ns: str
) -> None:
    # A client that read a newer revision elsewhere (another API server, the store).
    await settle(store, cache)
    ahead = cache.revision + 2
    watch = cache.watch(LEASES, ns, ahead)
    revisions = [await put_lease(store, ns, f"l{i}") for i in range(3)]
    assert revisions[1] == ahead  # nothing else writes to this store meanwhile
    assert summary(await read_lines(watch, 1)) == [("ADDED", "l2", str(revisions[2]))]


async def test_predicate_applies_to_a_resumed_watch_too(
    store: Store, cache: WatchCache, ns: str
) -> None:
    start = await put_service(store, ns, "s", {"app": "db"})
    entered = await put_service(store, ns, "s", {"app": "web"})
    await put_service(store, ns, "other", {"app": "db"})
    left = await put_service(store, ns, "s", {"app": "db"})
    assert await cache.wait_fresh(left)
    watch = cache.watch(SERVICES, ns, start, app_is("web"))
    assert summary(await read_lines(watch, 2)) == [
        ("ADDED", "s", str(entered)),
        ("DELETED", "s", str(left)),
    ]


# ---------------------------------------------------------------------------- freshness


async def test_bookmarks_carry_the_cache_revision_on_an_idle_store(
    store: Store, cache: WatchCache, ns: str
) -> None:
    await put_lease(store, ns, "l")
    await settle(store, cache)
    watch = cache.watch(LEASES, ns, 0, bookmarks=True, bookmark_interval=0.1)
    # Writes outside /registry/ move the store revision without any event for the cache:
    # only the store's progress notifications tell it.
    outside = await store.put(f"/elsewhere/{ns}".encode(), b"x")
    async with asyncio.timeout(TIMEOUT):
        while True:
            [line] = await read_lines(watch, 1, skip_bookmarks=False)
            assert line["type"] == "BOOKMARK"
            assert line["object"]["kind"] == "Lease"
            if int(line["object"]["metadata"]["resourceVersion"]) >= outside:
                break
    assert cache.revision >= outside
    await store.delete(f"/elsewhere/{ns}".encode())


async def test_wait_fresh_returns_once_the_cache_has_the_revision(
    store: Store, cache: WatchCache, ns: str
) -> None:
    rev = await put_lease(store, ns, "l")
    assert await cache.wait_fresh(rev)
    assert cache.get(LEASES, ns, "l") is not None
    waiter = asyncio.create_task(cache.wait_fresh(rev + 1, timeout=TIMEOUT))
    await asyncio.sleep(0)
    assert not waiter.done()
    await put_lease(store, ns, "l2")
    assert await waiter
    assert not await cache.wait_fresh(cache.revision + 1000, timeout=0.05)


# ---------------------------------------------------------------------------- resilience


class FlakyWatches(Store):
    """A real store whose watches can be cut (as a network failure would) and held down."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.up = asyncio.Event()
        self.up.set()
        self.cut = False
        self.waiting = asyncio.Event()  # a watch is waiting for the store to come back
        self.starts: list[int] = []

    def go_down(self) -> None:
        self.cut = True
        self.up.clear()
        self.waiting.clear()

    def come_back(self) -> None:
        self.cut = False
        self.up.set()

    def watch(
        self, prefix: bytes, *, start_revision: int, progress_notify: bool = False
    ) -> AsyncIterator[WatchBatch]:
        return self._watch(prefix, start_revision, progress_notify)

    async def _watch(
        self, prefix: bytes, start_revision: int, progress_notify: bool
    ) -> AsyncIterator[WatchBatch]:
        if not self.up.is_set():
            self.waiting.set()
            await self.up.wait()
        self.starts.append(start_revision)
        inner = self.inner.watch(
            prefix, start_revision=start_revision, progress_notify=progress_notify
        )
        try:
            async for batch in inner:
                if self.cut:  # this batch is lost with the connection
                    raise Unavailable("injected watch failure", ambiguous=False)
                yield batch
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.inner.close()

    async def get(self, key: bytes) -> KeyValue | None:
        return await self.inner.get(key)

    async def range(
        self,
        prefix: bytes,
        *,
        revision: int | None = None,
        limit: int | None = None,
        start: bytes | None = None,
    ) -> RangeResult:
        return await self.inner.range(prefix, revision=revision, limit=limit, start=start)

    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> int:
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: bytes) -> int:
        return await self.inner.delete(key)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        return await self.inner.txn(compares, success, failure)

    async def grant_lease(self, ttl: int) -> StoreLease:
        return await self.inner.grant_lease(ttl)

    async def keepalive(self, lease_id: int) -> int:
        return await self.inner.keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def status(self) -> StoreStatus:
        return await self.inner.status()


async def test_store_watch_failure_resumes_without_gap_or_duplicate(
    store: Store, cache_factory: Callable[..., Any], ns: str
) -> None:
    flaky = FlakyWatches(store)
    cache: WatchCache = await cache_factory(flaky)
    watch = cache.watch(LEASES, ns, 0)
    expected = [("ADDED", "a", str(await put_lease(store, ns, "a")))]
    flaky.go_down()
    expected.append(("ADDED", "b", str(await put_lease(store, ns, "b"))))  # lost in transit
    async with asyncio.timeout(TIMEOUT):
        await flaky.waiting.wait()
    expected.append(("MODIFIED", "a", str(await put_lease(store, ns, "a", "x"))))
    expected.append(("DELETED", "b", str(await store.delete(LEASES.key(ns, "b")))))
    flaky.come_back()
    expected.append(("ADDED", "c", str(await put_lease(store, ns, "c"))))
    assert summary(await read_lines(watch, len(expected))) == expected
    assert cache.relists == 0
    assert len(flaky.starts) == 2


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
async def test_cache_relists_after_the_store_watch_dies_past_compaction(
    backend: str, private_store_url: Callable[[str], str], ns: str
) -> None:
    async with await open_store(private_store_url(backend)) as store:
        flaky = FlakyWatches(store)
        cache = WatchCache(flaky)
        await cache.start()
        try:
            for name in ("keep", "change", "drop"):
                await put_service(store, ns, name, {"app": "web"})
            await put_service(store, ns, "leave", {"app": "web"})
            await put_service(store, ns, "enter", {"app": "db"})
            start = await put_lease(store, ns, "l0")
            assert await cache.wait_fresh(start)
            everything = cache.watch(SERVICES, ns, 0)
            selected = cache.watch(SERVICES, ns, 0, app_is("web"))
            position_in_gap = cache.watch(SERVICES, ns, start + 3)  # a client ahead of us

            flaky.go_down()
            lost = await put_lease(store, ns, "l1")
            async with asyncio.timeout(TIMEOUT):
                await flaky.waiting.wait()
            assert cache.revision < lost
            changed = await put_service(store, ns, "change", {"app": "web", "v": "2"})
            left = await put_service(store, ns, "leave", {"app": "db"})
            entered = await put_service(store, ns, "enter", {"app": "web"})
            added = await put_service(store, ns, "new", {"app": "web"})
            await put_service(store, ns, "new", {"app": "web", "v": "2"})
            newest = await put_service(store, ns, "new", {"app": "web", "v": "3"})
            await store.delete(SERVICES.key(ns, "drop"))
            final = await put_lease(store, ns, "l2")
            await store.compact(final)
            flaky.come_back()

            assert await cache.wait_fresh(final)
            assert cache.relists == 1
            # The differences, each at the revision of the object's current state; the
            # deletion at the list's revision (its own revision is no longer known).
            assert summary(await read_lines(everything, 5)) == [
                ("MODIFIED", "change", str(changed)),
                ("MODIFIED", "leave", str(left)),
                ("MODIFIED", "enter", str(entered)),
                ("ADDED", "new", str(newest)),
                ("DELETED", "drop", str(final)),
            ]
            assert summary(await read_lines(selected, 5)) == [
                ("MODIFIED", "change", str(changed)),
                ("DELETED", "leave", str(left)),
                ("ADDED", "enter", str(entered)),
                ("ADDED", "new", str(newest)),
                ("DELETED", "drop", str(final)),
            ]
            assert added < newest
            [error] = await read_until_end(position_in_gap)
            assert error["type"] == "ERROR"
            assert error["object"]["code"] == 410
            with pytest.raises(Expired):
                cache.watch(SERVICES, ns, start)
            store_state = await store.range(SERVICES.key_prefix(ns))
            cached, _ = cache.list(SERVICES, ns)
            assert [(o.key, o.mod_revision) for o in cached] == [
                (kv.key, kv.mod_revision) for kv in store_state.kvs
            ]
            # And it follows the store again.
            after = await put_service(store, ns, "keep", {"app": "web", "v": "9"})
            assert summary(await read_lines(selected, 1)) == [("MODIFIED", "keep", str(after))]
        finally:
            await cache.stop()


async def test_a_fault_while_applying_a_batch_relists_and_expires_watchers(
    store: Store, cache: WatchCache, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug half-way through a batch must not turn into a gap: watchers are told 410."""
    kind = cache._kinds["leases"]
    real = kind.decoder
    faults = [RuntimeError("injected fault")]

    class FaultyDecoder:
        def decode(self, data: bytes) -> object:
            if faults:
                raise faults.pop()
            return real.decode(data)

    watch = cache.watch(LEASES, ns, 0)
    monkeypatch.setattr(kind, "decoder", FaultyDecoder())
    txn = await store.txn(
        [],
        [Op.put(LEASES.key(ns, n), lease_value(ns, n)) for n in ("a", "b")],
    )
    assert await cache.wait_fresh(txn.revision)
    [error] = await read_until_end(watch)
    assert (error["type"], error["object"]["code"]) == ("ERROR", 410)
    assert cache.relists == 1
    cached, _ = cache.list(LEASES, ns)
    assert [o.name for o in cached] == ["a", "b"]
    later = cache.watch(LEASES, ns, 0)
    rev = await put_lease(store, ns, "c")
    assert summary(await read_lines(later, 1)) == [("ADDED", "c", str(rev))]


# ---------------------------------------------------------------------------- metrics


async def test_stats_count_objects_ring_and_watchers(
    store: Store, cache_factory: Callable[..., Any], ns: str
) -> None:
    cache: WatchCache = await cache_factory()
    base = cache.stats()["Lease"]
    watch = cache.watch(LEASES, ns, 0)
    await put_lease(store, ns, "a")
    rev = await put_lease(store, ns, "b")
    assert await cache.wait_fresh(rev)
    stats = cache.stats()["Lease"]
    assert stats.objects == base.objects + 2
    assert stats.events == base.events + 2
    assert stats.watchers == base.watchers + 1
    assert cache.object_count(LEASES) == stats.objects
    watch.close()
    assert cache.watcher_count(LEASES) == base.watchers


# ---------------------------------------------------------------------------- compactor


def test_choose_compaction_picks_the_newest_sample_at_least_retention_old() -> None:
    samples = [(0.0, 10), (60.0, 20), (120.0, 30), (180.0, 40)]
    assert choose_compaction(samples, 100.0, 300.0) is None
    assert choose_compaction(samples, 300.0, 300.0) == 10
    assert choose_compaction(samples, 419.0, 300.0) == 20
    assert choose_compaction(samples, 420.0, 300.0) == 30
    assert choose_compaction(samples, 10_000.0, 300.0) == 40
    assert choose_compaction([], 10_000.0, 300.0) is None


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
async def test_compactor_keeps_at_least_retention_of_history(
    backend: str, private_store_url: Callable[[str], str], ns: str
) -> None:
    async with await open_store(private_store_url(backend)) as store:
        clock = ManualClock()
        noted: list[int] = []
        compactor = Compactor(
            store, interval=60.0, retention=300.0, clock=clock, on_compact=noted.append
        )
        history: list[tuple[float, int]] = []  # (time, store revision then)
        for step in range(15):
            for i in range(3):
                revision = await put_lease(store, ns, f"l{i}", holder=f"h{step}")
                history.append((clock.now(), revision))
            await compactor.tick()
            # Every state of the last `retention` seconds can still be read.
            for at, revision in history:
                if clock.now() - at < 300.0:
                    await store.range(LEASES.key_prefix(ns), revision=revision)
            clock.advance(60.0)
        assert compactor.compactions >= 9
        assert noted and noted[-1] == compactor.compacted
        with pytest.raises(CompactedError):
            await store.range(LEASES.key_prefix(ns), revision=history[0][1])


async def test_compactor_tolerates_a_store_already_compacted_further(tmp_path: Path) -> None:
    async with await open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        clock = ManualClock()
        compactor = Compactor(store, retention=300.0, clock=clock)
        await compactor.tick()
        for i in range(5):
            newest = await store.put(b"/registry/leases/x/y%d" % i, lease_value("x", f"y{i}"))
        await store.compact(newest)  # another API server did it
        clock.advance(300.0)
        assert await compactor.tick() is None
        assert compactor.compacted == newest


async def test_compactor_tolerates_an_unavailable_store(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'k.db'}")
    await store.close()
    compactor = Compactor(store, clock=ManualClock())
    assert await compactor.tick() is None
    assert compactor.samples == []
