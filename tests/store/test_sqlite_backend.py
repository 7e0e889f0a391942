"""The embedded SQLite backend's own guarantees: durability under kill -9, file ownership,
leases across restarts, keep-alives that never write, group commit, watch catch-up and
compaction. Real files, real subprocesses, real signals.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import wait_for_async

from keel.clock import ManualClock
from keel.store import (
    CompactedError,
    Compare,
    Event,
    EventType,
    FutureRevisionError,
    LeaseNotFound,
    Op,
    StoreClosed,
    StoreLocked,
    WatchBatch,
    open_store,
)
from keel.store._sqlite import SqliteStore

Seen = tuple[EventType, bytes, int, bytes, bytes | None]


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


async def open_sqlite(path: Path, query: str = "") -> SqliteStore:
    store = await open_store(url_of(path, query))
    assert isinstance(store, SqliteStore)
    return store


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite(tmp_path / "keel.db", "progress_interval=0.2")
    try:
        yield store
    finally:
        await store.close()


async def next_batch(iterator: AsyncIterator[WatchBatch], timeout: float = 10.0) -> WatchBatch:
    return await asyncio.wait_for(anext(iterator), timeout)


async def spawn(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"child exited early: {(await proc.stderr.read()).decode()}")
    return line.decode().strip()


# ---------------------------------------------------------------------------- durability

WRITER_SCRIPT = """
    import asyncio, sys
    from keel.store import open_store

    async def main() -> None:
        store = await open_store("sqlite:///" + sys.argv[1])
        print("ready", flush=True)

        async def writer(w: int) -> None:
            n = 0
            while True:
                key = f"/durable/{w}/{n}"
                rev = await store.put(key.encode(), b"v" * 64)
                sys.stdout.write(f"{key} {rev}\\n")
                sys.stdout.flush()
                n += 1

        await asyncio.gather(*(writer(w) for w in range(32)))

    asyncio.run(main())
"""


async def test_kill_9_of_a_writing_process_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    proc = await spawn(WRITER_SCRIPT, str(path))
    assert await read_line(proc) == "ready"
    acked: dict[bytes, int] = {}
    while len(acked) < 3000:
        name, number = (await read_line(proc)).split()
        acked[name.encode()] = int(number)
    proc.send_signal(signal.SIGKILL)
    assert proc.stdout is not None
    # Everything printed before the kill was acknowledged too; a torn last line is not.
    for raw in (await proc.stdout.read()).decode().splitlines(keepends=True):
        if raw.endswith("\n"):
            name, number = raw.split()
            acked[name.encode()] = int(number)
    assert await proc.wait() == -signal.SIGKILL

    store = await open_sqlite(path)
    try:
        for key, rev in acked.items():
            kv = await store.get(key)
            assert kv is not None, f"acknowledged write {key!r}@{rev} lost"
            assert kv.mod_revision == rev
        everything = await store.range(b"/durable/")
        revisions = sorted(kv.mod_revision for kv in everything.kvs)
        # One unique key per put: the surviving revisions are exactly 2..current.
        assert revisions == list(range(2, everything.revision + 1))
        assert everything.revision >= max(acked.values())
        assert await store.put(b"/after", b"x") == everything.revision + 1
    finally:
        await store.close()


async def test_revisions_versions_and_history_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    store = await open_sqlite(path)
    r1 = await store.put(b"k", b"1")
    r2 = await store.put(b"k", b"2")
    r3 = await store.delete(b"k")
    r4 = await store.put(b"k", b"3")
    await store.close()

    store = await open_sqlite(path)
    try:
        assert (await store.status()).revision == r4
        kv = await store.get(b"k")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"3", r4, r4, 1)
        old = await store.range(b"k", revision=r2)
        assert [(kv.value, kv.version, kv.create_revision) for kv in old.kvs] == [(b"2", 2, r1)]
        assert (await store.range(b"k", revision=r3)).kvs == []
        assert old.revision == r4
        assert await store.put(b"k", b"4") == r4 + 1
        kv = await store.get(b"k")
        assert kv is not None
        assert kv.version == 2
    finally:
        await store.close()


# ---------------------------------------------------------------------------- ownership

HOLDER_SCRIPT = """
    import asyncio, sys
    from keel.store import open_store

    async def main() -> None:
        store = await open_store("sqlite:///" + sys.argv[1])
        await store.put(b"held", b"yes")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
"""

PROBE_SCRIPT = """
    import asyncio, sys
    from keel.store import StoreLocked, open_store

    async def main() -> None:
        try:
            store = await open_store("sqlite:///" + sys.argv[1])
        except StoreLocked as exc:
            print("locked", exc, flush=True)
            return
        await store.close()
        print("opened", flush=True)

    asyncio.run(main())
"""


async def test_a_second_opener_in_another_process_gets_store_locked_naming_the_owner(
    db: SqliteStore,
) -> None:
    proc = await spawn(PROBE_SCRIPT, db.path)
    line = await read_line(proc)
    assert await proc.wait() == 0
    assert line.startswith("locked")
    assert db.path in line
    assert str(os.getpid()) in line


async def test_a_second_open_in_the_same_process_gets_store_locked(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    store = await open_sqlite(path)
    try:
        with pytest.raises(StoreLocked, match="this process"):
            await open_sqlite(path)
        await store.put(b"still", b"works")
    finally:
        await store.close()
    # Closing releases the file.
    again = await open_sqlite(path)
    assert await again.get(b"still") is not None
    await again.close()


async def test_the_lock_of_a_kill_9d_owner_is_released(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    proc = await spawn(HOLDER_SCRIPT, str(path))
    assert await read_line(proc) == "ready"
    with pytest.raises(StoreLocked, match=f"process {proc.pid}"):
        await open_sqlite(path)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    store = await open_sqlite(path)
    try:
        kv = await store.get(b"held")
        assert kv is not None
        assert kv.value == b"yes"
    finally:
        await store.close()


# ---------------------------------------------------------------------------- leases


async def test_leases_survive_a_restart_with_a_fresh_full_ttl_then_expire_with_deletes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keel.db"
    store = await open_sqlite(path)
    lease = await store.grant_lease(2)
    await store.put(b"/l/a", b"1", lease=lease.id)
    await store.put(b"/l/b", b"2", lease=lease.id)
    # Age the lease by most of its TTL: a restored lease must not keep this age.
    await asyncio.sleep(1.5)
    await store.close()

    store = await open_sqlite(path)
    try:
        reopened = time.monotonic()
        start = (await store.status()).revision + 1
        watch = store.watch(b"/l/", start_revision=start)
        pending = asyncio.ensure_future(next_batch(watch))
        assert {kv.key for kv in (await store.range(b"/l/")).kvs} == {b"/l/a", b"/l/b"}
        batch = await pending
        expired = time.monotonic()
        assert 1.9 <= expired - reopened <= 2.6
        assert [(e.type, e.kv.key) for e in batch.events] == [
            (EventType.DELETE, b"/l/a"),
            (EventType.DELETE, b"/l/b"),
        ]
        assert {e.kv.mod_revision for e in batch.events} == {start}  # one revision
        assert (await store.range(b"/l/")).kvs == []
        with pytest.raises(LeaseNotFound):
            await store.keepalive(lease.id)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_a_lease_grant_is_durable_but_takes_no_revision(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    store = await open_sqlite(path)
    before = (await store.status()).revision
    commits = store.commit_count
    lease = await store.grant_lease(30)
    assert lease.id > 0
    assert lease.id < 2**63
    assert (await store.status()).revision == before
    assert store.commit_count == commits + 1  # it was committed, not just remembered
    with pytest.raises(LeaseNotFound):
        await store.put(b"/x", b"v", lease=lease.id + 1)
    assert (await store.status()).revision == before
    await store.close()
    store = await open_sqlite(path)
    try:
        assert await store.keepalive(lease.id) == 30
        rev = await store.put(b"/x", b"v", lease=lease.id)
        assert rev == before + 1
        await store.put(b"/x", b"w")  # re-put without a lease detaches the key
        await store.revoke_lease(lease.id)
        kv = await store.get(b"/x")
        assert kv is not None
        assert kv.lease == 0
    finally:
        await store.close()


async def test_a_keepalive_is_never_a_write(db: SqliteStore) -> None:
    lease = await db.grant_lease(5)
    await db.put(b"/ka", b"v", lease=lease.id)
    files = [db.path, db.path + "-wal"]

    def fingerprint() -> list[tuple[int, int]]:
        return [(os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]

    probe = sqlite3.connect(db.path)
    try:
        version = probe.execute("PRAGMA data_version").fetchone()
        before = fingerprint()
        commits = db.commit_count
        for _ in range(200):
            assert await db.keepalive(lease.id) == 5
        assert fingerprint() == before
        assert probe.execute("PRAGMA data_version").fetchone() == version
        assert db.commit_count == commits
        # The probe does see real writes, so the checks above would have noticed one.
        await db.put(b"/other", b"v")
        assert probe.execute("PRAGMA data_version").fetchone() != version
    finally:
        probe.close()


async def test_lease_expiry_is_timely_and_deletes_in_one_revision(db: SqliteStore) -> None:
    lease = await db.grant_lease(1)
    granted = time.monotonic()
    await db.txn([], [Op.put(b"/e/" + bytes([c]), b"v", lease=lease.id) for c in b"xyz"], [])
    watch = db.watch(b"/e/", start_revision=0)
    batch = await next_batch(watch)
    elapsed = time.monotonic() - granted
    assert 0.95 <= elapsed <= 1.5
    assert [e.type for e in batch.events] == [EventType.DELETE] * 3
    assert len({e.kv.mod_revision for e in batch.events}) == 1
    assert all(e.prev_kv is not None and e.prev_kv.lease == lease.id for e in batch.events)
    await watch.aclose()  # type: ignore[attr-defined]


async def test_keepalive_holds_a_lease_past_its_ttl(db: SqliteStore) -> None:
    lease = await db.grant_lease(1)
    await db.put(b"/held", b"v", lease=lease.id)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert await db.keepalive(lease.id) == 1
        await asyncio.sleep(0.2)
    assert await db.get(b"/held") is not None
    await db.revoke_lease(lease.id)
    assert await db.get(b"/held") is None
    with pytest.raises(LeaseNotFound):
        await db.revoke_lease(lease.id)


async def test_lease_deadlines_follow_the_store_clock_not_real_time(tmp_path: Path) -> None:
    clock = ManualClock()
    store = await open_store(url_of(tmp_path / "keel.db"), clock=clock)
    try:
        lease = await store.grant_lease(3600)
        await store.put(b"/clocked/a", b"1", lease=lease.id)
        watch = store.watch(b"/clocked/", start_revision=0)
        clock.advance(3599)
        assert await store.keepalive(lease.id) == 3600  # the deadline moves to t=7199
        clock.advance(3599)
        assert await store.get(b"/clocked/a") is not None
        clock.advance(2)
        batch = await next_batch(watch)
        assert [(e.type, e.kv.key) for e in batch.events] == [(EventType.DELETE, b"/clocked/a")]
        with pytest.raises(LeaseNotFound):
            await store.keepalive(lease.id)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_a_put_with_an_unknown_lease_fails_alone_within_a_group_commit(
    db: SqliteStore,
) -> None:
    before = (await db.status()).revision
    results = await asyncio.gather(
        *(db.put(f"/g/{i}".encode(), b"v", lease=12345 if i == 7 else None) for i in range(32)),
        return_exceptions=True,
    )
    assert isinstance(results[7], LeaseNotFound)
    good = sorted(r for r in results if isinstance(r, int))
    assert good == list(range(before + 1, before + 32))
    assert await db.get(b"/g/7") is None


# ---------------------------------------------------------------------------- group commit


async def test_concurrent_puts_share_commits_and_get_contiguous_revisions(
    db: SqliteStore,
) -> None:
    before = (await db.status()).revision
    commits = db.commit_count
    revisions = await asyncio.gather(*(db.put(f"/c/{i}".encode(), b"v") for i in range(64)))
    assert sorted(revisions) == list(range(before + 1, before + 65))
    assert db.commit_count - commits < 64
    for i, rev in enumerate(revisions):
        kv = await db.get(f"/c/{i}".encode())
        assert kv is not None
        assert kv.mod_revision == rev


async def test_the_event_loop_stays_responsive_under_write_load(db: SqliteStore) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.time() + 1.5
    worst = 0.0

    async def writer(w: int) -> None:
        n = 0
        while loop.time() < stop:
            await db.put(f"/load/{w}/{n}".encode(), b"v" * 100)
            n += 1

    async def ticker() -> None:
        nonlocal worst
        while loop.time() < stop:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before - 0.01)

    await asyncio.gather(ticker(), *(writer(w) for w in range(64)))
    assert worst < 1.0  # a blocked loop stalls for whole commits; CI machines are noisy


# ---------------------------------------------------------------------------- watches


async def test_a_slow_watcher_catches_up_from_the_log_without_gaps(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "keel.db", "watch_buffer=8")
    try:
        first = await store.put(b"/w/0", b"0")
        watch = store.watch(b"/w/", start_revision=first)
        assert [e.kv.mod_revision for e in (await next_batch(watch)).events] == [first]
        # The consumer now stalls while 200 revisions happen.
        revisions = [first] + [await store.put(f"/w/{i}".encode(), b"v") for i in range(1, 200)]
        assert all(w.pending <= 8 for w in store._watchers)
        seen = [first]
        while seen[-1] < revisions[-1]:
            batch = await next_batch(watch)
            revs = [e.kv.mod_revision for e in batch.events]
            assert revs == sorted(revs)
            assert batch.revision >= revs[-1]
            seen.extend(revs)
        assert seen == revisions
        assert store.watch_resyncs >= 1
        await watch.aclose()  # type: ignore[attr-defined]
        assert not store._watchers
    finally:
        await store.close()


async def test_lagging_watchers_under_concurrent_writes_see_exactly_the_log(
    tmp_path: Path,
) -> None:
    store = await open_sqlite(tmp_path / "keel.db", "watch_buffer=4")
    try:
        start = (await store.status()).revision + 1
        rng = random.Random(7)

        async def writer(w: int) -> None:
            for _ in range(60):
                key = f"/s/{rng.randrange(12)}".encode()
                choice = rng.random()
                if choice < 0.5:
                    await store.put(key, f"{w}".encode())
                elif choice < 0.7:
                    await store.delete(key)
                else:
                    other = f"/s/{rng.randrange(12, 24)}".encode()
                    await store.txn([], [Op.put(key, b"t"), Op.delete(other)], [])

        async def lagging(prefix: bytes, until: asyncio.Future[int]) -> list[Seen]:
            seen: list[Seen] = []
            watch = store.watch(prefix, start_revision=start)
            async for batch in watch:
                for e in batch.events:
                    prev = e.prev_kv.value if e.prev_kv else None
                    seen.append((e.type, e.kv.key, e.kv.mod_revision, e.kv.value, prev))
                await asyncio.sleep(0.002)  # a slow consumer
                if until.done() and batch.revision >= until.result():
                    break
            return seen

        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        watchers = [asyncio.ensure_future(lagging(p, done)) for p in (b"/s/", b"/s/1")]
        await asyncio.gather(*(writer(w) for w in range(16)))
        final = await store.put(b"/s/1-end", b"")
        done.set_result(final)
        lagged = await asyncio.wait_for(asyncio.gather(*watchers), 60)
        assert store.watch_resyncs >= 1
        # A fresh watch reads the same revisions straight from the log.
        for prefix, got in zip((b"/s/", b"/s/1"), lagged, strict=True):
            expected: list[Seen] = []
            async for batch in store.watch(prefix, start_revision=start):
                for e in batch.events:
                    prev = e.prev_kv.value if e.prev_kv else None
                    expected.append((e.type, e.kv.key, e.kv.mod_revision, e.kv.value, prev))
                if batch.revision >= final:
                    break
            assert got == expected
            revisions = [entry[2] for entry in got]
            assert revisions == sorted(revisions)
    finally:
        await store.close()


async def test_a_lagging_watcher_whose_history_was_compacted_gets_compacted_error(
    tmp_path: Path,
) -> None:
    store = await open_sqlite(tmp_path / "keel.db", "watch_buffer=4")
    try:
        first = await store.put(b"/w/k", b"0")
        watch = store.watch(b"/w/", start_revision=first)
        await next_batch(watch)
        for i in range(20):
            last = await store.put(b"/w/k", str(i).encode())
        await store.compact(last)
        with pytest.raises(CompactedError) as caught:
            await next_batch(watch)
        assert caught.value.compact_revision == last
    finally:
        await store.close()


async def test_leaving_the_loop_unregisters_the_watcher(db: SqliteStore) -> None:
    await db.put(b"/u/a", b"1")
    async for batch in db.watch(b"/u/", start_revision=1):
        assert batch.events
        break
    # `break` leaves the generator to the loop's async-generator finalizer.
    await wait_for_async("the watcher to be unregistered", lambda: not db._watchers)

    async def consume() -> None:
        async for _ in db.watch(b"/u/", start_revision=0):
            pass

    task = asyncio.ensure_future(consume())
    await wait_for_async("the watcher to be registered", lambda: bool(db._watchers))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not db._watchers


async def test_watch_events_arrive_without_polling_delay(db: SqliteStore) -> None:
    watch = db.watch(b"/fast/", start_revision=0)
    pending = asyncio.ensure_future(next_batch(watch))
    await asyncio.sleep(0)  # let the watch register
    delays = []
    for i in range(20):
        await db.put(f"/fast/{i}".encode(), b"v")
        acked = time.monotonic()
        batch = await pending
        delays.append(time.monotonic() - acked)
        assert [e.kv.key for e in batch.events] == [f"/fast/{i}".encode()]
        pending = asyncio.ensure_future(next_batch(watch))
    pending.cancel()
    # Pushed from the commit, not polled: typically well under a millisecond.
    assert sorted(delays)[len(delays) // 2] < 0.02
    assert max(delays) < 0.25
    await watch.aclose()  # type: ignore[attr-defined]


async def test_progress_notifications_arrive_when_quiet(db: SqliteStore) -> None:
    rev = await db.put(b"/p/x", b"v")
    watch = db.watch(b"/p/", start_revision=0, progress_notify=True)
    batch = await next_batch(watch, timeout=2)
    assert batch.events == []
    assert batch.revision == rev
    await watch.aclose()  # type: ignore[attr-defined]


async def test_closing_the_store_ends_watches_with_store_closed(tmp_path: Path) -> None:
    store = await open_sqlite(tmp_path / "keel.db")
    watch = store.watch(b"", start_revision=0)
    pending = asyncio.ensure_future(next_batch(watch))
    await store.put(b"a", b"1")
    assert len((await pending).events) == 1
    pending = asyncio.ensure_future(next_batch(watch))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StoreClosed):
        await pending
    with pytest.raises(StoreClosed):
        await store.put(b"a", b"2")
    with pytest.raises(StoreClosed):
        await store.get(b"a")
    await store.close()  # a second close is a no-op


# ---------------------------------------------------------------------------- compaction


async def test_compaction_bounds_history_reads_and_watches_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    store = await open_sqlite(path)
    revs = [await store.put(b"/h/k", str(i).encode()) for i in range(5)]
    gone = await store.put(b"/h/gone", b"x")
    deleted_at = await store.delete(b"/h/gone")
    revs.append(await store.put(b"/h/k", b"5"))
    await store.compact(revs[2])
    with pytest.raises(CompactedError) as caught:
        await store.range(b"/h/", revision=revs[1])
    assert caught.value.compact_revision == revs[2]
    with pytest.raises(CompactedError):
        await store.compact(revs[2])
    with pytest.raises(FutureRevisionError):
        await store.compact(revs[-1] + 10)
    await store.close()

    store = await open_sqlite(path)
    try:
        assert (await store.status()).compact_revision == revs[2]
        at_compact = await store.range(b"/h/", revision=revs[2])
        assert [(kv.key, kv.value) for kv in at_compact.kvs] == [(b"/h/k", b"2")]
        mid = await store.range(b"/h/", revision=gone)
        assert [kv.key for kv in mid.kvs] == [b"/h/gone", b"/h/k"]
        with pytest.raises(CompactedError):
            await store.range(b"/h/", revision=revs[1])
        watch = store.watch(b"/h/", start_revision=revs[1])
        with pytest.raises(CompactedError):
            await next_batch(watch)
        watch = store.watch(b"/h/", start_revision=revs[2])
        events: list[Event] = []
        while len(events) < 6:
            events.extend((await next_batch(watch)).events)
        assert [(e.type, e.kv.mod_revision) for e in events] == [
            (EventType.PUT, revs[2]),
            (EventType.PUT, revs[3]),
            (EventType.PUT, revs[4]),
            (EventType.PUT, gone),
            (EventType.DELETE, deleted_at),
            (EventType.PUT, revs[5]),
        ]
        assert events[1].prev_kv is not None
        assert events[1].prev_kv.value == b"2"
        assert events[3].prev_kv is None
        await watch.aclose()  # type: ignore[attr-defined]
        # A later compaction past the deletion forgets the deleted key entirely, on disk
        # too once the background pass has run.
        await store.compact(revs[5])
        await wait_for_async("1 log row", lambda: log_rows(path) == 1, timeout=10)
    finally:
        await store.close()


async def test_an_interrupted_physical_compaction_resumes_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "keel.db"
    store = await open_sqlite(path)
    for i in range(3000):  # several GC steps' worth of rows
        last = await store.put(b"/r/" + str(i % 3).encode(), b"v")
    await store.compact(last)
    await wait_for_async("3 log rows", lambda: log_rows(path) == 3, timeout=10)
    await store.close()
    # Pretend the process died before the physical pass: put garbage back below the
    # compact revision and mark the pass as not done.
    with sqlite3.connect(path) as con:
        con.executemany(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)",
            [((rev << 20) | 1, b"/r/0", b"old", 2, 1, 0) for rev in range(2, 2000)],
        )
        con.execute("UPDATE meta SET value = 0 WHERE name = 'gc'")
    store = await open_sqlite(path)
    try:
        # The garbage is invisible even before it is gone...
        kv = await store.get(b"/r/0")
        assert kv is not None
        assert kv.value == b"v"
        at = await store.range(b"/r/", revision=last)
        assert [kv.value for kv in at.kvs] == [b"v", b"v", b"v"]
        # ...and the resumed pass removes it.
        await wait_for_async("3 log rows", lambda: log_rows(path) == 3, timeout=10)
    finally:
        await store.close()


def log_rows(path: Path) -> int:
    """The log's row count, read from a separate connection."""
    con = sqlite3.connect(path)
    try:
        (rows,) = con.execute("SELECT count(*) FROM log").fetchone()
        return int(rows)
    finally:
        con.close()


async def test_txn_compares_and_writes_within_one_group_commit_see_each_other(
    db: SqliteStore,
) -> None:
    key = b"/cas"
    rev = await db.put(key, b"0")

    async def bump() -> bool:
        current = await db.get(key)
        assert current is not None
        result = await db.txn(
            [Compare.mod_revision(key, "==", current.mod_revision)],
            [Op.put(key, str(int(current.value) + 1).encode())],
            [],
        )
        return result.succeeded

    outcomes = await asyncio.gather(*(bump() for _ in range(16)))
    kv = await db.get(key)
    assert kv is not None
    assert int(kv.value) == sum(outcomes) >= 1
    assert kv.version == 1 + sum(outcomes)
    assert kv.mod_revision == rev + sum(outcomes)


async def test_unknown_url_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bogus"):
        await open_store(url_of(tmp_path / "keel.db", "bogus=1"))
    status_store = await open_sqlite(tmp_path / "keel.db", "progress_interval=0.5")
    try:
        status = await status_store.status()
        assert (status.backend, status.members, status.leader) == ("sqlite", 1, None)
        assert status.version == sqlite3.sqlite_version
        assert status.db_size > 0
    finally:
        await status_store.close()
