"""Records and errors of the store protocol: etcd v3 semantics, shared by every backend.

Nothing here does I/O. Backends produce these records; callers consume them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

CompareOp: TypeAlias = Literal["==", "!=", "<", ">"]
COMPARE_OPS: frozenset[str] = frozenset({"==", "!=", "<", ">"})

# etcd's default --max-request-bytes; a put or txn whose keys and values add up to more
# is refused before it is sent, by every backend alike.
MAX_REQUEST_BYTES = 1536 * 1024


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(enum.Enum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One change. For DELETE, `kv` holds the key, the deleting revision as mod_revision,
    and an empty value, as etcd reports it; `prev_kv` is the value before the change."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one or more whole revisions, in order. An empty batch is a progress
    notification: every change up to `revision` has been delivered."""

    events: list[Event]
    revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int
    more: bool = False


@dataclass(frozen=True, slots=True)
class PutResponse:
    revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteResponse:
    revision: int
    deleted: int
    prev_kvs: list[KeyValue] = field(default_factory=list)


OpResponse: TypeAlias = RangeResult | PutResponse | DeleteResponse


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[OpResponse]


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class StoreStatus:
    revision: int
    compact_revision: int
    backend: str
    db_size: int = 0
    leader: str | None = None
    members: int = 1
    version: str = ""


class CompareTarget(enum.Enum):
    VALUE = "value"
    VERSION = "version"
    CREATE_REVISION = "create_revision"
    MOD_REVISION = "mod_revision"
    LEASE = "lease"


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard on one key. A missing key has version, create_revision, mod_revision and
    lease 0; a value compare on a missing key is always false (as in etcd)."""

    target: CompareTarget
    key: bytes
    op: CompareOp
    operand: bytes | int

    def __post_init__(self) -> None:
        if self.op not in COMPARE_OPS:
            raise ValueError(f"Compare.op: expected one of == != < >, got {self.op!r}")
        if not isinstance(self.key, bytes):
            raise TypeError(f"Compare.key: expected bytes, got {type(self.key).__name__}")
        if self.target is CompareTarget.VALUE:
            if not isinstance(self.operand, bytes):
                raise TypeError("Compare.operand: a value compare takes bytes")
        elif not isinstance(self.operand, int) or isinstance(self.operand, bool):
            raise TypeError(f"Compare.operand: a {self.target.value} compare takes an int")

    @classmethod
    def value(cls, key: bytes, op: CompareOp, operand: bytes) -> Compare:
        return cls(CompareTarget.VALUE, key, op, operand)

    @classmethod
    def version(cls, key: bytes, op: CompareOp, operand: int) -> Compare:
        return cls(CompareTarget.VERSION, key, op, operand)

    @classmethod
    def create_revision(cls, key: bytes, op: CompareOp, operand: int) -> Compare:
        return cls(CompareTarget.CREATE_REVISION, key, op, operand)

    @classmethod
    def mod_revision(cls, key: bytes, op: CompareOp, operand: int) -> Compare:
        return cls(CompareTarget.MOD_REVISION, key, op, operand)

    @classmethod
    def lease(cls, key: bytes, op: CompareOp, operand: int) -> Compare:
        return cls(CompareTarget.LEASE, key, op, operand)

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate against the key's current value (None when absent)."""
        if self.target is CompareTarget.VALUE:
            if kv is None:
                return False
            actual: bytes | int = kv.value
        elif kv is None:
            actual = 0
        else:
            actual = getattr(kv, self.target.value)
        operand = self.operand
        if self.op == "==":
            return actual == operand
        if self.op == "!=":
            return actual != operand
        if self.op == "<":
            return actual < operand  # type: ignore[operator]
        return actual > operand  # type: ignore[operator]


class OpKind(enum.Enum):
    GET = "get"
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a txn branch. `get` and `delete` address one key, or every key
    under it when `prefix` is true."""

    kind: OpKind
    key: bytes
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise TypeError(f"Op.key: expected bytes, got {type(self.key).__name__}")
        if not isinstance(self.value, bytes):
            raise TypeError(f"Op.value: expected bytes, got {type(self.value).__name__}")

    @classmethod
    def put(cls, key: bytes, value: bytes, lease: int | None = None) -> Op:
        return cls(OpKind.PUT, key, value, lease or 0)

    @classmethod
    def delete(cls, key: bytes, *, prefix: bool = False) -> Op:
        return cls(OpKind.DELETE, key, prefix=prefix)

    @classmethod
    def get(cls, key: bytes, *, prefix: bool = False) -> Op:
        return cls(OpKind.GET, key, prefix=prefix)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end);
    b"\\0" means "to the end of the keyspace"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def request_size(ops: list[Op]) -> int:
    return sum(len(op.key) + len(op.value) for op in ops)


# ---------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base of every error the store raises."""


class CompactedError(StoreError):
    """The requested revision has been compacted away."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted: history starts after {compact_revision}")
        self.compact_revision = compact_revision


class FutureRevisionError(StoreError):
    """A read asked for a revision the store has not reached."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(f"revision {revision} is in the future (current {current})")
        self.revision = revision
        self.current = current


class LeaseNotFound(StoreError):
    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} not found (expired or revoked)")
        self.lease_id = lease_id


class ValueTooLarge(StoreError):
    def __init__(self, size: int, limit: int = MAX_REQUEST_BYTES) -> None:
        super().__init__(f"request of {size} bytes exceeds the store limit of {limit} bytes")
        self.size = size
        self.limit = limit


class Unavailable(StoreError):
    """The store could not be reached. When `ambiguous` is true the request may have been
    applied: the caller must read back before concluding either way."""

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(f"{message} ({'outcome unknown' if ambiguous else 'not applied'})")
        self.ambiguous = ambiguous


class StoreLocked(StoreError):
    """Another process owns this store file."""


class StoreClosed(StoreError):
    """The store handle was closed."""


class InvalidRequest(StoreError):
    """The request is malformed (empty key, bad TTL, duplicate key in a txn...)."""
