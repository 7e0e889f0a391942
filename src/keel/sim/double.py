"""An in-memory API double with the server's semantics, for simulations in virtual time.

`SimApi` is the server: one global revision counter, OCC, finalizers, the status subresource,
leases whose TTL runs in virtual time, fencing tokens, watches with a retained window (410
beyond it) and bookmarks. It reuses the server's pure decision functions (`keel.api.storage`)
so both answer alike. `SimClient` is a caller's view implementing `keel.runtime.api.ApiClient`;
every mutating call is logged with the caller and its fencing token for property checks.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import itertools
import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, overload

import msgspec

from keel.api import storage
from keel.api.patch import PatchError, PatchTestFailed, json_patch, merge_patch
from keel.api.registry import BY_KIND, KindInfo, lookup
from keel.api.resources import (
    Instance,
    Lease,
    LeaseSpec,
    Namespace,
    ObjectMeta,
    Resource,
    StatusCause,
)
from keel.api.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    supported_fields,
)
from keel.client import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Expired,
    FencingTokenRejected,
    Invalid,
    ListResult,
    NotFound,
    Preconditions,
    ServerError,
    WatchEvent,
)
from keel.runtime.api import KindRef, PatchType, Selector
from keel.sim.faults import FaultScheduler
from keel.sim.trace import Trace

__all__ = ["Mutation", "SimApi", "SimClient", "SimWatch"]

R = TypeVar("R", bound=Resource)
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]
Gate = Callable[[], Awaitable[None]]
Stall = Callable[[float], None]

# Virtual time 0 is this wall-clock second, for creationTimestamp and friends.
WALL_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z

_ERRORS: dict[str, type[ApiError]] = {
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "FencingTokenRejected": FencingTokenRejected,
    "Invalid": Invalid,
    "Expired": Expired,
    "BadRequest": BadRequest,
    "InternalError": ServerError,
}


def _client_error(exc: storage.ApiError) -> ApiError:
    """The exception keel.client raises for the Status the server would answer."""
    cls = _ERRORS.get(exc.reason, ApiError)
    return cls(exc.code, exc.reason, exc.message, exc.details)


def kind_info(kind: KindRef) -> KindInfo:
    if isinstance(kind, KindInfo):
        return kind
    if isinstance(kind, str):
        info = lookup(kind)
        if info is None:
            raise ValueError(f"unknown kind {kind!r}")
        return info
    found = BY_KIND.get(kind.kind_name)
    if found is None:
        raise ValueError(f"{kind.__name__} is not a registered kind")
    return found


def _selector_text(selector: Selector | None) -> str | None:
    if selector is None or isinstance(selector, str):
        return selector or None
    return ",".join(f"{key}={value}" for key, value in selector.items()) or None


def _full_builtins(value: Any) -> Any:
    """Every field, defaults included: a patch may test or replace any of them."""
    if isinstance(value, msgspec.Struct):
        return {
            f.encode_name: _full_builtins(getattr(value, f.name))
            for f in msgspec.structs.fields(value)
        }
    if isinstance(value, dict):
        return {k: _full_builtins(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_full_builtins(v) for v in value]
    return value


@dataclass(frozen=True)
class Mutation:
    """One mutating call as the server saw it. `outcome` is "ok", "noop" (nothing changed,
    nothing written) or the error reason; `revision` is the write's revision (0 if none)."""

    seq: int
    time: float
    caller: str
    verb: str
    kind: str
    namespace: str
    name: str
    fencing: tuple[str, int] | None  # ("ns/lease", token) of the caller's fenced view
    outcome: str
    revision: int
    obj: Resource | None  # the object as written (the last state for a delete)

    @property
    def accepted(self) -> bool:
        return self.outcome == "ok"


@dataclass
class _Stored:
    obj: Resource
    create_revision: int
    mod_revision: int
    expires_at: float = 0.0  # Leases: when the TTL runs out without a renewal


@dataclass(frozen=True)
class _Change:
    revision: int
    kind: str
    type: ChangeType
    obj: Resource  # for DELETED: the last state, stamped with the deleting revision
    prev: Resource | None


Predicate = Callable[[Resource], bool]


def _line_for(change: _Change, predicate: Predicate | None) -> ChangeType | None:
    """What a watcher with `predicate` sees of a change: an object leaving its selection
    looks DELETED, one entering looks ADDED (the server's rule)."""
    if predicate is None:
        return change.type
    now = predicate(change.obj)
    if change.type == "DELETED":
        return "DELETED" if now else None
    before = change.prev is not None and predicate(change.prev)
    if now:
        return change.type if before or change.type == "ADDED" else "ADDED"
    return "DELETED" if before else None


class _Connection:
    """One watch connection on the server: changes after `after` for a kind and namespace."""

    def __init__(self, info: KindInfo, namespace: str | None, predicate: Predicate | None) -> None:
        self.info = info
        self.namespace = namespace
        self.predicate = predicate
        self.lines: deque[tuple[ChangeType, Resource]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def offer(self, change: _Change) -> None:
        if self.closed or change.kind != self.info.kind:
            return
        if self.namespace and change.obj.metadata.namespace != self.namespace:
            return
        line = _line_for(change, self.predicate)
        if line is None:
            return
        self.lines.append((line, change.obj))
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SimApi:
    """The server side: state, revisions, leases, watch history. Every operation is a plain
    method without awaits, so each one is atomic (linearizable) on the event loop."""

    def __init__(
        self,
        *,
        history: int = 1000,
        bookmark_interval: float = 1.0,
        trace: Trace | None = None,
        faults: FaultScheduler | None = None,
        seed: int = 0,
        namespaces: tuple[str, ...] = storage.SYSTEM_NAMESPACES,
    ) -> None:
        self.revision = 0
        self.compacted = 0  # a watch may resume from any revision >= this one
        self.history = history
        self.bookmark_interval = bookmark_interval
        self.trace = trace if trace is not None else Trace()
        self.faults = faults
        self.mutations: list[Mutation] = []
        self._objects: dict[tuple[str, str, str], _Stored] = {}
        self._changes: deque[_Change] = deque()
        self._connections: list[_Connection] = []
        self._uids = itertools.count(1)
        self._seq = itertools.count(1)
        self._rng = random.Random(f"{seed}:names")
        self._lease_timers: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        for name in namespaces:
            self._create(BY_KIND["Namespace"], Namespace(metadata=ObjectMeta(name=name)), "")

    # ------------------------------------------------------------------ plumbing

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    def client(
        self,
        caller: str = "admin",
        *,
        gate: Gate | None = None,
        stall: Stall | None = None,
        namespace: str = "default",
    ) -> SimClient:
        """A client for `caller`; `gate` is awaited around every call (a paused process);
        `stall(seconds)` pauses the caller when the fault scheduler stalls one of its writes."""
        return SimClient(self, caller, gate=gate, stall=stall, namespace=namespace)

    def _record(
        self,
        caller: str,
        verb: str,
        target: tuple[KindInfo, str, str],
        *,
        fencing: tuple[str, int] | None,
        outcome: str,
        revision: int = 0,
        obj: Resource | None = None,
    ) -> None:
        info, namespace, name = target
        self.mutations.append(
            Mutation(
                next(self._seq),
                self.now(),
                caller,
                verb,
                info.kind,
                namespace,
                name,
                fencing,
                outcome,
                revision,
                obj,
            )
        )
        where = f"{namespace}/{name}" if namespace else name
        token = f" fenced={fencing[0]}={fencing[1]}" if fencing else ""
        self.trace.record(
            self.now(), caller, f"{verb} {info.kind} {where}{token} -> {outcome} rv={revision}"
        )

    def _commit(
        self, info: KindInfo, type_: ChangeType, obj: Resource, prev: Resource | None
    ) -> None:
        change = _Change(self.revision, info.kind, type_, obj, prev)
        self._changes.append(change)
        while len(self._changes) > self.history:
            self.compacted = self._changes.popleft().revision
        for connection in self._connections:
            connection.offer(change)

    def compact(self, revision: int | None = None) -> None:
        """Forget the watch history up to `revision` (default: all of it)."""
        target = self.revision if revision is None else revision
        while self._changes and self._changes[0].revision <= target:
            self._changes.popleft()
        self.compacted = max(self.compacted, target)

    def _fence(self, fencing: tuple[str, str, int] | None) -> None:
        if fencing is None:
            return
        namespace, lease, token = fencing
        stored = self._objects.get(("Lease", namespace, lease))
        holder = stored.create_revision if stored is not None else 0
        if holder != token:
            now = f"the current token is {holder}" if holder else "the lease is not held"
            raise storage.ApiError(
                409,
                "FencingTokenRejected",
                f"fencing token {token} of lease {namespace}/{lease} is no longer current "
                f"({now}); nothing was written",
            )

    @staticmethod
    def _validate(info: KindInfo, obj: Resource) -> Resource:
        """Decode as the server would: the wire form, strictly (names, ranges, types)."""
        try:
            decoded: Resource = msgspec.json.decode(msgspec.json.encode(obj), type=info.model)
        except msgspec.ValidationError as exc:
            raise storage.invalid(
                info, obj.metadata.name, [StatusCause("", str(exc), "FieldValueInvalid")]
            ) from None
        return decoded

    # ------------------------------------------------------------------ reads

    def get(self, info: KindInfo, namespace: str, name: str) -> Resource:
        stored = self._objects.get((info.kind, namespace, name))
        if stored is None:
            raise storage.not_found(info, name)
        return stored.obj

    def predicate(
        self, info: KindInfo, label_selector: str | None, field_selector: str | None
    ) -> Predicate | None:
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, supported_fields(info.model))
        except SelectorError as exc:
            raise storage.bad_request(str(exc)) from None
        if labels.empty and fields.empty:
            return None
        return lambda obj: labels.matches(obj.metadata.labels) and fields.matches(obj)

    def list(
        self, info: KindInfo, namespace: str | None, predicate: Predicate | None
    ) -> tuple[builtins.list[Resource], int]:
        items = [
            (info.key(ns, name), stored.obj)
            for (kind, ns, name), stored in self._objects.items()
            if kind == info.kind and (not namespace or ns == namespace)
        ]
        items.sort(key=lambda pair: pair[0])
        objects = [obj for _, obj in items if predicate is None or predicate(obj)]
        return objects, self.revision

    def objects(self, kind: type[R], namespace: str | None = None) -> builtins.list[R]:
        """Current objects of a kind (for invariants and tests), in key order."""
        found, _ = self.list(kind_info(kind), namespace, None)
        return cast("builtins.list[R]", found)

    # ------------------------------------------------------------------ writes

    def _create(
        self,
        info: KindInfo,
        obj: Resource,
        namespace: str,
        fencing: tuple[str, str, int] | None = None,
    ) -> Resource:
        obj = self._validate(info, obj)
        meta = obj.metadata
        if not meta.name and not meta.generate_name:
            raise storage.invalid(
                info,
                "",
                [
                    StatusCause(
                        "metadata.name", "name or generateName is required", "FieldValueRequired"
                    )
                ],
            )
        self._fence(fencing)
        name = meta.name
        if not name:
            for _ in range(8):
                name = storage.generated_name(meta.generate_name, self._rng)
                if (info.kind, namespace, name) not in self._objects:
                    break
        if (info.kind, namespace, name) in self._objects:
            raise storage.already_exists(info, name)
        if info.namespaced and ("Namespace", "", namespace) not in self._objects:
            raise storage.namespace_not_found(namespace)
        now = self.now()
        created = storage.prepare_create(
            info,
            obj,
            namespace=namespace,
            name=name,
            uid=f"{next(self._uids):08d}-sim",
            now=WALL_EPOCH + now,
        )
        self.revision += 1
        created = storage.with_revision(created, self.revision, self.revision)
        stored = _Stored(created, self.revision, self.revision)
        key = (info.kind, namespace, name)
        self._objects[key] = stored
        if isinstance(created, Lease):
            self._arm_lease(key, stored, created.spec.lease_duration_seconds)
        self._commit(info, "ADDED", created, None)
        return created

    def _arm_lease(self, key: tuple[str, str, str], stored: _Stored, ttl: float) -> None:
        stored.expires_at = self.now() + ttl
        old = self._lease_timers.pop(key, None)
        if old is not None:
            old.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # outside a loop (setup): the lease is armed at its first renewal
        self._lease_timers[key] = loop.call_at(
            stored.expires_at, self._lease_due, key, stored.create_revision
        )

    def _lease_due(self, key: tuple[str, str, str], create_revision: int) -> None:
        stored = self._objects.get(key)
        if stored is None or stored.create_revision != create_revision:
            return
        if self.now() + 1e-9 < stored.expires_at:
            return
        self.expire_lease(key[1], key[2], why="ttl")

    def expire_lease(self, namespace: str, name: str, *, why: str = "forced") -> bool:
        """The store lease behind a Lease object is gone: the object vanishes (DELETED)."""
        key = ("Lease", namespace, name)
        stored = self._objects.pop(key, None)
        if stored is None:
            return False
        timer = self._lease_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.revision += 1
        last = storage.with_revision(stored.obj, self.revision, stored.create_revision)
        self.trace.record(
            self.now(), "server", f"lease {namespace}/{name} expired ({why}) rv={self.revision}"
        )
        self._commit(BY_KIND["Lease"], "DELETED", last, stored.obj)
        return True

    def _update(
        self,
        info: KindInfo,
        namespace: str,
        name: str,
        mutate: Callable[[Resource], Resource],
        *,
        subresource: str | None,
        fencing: tuple[str, str, int] | None,
    ) -> tuple[Resource, bool]:
        key = (info.kind, namespace, name)
        stored = self._objects.get(key)
        if subresource is not None and subresource not in info.subresources:
            raise storage.ApiError(404, "NotFound", f"{info.plural} has no {subresource}")
        if stored is None:
            raise storage.not_found(info, name)
        current = stored.obj
        proposed = mutate(current)
        wanted = proposed.metadata.resource_version
        if wanted and wanted != current.metadata.resource_version:
            storage.check_preconditions(
                info, current, storage.Preconditions(resource_version=wanted)
            )
        updated = storage.prepare_update(info, current, proposed, subresource=subresource)
        if updated == current:
            return current, False
        self._fence(fencing)
        self.revision += 1
        if storage.finished_deleting(updated):
            del self._objects[key]
            last = storage.with_revision(updated, self.revision, stored.create_revision)
            self._drop_lease_timer(key)
            self._commit(info, "DELETED", last, current)
            return last, True
        updated = storage.with_revision(updated, self.revision, stored.create_revision)
        stored.obj, stored.mod_revision = updated, self.revision
        self._commit(info, "MODIFIED", updated, current)
        return updated, True

    def _drop_lease_timer(self, key: tuple[str, str, str]) -> None:
        timer = self._lease_timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _delete(
        self,
        info: KindInfo,
        namespace: str,
        name: str,
        preconditions: storage.Preconditions,
        fencing: tuple[str, str, int] | None,
    ) -> tuple[Resource, bool]:
        key = (info.kind, namespace, name)
        stored = self._objects.get(key)
        if stored is None:
            raise storage.not_found(info, name)
        current = stored.obj
        storage.check_preconditions(info, current, preconditions)
        action, target = storage.plan_delete(current, WALL_EPOCH + self.now())
        if action == "wait":
            return current, False
        self._fence(fencing)
        self.revision += 1
        target = storage.with_revision(target, self.revision, stored.create_revision)
        if action == "delete":
            del self._objects[key]
            self._drop_lease_timer(key)
            self._commit(info, "DELETED", target, current)
        else:
            stored.obj, stored.mod_revision = target, self.revision
            self._commit(info, "MODIFIED", target, current)
        return target, True

    def _renew(self, namespace: str, name: str, holder: str, token: int) -> Lease:
        info = BY_KIND["Lease"]
        key = ("Lease", namespace, name)
        stored = self._objects.get(key)
        if stored is None:
            raise storage.not_found(info, name)
        lease = stored.obj
        assert isinstance(lease, Lease)
        if lease.spec.holder_identity != holder or stored.create_revision != token:
            raise storage.conflict(
                info,
                name,
                f"held by {lease.spec.holder_identity!r} with fencing token "
                f"{stored.create_revision}, not {holder!r} with {token}",
            )
        self._arm_lease(key, stored, lease.spec.lease_duration_seconds)
        return lease

    # ------------------------------------------------------------------ watch

    def open(
        self, info: KindInfo, namespace: str | None, predicate: Predicate | None, after: int
    ) -> _Connection:
        """A watch connection delivering every change after `after`; 410 when compacted."""
        if after < self.compacted:
            raise storage.ApiError(
                410,
                "Expired",
                f"too old resource version: {after} (the oldest available is {self.compacted})",
            )
        connection = _Connection(info, namespace, predicate)
        for change in self._changes:
            if change.revision > after:
                connection.offer(change)
        self._connections.append(connection)
        return connection

    def close(self, connection: _Connection) -> None:
        connection.closed = True
        connection.wake()
        if connection in self._connections:
            self._connections.remove(connection)

    def break_watches(self) -> None:
        """Every watch connection fails (as when an API server restarts)."""
        for connection in builtins.list(self._connections):
            self.close(connection)

    @property
    def watch_count(self) -> int:
        return len(self._connections)


class SimClient:
    """A caller's view of a `SimApi`, with `keel.client.KeelClient`'s methods and errors.

    Each call waits out the caller's pause gate, a seeded latency on the way there and back,
    then runs atomically on the server.
    """

    def __init__(
        self,
        api: SimApi,
        caller: str,
        *,
        gate: Gate | None = None,
        stall: Stall | None = None,
        namespace: str = "default",
        fencing: tuple[str, str, int] | None = None,
    ) -> None:
        self.api = api
        self.caller = caller
        self.namespace = namespace
        self._gate = gate
        self._stall = stall
        self._fencing = fencing
        self._view_open = True
        self._watches = itertools.count(1)

    # ------------------------------------------------------------------ plumbing

    async def _travel(self) -> None:
        faults = self.api.faults
        delay = faults.latency() if faults is not None else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        if self._gate is not None:
            await self._gate()

    def _namespace_for(self, info: KindInfo, namespace: str | None) -> str:
        if not info.namespaced:
            if namespace:
                raise ValueError(f"{info.kind} is cluster-scoped: no namespace")
            return ""
        return namespace or self.namespace

    def _fencing_for_write(self) -> tuple[str, str, int] | None:
        if not self._view_open:
            raise RuntimeError("this fenced client view was used after its `async with` ended")
        return self._fencing

    def _prepare(self, obj: R) -> tuple[KindInfo, str, R]:
        info = kind_info(type(obj))
        namespace = self._namespace_for(info, obj.metadata.namespace or None)
        changes: dict[str, Any] = {}
        if not obj.kind:
            changes["kind"] = info.kind
        if obj.metadata.namespace != namespace:
            changes["metadata"] = msgspec.structs.replace(obj.metadata, namespace=namespace)
        if changes:
            obj = msgspec.structs.replace(obj, **changes)
        return info, namespace, obj

    def _fence_label(self) -> tuple[str, int] | None:
        if self._fencing is None:
            return None
        namespace, lease, token = self._fencing
        return f"{namespace}/{lease}", token

    async def _write(
        self,
        verb: str,
        info: KindInfo,
        namespace: str,
        name: str,
        operation: Callable[[tuple[str, str, int] | None], tuple[Resource, bool]],
    ) -> Resource:
        fencing = self._fencing_for_write()
        faults = self.api.faults
        if self._stall is not None and faults is not None:
            stall = faults.stall_write()
            if stall > 0:
                # The process stops between deciding to write and the request reaching the
                # server: the window a stale leader writes through, unless fenced.
                self.api.trace.record(
                    self.api.now(), "fault", f"stall {self.caller} {stall:.3f}s before {verb}"
                )
                self._stall(stall)
        await self._travel()
        api = self.api
        try:
            result, wrote = operation(fencing)
        except storage.ApiError as exc:
            api._record(
                self.caller,
                verb,
                (info, namespace, name),
                fencing=self._fence_label(),
                outcome=exc.reason,
            )
            await self._travel()
            raise _client_error(exc) from None
        api._record(
            self.caller,
            verb,
            (info, namespace, name or result.metadata.name),
            fencing=self._fence_label(),
            outcome="ok" if wrote else "noop",
            revision=api.revision if wrote else 0,
            obj=result,
        )
        await self._travel()
        return result

    async def _read(self, what: str, operation: Callable[[], Any]) -> Any:
        await self._travel()
        try:
            result = operation()
        except storage.ApiError as exc:
            self.api.trace.record(self.api.now(), self.caller, f"{what} -> {exc.reason}")
            await self._travel()
            raise _client_error(exc) from None
        self.api.trace.record(self.api.now(), self.caller, f"{what} -> ok")
        await self._travel()
        return result

    # ------------------------------------------------------------------ reads

    @overload
    async def get(self, kind: type[R], name: str, *, namespace: str | None = None) -> R: ...
    @overload
    async def get(
        self, kind: str | KindInfo, name: str, *, namespace: str | None = None
    ) -> Resource: ...
    async def get(self, kind: KindRef, name: str, *, namespace: str | None = None) -> Resource:
        """One object; `NotFound` if absent."""
        info = kind_info(kind)
        ns = self._namespace_for(info, namespace)
        result: Resource = await self._read(
            f"get {info.kind} {ns}/{name}", lambda: self.api.get(info, ns, name)
        )
        return result

    @overload
    async def list(
        self,
        kind: type[R],
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[R]: ...
    @overload
    async def list(
        self,
        kind: str | KindInfo,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[Resource]: ...
    async def list(
        self,
        kind: KindRef,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[Any]:
        """Every matching object and the list's resourceVersion (`limit` only pages)."""
        info = kind_info(kind)
        ns = namespace if info.namespaced else self._namespace_for(info, namespace)

        def run() -> ListResult[Any]:
            predicate = self.api.predicate(
                info, _selector_text(label_selector), field_selector or None
            )
            items, revision = self.api.list(info, ns or None, predicate)
            return ListResult(items, str(revision))

        result: ListResult[Any] = await self._read(f"list {info.kind} {ns or '*'}", run)
        return result

    # ------------------------------------------------------------------ writes

    async def create(self, obj: R) -> R:
        """A new object; `AlreadyExists` if the name is taken."""
        info, namespace, obj = self._prepare(obj)
        result = await self._write(
            "create",
            info,
            namespace,
            obj.metadata.name,
            lambda fencing: (self.api._create(info, obj, namespace, fencing), True),
        )
        return cast("R", result)

    async def _put(self, obj: R, subresource: str | None) -> R:
        info, namespace, obj = self._prepare(obj)
        validated = self.api._validate(info, obj) if subresource is None else obj
        result = await self._write(
            "status" if subresource else "replace",
            info,
            namespace,
            obj.metadata.name,
            lambda fencing: self.api._update(
                info,
                namespace,
                obj.metadata.name,
                lambda current: validated,
                subresource=subresource,
                fencing=fencing,
            ),
        )
        return cast("R", result)

    async def replace(self, obj: R) -> R:
        """The whole object; `Conflict` if its `metadata.resourceVersion` is stale."""
        return await self._put(obj, None)

    async def update_status(self, obj: R) -> R:
        """Only `.status` changes, with OCC."""
        return await self._put(obj, "status")

    async def bind(
        self, namespace: str, instance: str, node: str, *, resource_version: str = ""
    ) -> Instance | None:
        """The scheduler's binding: spec.nodeName set once, with OCC (the server's rule)."""
        info = BY_KIND["Instance"]
        result = await self._write(
            "binding",
            info,
            namespace,
            instance,
            lambda fencing: self.api._update(
                info,
                namespace,
                instance,
                lambda current: storage.bind_instance(info, current, node, resource_version),
                subresource="binding",
                fencing=fencing,
            ),
        )
        return result if isinstance(result, Instance) else None

    @overload
    async def patch(
        self,
        kind: type[R],
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> R: ...
    @overload
    async def patch(
        self,
        kind: str | KindInfo,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Resource: ...
    async def patch(
        self,
        kind: KindRef,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Resource:
        """A JSON merge patch (a dict) or a JSON patch (a list of operations)."""
        info = kind_info(kind)
        ns = self._namespace_for(info, namespace)
        if type not in ("merge", "json"):
            raise ValueError(f"patch type must be 'merge' or 'json', not {type!r}")
        document_patch = msgspec.json.decode(patch) if isinstance(patch, bytes) else patch
        if type == "merge" and not isinstance(document_patch, dict):
            raise BadRequest(400, "BadRequest", "a merge patch must be a JSON object")

        def mutate(current: Resource) -> Resource:
            document = _full_builtins(current)
            try:
                if type == "merge":
                    patched = merge_patch(document, document_patch)
                else:
                    patched = json_patch(document, document_patch)
            except PatchTestFailed as exc:
                raise storage.ApiError(409, "Conflict", f"the patch's test failed: {exc}") from None
            except PatchError as exc:
                raise storage.ApiError(
                    422, "Invalid", f"the patch cannot be applied: {exc}"
                ) from None
            try:
                obj: Resource = msgspec.convert(patched, info.model)
            except msgspec.ValidationError as exc:
                raise storage.ApiError(422, "Invalid", str(exc)) from None
            meta = msgspec.structs.replace(
                obj.metadata, name=obj.metadata.name or name, namespace=ns
            )
            return msgspec.structs.replace(obj, kind=info.kind, metadata=meta)

        return await self._write(
            "status" if subresource == "status" else "patch",
            info,
            ns,
            name,
            lambda fencing: self.api._update(
                info, ns, name, mutate, subresource=subresource, fencing=fencing
            ),
        )

    @overload
    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> R | None: ...
    @overload
    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> Resource | None: ...
    async def delete(
        self,
        kind: KindRef,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> Resource | None:
        """Delete, or mark with a deletionTimestamp while finalizers remain; returns the
        object's last state. `NotFound` if absent, `Conflict` if a precondition fails."""
        info = kind_info(kind)
        ns = self._namespace_for(info, namespace)
        pre = storage.Preconditions(
            uid=(preconditions.uid or None) if preconditions else None,
            resource_version=(preconditions.resource_version or None) if preconditions else None,
        )
        return await self._write(
            "delete",
            info,
            ns,
            name,
            lambda fencing: self.api._delete(info, ns, name, pre, fencing),
        )

    # ------------------------------------------------------------------ leases

    async def acquire_lease(
        self,
        namespace: str,
        name: str,
        holder: str,
        duration: int,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> Lease:
        """Create the Lease (`AlreadyExists` while held); it carries the fencing token."""
        lease = Lease(
            kind="Lease",
            metadata=ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
            spec=LeaseSpec(holder_identity=holder, lease_duration_seconds=duration),
        )
        return await self.create(lease)

    async def renew_lease(self, lease: Lease) -> Lease:
        """A keep-alive, not a write: `NotFound` (expired) or `Conflict` (another holder)."""
        namespace = lease.metadata.namespace or self.namespace
        name = lease.metadata.name
        result: Lease = await self._read(
            f"renew Lease {namespace}/{name} token={lease.status.fencing_token}",
            lambda: self.api._renew(
                namespace, name, lease.spec.holder_identity, lease.status.fencing_token
            ),
        )
        return result

    async def release_lease(self, lease: Lease) -> bool:
        """Delete the Lease if it is still this incarnation; False if already gone."""
        namespace = lease.metadata.namespace or self.namespace
        view = SimClient(
            self.api,
            self.caller,
            gate=self._gate,
            stall=self._stall,
            namespace=self.namespace,
            fencing=(namespace, lease.metadata.name, lease.status.fencing_token),
        )
        try:
            await view.delete(Lease, lease.metadata.name, namespace=namespace)
        except (NotFound, FencingTokenRejected):
            return False
        return True

    @asynccontextmanager
    async def fenced(self, namespace: str, lease_name: str, token: int) -> AsyncIterator[SimClient]:
        """A view whose writes apply only while the lease still has fencing token `token`."""
        view = SimClient(
            self.api,
            self.caller,
            gate=self._gate,
            stall=self._stall,
            namespace=self.namespace,
            fencing=(namespace, lease_name, token),
        )
        try:
            yield view
        finally:
            view._view_open = False

    # ------------------------------------------------------------------ watch

    @overload
    def watch(
        self,
        kind: type[R],
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> SimWatch[R]: ...
    @overload
    def watch(
        self,
        kind: str | KindInfo,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> SimWatch[Resource]: ...
    def watch(
        self,
        kind: KindRef,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> SimWatch[Any]:
        """A self-resuming watch, as `KeelClient.watch`, through the fault scheduler."""
        info = kind_info(kind)
        ns = namespace if info.namespaced else self._namespace_for(info, namespace)
        predicate = self.api.predicate(info, _selector_text(label_selector), field_selector)
        return SimWatch(
            self,
            info,
            ns or None,
            predicate,
            resource_version or None,
            bookmarks=bookmarks,
            emit_bookmarks=emit_bookmarks,
            name=f"{self.caller}/watch-{next(self._watches)}-{info.plural}",
        )


class SimWatch(AsyncIterator[WatchEvent[R]]):
    """The client's self-resuming watch over a `SimApi` connection, with faults applied to
    each delivery: a drop reconnects from the last resourceVersion seen (or relists on 410),
    a duplicate reconnects from an older one (events come again, older after newer)."""

    def __init__(
        self,
        client: SimClient,
        info: KindInfo,
        namespace: str | None,
        predicate: Predicate | None,
        resource_version: str | None,
        *,
        bookmarks: bool,
        emit_bookmarks: bool,
        name: str,
    ) -> None:
        self._client = client
        self._info = info
        self._namespace = namespace
        self._predicate = predicate
        self._start = resource_version
        self._bookmarks = bookmarks
        self._emit_bookmarks = emit_bookmarks
        self.name = name
        self._cursor = ""
        self._seen: list[int] = []  # resourceVersions delivered (sorted, unique): rewinds
        self._expired = False  # the current connection ended in a (forced) 410
        self._events = self._run()
        self.reconnects = 0

    @property
    def resource_version(self) -> str:
        return self._cursor or (self._start or "")

    def __aiter__(self) -> SimWatch[R]:
        return self

    async def __anext__(self) -> WatchEvent[R]:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> SimWatch[R]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> str:
        if self._start is None:
            self._start = str(self._client.api.revision)
        return self._start

    def _remember(self, revision: int) -> None:
        seen = self._seen
        position = bisect.bisect_left(seen, revision)
        if position == len(seen) or seen[position] != revision:
            seen.insert(position, revision)
            if len(seen) > 256:
                del seen[:128]

    def _trace(self, text: str) -> None:
        api = self._client.api
        api.trace.record(api.now(), self.name, text)

    async def _gate(self) -> None:
        if self._client._gate is not None:
            await self._client._gate()

    async def _relist(self) -> AsyncGenerator[WatchEvent[R], None]:
        listed = await self._client.list(self._info, namespace=self._namespace)
        items = cast("builtins.list[R]", listed.items)
        if self._predicate is not None:
            items = [item for item in items if self._predicate(item)]
        self._cursor = listed.resource_version
        self._trace(f"RELIST at rv={self._cursor} ({len(items)} objects)")
        yield WatchEvent("RELIST", None, listed.resource_version, tuple(items))
        for item in items:
            yield WatchEvent("ADDED", item, item.metadata.resource_version)

    async def _run(self) -> AsyncGenerator[WatchEvent[R], None]:
        api = self._client.api
        start = await self.start()
        if start == "0":
            async for event in self._relist():
                if event.type != "RELIST":
                    yield event
        else:
            self._cursor = start
        relist = False
        while True:
            if relist:
                self.reconnects += 1
                async for event in self._relist():
                    yield event
            await self._gate()
            try:
                connection = api.open(
                    self._info, self._namespace, self._predicate, int(self._cursor)
                )
            except storage.ApiError:
                self._trace(f"410 Expired resuming from rv={self._cursor}")
                relist = True
                continue
            self._trace(f"connected from rv={self._cursor}")
            self._remember(int(self._cursor))
            self._expired = False
            try:
                async for event in self._drain(connection):
                    yield event
            finally:
                api.close(connection)
            relist = self._expired
            self.reconnects += 1
            faults = api.faults
            await asyncio.sleep(faults.reconnect_delay() if faults is not None else 0.0)

    async def _drain(self, connection: _Connection) -> AsyncGenerator[WatchEvent[R], None]:
        """Deliver the connection's lines until a fault (or the server) ends it."""
        api = self._client.api
        faults = api.faults
        loop = asyncio.get_running_loop()
        next_bookmark = loop.time() + api.bookmark_interval
        while True:
            if connection.closed:
                return
            if not connection.lines:
                if self._bookmarks and loop.time() >= next_bookmark:
                    next_bookmark = loop.time() + api.bookmark_interval
                    revision = str(api.revision)
                    if int(revision) >= int(self._cursor):
                        self._cursor = revision
                        if self._emit_bookmarks:
                            await self._gate()
                            yield WatchEvent("BOOKMARK", None, revision)
                    continue
                waiter = loop.create_future()
                connection.waiter = waiter
                timer = loop.call_at(next_bookmark, _wake, waiter) if self._bookmarks else None
                try:
                    await waiter
                finally:
                    connection.waiter = None
                    if timer is not None:
                        timer.cancel()
                continue
            decision = faults.on_watch_event() if faults is not None else None
            type_, obj = connection.lines[0]
            rv = obj.metadata.resource_version
            if decision is not None and decision.action == "drop":
                self._trace(f"fault: connection dropped before {type_} rv={rv}")
                return
            if decision is not None and decision.action == "expire":
                self._trace(f"fault: connection dropped before {type_} rv={rv}, resume gets 410")
                self._expired = True
                return
            if decision is not None and decision.action == "delay":
                self._trace(f"fault: {type_} rv={rv} delayed {decision.delay:.3f}s")
                await asyncio.sleep(decision.delay)
                if connection.closed or not connection.lines:
                    return
            connection.lines.popleft()
            await self._gate()
            self._cursor = rv
            self._remember(int(rv))
            yield WatchEvent(type_, cast("R", obj), rv)
            if decision is not None and decision.action == "duplicate":
                position = bisect.bisect_left(self._seen, int(rv))
                rewound = str(self._seen[max(0, position - decision.rewind)])
                self._trace(f"fault: reconnect from older rv={rewound} after rv={rv}")
                self._cursor = rewound
                return


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
