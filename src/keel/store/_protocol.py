"""The store protocol every backend implements (etcd v3 semantics, DESIGN.md section 3)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

from keel.store._types import (
    Compare,
    KeyValue,
    Lease,
    Op,
    RangeResult,
    StoreStatus,
    TxnResult,
    WatchBatch,
)


class Store(abc.ABC):
    """An open store. Keys and values are bytes; one global revision counter rises by one per
    mutating call. Use as `async with await open_store(url) as store:` or close it yourself."""

    url: str

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def get(self, key: bytes) -> KeyValue | None: ...

    @abc.abstractmethod
    async def range(
        self,
        prefix: bytes,
        *,
        revision: int | None = None,
        limit: int | None = None,
        start: bytes | None = None,
    ) -> RangeResult:
        """Every key starting with `prefix` (all keys for b""), sorted by key, as of
        `revision` (default: now, linearizable). `more` is true when `limit` cut it short.
        `start` skips the keys below it (paging: pass the last key seen + b"\0")."""

    @abc.abstractmethod
    async def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> int:
        """Store `value` under `key`; returns the new revision."""

    @abc.abstractmethod
    async def delete(self, key: bytes) -> int:
        """Delete one key; returns the revision (unchanged when the key was absent)."""

    @abc.abstractmethod
    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomically: if every compare holds run `success`, else `failure`."""

    @abc.abstractmethod
    async def grant_lease(self, ttl: int) -> Lease: ...

    @abc.abstractmethod
    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease to its full TTL and return it; raises LeaseNotFound once gone.
        Never a consensus write."""

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys in one revision. Revoking an absent lease
        raises LeaseNotFound."""

    @abc.abstractmethod
    def watch(
        self, prefix: bytes, *, start_revision: int, progress_notify: bool = False
    ) -> AsyncIterator[WatchBatch]:
        """Changes under `prefix` from `start_revision` (0: from the next revision) on,
        whole revisions per batch, in order, none missing. Leaving the loop cancels it."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history before `revision`; reads and watches below it raise
        CompactedError."""

    @abc.abstractmethod
    async def status(self) -> StoreStatus: ...
