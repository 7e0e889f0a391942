"""Conformance: watches (ordered, unique, atomic, gap-free, resumable) and leases."""

from __future__ import annotations

import asyncio

import pytest
from store.storetest import WatchCollector

from keel.store import CompactedError, EventType, LeaseNotFound, Op, Store


async def test_watch_delivers_every_change_in_order_with_prev_values(
    store: Store, prefix: bytes
) -> None:
    start = (await store.status()).revision + 1
    watch = WatchCollector(store, prefix, start)
    try:
        revs = [await store.put(prefix + b"a", b"1")]
        revs.append(await store.put(prefix + b"a", b"2"))
        revs.append(await store.delete(prefix + b"a"))
        await store.put(b"/elsewhere/" + prefix, b"not watched")
        events = await watch.wait_events(3)
        assert [(e.type, e.kv.mod_revision) for e in events] == [
            (EventType.PUT, revs[0]),
            (EventType.PUT, revs[1]),
            (EventType.DELETE, revs[2]),
        ]
        assert events[0].prev_kv is None
        assert events[1].prev_kv is not None
        assert events[1].prev_kv.value == b"1"
        assert events[2].prev_kv is not None
        assert events[2].prev_kv.value == b"2"
        assert events[2].kv.key == prefix + b"a"
        assert events[1].kv.version == 2
    finally:
        await watch.close()


async def test_one_txn_arrives_as_one_atomic_batch(store: Store, prefix: bytes) -> None:
    start = (await store.status()).revision + 1
    watch = WatchCollector(store, prefix, start)
    try:
        result = await store.txn([], [Op.put(prefix + bytes([c]), b"v") for c in b"abcde"], [])
        await watch.wait_events(5)
        (batch,) = [b for b in watch.batches if b.events]
        assert [e.kv.key[-1:] for e in batch.events] == [b"a", b"b", b"c", b"d", b"e"]
        assert {e.kv.mod_revision for e in batch.events} == {result.revision}
    finally:
        await watch.close()


async def test_watch_from_history_then_live_is_gap_free_and_unique(
    store: Store, prefix: bytes
) -> None:
    first = await store.put(prefix + b"k", b"0")
    for i in range(1, 20):
        await store.put(prefix + b"k", str(i).encode())
    watch = WatchCollector(store, prefix, first)

    async def writer() -> None:
        for i in range(20, 60):
            await store.put(prefix + b"k", str(i).encode())

    try:
        await writer()
        events = await watch.wait_events(60)
        assert [e.kv.value for e in events] == [str(i).encode() for i in range(60)]
        revisions = [e.kv.mod_revision for e in events]
        assert revisions == list(range(first, first + 60))
        batch_revisions = [b.revision for b in watch.batches]
        assert batch_revisions == sorted(batch_revisions)
    finally:
        await watch.close()


async def test_a_watch_resumes_from_the_next_revision_without_loss(
    store: Store, prefix: bytes
) -> None:
    start = (await store.status()).revision + 1
    watch = WatchCollector(store, prefix, start)
    await store.put(prefix + b"a", b"1")
    await watch.wait_events(1)
    last = watch.events[-1].kv.mod_revision
    await watch.close()
    await store.put(prefix + b"a", b"2")  # happens while nobody watches
    await store.put(prefix + b"b", b"3")
    resumed = WatchCollector(store, prefix, last + 1)
    try:
        events = await resumed.wait_events(2)
        assert [e.kv.value for e in events] == [b"2", b"3"]
    finally:
        await resumed.close()


async def test_progress_notifications_are_empty_batches_at_the_current_revision(
    store: Store, prefix: bytes
) -> None:
    rev = await store.put(prefix + b"x", b"1")
    watch = WatchCollector(store, prefix, rev + 1, progress_notify=True)
    try:
        await watch.wait_for(
            "a progress notification", lambda: any(not b.events for b in watch.batches), timeout=15
        )
        progress = next(b for b in watch.batches if not b.events)
        assert progress.revision >= rev
    finally:
        await watch.close()


async def test_watching_a_compacted_revision_raises_compacted(store: Store, prefix: bytes) -> None:
    r1 = await store.put(prefix + b"k", b"1")
    r2 = await store.put(prefix + b"k", b"2")
    await store.put(prefix + b"k", b"3")
    await store.compact(r2)
    with pytest.raises(CompactedError) as caught:
        async for _ in store.watch(prefix, start_revision=r1):
            break
    assert caught.value.compact_revision >= r2


async def test_breaking_out_of_a_watch_cancels_it(store: Store, prefix: bytes) -> None:
    start = (await store.status()).revision + 1
    await store.put(prefix + b"k", b"1")
    async for batch in store.watch(prefix, start_revision=start):
        assert batch.events[0].kv.value == b"1"
        break
    # the store keeps working and a new watch works after the old one is gone
    await store.put(prefix + b"k", b"2")
    async for batch in store.watch(prefix, start_revision=start):
        assert [e.kv.value for e in batch.events][:1] == [b"1"]
        break


async def test_an_expired_lease_deletes_its_keys_with_delete_events(
    store: Store, prefix: bytes
) -> None:
    lease = await store.grant_lease(2)
    assert lease.ttl >= 2
    start = (await store.status()).revision + 1
    watch = WatchCollector(store, prefix, start)
    try:
        await store.put(prefix + b"a", b"1", lease=lease.id)
        await store.txn([], [Op.put(prefix + b"b", b"2", lease=lease.id)], [])
        await store.put(prefix + b"c", b"kept")
        kv = await store.get(prefix + b"a")
        assert kv is not None
        assert kv.lease == lease.id
        await watch.wait_for(
            "both keys deleted with the lease",
            lambda: sum(e.type is EventType.DELETE for e in watch.events) == 2,
            timeout=10,
        )
        deletes = [e for e in watch.events if e.type is EventType.DELETE]
        assert sorted(e.kv.key for e in deletes) == [prefix + b"a", prefix + b"b"]
        assert len({e.kv.mod_revision for e in deletes}) == 1  # one revision for the expiry
        assert [kv.key for kv in (await store.range(prefix)).kvs] == [prefix + b"c"]
        with pytest.raises(LeaseNotFound):
            await store.keepalive(lease.id)
    finally:
        await watch.close()


async def test_keepalive_holds_a_lease_past_its_ttl(store: Store, prefix: bytes) -> None:
    lease = await store.grant_lease(2)
    await store.put(prefix + b"held", b"1", lease=lease.id)
    for _ in range(8):  # 4 s of keep-alives at TTL/4
        assert await store.keepalive(lease.id) >= 2
        await asyncio.sleep(0.5)
    assert await store.get(prefix + b"held") is not None
    await store.revoke_lease(lease.id)
    assert await store.get(prefix + b"held") is None
    with pytest.raises(LeaseNotFound):
        await store.revoke_lease(lease.id)


async def test_put_with_an_unknown_lease_is_refused(store: Store, prefix: bytes) -> None:
    with pytest.raises(LeaseNotFound):
        await store.put(prefix + b"x", b"1", lease=0x7EADBEEF12345)
    assert await store.get(prefix + b"x") is None


async def test_keepalive_is_not_a_write(store: Store, prefix: bytes) -> None:
    lease = await store.grant_lease(5)
    before = (await store.status()).revision
    for _ in range(5):
        await store.keepalive(lease.id)
    assert (await store.status()).revision == before
    await store.revoke_lease(lease.id)
