"""The etcd v3 backend of Keel's store: an asyncio gRPC client with failover between members.

Reads retry on another member within a deadline; writes retry only when etcd cannot have
applied them and otherwise raise Unavailable(ambiguous=True). Watches resume from the last
delivered revision; one LeaseKeepAlive stream serves every lease of the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import grpc

from keel.store._etcd import _pb
from keel.store._etcd._errors import (
    Outcome,
    definite_error,
    details,
    outcome,
    unreachable,
)
from keel.store._protocol import Store
from keel.store._types import (
    MAX_REQUEST_BYTES,
    CompactedError,
    Compare,
    CompareTarget,
    DeleteResponse,
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
    StoreStatus,
    TxnResult,
    Unavailable,
    ValueTooLarge,
    WatchBatch,
    prefix_end,
    request_size,
)

# etcd's "require leader" metadata: a member without a leader refuses the call up front
# (unary) or cancels the stream (watch, keep-alive) instead of serving stale or hanging.
# Built once: gRPC converts a plain tuple into this on every call.
_REQUIRE_LEADER: Final = grpc.aio.Metadata(("hasleader", "true"))

_CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Notice dead peers on idle-looking connections; etcd refuses pings more often than
    # every 5 s (--grpc-keepalive-min-time) and pings without calls.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # A restarted member becomes usable again within a second, not gRPC's default 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

_COMPARE_TARGETS: Final = {
    CompareTarget.VERSION: (_pb.COMPARE_VERSION, "version"),
    CompareTarget.CREATE_REVISION: (_pb.COMPARE_CREATE, "create_revision"),
    CompareTarget.MOD_REVISION: (_pb.COMPARE_MOD, "mod_revision"),
    CompareTarget.VALUE: (_pb.COMPARE_VALUE, "value"),
    CompareTarget.LEASE: (_pb.COMPARE_LEASE, "lease"),
}
_COMPARE_RESULTS: Final = {
    "==": _pb.RESULT_EQUAL,
    "!=": _pb.RESULT_NOT_EQUAL,
    "<": _pb.RESULT_LESS,
    ">": _pb.RESULT_GREATER,
}

_DEFAULT_TIMEOUT = 5.0
# A key nobody writes, for requests that only want a response header.
_PROBE_KEY: Final = b"\0keel/probe"


def _key_range(prefix: bytes) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for every key under `prefix`; b"" means the whole keyspace."""
    if not prefix:
        return b"\0", b"\0"
    return prefix, prefix_end(prefix)


def _backoff(failures: int, endpoints: int) -> float:
    """No pause while other members are left to try, then 50 ms doubling up to 500 ms."""
    if failures < endpoints:
        return 0.0
    return float(min(0.05 * 2 ** (failures - endpoints), 0.5))


class _Endpoint:
    """One member: its channel and the prebuilt callables used on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        channel: Any = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self.channel = channel

        def unary(path: str, request: Any, response: Any) -> Any:
            return channel.unary_unary(
                f"/etcdserverpb.{path}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        def stream(path: str, request: Any, response: Any) -> Any:
            return channel.stream_stream(
                f"/etcdserverpb.{path}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        self.range = unary("KV/Range", _pb.RangeRequest, _pb.RangeResponse)
        self.put = unary("KV/Put", _pb.PutRequest, _pb.PutResponse)
        self.delete_range = unary("KV/DeleteRange", _pb.DeleteRangeRequest, _pb.DeleteRangeResponse)
        self.txn = unary("KV/Txn", _pb.TxnRequest, _pb.TxnResponse)
        self.compact = unary("KV/Compact", _pb.CompactionRequest, _pb.CompactionResponse)
        self.lease_grant = unary("Lease/LeaseGrant", _pb.LeaseGrantRequest, _pb.LeaseGrantResponse)
        self.lease_revoke = unary(
            "Lease/LeaseRevoke", _pb.LeaseRevokeRequest, _pb.LeaseRevokeResponse
        )
        self.lease_time_to_live = unary(
            "Lease/LeaseTimeToLive", _pb.LeaseTimeToLiveRequest, _pb.LeaseTimeToLiveResponse
        )
        self.status = unary("Maintenance/Status", _pb.StatusRequest, _pb.StatusResponse)
        self.member_list = unary(
            "Cluster/MemberList", _pb.MemberListRequest, _pb.MemberListResponse
        )
        self.watch = stream("Watch/Watch", _pb.WatchRequest, _pb.WatchResponse)
        self.lease_keep_alive = stream(
            "Lease/LeaseKeepAlive", _pb.LeaseKeepAliveRequest, _pb.LeaseKeepAliveResponse
        )


class _StreamBroken(Exception):
    """The shared keep-alive stream failed; `cause` is what ended it."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _WatchInterrupted(Exception):
    """The server canceled a watch for a reason other than compaction; resume it."""


class _KeepAliveStream:
    """One LeaseKeepAlive stream shared by every lease of a store.

    A writer task sends queued lease IDs and a reader task hands each response to the oldest
    caller waiting on that lease, so a caller that gives up cannot cancel the shared stream.
    """

    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint
        self.call: Any = endpoint.lease_keep_alive(metadata=_REQUIRE_LEADER)
        self.broken: _StreamBroken | None = None
        self._waiters: dict[int, collections.deque[asyncio.Future[int]]] = {}
        self._outbox: asyncio.Queue[int] = asyncio.Queue()
        self._tasks = (
            asyncio.create_task(
                self._write_loop(), name=f"etcd-keepalive-write-{endpoint.address}"
            ),
            asyncio.create_task(self._read_loop(), name=f"etcd-keepalive-read-{endpoint.address}"),
        )

    async def renew(self, lease_id: int, timeout: float) -> int:
        if self.broken is not None:
            raise self.broken
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(lease_id, collections.deque())
        waiters.append(future)
        self._outbox.put_nowait(lease_id)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if not future.done():
                future.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(future)

    async def _write_loop(self) -> None:
        try:
            while True:
                lease_id = await self._outbox.get()
                await self.call.write(_pb.LeaseKeepAliveRequest(ID=lease_id))
        except (Exception, asyncio.CancelledError) as exc:
            self._fail(exc)

    async def _read_loop(self) -> None:
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    raise ConnectionError("keep-alive stream ended by the server")
                waiters = self._waiters.get(response.ID)
                while waiters:
                    future = waiters.popleft()
                    if not future.done():
                        future.set_result(int(response.TTL))
                        break
        except (Exception, asyncio.CancelledError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = _StreamBroken(exc)
        self.call.cancel()
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(self.broken)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def close(self, reason: BaseException) -> None:
        self._fail(reason)


class EtcdStore(Store):
    """Keel's store on an etcd >= 3.5 cluster. Open with `await EtcdStore.open(...)` or
    `open_store("etcd://HOST:PORT,...")`; option `timeout` (seconds, default 5) bounds each
    call including its retries."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = _DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("etcd store: at least one endpoint is needed")
        if timeout <= 0:
            raise ValueError(f"etcd store: timeout must be positive, got {timeout}")
        self.url = "etcd://" + ",".join(endpoints)
        self._endpoints = [_Endpoint(address) for address in endpoints]
        self._index = 0
        self._endpoint = self._endpoints[0]
        self._timeout = timeout
        # A read attempt on one member gives up early enough to leave time for another.
        self._read_attempt_timeout = max(timeout / 2, 1.0)
        self._closed = False
        self._keepalive: _KeepAliveStream | None = None
        self.keepalive_streams_opened = 0
        self._watch_calls: set[Any] = set()
        self._gate: asyncio.Task[None] | None = None
        # etcd 3.5's Status does not report the compaction point; this is the highest one this
        # client has seen (its own compactions, compacted errors, compacted watches).
        self._compact_revision = 0

    @classmethod
    async def open(cls, endpoints: list[str], options: dict[str, str]) -> EtcdStore:
        """Connect and check that the cluster answers a linearizable read."""
        try:
            timeout = float(options.get("timeout", _DEFAULT_TIMEOUT))
        except ValueError:
            raise ValueError(
                f"etcd store: timeout must be a number, got {options['timeout']!r}"
            ) from None
        store = cls(endpoints, timeout=timeout)
        try:
            await store._current_revision()
        except BaseException:
            await store.close()
            raise
        return store

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self.url} is closed")

    def _fail_over(self, failed: _Endpoint, cause: Any = None) -> None:
        """Move off `failed` unless another caller already has. When `failed` could not be
        reached at all, also hold new requests until the next member no longer follows it."""
        if self._endpoint is failed and len(self._endpoints) > 1:
            self._index = (self._index + 1) % len(self._endpoints)
            self._endpoint = self._endpoints[self._index]
            if cause is not None and unreachable(cause) and self._gate is None:
                self._gate = asyncio.create_task(self._await_leader_not(failed))

    async def _await_leader_not(self, lost: _Endpoint) -> None:
        """Wait until the current member stops naming the unreachable `lost` as its leader.

        A follower keeps forwarding proposals to a dead leader until its election timeout
        fires, and etcd then leaves them hanging until the caller's deadline. Holding requests
        for that second (it shows in Status) spares them: afterwards the member either has a
        new leader or refuses them up front with "no leader", which is safe to retry.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        lost_id: int | None = None
        try:
            while loop.time() < deadline and not self._closed:
                endpoint = self._endpoint
                if endpoint is lost:
                    return
                try:
                    if lost_id is None:
                        members = await endpoint.member_list(_pb.MemberListRequest(), timeout=1.0)
                        lost_id = _member_id(members, lost.address)
                        if lost_id is None:
                            return  # cannot tell which member it was; do not hold anything
                    status = await endpoint.status(_pb.StatusRequest(), timeout=1.0)
                    if status.leader != lost_id:
                        return
                except grpc.aio.AioRpcError:
                    return  # this member is in trouble too; requests fail over on their own
                await asyncio.sleep(0.05)
        except Exception:  # a best-effort pause: never fail the requests waiting on it
            return
        finally:
            self._gate = None

    async def _pass_gate(self) -> None:
        gate = self._gate
        if gate is not None:
            try:
                # shielded: one caller giving up must not end the wait for everybody
                await asyncio.shield(gate)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not gate.cancelled() or (task is not None and task.cancelling()):
                    raise
                self._check_open()  # close() ended the wait: say so rather than "cancelled"

    async def _read(self, method: str, request: Any, *, lease_id: int = 0) -> Any:
        """Run an idempotent call, retrying on other members until the deadline."""
        self._check_open()
        if self._gate is not None:
            await self._pass_gate()
        endpoint = self._endpoint
        try:
            return await getattr(endpoint, method)(
                request, timeout=self._read_attempt_timeout, metadata=_REQUIRE_LEADER
            )
        except grpc.aio.AioRpcError as exc:
            return await self._retry(method, request, endpoint, exc, write=False, lease_id=lease_id)

    async def _write(self, method: str, request: Any, *, lease_id: int = 0, size: int = 0) -> Any:
        """Run a mutating call; retry it only while it is certain it was not applied."""
        self._check_open()
        if self._gate is not None:
            await self._pass_gate()
        endpoint = self._endpoint
        try:
            return await getattr(endpoint, method)(
                request, timeout=self._timeout, metadata=_REQUIRE_LEADER
            )
        except grpc.aio.AioRpcError as exc:
            return await self._retry(
                method, request, endpoint, exc, write=True, lease_id=lease_id, size=size
            )

    async def _retry(
        self,
        method: str,
        request: Any,
        endpoint: _Endpoint,
        exc: Any,
        *,
        write: bool,
        lease_id: int = 0,
        size: int = 0,
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        failures = 0
        not_sent = 0
        count = len(self._endpoints)
        while True:
            error = definite_error(exc, lease_id=lease_id, size=size)
            if error is not None:
                raise await self._complete(error, request)
            kind = outcome(exc)
            self._fail_over(endpoint, exc)
            if write and kind is Outcome.AMBIGUOUS:
                raise Unavailable(
                    f"etcd {method} via {endpoint.address}: {details(exc)}", ambiguous=True
                ) from None
            failures += 1
            not_sent = not_sent + 1 if kind is Outcome.NOT_SENT else 0
            pause = _backoff(failures, count)
            # Every member refused the connection, twice round: the cluster is down; say so
            # now rather than at the deadline.
            if not_sent >= 2 * count or loop.time() + pause >= deadline:
                raise Unavailable(
                    f"etcd {method}: no member could serve it ({details(exc)})", ambiguous=False
                ) from None
            if pause:
                await asyncio.sleep(pause)
            self._check_open()
            await self._pass_gate()
            endpoint = self._endpoint
            remaining = deadline - loop.time()
            timeout = remaining if write else min(remaining, self._read_attempt_timeout)
            try:
                return await getattr(endpoint, method)(
                    request, timeout=timeout, metadata=_REQUIRE_LEADER
                )
            except grpc.aio.AioRpcError as again:
                exc = again

    async def _complete(self, error: StoreError, request: Any) -> StoreError:
        """Fill in the revisions etcd's compaction and future-revision errors leave out."""
        if isinstance(error, CompactedError):
            return CompactedError(await self._probe_compact_revision())
        if isinstance(error, FutureRevisionError):
            asked = int(getattr(request, "revision", 0))
            with contextlib.suppress(StoreError):
                return FutureRevisionError(asked, await self._current_revision())
            return FutureRevisionError(asked, -1)
        return error

    async def _current_revision(self) -> int:
        response = await self._read("range", _pb.RangeRequest(key=_PROBE_KEY, count_only=True))
        return _pb.revision(response)

    async def _probe_compact_revision(self) -> int:
        """etcd 3.5 tells only a watcher that starts below it where history begins, so ask
        with a watch from revision 1 (only done once a compaction is known to have happened,
        so the server answers at once instead of scanning history)."""
        endpoint = self._endpoint
        call = endpoint.watch(metadata=_REQUIRE_LEADER)
        try:
            async with asyncio.timeout(min(self._timeout, 3.0)):
                create = _pb.WatchCreateRequest(key=_PROBE_KEY, start_revision=1)
                await call.write(_pb.WatchRequest(create_request=create))
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    if response.compact_revision:
                        self._note_compacted(int(response.compact_revision))
                        break
        except (TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            call.cancel()
        return self._compact_revision

    def _note_compacted(self, revision: int) -> None:
        self._compact_revision = max(self._compact_revision, revision)

    # ------------------------------------------------------------------ KV

    async def get(self, key: bytes) -> KeyValue | None:
        response = await self._read("range", _pb.RangeRequest(key=key))
        kvs = response.kvs
        return _pb.key_value(kvs[0]) if kvs else None

    async def range(
        self,
        prefix: bytes,
        *,
        revision: int | None = None,
        limit: int | None = None,
        start: bytes | None = None,
    ) -> RangeResult:
        if limit is not None and limit < 0:
            raise InvalidRequest(f"range: limit must be >= 0, got {limit}")
        key, range_end = _key_range(prefix)
        if start is not None and start > key:
            if range_end != b"\0" and start >= range_end:
                start = range_end  # an empty range: etcd answers [range_end, range_end)
            key = start
        request = _pb.RangeRequest(
            key=key, range_end=range_end, limit=limit or 0, revision=revision or 0
        )
        response = await self._read("range", request)
        return RangeResult(_pb.key_values(response.kvs), _pb.revision(response), response.more)

    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> int:
        # The hot path, so _write's first attempt is written out here.
        size = len(key) + len(value)
        if size > MAX_REQUEST_BYTES:
            raise ValueTooLarge(size)
        if self._closed:
            raise StoreClosed(f"{self.url} is closed")
        if self._gate is not None:
            await self._pass_gate()
        if lease:
            request = _pb.PutRequest(key=key, value=value, lease=lease)
        else:
            request = _pb.PutRequest(key=key, value=value)
        endpoint = self._endpoint
        try:
            response = await endpoint.put(request, timeout=self._timeout, metadata=_REQUIRE_LEADER)
        except grpc.aio.AioRpcError as exc:
            response = await self._retry(
                "put", request, endpoint, exc, write=True, lease_id=lease or 0, size=size
            )
        revision: int = response.header.revision
        return revision

    async def delete(self, key: bytes) -> int:
        response = await self._write("delete_range", _pb.DeleteRangeRequest(key=key))
        return _pb.revision(response)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        size = (
            request_size(list(success))
            + request_size(list(failure))
            + sum(
                len(c.key) + (len(c.operand) if isinstance(c.operand, bytes) else 0)
                for c in compares
            )
        )
        if size > MAX_REQUEST_BYTES:
            raise ValueTooLarge(size)
        request = _pb.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        lease_id = next((op.lease for op in (*success, *failure) if op.lease), 0)
        writes = any(op.kind is not OpKind.GET for op in (*success, *failure))
        if writes:
            response = await self._write("txn", request, lease_id=lease_id, size=size)
        else:
            response = await self._read("txn", request)
        return _txn_result(response)

    async def compact(self, revision: int) -> None:
        request = _pb.CompactionRequest(revision=revision, physical=False)
        try:
            await self._write("compact", request)
        except FutureRevisionError as exc:
            raise FutureRevisionError(revision, exc.current) from None
        self._note_compacted(revision)

    # ------------------------------------------------------------------ leases

    async def grant_lease(self, ttl: int) -> Lease:
        if ttl < 1:
            raise InvalidRequest(f"grant_lease: ttl must be >= 1 second, got {ttl}")
        response = await self._write("lease_grant", _pb.LeaseGrantRequest(TTL=ttl))
        if response.error:
            raise StoreError(f"etcd lease grant: {response.error}")
        return Lease(int(response.ID), int(response.TTL))

    async def keepalive(self, lease_id: int) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        failures = 0
        while True:
            self._check_open()
            stream = self._keepalive
            if stream is None or stream.broken is not None:
                if stream is not None:  # it broke while idle: its member is suspect
                    self._fail_over(stream.endpoint)
                stream = self._keepalive = _KeepAliveStream(self._endpoint)
                self.keepalive_streams_opened += 1
            try:
                ttl = await stream.renew(lease_id, max(deadline - loop.time(), 0.001))
            except TimeoutError:
                # A stream that stops answering is as good as broken: the next keep-alive
                # opens a fresh one on another member.
                stream.close(TimeoutError("keep-alive stream stopped answering"))
                raise Unavailable(
                    f"etcd keep-alive of lease {lease_id:x}: no answer in time", ambiguous=True
                ) from None
            except _StreamBroken as broken:
                self._check_open()
                cause = broken.cause
                error = definite_error(cause, lease_id=lease_id)
                if error is not None:
                    raise error from None
                self._fail_over(stream.endpoint, cause)
                failures += 1
                pause = _backoff(failures, len(self._endpoints))
                if loop.time() + pause >= deadline:
                    raise Unavailable(
                        f"etcd keep-alive of lease {lease_id:x}: {details(cause)}",
                        ambiguous=outcome(cause) is Outcome.AMBIGUOUS,
                    ) from None
                await asyncio.sleep(pause)
                continue
            if ttl <= 0:
                raise LeaseNotFound(lease_id)
            return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        await self._write("lease_revoke", _pb.LeaseRevokeRequest(ID=lease_id), lease_id=lease_id)

    async def lease_time_to_live(self, lease_id: int) -> int:
        """Remaining TTL of a lease without refreshing it (-1 once gone)."""
        response = await self._read("lease_time_to_live", _pb.LeaseTimeToLiveRequest(ID=lease_id))
        return int(response.TTL)

    # ------------------------------------------------------------------ watch

    async def watch(
        self, prefix: bytes, *, start_revision: int, progress_notify: bool = False
    ) -> AsyncIterator[WatchBatch]:
        if start_revision < 0:
            raise InvalidRequest(f"watch: start_revision must be >= 0, got {start_revision}")
        key, range_end = _key_range(prefix)
        loop = asyncio.get_running_loop()
        # Resolve "now" to a number first, so a resumed watch knows where it stands.
        next_revision = start_revision or await self._current_revision() + 1
        failures = 0
        failing_since: float | None = None
        patience = max(2 * self._timeout, 10.0)
        # etcd sends no progress notification while its revision is below a watcher's start
        # revision, so a watch "from the next revision" would get none until the next write.
        # Asking from one revision earlier (and dropping that revision's events) avoids it;
        # `exact` turns this off when that one earlier revision has been compacted away.
        exact = False
        while not self._closed:
            endpoint = self._endpoint
            call = endpoint.watch(metadata=_REQUIRE_LEADER)
            self._watch_calls.add(call)
            ask_from = next_revision if exact or next_revision <= 1 else next_revision - 1
            cause: BaseException
            try:
                create = _pb.WatchCreateRequest(
                    key=key,
                    range_end=range_end,
                    start_revision=ask_from,
                    progress_notify=progress_notify,
                    prev_kv=True,
                )
                await call.write(_pb.WatchRequest(create_request=create))
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise ConnectionError("watch stream ended by the server")
                    if response.compact_revision:
                        compacted = int(response.compact_revision)
                        self._note_compacted(compacted)
                        if compacted > next_revision or exact:
                            raise CompactedError(compacted)
                        exact = True  # only the extra revision is gone: ask again, exactly
                        break
                    if response.canceled:
                        raise _WatchInterrupted(response.cancel_reason or "canceled by etcd")
                    if response.created:
                        failures, failing_since = 0, None
                        continue
                    if not response.events:
                        # A progress notification: every change up to it was delivered. A
                        # member still catching up may report less than we have seen; skip.
                        at = _pb.revision(response)
                        if at >= next_revision - 1:
                            next_revision = at + 1
                            yield WatchBatch([], at)
                        continue
                    # etcd sends whole revisions per response; drop any already delivered.
                    events = [
                        _pb.event(ev)
                        for ev in response.events
                        if ev.kv.mod_revision >= next_revision
                    ]
                    if events:
                        last = events[-1].kv.mod_revision
                        next_revision = last + 1
                        yield WatchBatch(events, last)
            except grpc.aio.AioRpcError as exc:
                error = definite_error(exc)
                if error is not None:
                    raise error from None
                cause = exc
            except (_WatchInterrupted, ConnectionError, asyncio.InvalidStateError) as exc:
                cause = exc
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and (task is None or not task.cancelling()):
                    return  # close() ended the stream under us
                raise
            else:
                continue  # retry at once on the same member
            finally:
                call.cancel()
                self._watch_calls.discard(call)
            if self._closed:
                return
            self._fail_over(endpoint, cause)
            failures += 1
            now = loop.time()
            failing_since = failing_since if failing_since is not None else now
            if now - failing_since > patience:
                raise Unavailable(
                    f"etcd watch of {prefix!r}: cannot re-establish ({cause})", ambiguous=False
                )
            await asyncio.sleep(_backoff(failures, len(self._endpoints)))

    # ------------------------------------------------------------------ status, close

    async def status(self) -> StoreStatus:
        status, members, revision = await asyncio.gather(
            self._read("status", _pb.StatusRequest()),
            self._read("member_list", _pb.MemberListRequest()),
            self._current_revision(),
        )
        return StoreStatus(
            # Status itself is not linearizable; the probe read is.
            revision=max(revision, _pb.revision(status)),
            compact_revision=self._compact_revision,
            backend="etcd",
            db_size=int(status.dbSize),
            leader=f"{status.leader:x}" if status.leader else None,
            members=len(members.members),
            version=str(status.version),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._gate is not None:
            self._gate.cancel()
        if self._keepalive is not None:
            self._keepalive.close(StoreClosed("store closed"))
            self._keepalive = None
        for call in list(self._watch_calls):
            call.cancel()
        await asyncio.gather(
            *(endpoint.channel.close() for endpoint in self._endpoints), return_exceptions=True
        )


def _member_id(members: Any, address: str) -> int | None:
    """The ID of the member that serves clients at `address` (HOST:PORT), if listed."""
    for member in members.members:
        for url in member.clientURLs:
            if str(url).split("://", 1)[-1].rstrip("/") == address:
                return int(member.ID)
    return None


def _compare(compare: Compare) -> Any:
    target, field = _COMPARE_TARGETS[compare.target]
    return _pb.Compare(
        result=_COMPARE_RESULTS[compare.op],
        target=target,
        key=compare.key,
        **{field: compare.operand},
    )


def _request_op(op: Op) -> Any:
    if op.kind is OpKind.PUT:
        return _pb.RequestOp(request_put=_pb.PutRequest(key=op.key, value=op.value, lease=op.lease))
    key, range_end = _key_range(op.key) if op.prefix else (op.key, b"")
    if op.kind is OpKind.DELETE:
        return _pb.RequestOp(
            request_delete_range=_pb.DeleteRangeRequest(key=key, range_end=range_end)
        )
    return _pb.RequestOp(request_range=_pb.RangeRequest(key=key, range_end=range_end))


def _txn_result(response: Any) -> TxnResult:
    revision = _pb.revision(response)
    results: list[OpResponse] = []
    for op in response.responses:
        kind = op.WhichOneof("response")
        if kind == "response_range":
            found = op.response_range
            results.append(RangeResult(_pb.key_values(found.kvs), revision, found.more))
        elif kind == "response_put":
            put = op.response_put
            prev = _pb.key_value(put.prev_kv) if put.HasField("prev_kv") else None
            results.append(PutResponse(revision, prev))
        else:
            deleted = op.response_delete_range
            results.append(
                DeleteResponse(revision, int(deleted.deleted), _pb.key_values(deleted.prev_kvs))
            )
    return TxnResult(bool(response.succeeded), revision, results)
