"""etcd message classes, built at run time from our serialized descriptor.

No generated _pb2 module is involved, so any protobuf runtime from 4.25 on works. The classes
are dynamic, so they are typed `Any` here; converters to Keel's records keep the rest typed.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory  # type: ignore[import-untyped]

from keel.store._etcd.etcd_descriptor import FILE_DESCRIPTOR
from keel.store._types import Event, EventType, KeyValue

# A private pool: another library that registers etcd's own .proto files in the default pool
# cannot clash with ours.
_POOL: Any = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(FILE_DESCRIPTOR)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"etcdserverpb.{name}"))


RangeRequest = _message("RangeRequest")
RangeResponse = _message("RangeResponse")
PutRequest = _message("PutRequest")
PutResponse = _message("PutResponse")
DeleteRangeRequest = _message("DeleteRangeRequest")
DeleteRangeResponse = _message("DeleteRangeResponse")
RequestOp = _message("RequestOp")
Compare = _message("Compare")
TxnRequest = _message("TxnRequest")
TxnResponse = _message("TxnResponse")
CompactionRequest = _message("CompactionRequest")
CompactionResponse = _message("CompactionResponse")
WatchRequest = _message("WatchRequest")
WatchCreateRequest = _message("WatchCreateRequest")
WatchCancelRequest = _message("WatchCancelRequest")
WatchResponse = _message("WatchResponse")
LeaseGrantRequest = _message("LeaseGrantRequest")
LeaseGrantResponse = _message("LeaseGrantResponse")
LeaseRevokeRequest = _message("LeaseRevokeRequest")
LeaseRevokeResponse = _message("LeaseRevokeResponse")
LeaseKeepAliveRequest = _message("LeaseKeepAliveRequest")
LeaseKeepAliveResponse = _message("LeaseKeepAliveResponse")
LeaseTimeToLiveRequest = _message("LeaseTimeToLiveRequest")
LeaseTimeToLiveResponse = _message("LeaseTimeToLiveResponse")
MemberListRequest = _message("MemberListRequest")
MemberListResponse = _message("MemberListResponse")
StatusRequest = _message("StatusRequest")
StatusResponse = _message("StatusResponse")

# Enum numbers of etcd's Compare (target and result) and Event.EventType.
COMPARE_VERSION, COMPARE_CREATE, COMPARE_MOD, COMPARE_VALUE, COMPARE_LEASE = range(5)
RESULT_EQUAL, RESULT_GREATER, RESULT_LESS, RESULT_NOT_EQUAL = range(4)
EVENT_DELETE = 1


def key_value(kv: Any) -> KeyValue:
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def key_values(kvs: Any) -> list[KeyValue]:
    return [
        KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
        for kv in kvs
    ]


def event(ev: Any) -> Event:
    prev = key_value(ev.prev_kv) if ev.HasField("prev_kv") else None
    kind = EventType.DELETE if ev.type == EVENT_DELETE else EventType.PUT
    return Event(kind, key_value(ev.kv), prev)


def revision(response: Any) -> int:
    """The store revision in a response's header."""
    rev: int = response.header.revision
    return rev
