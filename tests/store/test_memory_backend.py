"""The in-memory backend's own guarantees: leases and progress notifications run on the
injected clock (no real waiting), a simulation on the virtual loop replays exactly, lagging
watchers catch up from the log, and history stays exact up to the compaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from store.storetest import WatchCollector

from keel.clock import ManualClock
from keel.sim.loop import EPOCH, SimClock, SimulationDeadlock, run_virtual
from keel.store import (
    CompactedError,
    Compare,
    EventType,
    KeyValue,
    LeaseNotFound,
    MemoryStore,
    Op,
    StoreClosed,
    WatchBatch,
    open_store,
)


async def next_batch(iterator: AsyncIterator[WatchBatch], timeout: float = 10.0) -> WatchBatch:
    return await asyncio.wait_for(anext(iterator), timeout)


# ---------------------------------------------------------------------------- leases


async def test_a_lease_expires_when_the_clock_passes_its_ttl_with_delete_events() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    lease = await store.grant_lease(3600)  # an hour: real waiting would time the test out
    await store.put(b"/l/a", b"1", lease=lease.id)
    await store.txn([], [Op.put(b"/l/b", b"2", lease=lease.id)], [])
    await store.put(b"/l/c", b"kept")
    watch = store.watch(b"/l/", start_revision=0)
    clock.advance(3599.5)
    assert [kv.key for kv in (await store.range(b"/l/")).kvs] == [b"/l/a", b"/l/b", b"/l/c"]
    clock.advance(0.5)
    # Nobody calls the store: the lease alarm alone deletes the keys and feeds the watch.
    batch = await next_batch(watch)
    assert [(e.type, e.kv.key) for e in batch.events] == [
        (EventType.DELETE, b"/l/a"),
        (EventType.DELETE, b"/l/b"),
    ]
    assert {e.kv.mod_revision for e in batch.events} == {batch.revision}
    assert [kv.key for kv in (await store.range(b"/l/")).kvs] == [b"/l/c"]
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease.id)
    await store.close()


async def test_a_keepalive_moves_the_deadline_a_full_ttl_from_now() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    lease = await store.grant_lease(10)
    await store.put(b"/held", b"v", lease=lease.id)
    clock.advance(8)
    assert await store.keepalive(lease.id) == 10
    clock.advance(8)  # 16 s after the grant, 8 s after the keep-alive
    assert await store.get(b"/held") is not None
    before = (await store.status()).revision
    clock.advance(2)
    # The very next call sees the expiry, whether or not the alarm task has run yet.
    assert await store.get(b"/held") is None
    assert (await store.status()).revision == before + 1
    await store.close()


async def test_revoking_the_earliest_lease_leaves_a_later_one_expiring_on_time() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    late = await store.grant_lease(10)
    early = await store.grant_lease(5)
    await store.put(b"/r/late", b"v", lease=late.id)
    await store.put(b"/r/early", b"v", lease=early.id)
    watch = store.watch(b"/r/", start_revision=0)
    await store.revoke_lease(early.id)
    revoked = await next_batch(watch)
    assert [(e.type, e.kv.key) for e in revoked.events] == [(EventType.DELETE, b"/r/early")]
    clock.advance(9.5)
    await asyncio.sleep(0)  # the alarm set for the revoked lease rings, finds nothing due
    assert await store.get(b"/r/late") is not None
    clock.advance(0.5)
    expired = await next_batch(watch)
    assert [(e.type, e.kv.key) for e in expired.events] == [(EventType.DELETE, b"/r/late")]
    await store.close()


def test_a_stuck_simulation_is_reported_once_no_lease_is_pending() -> None:
    """Expiry holds a timer only while a lease can still expire, so a simulation whose tasks
    all wait on a watch is reported as stuck instead of spinning through virtual time."""

    async def main() -> None:
        store = MemoryStore(clock=SimClock())
        lease = await store.grant_lease(30)
        await store.put(b"/k", b"v", lease=lease.id)
        async for _ in store.watch(b"/nothing/", start_revision=0):
            pass

    with pytest.raises(SimulationDeadlock):
        run_virtual(main)


# ---------------------------------------------------------------------------- watches


async def test_progress_notifications_follow_the_store_clock() -> None:
    clock = ManualClock()
    store = await open_store("memory://?progress_interval=5", clock=clock)
    watch = WatchCollector(store, b"/p/", 0, progress_notify=True)
    try:
        await store.put(b"/p/a", b"1")
        await watch.wait_events(1)
        clock.advance(4)
        rev = await store.put(b"/p/b", b"2")
        await watch.wait_events(2)
        assert all(b.events for b in watch.batches)  # never quiet for 5 s yet
        clock.advance(5)
        await watch.wait_for("a progress notification", lambda: not watch.batches[-1].events)
        assert watch.batches[-1] == WatchBatch([], rev)
        assert len(watch.batches) == 3
    finally:
        await watch.close()
        await store.close()


async def test_a_lagging_watcher_catches_up_from_the_log_without_gaps() -> None:
    store = await open_store("memory://?watch_buffer=3")
    watch = WatchCollector(store, b"/lag/", 0)
    try:
        await asyncio.sleep(0)  # the watch is registered; now write without yielding
        first = await store.put(b"/lag/k", b"0")
        for i in range(1, 2500):
            await store.txn([], [Op.put(b"/lag/k", str(i).encode())], [])
        events = await watch.wait_events(2500)
        assert [e.kv.value for e in events] == [str(i).encode() for i in range(2500)]
        assert [e.kv.mod_revision for e in events] == list(range(first, first + 2500))
        assert len(watch.batches) > 1  # delivered in bounded chunks, not one huge batch
    finally:
        await watch.close()
        await store.close()


async def test_closing_the_store_ends_watches_with_store_closed() -> None:
    store = MemoryStore()
    watch = WatchCollector(store, b"/", 0)
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StoreClosed):
        await watch.wait_for("the watch to end", lambda: False)
    with pytest.raises(StoreClosed):
        await store.get(b"/k")


# ---------------------------------------------------------------------------- history


async def test_history_after_compaction_is_exact_at_every_remaining_revision() -> None:
    store = MemoryStore()
    snapshots: dict[int, list[KeyValue]] = {}

    async def snap() -> None:
        result = await store.range(b"/h/")
        snapshots[result.revision] = result.kvs

    for step in range(30):
        key = b"/h/" + bytes([97 + step % 4])
        if step % 7 == 3:
            await store.delete(key)
        elif step % 5 == 4:
            await store.txn([], [Op.delete(b"/h/", prefix=True)], [])
        else:
            await store.put(key, str(step).encode())
        await snap()
    revisions = sorted(snapshots)
    middle, now = revisions[len(revisions) // 2], revisions[-1]
    await store.compact(middle)
    for revision in revisions:
        if revision < middle:
            with pytest.raises(CompactedError):
                await store.range(b"/h/", revision=revision)
        else:
            assert (await store.range(b"/h/", revision=revision)).kvs == snapshots[revision]
            paged = await store.range(b"/h/", revision=revision, limit=1, start=b"/h/b")
            assert paged.kvs == [kv for kv in snapshots[revision] if kv.key >= b"/h/b"][:1]
    # A watch from the compaction replays exactly the changes since: applied to the state
    # just before it, they give the state now.
    replay = WatchCollector(store, b"/h/", middle)
    try:
        await replay.wait_for(
            "the replay to reach the current revision",
            lambda: replay.batches[-1:] and replay.batches[-1].revision == now,
        )
        assert sorted({e.kv.mod_revision for e in replay.events}) == [
            r for r in revisions if r >= middle
        ]
        state = {kv.key: kv for kv in snapshots[middle - 1]}
        for event in replay.events:
            if event.type is EventType.PUT:
                state[event.kv.key] = event.kv
            else:
                del state[event.kv.key]
        assert sorted(state.values(), key=lambda kv: kv.key) == snapshots[now]
    finally:
        await replay.close()


# ---------------------------------------------------------------------------- determinism


Seen = tuple[float, int, list[tuple[str, bytes, bytes, int]]]


def simulation() -> tuple[int, list[Seen]]:
    """Writers, a CAS race, a lease kept alive for a while and then let go, and a watcher with
    progress notifications, all on the virtual loop; returns the lease's id and what the
    watcher saw, when."""

    async def main() -> tuple[int, list[Seen]]:
        loop = asyncio.get_running_loop()
        store = await open_store("memory://?progress_interval=7", clock=SimClock())
        seen: list[Seen] = []

        async def watcher() -> None:
            async for batch in store.watch(b"/sim/", start_revision=0, progress_notify=True):
                events = [(e.type.name, e.kv.key, e.kv.value, e.kv.lease) for e in batch.events]
                seen.append((loop.time() - EPOCH, batch.revision, events))

        async def writer(name: bytes, pause: float) -> None:
            for i in range(6):
                await asyncio.sleep(pause)
                await store.put(b"/sim/" + name, str(i).encode())

        async def racer(who: int) -> None:
            await asyncio.sleep(5)
            await store.txn(
                [Compare.create_revision(b"/sim/leader", "==", 0)],
                [Op.put(b"/sim/leader", str(who).encode())],
            )

        lease = await store.grant_lease(4)

        async def holder() -> None:
            await store.put(b"/sim/held", b"v", lease=lease.id)
            for _ in range(5):
                await asyncio.sleep(2)
                await store.keepalive(lease.id)
            # then stop: the lease runs out 4 s after the last keep-alive

        watching = asyncio.create_task(watcher())
        await asyncio.sleep(0)
        await asyncio.gather(
            writer(b"a", 1.5), writer(b"b", 2.5), holder(), *(racer(i) for i in range(4))
        )
        await asyncio.sleep(30)
        watching.cancel()
        await store.close()
        return lease.id, seen

    return run_virtual(main)


def test_a_simulation_on_the_virtual_loop_replays_exactly() -> None:
    lease_id, seen = simulation()
    assert simulation() == (lease_id, seen)
    deletes = [(at, events) for at, _, events in seen if events and events[0][0] == "DELETE"]
    assert deletes == [(14.0, [("DELETE", b"/sim/held", b"", 0)])]  # last keep-alive at 10 s
    assert any(not events for _, _, events in seen)  # progress notifications happened
    winners = [e for _, _, events in seen for e in events if e[1] == b"/sim/leader"]
    assert len(winners) == 1
