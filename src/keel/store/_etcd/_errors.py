"""Sorting etcd/gRPC failures: a definite store error, or not applied, or maybe applied.

The rules here decide when a write may be retried, so each marker below cites why a request
that failed with it cannot have been applied.
"""

from __future__ import annotations

import enum
from typing import Any

import grpc

from keel.store._types import (
    MAX_REQUEST_BYTES,
    CompactedError,
    FutureRevisionError,
    InvalidRequest,
    LeaseNotFound,
    StoreError,
    ValueTooLarge,
)


class Outcome(enum.Enum):
    NOT_SENT = "not sent"  # never reached a member
    REJECTED = "rejected"  # a member refused it before proposing it to raft
    AMBIGUOUS = "ambiguous"  # may have been applied, or may still be


# gRPC's pick_first balancer fails a call with these before it is given a connection, so no
# byte of the request left this process.
_NOT_SENT_MARKERS = (
    "failed to connect to all addresses",
    "DNS resolution failed",
    "empty address list",
    "Connection refused",
)

# etcd errors raised before a request becomes a raft proposal (etcd 3.5 server code):
#  - "etcdserver: no leader": the unary/stream interceptor's require-leader check, which runs
#    before the handler because every call carries `hasleader: true`;
#  - "etcdserver: too many requests": processInternalRaftRequestOnce's apply-lag check, the
#    first thing it does, before marshalling and proposing;
#  - "raft proposal dropped": raft's Propose refused the entry (no known leader, leadership
#    transfer in progress, or uncommitted-size limit), so it was never appended to a log;
#  - "etcdserver: not capable" / "rpc not supported for learner": interceptor checks.
# Everything else that is not a definite error (timeouts, "server stopped", "leader changed",
# a connection lost mid-call, a client deadline) may follow a proposal and is ambiguous.
_REJECTED_MARKERS = (
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "raft proposal dropped",
    "etcdserver: not capable",
    "etcdserver: rpc not supported for learner",
)

COMPACTED = "required revision has been compacted"
FUTURE_REVISION = "required revision is a future revision"


def details(exc: Any) -> str:
    text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else None
    return str(text or exc)


def definite_error(exc: Any, *, lease_id: int = 0, size: int = 0) -> StoreError | None:
    """The typed error for a failure etcd reports as final, or None for availability trouble.

    Compaction and future-revision errors come back with placeholder revisions (-1); the
    caller fills them in, as etcd's message carries neither number.
    """
    if not isinstance(exc, grpc.aio.AioRpcError):
        return None
    code = exc.code()
    text = details(exc)
    if COMPACTED in text:
        return CompactedError(-1)
    if FUTURE_REVISION in text:
        return FutureRevisionError(-1, -1)
    if "requested lease not found" in text:
        return LeaseNotFound(lease_id)
    if "request is too large" in text or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in text
    ):
        return ValueTooLarge(size or MAX_REQUEST_BYTES + 1)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(text)
    if code in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
    ) or ("database space exceeded" in text):
        # Refused for good (alarms, auth, unknown method): retrying elsewhere cannot help.
        return StoreError(f"etcd: {text}")
    return None


def outcome(exc: Any) -> Outcome:
    """For a failure that is not a definite error: could the request have been applied?"""
    text = details(exc)
    unavailable = isinstance(exc, grpc.aio.AioRpcError) and (
        exc.code() == grpc.StatusCode.UNAVAILABLE
    )
    if unavailable and any(marker in text for marker in _NOT_SENT_MARKERS):
        return Outcome.NOT_SENT
    if any(marker in text for marker in _REJECTED_MARKERS):
        return Outcome.REJECTED
    return Outcome.AMBIGUOUS


def unreachable(exc: Any) -> bool:
    """The member itself could not be reached or dropped the connection (not an etcd reply)."""
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() == grpc.StatusCode.UNAVAILABLE
        and not details(exc).startswith("etcdserver:")
    )
