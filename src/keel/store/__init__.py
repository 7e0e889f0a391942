"""Keel's store: one protocol with etcd v3 semantics and three backends.

`sqlite:///PATH` is the embedded, durable single-machine store; `etcd://HOST:PORT[,...]` talks
to an etcd >= 3.5 cluster with client-side failover; `memory://` (`MemoryStore`) is a
deterministic, non-durable store for simulations and tests. Open any with `open_store(url)`.
"""

from keel.store._memory import MemoryStore
from keel.store._open import open_store
from keel.store._protocol import Store
from keel.store._types import (
    MAX_REQUEST_BYTES,
    CompactedError,
    Compare,
    CompareTarget,
    DeleteResponse,
    Event,
    EventType,
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
    StoreLocked,
    StoreStatus,
    TxnResult,
    Unavailable,
    ValueTooLarge,
    WatchBatch,
    prefix_end,
)

__all__ = [
    "MAX_REQUEST_BYTES",
    "CompactedError",
    "Compare",
    "CompareTarget",
    "DeleteResponse",
    "Event",
    "EventType",
    "FutureRevisionError",
    "InvalidRequest",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "MemoryStore",
    "Op",
    "OpKind",
    "OpResponse",
    "PutResponse",
    "RangeResult",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreLocked",
    "StoreStatus",
    "TxnResult",
    "Unavailable",
    "ValueTooLarge",
    "WatchBatch",
    "open_store",
    "prefix_end",
]
