"""etcd backend specifics: wire format, failover, ambiguity of failed writes, watch resumption
and the shared keep-alive stream, against real etcd processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from store.storetest import WatchCollector
from support import wait_for_async

from keel.dev import gen_proto
from keel.dev.etcd_cluster import EtcdCluster, free_port
from keel.store import EventType, Op, Store, Unavailable, open_store
from keel.store._etcd import EtcdStore, _pb
from keel.store._etcd._errors import Outcome, definite_error, outcome
from keel.store._types import CompactedError, InvalidRequest, LeaseNotFound, ValueTooLarge

NewCluster = Callable[[int], EtcdCluster]


def etcd_of(store: Store) -> EtcdStore:
    assert isinstance(store, EtcdStore)
    return store


def member_index(cluster: EtcdCluster, address: str) -> int:
    return cluster.endpoints.index(address)


def url_with_first(cluster: EtcdCluster, first: int) -> str:
    """The cluster's URL with member `first` listed (and so used) first."""
    order = [first] + [i for i in range(len(cluster.members)) if i != first]
    return "etcd://" + ",".join(cluster.endpoints[i] for i in order)


async def follower_and_leader(cluster: EtcdCluster) -> tuple[int, int]:
    leader = await asyncio.to_thread(cluster.leader_index)
    return (leader + 1) % len(cluster.members), leader


# ---------------------------------------------------------------------------- no etcd needed


def test_checked_in_descriptor_is_what_regeneration_produces() -> None:
    fresh = gen_proto.render(gen_proto.descriptor_bytes())
    assert fresh == gen_proto.OUTPUT.read_text(), "run python -m keel.dev.gen_proto"


def test_messages_use_etcds_field_numbers_on_the_wire() -> None:
    put = _pb.PutRequest(key=b"k", value=b"v", lease=5, prev_kv=True)
    assert put.SerializeToString() == b"\n\x01k\x12\x01v\x18\x05\x20\x01"
    create = _pb.WatchCreateRequest(key=b"a", start_revision=7, progress_notify=True, prev_kv=True)
    assert create.SerializeToString() == b"\n\x01a\x18\x07\x20\x010\x01"
    # WatchResponse.events is field 11; KeyValue.value is field 5.
    response = _pb.WatchResponse.FromString(b"\x5a\x08\x08\x01\x12\x04\x2a\x02hi")
    assert response.events[0].type == 1
    assert response.events[0].kv.value == b"hi"


def rpc_error(code: grpc.StatusCode, text: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=text)


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            Outcome.NOT_SENT,
        ),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", Outcome.REJECTED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", Outcome.REJECTED),
        (grpc.StatusCode.UNKNOWN, "raft proposal dropped", Outcome.REJECTED),
        (
            grpc.StatusCode.UNAVAILABLE,
            "Stream removed (recvmsg:Connection reset by peer (104))",
            Outcome.AMBIGUOUS,
        ),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", Outcome.AMBIGUOUS),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed", Outcome.AMBIGUOUS),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped", Outcome.AMBIGUOUS),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Outcome.AMBIGUOUS),
    ],
)
def test_failures_are_sorted_into_not_sent_rejected_or_ambiguous(
    code: grpc.StatusCode, text: str, expected: Outcome
) -> None:
    error = rpc_error(code, text)
    assert definite_error(error) is None
    assert outcome(error) is expected


def test_etcd_errors_map_to_typed_store_errors() -> None:
    def mapped(code: grpc.StatusCode, text: str) -> object:
        return definite_error(rpc_error(code, text), lease_id=7, size=9)

    assert isinstance(
        mapped(
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
        ),
        CompactedError,
    )
    lease = mapped(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert isinstance(lease, LeaseNotFound)
    assert lease.lease_id == 7
    assert isinstance(
        mapped(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
        ValueTooLarge,
    )
    assert isinstance(
        mapped(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
        InvalidRequest,
    )


# ---------------------------------------------------------------------------- real etcd


@dataclass
class WriteLog:
    acked: list[tuple[bytes, bytes, int, float]]
    ambiguous: list[bytes]
    not_applied: list[bytes]


@pytest.mark.etcd
@pytest.mark.parametrize("client_on", ["leader", "follower"])
async def test_no_acknowledged_write_is_lost_when_the_leader_is_killed(
    new_etcd_cluster: NewCluster, client_on: str
) -> None:
    """8 writers; the leader gets SIGKILL. With the client on the leader its in-flight writes
    break off; on a follower they were forwarded to the dead leader and hang. Either way every
    acknowledged write survives and writes resume soon after the election."""
    cluster = new_etcd_cluster(3)
    follower, leader = await follower_and_leader(cluster)
    log = WriteLog([], [], [])
    stop = asyncio.Event()
    url = url_with_first(cluster, leader if client_on == "leader" else follower)
    async with await open_store(url) as store:

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"/durable/{w}/{i}".encode()
                value = f"{w}:{i}".encode()
                i += 1
                try:
                    revision = await store.put(key, value)
                except Unavailable as exc:
                    (log.ambiguous if exc.ambiguous else log.not_applied).append(key)
                    continue
                log.acked.append((key, value, revision, time.monotonic()))

        writers = [asyncio.create_task(writer(w)) for w in range(8)]
        await wait_for_async(
            "200 writes before the kill", lambda: len(log.acked) >= 200, timeout=20
        )
        assert leader == await asyncio.to_thread(cluster.leader_index)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill_member, leader)
        acked_before_kill = len(log.acked)
        await wait_for_async(
            "writes resuming after the leader was killed",
            lambda: any(at > killed_at + 0.05 for *_, at in log.acked[acked_before_kill:]),
            timeout=10,
        )
        resumed_after = min(at for *_, at in log.acked[acked_before_kill:] if at > killed_at + 0.05)
        await wait_for_async(
            "200 more writes", lambda: len(log.acked) >= acked_before_kill + 200, timeout=20
        )
        stop.set()
        await asyncio.gather(*writers)

        assert resumed_after - killed_at < 6.0
        for key, value, revision, _ in log.acked:
            kv = await store.get(key)
            assert kv is not None, f"acknowledged write of {key!r} at {revision} was lost"
            assert (kv.value, kv.mod_revision) == (value, revision)
        for key in log.not_applied:  # reported as not applied: must really be absent
            assert await store.get(key) is None, key
        revisions = [revision for _, _, revision, _ in log.acked]
        assert len(set(revisions)) == len(revisions)


@pytest.mark.etcd
async def test_a_dead_first_endpoint_at_open_time_is_skipped(etcd_cluster_1: EtcdCluster) -> None:
    url = f"etcd://127.0.0.1:{free_port()}," + ",".join(etcd_cluster_1.endpoints)
    async with await open_store(url) as store:
        revision = await store.put(b"/failover/open", b"ok")
        kv = await store.get(b"/failover/open")
        assert kv is not None
        assert (kv.value, kv.mod_revision) == (b"ok", revision)
        status = await store.status()
        assert status.backend == "etcd"
        assert status.revision >= revision


@pytest.mark.etcd
async def test_reads_survive_killing_the_member_the_client_talks_to(
    new_etcd_cluster: NewCluster,
) -> None:
    cluster = new_etcd_cluster(3)
    follower, _ = await follower_and_leader(cluster)
    async with await open_store(url_with_first(cluster, follower)) as store:
        revision = await store.put(b"/reads/k", b"v")
        assert etcd_of(store)._endpoint.address == cluster.endpoints[follower]
        reads = 0
        stop = asyncio.Event()

        async def reader() -> None:
            nonlocal reads
            while not stop.is_set():
                kv = await store.get(b"/reads/k")  # any failure fails the test
                assert kv is not None
                assert kv.mod_revision == revision
                reads += 1

        readers = [asyncio.create_task(reader()) for _ in range(4)]
        await wait_for_async("reads before the kill", lambda: reads >= 50, timeout=10)
        await asyncio.to_thread(cluster.kill_member, follower)
        after_kill = reads
        await wait_for_async("reads after the kill", lambda: reads >= after_kill + 200, timeout=10)
        stop.set()
        await asyncio.gather(*readers)
        assert etcd_of(store)._endpoint.address != cluster.endpoints[follower]
        result = await store.range(b"/reads/")
        assert [kv.key for kv in result.kvs] == [b"/reads/k"]


@pytest.mark.etcd
async def test_a_watch_resumes_without_gaps_or_duplicates_when_its_member_is_killed(
    new_etcd_cluster: NewCluster,
) -> None:
    cluster = new_etcd_cluster(3)
    follower, leader = await follower_and_leader(cluster)
    watcher = await open_store(url_with_first(cluster, follower))
    writer = await open_store(url_with_first(cluster, leader))
    try:
        start = (await writer.status()).revision + 1
        watch = WatchCollector(watcher, b"/watched/", start)
        expected: list[tuple[bytes, int]] = []

        async def write(count: int) -> None:
            for _ in range(count):
                value = str(len(expected)).encode()
                expected.append((value, await writer.put(b"/watched/k", value)))

        await write(30)
        await watch.wait_events(30)
        assert etcd_of(watcher)._endpoint.address == cluster.endpoints[follower]
        killer = asyncio.create_task(asyncio.to_thread(cluster.kill_member, follower))
        await write(40)  # some of these land while the watch is cut off
        await killer
        await write(30)
        events = await watch.wait_events(100, timeout=20)
        await asyncio.sleep(0.3)  # room for any duplicate to show up
        events = watch.events
        assert [(e.kv.value, e.kv.mod_revision) for e in events] == expected
        assert all(e.type is EventType.PUT for e in events)
        assert etcd_of(watcher)._endpoint.address != cluster.endpoints[follower]
        await watch.close()
    finally:
        await watcher.close()
        await writer.close()


@pytest.mark.etcd
async def test_one_keepalive_stream_serves_every_lease(
    etcd_cluster_1: EtcdCluster, prefix: bytes
) -> None:
    async with await open_store(etcd_cluster_1.url) as store:
        leases = await asyncio.gather(*(store.grant_lease(30) for _ in range(20)))
        for _ in range(3):
            ttls = await asyncio.gather(*(store.keepalive(lease.id) for lease in leases))
            assert all(25 <= ttl <= 30 for ttl in ttls)
        assert etcd_of(store).keepalive_streams_opened == 1
        await asyncio.gather(*(store.revoke_lease(lease.id) for lease in leases))
        with pytest.raises(LeaseNotFound):
            await store.keepalive(leases[0].id)
        assert etcd_of(store).keepalive_streams_opened == 1


@pytest.mark.etcd
async def test_a_lease_not_kept_alive_expires_with_delete_events_while_a_renewed_one_lives(
    etcd_cluster_1: EtcdCluster, prefix: bytes
) -> None:
    async with await open_store(etcd_cluster_1.url) as store:
        kept, dropped = await store.grant_lease(2), await store.grant_lease(2)
        start = (await store.status()).revision + 1
        watch = WatchCollector(store, prefix, start)
        try:
            await store.put(prefix + b"kept", b"1", lease=kept.id)
            await store.put(prefix + b"dropped", b"1", lease=dropped.id)

            async def renew() -> None:
                while True:
                    await store.keepalive(kept.id)
                    await asyncio.sleep(0.5)

            renewer = asyncio.create_task(renew())
            try:
                deletes = lambda: [e for e in watch.events if e.type is EventType.DELETE]  # noqa: E731
                await watch.wait_for("the delete", lambda: len(deletes()) >= 1, timeout=15)
                assert [e.kv.key for e in deletes()] == [prefix + b"dropped"]
                assert deletes()[0].prev_kv is not None
                await asyncio.sleep(1.0)
                assert await store.get(prefix + b"kept") is not None
                assert len(deletes()) == 1
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            with pytest.raises(LeaseNotFound):
                await store.keepalive(dropped.id)
            await store.revoke_lease(kept.id)
        finally:
            await watch.close()


@pytest.mark.etcd
async def test_the_keepalive_stream_moves_to_another_member_when_its_member_dies(
    new_etcd_cluster: NewCluster,
) -> None:
    cluster = new_etcd_cluster(3)
    follower, _ = await follower_and_leader(cluster)
    async with await open_store(url_with_first(cluster, follower)) as store:
        lease = await store.grant_lease(10)
        assert await store.keepalive(lease.id) >= 9
        await asyncio.to_thread(cluster.kill_member, follower)
        assert await store.keepalive(lease.id) >= 9
        assert etcd_of(store).keepalive_streams_opened == 2


@pytest.mark.etcd
async def test_opening_with_every_endpoint_down_is_unavailable_and_not_ambiguous() -> None:
    url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}?timeout=2"
    with pytest.raises(Unavailable) as caught:
        await open_store(url)
    assert caught.value.ambiguous is False


@pytest.mark.etcd
async def test_writes_with_every_member_down_are_not_applied_and_say_so(
    new_etcd_cluster: NewCluster,
) -> None:
    cluster = new_etcd_cluster(3)
    async with await open_store(cluster.url) as store:
        await store.put(b"/down/before", b"1")
        for index in range(3):
            await asyncio.to_thread(cluster.kill_member, index)
        started = time.monotonic()
        for attempt in (
            store.put(b"/down/k", b"1"),
            store.delete(b"/down/before"),
            store.txn([], [Op.put(b"/down/t", b"1")], []),
            store.grant_lease(5),
        ):
            with pytest.raises(Unavailable) as caught:
                await attempt
            assert caught.value.ambiguous is False
        assert time.monotonic() - started < 5.0  # said at once, not at the deadline
        for index in range(3):
            cluster.restart_member(index, wait=False)
        await asyncio.to_thread(cluster.wait_healthy)

        async def serving() -> bool:
            # gRPC's reconnect backoff may outlast one read's deadline after a full outage.
            with contextlib.suppress(Unavailable):
                return await store.get(b"/down/before") is not None
            return False

        assert await wait_for_async("the restarted cluster to serve reads", serving)
        assert await store.get(b"/down/k") is None
        assert await store.get(b"/down/t") is None


@pytest.mark.etcd
async def test_status_reports_members_leader_version_and_own_compactions(
    etcd_cluster_3: EtcdCluster, prefix: bytes
) -> None:
    async with await open_store(etcd_cluster_3.url) as store:
        revision = await store.put(prefix + b"k", b"v")
        await store.compact(revision)
        status = await store.status()
        assert status.backend == "etcd"
        assert status.members == 3
        assert status.leader
        assert status.version.startswith("3.")
        assert status.db_size > 0
        assert status.revision >= revision
        assert status.compact_revision >= revision


@pytest.mark.etcd
async def test_closing_the_store_ends_its_watches(
    etcd_cluster_1: EtcdCluster, prefix: bytes
) -> None:
    store = await open_store(etcd_cluster_1.url)
    start = (await store.status()).revision + 1
    received: list[int] = []

    async def consume() -> None:
        async for batch in store.watch(prefix, start_revision=start):
            received.append(batch.revision)

    consumer = asyncio.create_task(consume())
    await store.put(prefix + b"k", b"v")
    await wait_for_async("the first event", lambda: bool(received), timeout=10)
    await store.close()
    await asyncio.wait_for(consumer, 5)  # ends quietly, no exception
