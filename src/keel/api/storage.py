"""Objects over the store: create, update, delete, bind and renew, each one store transaction.

Optimistic concurrency rides on `mod_revision` compares, fencing tokens on a compare of the
lease key's `create_revision` in the same transaction, and Lease objects on store leases. The
decisions (what an update may change, what a DELETE does given finalizers) are pure functions.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from keel.api.allocation import NodeRooms, binding_key, requested
from keel.api.disruption import EvictionDecision, controller_ref, decide_eviction
from keel.api.managedfields import Conflict as FieldConflict
from keel.api.managedfields import apply as apply_fields
from keel.api.managedfields import readable
from keel.api.ownership import (
    FieldsOwnedElsewhere,
    Writer,
    builtins_of,
    entries_of,
    track,
    with_entries,
)
from keel.api.quota import Usage, charged, ledger, quota_decision, raised, requests_of, usage_of
from keel.api.registry import BY_KIND, KindInfo
from keel.api.resources import (
    API_VERSION,
    FOREGROUND_FINALIZER,
    NAME_RE,
    ORPHAN_FINALIZER,
    STOP_CONFIRMED,
    Condition,
    Deployment,
    EndpointRegistration,
    Instance,
    InstanceSpec,
    Lease,
    LeaseStatus,
    Namespace,
    ObjectMeta,
    PropagationPolicy,
    Resource,
    ResourceQuota,
    Service,
    Status,
    StatusCause,
    StatusDetails,
)
from keel.clock import Clock, SystemClock
from keel.store import Compare, KeyValue, LeaseNotFound, Op, RangeResult, Store, TxnResult

DEFAULT_MAX_OBJECT_BYTES = 1024 * 1024
SYSTEM_NAMESPACES = ("default", "keel-system", "keel-node-lease")
_UPDATE_ATTEMPTS = 16
# Creates racing for one quota's ledger: each round admits at least one of them.
_CREATE_ATTEMPTS = 256
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_NAME = re.compile(NAME_RE)

Mutate = Callable[[Resource], Resource]


# ------------------------------------------------------------------------------ errors


class ApiError(Exception):
    """An answer other than success, carried up to the handler as a Kubernetes Status."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: StatusDetails | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def status(self) -> Status:
        return Status(
            status="Failure",
            message=self.message,
            reason=self.reason,
            code=self.code,
            details=self.details,
        )


def _resource(info: KindInfo | None) -> str:
    return info.plural if info else "objects"


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def not_found(info: KindInfo, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{info.plural} "{name}" not found',
        details=StatusDetails(name=name, kind=info.plural),
    )


class _NamespaceChanged(Exception):
    """The namespace's (or a quota's) mod_revision moved between the check and the txn."""


def quota_exceeded(info: KindInfo, name: str, reason: str) -> ApiError:
    """403 for a write that would take its namespace over a ResourceQuota: nothing stored."""
    return ApiError(
        403,
        "Forbidden",
        f'{info.plural} "{name}" is forbidden: {reason}',
        details=StatusDetails(
            name=name, kind=info.plural, causes=[StatusCause("", reason, QUOTA_EXCEEDED)]
        ),
    )


QUOTA_EXCEEDED = "QuotaExceeded"  # the cause reason of a create refused by a quota


def bind_instance(
    info: KindInfo, current: Resource, node: str, resource_version: str = ""
) -> Resource:
    """The binding decision: set spec.nodeName once; Conflict when the instance is being
    deleted, already bound, or changed since `resource_version`. An exclusive instance gets
    the finalizer `STOP_CONFIRMED` in the same write: from now on a copy may run on `node`,
    and its Instance must outlive that copy (see `keel.api.resources.STOP_CONFIRMED`)."""
    name = current.metadata.name
    spec = current.spec  # type: ignore[attr-defined]
    if current.metadata.deletion_timestamp:
        raise conflict(info, name, "the instance is being deleted")
    if spec.node_name:
        raise conflict(info, name, f"already bound to node {spec.node_name!r}")
    if resource_version and resource_version != current.metadata.resource_version:
        check_preconditions(info, current, Preconditions(resource_version=resource_version))
    bound = msgspec.structs.replace(current, spec=msgspec.structs.replace(spec, node_name=node))
    return held_until_stopped(bound)


def scheduled_now(obj: Resource, now: str) -> Resource:
    """A bound Instance whose status still says it could not be placed (a `Scheduled`
    condition not True, a nominated Node) says it is bound, in the binding's own write
    (as Kubernetes' binding sets PodScheduled): one status write less per such Instance."""
    if not isinstance(obj, Instance):
        return obj
    status = obj.status
    current = next((c for c in status.conditions if c.type == "Scheduled"), None)
    if (current is None or current.status == "True") and not status.nominated_node_name:
        return obj
    condition = Condition(
        type="Scheduled",
        status="True",
        reason="Bound",
        message=f"bound to node {obj.spec.node_name}",
        last_transition_time=now,
    )
    others = [c for c in status.conditions if c.type != "Scheduled"]
    return msgspec.structs.replace(
        obj,
        status=msgspec.structs.replace(
            status, conditions=[*others, condition], nominated_node_name=""
        ),
    )


def held_until_stopped(obj: Resource) -> Resource:
    """A bound exclusive Instance with the finalizer `STOP_CONFIRMED` (added once): a copy
    may run on its node from now on, and the object must outlive it."""
    spec = getattr(obj, "spec", None)
    meta = obj.metadata
    if (
        not isinstance(spec, InstanceSpec)
        or not spec.exclusive
        or not spec.node_name
        or STOP_CONFIRMED in meta.finalizers
    ):
        return obj
    return msgspec.structs.replace(
        obj, metadata=msgspec.structs.replace(meta, finalizers=[*meta.finalizers, STOP_CONFIRMED])
    )


def namespace_terminating(namespace: str) -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'namespace "{namespace}" is being deleted: no new objects may be created in it',
        details=StatusDetails(name=namespace, kind="namespaces"),
    )


def namespace_not_found(namespace: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'namespaces "{namespace}" not found',
        details=StatusDetails(name=namespace, kind="namespaces"),
    )


def already_exists(info: KindInfo, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{info.plural} "{name}" already exists',
        details=StatusDetails(name=name, kind=info.plural),
    )


def conflict(info: KindInfo, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {info.plural} "{name}": {why}',
        details=StatusDetails(name=name, kind=info.plural),
    )


def invalid(info: KindInfo, name: str, causes: list[StatusCause]) -> ApiError:
    summary = "; ".join(f"{c.field}: {c.message}" if c.field else c.message for c in causes)
    return ApiError(
        422,
        "Invalid",
        f'{info.kind} "{name}" is invalid: {summary}',
        details=StatusDetails(name=name, kind=info.plural, causes=causes),
    )


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        "RequestEntityTooLarge",
        f"object of {size} bytes exceeds the limit of {limit} bytes; nothing was stored",
    )


# ------------------------------------------------------------------------------ records


MAX_PLAN_BINDINGS = 50  # per plan: instances + nodes + fencing compares within etcd's 128


@dataclass(frozen=True, slots=True)
class PlannedBinding:
    """One binding of a plan: bind Instance namespace/name to `node`."""

    namespace: str
    name: str
    node: str
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """What became of one binding of a plan: `bound` (the Instance as stored) or `error`
    (why it was refused; `no_room` when the Node had no room for it)."""

    binding: PlannedBinding
    bound: Resource | None = None
    error: ApiError | None = None
    no_room: bool = False


@dataclass(frozen=True, slots=True)
class Fencing:
    """A `Keel-Fencing-Token: {namespace}/{lease}={token}` header, parsed."""

    namespace: str
    lease: str
    token: int

    @property
    def key(self) -> bytes:
        return BY_KIND["Lease"].key(self.namespace, self.lease)

    @classmethod
    def parse(cls, header: str) -> Fencing:
        target, sep, token = header.strip().rpartition("=")
        namespace, slash, lease = target.partition("/")
        if not sep or not slash or not namespace or not lease or not token.strip().isdigit():
            raise bad_request(
                f"malformed Keel-Fencing-Token header {header!r}: expected "
                "'{namespace}/{lease}={token}' with an integer token"
            )
        return cls(namespace, lease, int(token))


@dataclass(frozen=True, slots=True)
class Preconditions:
    uid: str | None = None
    resource_version: str | None = None


@dataclass(slots=True)
class WriteCounter:
    """Store writes per (kind, verb): the consensus boundary, measured."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)

    def add(self, kind: str, verb: str) -> None:
        self.counts[(kind, verb)] = self.counts.get((kind, verb), 0) + 1
        for listener in self.listeners:
            listener(kind, verb)


# ------------------------------------------------------------------------------ codecs

_decoders: dict[type[Resource], msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


def _decoder(model: type[Resource]) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    return decoder


def encode(obj: Resource) -> bytes:
    return _encoder.encode(obj)


def _only(response: object) -> KeyValue | None:
    """The key a txn's get op found, or None."""
    assert isinstance(response, RangeResult)
    return response.kvs[0] if response.kvs else None


def from_kv(info: KindInfo, kv: KeyValue) -> Resource:
    """A stored object as clients see it: resourceVersion (and a Lease's fencing token)
    come from the store's revisions, never from the stored bytes."""
    obj: Resource = _decoder(info.model).decode(kv.value)
    obj = msgspec.structs.replace(
        obj, metadata=msgspec.structs.replace(obj.metadata, resource_version=str(kv.mod_revision))
    )
    if isinstance(obj, Lease):
        obj = msgspec.structs.replace(
            obj, status=msgspec.structs.replace(obj.status, fencing_token=kv.create_revision)
        )
    return obj


def to_stored(obj: Resource) -> Resource:
    """The form kept in the store: no resourceVersion, no fencing token."""
    obj = msgspec.structs.replace(
        obj, metadata=msgspec.structs.replace(obj.metadata, resource_version="")
    )
    if isinstance(obj, Lease):
        obj = msgspec.structs.replace(
            obj, status=msgspec.structs.replace(obj.status, fencing_token=0)
        )
    return obj


def with_revision(obj: Resource, revision: int, create_revision: int | None = None) -> Resource:
    obj = msgspec.structs.replace(
        obj, metadata=msgspec.structs.replace(obj.metadata, resource_version=str(revision))
    )
    if isinstance(obj, Lease) and create_revision is not None:
        obj = msgspec.structs.replace(
            obj, status=msgspec.structs.replace(obj.status, fencing_token=create_revision)
        )
    return obj


def timestamp(now: float, *, micro: bool = False) -> str:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ decisions


def _content(obj: Resource) -> tuple[Any, ...]:
    """Everything but metadata and status: what `generation` counts changes of. Compared
    as structs (field by field), never as encodings, which may omit defaults or not."""
    skip = ("metadata", "status", "kind", "api_version")
    return tuple(getattr(obj, f) for f in obj.__struct_fields__ if f not in skip)


def has_status(info: KindInfo) -> bool:
    return "status" in info.subresources


def prepare_create(
    info: KindInfo, obj: Resource, *, namespace: str, name: str, uid: str, now: float
) -> Resource:
    """The object as first stored: identity and bookkeeping fields are the server's."""
    meta = msgspec.structs.replace(
        obj.metadata,
        name=name,
        namespace=namespace if info.namespaced else "",
        uid=uid,
        resource_version="",
        generation=1,
        creation_timestamp=timestamp(now),
        deletion_timestamp=None,
    )
    created = msgspec.structs.replace(obj, api_version=API_VERSION, kind=info.kind, metadata=meta)
    created = held_until_stopped(created)  # created bound: a binding too
    if isinstance(created, Lease):
        created = msgspec.structs.replace(
            created, status=LeaseStatus(acquire_time=timestamp(now, micro=True))
        )
    return created


def apply_conflict(info: KindInfo, name: str, conflicts: list[FieldConflict]) -> ApiError:
    """409 as kube-apiserver words it, each field with the manager that owns it."""
    count = len(conflicts)
    lines = "; ".join(f'conflict with "{c.manager}": {readable(c.path)}' for c in conflicts)
    causes = [
        StatusCause(readable(c.path), f'conflict with "{c.manager}"', "FieldManagerConflict")
        for c in conflicts
    ]
    return ApiError(
        409,
        "Conflict",
        f"Apply failed with {count} conflict{'s' if count != 1 else ''}: {lines} "
        "(apply again with force, e.g. kubectl apply --server-side --force-conflicts, "
        "to take them over)",
        details=StatusDetails(name=name, kind=info.plural, causes=causes),
    )


def owned(
    info: KindInfo,
    before: Resource | None,
    after: Resource,
    writer: Writer,
    now: float,
    *,
    subresource: str = "",
) -> Resource:
    """`after` with managedFields moved on for `writer` (403 when a component writes a
    field the registry gives another)."""
    try:
        return track(info.kind, before, after, writer, now=timestamp(now), subresource=subresource)
    except FieldsOwnedElsewhere as exc:
        raise ApiError(403, "Forbidden", exc.message, details=exc.details) from None


def prepare_update(
    info: KindInfo, current: Resource, proposed: Resource, *, subresource: str | None
) -> Resource:
    """What an update may change. `status`: only .status. Main resource: spec and the
    user-owned metadata (labels, annotations, ownerReferences, finalizers); identity,
    deletionTimestamp and (for kinds with a status subresource) status stay as stored.
    `generation` rises when anything outside metadata and status changes."""
    name = current.metadata.name
    if subresource == "status":
        return msgspec.structs.replace(current, status=proposed.status)  # type: ignore[attr-defined]
    if subresource == "binding":
        # The binding sets spec.nodeName, and the finalizers that binding calls for.
        meta = msgspec.structs.replace(
            current.metadata,
            generation=current.metadata.generation + 1,
            finalizers=proposed.metadata.finalizers,
        )
        return msgspec.structs.replace(current, spec=proposed.spec, metadata=meta)  # type: ignore[attr-defined]
    meta = msgspec.structs.replace(
        current.metadata,
        labels=proposed.metadata.labels,
        annotations=proposed.metadata.annotations,
        owner_references=proposed.metadata.owner_references,
        finalizers=proposed.metadata.finalizers,
    )
    updated = msgspec.structs.replace(proposed, kind=info.kind, metadata=meta)
    if has_status(info) or isinstance(current, Lease):
        updated = msgspec.structs.replace(updated, status=current.status)  # type: ignore[attr-defined]
    causes = immutable_changes(info, current, updated)
    if causes:
        raise invalid(info, name, causes)
    if _content(updated) != _content(current):
        meta = msgspec.structs.replace(meta, generation=current.metadata.generation + 1)
        updated = msgspec.structs.replace(updated, metadata=meta)
    return updated


def immutable_changes(info: KindInfo, current: Resource, updated: Resource) -> list[StatusCause]:
    """Fields that must not change after creation, and why."""
    causes: list[StatusCause] = []
    spec_old = getattr(current, "spec", None)
    spec_new = getattr(updated, "spec", None)
    if info.kind == "Revision" and _content(current) != _content(updated):
        causes.append(
            StatusCause("spec", "field is immutable: a Revision is a snapshot", "FieldValueInvalid")
        )
    node_old = getattr(spec_old, "node_name", None)
    if node_old and node_old != getattr(spec_new, "node_name", None):
        causes.append(
            StatusCause(
                "spec.nodeName",
                "field is immutable once bound (use the binding subresource to bind)",
                "FieldValueInvalid",
            )
        )
    if node_old == "" and getattr(spec_new, "node_name", None):
        causes.append(
            StatusCause(
                "spec.nodeName",
                "an unbound instance is bound through the binding subresource",
                "FieldValueInvalid",
            )
        )
    registration_old = getattr(spec_old, "registration", None)
    registration_new = getattr(spec_new, "registration", None)
    if _fixed_part(registration_old) != _fixed_part(registration_new):
        causes.append(
            StatusCause(
                "spec.registration",
                "only ready may change after creation: register again (a new Lease) to "
                "change the service, address or port",
                "FieldValueInvalid",
            )
        )
    holder_old = getattr(spec_old, "holder_identity", None)
    if holder_old is not None and holder_old != getattr(spec_new, "holder_identity", None):
        causes.append(
            StatusCause(
                "spec.holderIdentity",
                "field is immutable: a new holder acquires the lease by creating it, which "
                "gives it a new fencing token",
                "FieldValueInvalid",
            )
        )
    return causes


def _fixed_part(registration: EndpointRegistration | None) -> EndpointRegistration | None:
    return msgspec.structs.replace(registration, ready=True) if registration else None


def registration_causes(
    registration: EndpointRegistration, service: Service | None, namespace: str
) -> list[StatusCause]:
    """Why a Lease may not register this endpoint: its Service must exist in the Lease's
    namespace and, when a port name is given, have a port of that name."""
    if service is None or service.metadata.deletion_timestamp:
        return [
            StatusCause(
                "spec.registration.service",
                f'Service "{registration.service}" not found in namespace "{namespace}"',
                "FieldValueNotFound",
            )
        ]
    names = [p.name for p in service.spec.ports]
    if registration.port_name and registration.port_name not in names:
        known = ", ".join(repr(n) for n in names if n) or "none"
        return [
            StatusCause(
                "spec.registration.portName",
                f'Service "{registration.service}" has no port named '
                f"{registration.port_name!r} (its named ports: {known})",
                "FieldValueNotFound",
            )
        ]
    return []


DeleteAction = Literal["delete", "mark", "wait"]


def plan_delete(
    obj: Resource, now: float, propagation: PropagationPolicy | None = None
) -> tuple[DeleteAction, Resource]:
    """DELETE honours finalizers: with some left, the object is only marked with a
    deletionTimestamp (once) and stays until an update empties them. Foreground and Orphan
    propagation add their finalizer (the garbage collector removes it once the dependents
    are gone, or released), so the object is marked rather than deleted."""
    finalizers = list(obj.metadata.finalizers)
    wanted = {"Foreground": FOREGROUND_FINALIZER, "Orphan": ORPHAN_FINALIZER}.get(propagation or "")
    if wanted is not None and wanted not in finalizers and not obj.metadata.deletion_timestamp:
        finalizers.append(wanted)
    if not finalizers:
        return "delete", obj
    if obj.metadata.deletion_timestamp:
        return "wait", obj
    meta = msgspec.structs.replace(
        obj.metadata, deletion_timestamp=timestamp(now), finalizers=finalizers
    )
    marked = msgspec.structs.replace(obj, metadata=meta)
    if isinstance(marked, Namespace):
        marked = msgspec.structs.replace(
            marked, status=msgspec.structs.replace(marked.status, phase="Terminating")
        )
    return "mark", marked


def finished_deleting(obj: Resource) -> bool:
    """An update that empties the finalizers of a marked object completes its deletion."""
    return bool(obj.metadata.deletion_timestamp) and not obj.metadata.finalizers


def check_preconditions(info: KindInfo, obj: Resource, pre: Preconditions) -> None:
    name = obj.metadata.name
    if pre.uid and pre.uid != obj.metadata.uid:
        raise conflict(info, name, f"precondition failed: uid is {obj.metadata.uid}, not {pre.uid}")
    if pre.resource_version and pre.resource_version != obj.metadata.resource_version:
        raise conflict(
            info,
            name,
            "the object has been modified; please apply your changes to the latest version "
            f"and try again (resourceVersion is {obj.metadata.resource_version}, "
            f"not {pre.resource_version})",
        )


DISRUPTION_BUDGET = "DisruptionBudget"  # the cause reason of a refused eviction
EVICTION_RETRY_AFTER = 2


def budget_exceeded(info: KindInfo, name: str, message: str) -> ApiError:
    """429 for an eviction the disruption budget refuses: nothing was done; try later."""
    return ApiError(
        429,
        "TooManyRequests",
        message,
        details=StatusDetails(
            name=name,
            kind=info.plural,
            causes=[StatusCause("", message, DISRUPTION_BUDGET)],
            retry_after_seconds=EVICTION_RETRY_AFTER,
        ),
        retry_after=EVICTION_RETRY_AFTER,
    )


def generated_name(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choice(_GENERATE_ALPHABET) for _ in range(5))


# ------------------------------------------------------------------------------ storage


class Storage:
    """Object CRUD over the store. Every write is one store transaction under /registry/."""

    def __init__(
        self,
        store: Store,
        *,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        clock: Clock | None = None,
        writes: WriteCounter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.max_object_bytes = max_object_bytes
        self.clock: Clock = clock or SystemClock()
        self.writes = writes if writes is not None else WriteCounter()
        # (namespace, name) -> wall time of a Lease's last renewal here: keep-alives are no
        # store writes, so only this shows how long a lease has left (the /ui leases page).
        self.renewals: dict[tuple[str, str], float] = {}
        # Generated names and uids; a seeded one makes a simulation replay exactly.
        self._rng = rng or random.Random()
        # Node room for bindings: fed by the API server's watch cache (`NodeRooms`), and
        # how to wait until that cache has applied a revision (None: no cache to wait on).
        self.rooms = NodeRooms()
        self.fresh: Callable[[int], Awaitable[bool]] | None = None

    # -- helpers

    def _encode_checked(self, obj: Resource) -> bytes:
        data = encode(to_stored(obj))
        if len(data) > self.max_object_bytes:
            raise too_large(len(data), self.max_object_bytes)
        return data

    @staticmethod
    def _guards(fencing: Fencing | None) -> tuple[list[Compare], list[Op]]:
        if fencing is None:
            return [], []
        return [Compare.create_revision(fencing.key, "==", fencing.token)], [Op.get(fencing.key)]

    @staticmethod
    def _fencing_failed(fencing: Fencing | None, result: TxnResult) -> ApiError | None:
        """After a failed txn whose last failure op read the lease key: was it the token?"""
        if fencing is None:
            return None
        response = result.responses[-1]
        assert isinstance(response, RangeResult)
        holder = response.kvs[0].create_revision if response.kvs else 0
        if holder == fencing.token:
            return None
        now = f"the current token is {holder}" if holder else "the lease is not held"
        return ApiError(
            409,
            "FencingTokenRejected",
            f"fencing token {fencing.token} of lease {fencing.namespace}/{fencing.lease} "
            f"is no longer current ({now}); nothing was written",
            details=StatusDetails(name=fencing.lease, kind="leases"),
        )

    async def read(self, info: KindInfo, namespace: str, name: str) -> Resource | None:
        """A linearizable read straight from the store."""
        kv = await self.store.get(info.key(namespace, name))
        return from_kv(info, kv) if kv is not None else None

    # -- create

    async def create(
        self,
        info: KindInfo,
        obj: Resource,
        *,
        namespace: str,
        fencing: Fencing | None = None,
        writer: Writer | None = None,
    ) -> Resource:
        meta = obj.metadata
        if not meta.name and not meta.generate_name:
            raise invalid(
                info,
                "",
                [
                    StatusCause(
                        "metadata.name", "name or generateName is required", "FieldValueRequired"
                    )
                ],
            )
        attempts = 1 if meta.name else 8
        for _ in range(attempts):
            name = meta.name or generated_name(meta.generate_name, self._rng)
            if not _NAME.match(name):
                raise invalid(
                    info,
                    name,
                    [
                        StatusCause(
                            "metadata.generateName",
                            f"{meta.generate_name!r} does not make a valid name (lower-case "
                            "letters, digits, '-' and '.')",
                            "FieldValueInvalid",
                        )
                    ],
                )
            try:
                return await self._create_once_retrying(
                    info, obj, namespace, name, fencing, writer=writer
                )
            except ApiError as exc:
                if meta.name or exc.reason != "AlreadyExists":
                    raise
        raise ApiError(
            500, "InternalError", f"could not generate a unique name from {meta.generate_name!r}"
        )

    async def _create_once_retrying(
        self,
        info: KindInfo,
        obj: Resource,
        namespace: str,
        name: str,
        fencing: Fencing | None,
        *,
        writer: Writer | None = None,
    ) -> Resource:
        for _ in range(_CREATE_ATTEMPTS):
            try:
                return await self._create_once(info, obj, namespace, name, fencing, writer=writer)
            except _NamespaceChanged:
                continue  # the namespace or a quota was updated between our check and the txn
        raise ApiError(
            409,
            "Conflict",
            f'namespace "{namespace}" (or its quota) kept changing; retry the create',
        )

    async def _create_once(
        self,
        info: KindInfo,
        obj: Resource,
        namespace: str,
        name: str,
        fencing: Fencing | None,
        *,
        writer: Writer | None = None,
    ) -> Resource:
        now = self.clock.wall()
        created = prepare_create(
            info,
            obj,
            namespace=namespace,
            name=name,
            uid=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            now=now,
        )
        if writer is not None:
            created = owned(info, None, created, writer, now)
        data = self._encode_checked(created)
        key = info.key(namespace, name)
        compares = [Compare.create_revision(key, "==", 0)]
        failure = [Op.get(key)]
        ns_key = BY_KIND["Namespace"].key("", namespace) if info.namespaced else None
        if ns_key is not None:
            # The namespace must exist and not be terminating, as of the same revision as
            # the create: compare on the mod_revision of the namespace we checked.
            ns_kv = await self.store.get(ns_key)
            if ns_kv is None:
                raise namespace_not_found(namespace)
            if msgspec.json.decode(ns_kv.value, type=Namespace).metadata.deletion_timestamp:
                raise namespace_terminating(namespace)
            compares.append(Compare.mod_revision(ns_key, "==", ns_kv.mod_revision))
            failure.append(Op.get(ns_key))
        quota_compares: list[Compare] = []
        quota_ops: list[Op] = []
        if isinstance(created, Instance):
            quota_compares, quota_ops = await self._charge_quotas(
                info, namespace, name, requests_of(created.spec)
            )
        fence_compares, fence_ops = self._guards(fencing)
        lease_id = 0
        if isinstance(created, Lease):
            lease_id = (await self.store.grant_lease(created.spec.lease_duration_seconds)).id
            self.writes.add(info.kind, "grant")
        try:
            result = await self.store.txn(
                compares + quota_compares + fence_compares,
                [Op.put(key, data, lease_id), *quota_ops],
                failure + fence_ops,
            )
        except BaseException:
            if lease_id:
                await self._revoke_quietly(info, lease_id)
            raise
        if not result.succeeded:
            if lease_id:
                await self._revoke_quietly(info, lease_id)
            fenced = self._fencing_failed(fencing, result)
            if fenced is not None:
                raise fenced
            existing = result.responses[0]
            assert isinstance(existing, RangeResult)
            if existing.kvs:
                raise already_exists(info, name)
            raise _NamespaceChanged(namespace)
        self.writes.add(info.kind, "create")
        for _ in quota_ops:
            self.writes.add("ResourceQuota", "admission")
        return with_revision(created, result.revision, result.revision)

    async def _charge_quotas(
        self, info: KindInfo, namespace: str, name: str, request: Usage
    ) -> tuple[list[Compare], list[Op]]:
        """Admission against the namespace's ResourceQuotas: 403 when `request` does not fit
        one, else the compares and writes that raise each ledger (`status.used`) in the
        same transaction as the Instance. A compare failing means a concurrent write moved
        a ledger: the caller looks again, so admitted requests never exceed a quota."""
        quotas_info = BY_KIND["ResourceQuota"]
        kvs = (await self.store.range(quotas_info.key_prefix(namespace))).kvs
        if not kvs:
            return [], []
        live: Usage | None = None
        entries: list[tuple[KeyValue, ResourceQuota, Usage]] = []
        for kv in kvs:
            quota = from_kv(quotas_info, kv)
            assert isinstance(quota, ResourceQuota)
            used = ledger(quota)
            if used is None:  # not recorded yet: count the Instances that exist
                if live is None:
                    instances = BY_KIND["Instance"]
                    listed = await self.store.range(instances.key_prefix(namespace))
                    objs = [from_kv(instances, i) for i in listed.kvs]
                    live = usage_of(o for o in objs if isinstance(o, Instance))
                used = live
            entries.append((kv, quota, used))
        reason = quota_decision([(quota, used) for _, quota, used in entries], request)
        if reason is not None:
            raise quota_exceeded(info, name, reason)
        compares: list[Compare] = []
        ops: list[Op] = []
        for kv, quota, used in entries:
            updated = charged(quota, used, request)
            if updated.status == quota.status:
                continue  # nothing it limits is requested: neither read nor written
            compares.append(Compare.mod_revision(kv.key, "==", kv.mod_revision))
            ops.append(Op.put(kv.key, self._encode_checked(updated)))
        return compares, ops

    async def _revoke_quietly(self, info: KindInfo, lease_id: int) -> None:
        try:
            await self.store.revoke_lease(lease_id)
            self.writes.add(info.kind, "revoke")
        except LeaseNotFound:
            pass

    # -- update

    async def update(
        self,
        info: KindInfo,
        namespace: str,
        name: str,
        mutate: Mutate,
        *,
        subresource: str | None = None,
        fencing: Fencing | None = None,
        verb: str = "update",
        writer: Writer | None = None,
    ) -> Resource:
        """Read, `mutate`, write back if unchanged meanwhile; retried on a lost race unless
        the mutated object names a resourceVersion (then that is a precondition: 409).
        `writer`: whose write it is, for managedFields and the registry's field owners."""
        key = info.key(namespace, name)
        for _ in range(_UPDATE_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                raise not_found(info, name)
            current = from_kv(info, kv)
            proposed = mutate(current)
            wanted = proposed.metadata.resource_version
            if wanted and wanted != current.metadata.resource_version:
                check_preconditions(info, current, Preconditions(resource_version=wanted))
            updated = prepare_update(info, current, proposed, subresource=subresource)
            if updated == current:
                return current  # nothing to write: an idle client writes nothing
            if writer is not None:
                updated = owned(
                    info, current, updated, writer, self.clock.wall(), subresource=subresource or ""
                )
            quota_compares: list[Compare] = []
            quota_ops: list[Op] = []
            if finished_deleting(updated):
                ops = [Op.delete(key)]
                data = b""
            else:
                data = self._encode_checked(updated)
                ops = [Op.put(key, data, kv.lease or None)]
                if isinstance(current, Instance) and isinstance(updated, Instance):
                    more = raised(requests_of(current.spec), requests_of(updated.spec))
                    if more:  # raising requests is admitted as a create of the difference
                        quota_compares, quota_ops = await self._charge_quotas(
                            info, namespace, name, more
                        )
            fence_compares, fence_ops = self._guards(fencing)
            result = await self.store.txn(
                [
                    Compare.mod_revision(key, "==", kv.mod_revision),
                    *quota_compares,
                    *fence_compares,
                ],
                [*ops, *quota_ops],
                fence_ops,
            )
            if result.succeeded:
                for _ in quota_ops:
                    self.writes.add("ResourceQuota", "admission")
                if not data:
                    self.writes.add(info.kind, "delete")
                    if kv.lease:
                        await self._revoke_quietly(info, kv.lease)
                else:
                    self.writes.add(info.kind, verb)
                return with_revision(updated, result.revision, kv.create_revision)
            fenced = self._fencing_failed(fencing, result)
            if fenced is not None:
                raise fenced
        raise conflict(info, name, "too many concurrent writers; try again")

    async def apply(
        self,
        info: KindInfo,
        namespace: str,
        name: str,
        applied: dict[str, Any],
        *,
        writer: Writer,
        force: bool,
        decode: Callable[[bytes], Resource],
        fencing: Fencing | None = None,
    ) -> tuple[Resource, bool]:
        """Server-side apply of `applied` (the manager's whole intent for the object) by
        `writer`: created if absent, else merged field by field with what other managers
        own (`keel.api.managedfields.apply`); 409 naming each conflicting field and its
        manager unless `force`. `decode` validates the merged object (422s). Returns the
        object and whether it was created."""
        intent = {k: v for k, v in applied.items() if k != "status"}  # status: a subresource
        key = info.key(namespace, name)
        for _ in range(_UPDATE_ATTEMPTS):
            kv = await self.store.get(key)
            current = from_kv(info, kv) if kv is not None else None
            now = self.clock.wall()
            result = apply_fields(
                builtins_of(current) if current is not None else None,
                intent,
                entries_of(current) if current is not None else [],
                manager=writer.manager,
                force=force,
                now=timestamp(now),
                api_version=str(applied.get("apiVersion") or API_VERSION),
            )
            if result.conflicts:
                raise apply_conflict(info, name, result.conflicts)
            proposed = decode(msgspec.json.encode(result.object))
            if current is None:
                try:
                    created = await self.create(
                        info, with_entries(proposed, result.entries), namespace=namespace,
                        fencing=fencing,
                    )  # fmt: skip
                except ApiError as exc:
                    if exc.reason == "AlreadyExists":
                        continue  # created meanwhile: apply onto it
                    raise
                return created, True
            meta = msgspec.structs.replace(proposed.metadata, resource_version="")
            updated = prepare_update(
                info, current, msgspec.structs.replace(proposed, metadata=meta), subresource=None
            )
            if writer.enforced:
                owned(info, current, updated, writer, now)  # refuses another's fields
            updated = with_entries(updated, result.entries)
            if updated == current:
                return current, False
            quota_compares: list[Compare] = []
            quota_ops: list[Op] = []
            if isinstance(current, Instance) and isinstance(updated, Instance):
                more = raised(requests_of(current.spec), requests_of(updated.spec))
                if more:  # raising requests is admitted as a create of the difference
                    quota_compares, quota_ops = await self._charge_quotas(
                        info, namespace, name, more
                    )
            fence_compares, fence_ops = self._guards(fencing)
            txn = await self.store.txn(
                [
                    Compare.mod_revision(key, "==", kv.mod_revision),  # type: ignore[union-attr]
                    *quota_compares,
                    *fence_compares,
                ],
                [
                    Op.put(key, self._encode_checked(updated), (kv.lease if kv else 0) or None),
                    *quota_ops,
                ],
                fence_ops,
            )
            if txn.succeeded:
                for _ in quota_ops:
                    self.writes.add("ResourceQuota", "admission")
                self.writes.add(info.kind, "patch")
                return with_revision(updated, txn.revision, kv.create_revision), False  # type: ignore[union-attr]
            fenced = self._fencing_failed(fencing, txn)
            if fenced is not None:
                raise fenced
        raise conflict(info, name, "too many concurrent writers; try again")

    async def bind(
        self,
        info: KindInfo,
        namespace: str,
        name: str,
        node: str,
        *,
        resource_version: str = "",
        fencing: Fencing | None = None,
        writer: Writer | None = None,
    ) -> Resource:
        """Set spec.nodeName once (the scheduler's binding), with OCC on the Instance and on
        the Node's room: see `bind_plan`."""
        [outcome] = await self.bind_plan(
            info,
            [PlannedBinding(namespace, name, node, resource_version)],
            fencing=fencing,
            writer=writer,
        )
        if outcome.error is not None:
            raise outcome.error
        assert outcome.bound is not None
        return outcome.bound

    async def bind_plan(
        self,
        info: KindInfo,
        plan: list[PlannedBinding],
        *,
        fencing: Fencing | None = None,
        writer: Writer | None = None,
    ) -> list[BindingOutcome]:
        """Commit every binding of `plan` that is still valid in ONE store transaction and
        say, per binding, why the others were refused (Nomad's plan apply).

        Each binding is checked against the Instance as stored (not found, being deleted,
        already bound, resourceVersion moved) and against its Node's room: the Node's
        offer minus what the Instances bound to it request (this server's watch cache,
        waited on until it has seen the Node's last binding) minus earlier bindings of the
        plan. The transaction compares each Instance's mod_revision and each Node's binding
        key (`keel.api.allocation.binding_key`), so a binding another scheduler committed
        meanwhile on one of those Nodes makes it fail and the plan is checked again:
        nothing that would overcommit a Node is ever applied."""
        if len(plan) > MAX_PLAN_BINDINGS:
            raise bad_request(
                f"bindings: at most {MAX_PLAN_BINDINGS} per plan (one store transaction), "
                f"got {len(plan)}"
            )
        outcomes: list[BindingOutcome | None] = [None] * len(plan)
        pending = list(range(len(plan)))
        for _ in range(_UPDATE_ATTEMPTS):
            keys = [info.key(plan[i].namespace, plan[i].name) for i in pending]
            nodes = sorted({plan[i].node for i in pending})
            read = await self.store.txn(
                [], [*(Op.get(k) for k in keys), *(Op.get(binding_key(n)) for n in nodes)], []
            )
            found = [_only(r) for r in read.responses[: len(keys)]]
            marks = dict(zip(nodes, (_only(r) for r in read.responses[len(keys) :]), strict=True))
            seen = max((kv.mod_revision for kv in marks.values() if kv is not None), default=0)
            if seen and self.fresh is not None and not await self.fresh(seen):
                # The cache must have seen each Node's last binding before it can vouch
                # for the room left: every binding writes its Node's key in its own txn.
                raise ApiError(
                    503,
                    "ServiceUnavailable",
                    "the watch cache is behind the store, so node room cannot be checked "
                    "now; retry the binding",
                    retry_after=1,
                )
            staged: dict[str, dict[str, int]] = {}
            accepted: list[tuple[int, KeyValue, Resource]] = []
            for i, kv in zip(pending, found, strict=True):
                binding = plan[i]
                try:
                    current, updated = self._bound(info, binding, kv)
                    if writer is not None:
                        now = self.clock.wall()
                        updated = owned(info, current, updated, writer, now, subresource="binding")
                except ApiError as exc:
                    outcomes[i] = BindingOutcome(binding, error=exc)
                    continue
                want = requested(updated.spec)  # type: ignore[attr-defined]
                short = self.rooms.check(binding.node, want, staged.get(binding.node))
                if short:
                    error = conflict(info, binding.name, short)
                    outcomes[i] = BindingOutcome(binding, error=error, no_room=True)
                    continue
                room = staged.setdefault(binding.node, {})
                for resource, amount in want.items():
                    room[resource] = room.get(resource, 0) + amount
                assert kv is not None
                accepted.append((i, kv, updated))
            if not accepted:
                break
            compares = [
                Compare.mod_revision(kv.key, "==", kv.mod_revision) for _, kv, _ in accepted
            ]
            ops = [
                Op.put(kv.key, self._encode_checked(updated), kv.lease or None)
                for _, kv, updated in accepted
            ]
            last_bound: dict[str, bytes] = {}
            for i, kv, _ in accepted:
                last_bound[plan[i].node] = kv.key
            for node, instance_key in sorted(last_bound.items()):
                mark = marks[node]
                compares.append(
                    Compare.mod_revision(binding_key(node), "==", mark.mod_revision)
                    if mark is not None
                    else Compare.create_revision(binding_key(node), "==", 0)
                )
                ops.append(Op.put(binding_key(node), instance_key))
            fence_compares, fence_ops = self._guards(fencing)
            result = await self.store.txn([*compares, *fence_compares], ops, fence_ops)
            if result.succeeded:
                for i, kv, updated in accepted:
                    self.writes.add(info.kind, "binding")
                    stored = with_revision(updated, result.revision, kv.create_revision)
                    outcomes[i] = BindingOutcome(plan[i], bound=stored)
                break
            fenced = self._fencing_failed(fencing, result)
            if fenced is not None:
                raise fenced
            pending = [i for i, _, _ in accepted]  # a race lost: check those again
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                why = conflict(info, plan[i].name, "too many concurrent writers; try again")
                outcomes[i] = BindingOutcome(plan[i], error=why)
        return [o for o in outcomes if o is not None]

    def _bound(
        self, info: KindInfo, binding: PlannedBinding, kv: KeyValue | None
    ) -> tuple[Resource, Resource]:
        """The Instance as stored and as `binding` would store it (ApiError when it may
        not be bound)."""
        if kv is None:
            raise not_found(info, binding.name)
        current = from_kv(info, kv)
        proposed = bind_instance(info, current, binding.node, binding.resource_version)
        bound = prepare_update(info, current, proposed, subresource="binding")
        return current, scheduled_now(bound, timestamp(self.clock.wall()))

    # -- delete

    async def delete(
        self,
        info: KindInfo,
        namespace: str,
        name: str,
        *,
        preconditions: Preconditions = Preconditions(),
        fencing: Fencing | None = None,
        propagation: PropagationPolicy | None = None,
    ) -> tuple[Resource, bool]:
        """Delete, or mark for deletion when finalizers remain (or `propagation` adds one).
        Returns the object (its last state) and whether it is gone."""
        key = info.key(namespace, name)
        for _ in range(_UPDATE_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                raise not_found(info, name)
            current = from_kv(info, kv)
            check_preconditions(info, current, preconditions)
            done = await self._delete_if_unchanged(
                info, kv, current, [], fencing, propagation=propagation
            )
            if done is not None:
                return done
        raise conflict(info, name, "too many concurrent writers; try again")

    async def _delete_if_unchanged(
        self,
        info: KindInfo,
        kv: KeyValue,
        current: Resource,
        compares: list[Compare],
        fencing: Fencing | None,
        *,
        propagation: PropagationPolicy | None = None,
    ) -> tuple[Resource, bool] | None:
        """Delete (or mark, with finalizers left) `current`, read as `kv`, if neither it nor
        what `compares` checks has changed since; None when something has (look again)."""
        action, target = plan_delete(current, self.clock.wall(), propagation)
        if action == "wait":
            return current, False
        fence_compares, fence_ops = self._guards(fencing)
        if action == "delete":
            op = Op.delete(kv.key)
        else:
            op = Op.put(kv.key, self._encode_checked(target), kv.lease or None)
        result = await self.store.txn(
            [Compare.mod_revision(kv.key, "==", kv.mod_revision), *compares, *fence_compares],
            [op],
            fence_ops,
        )
        if result.succeeded:
            if action == "delete":
                self.writes.add(info.kind, "delete")
                if kv.lease:
                    await self._revoke_quietly(info, kv.lease)
            else:
                self.writes.add(info.kind, "update")
            return with_revision(target, result.revision, kv.create_revision), action == "delete"
        fenced = self._fencing_failed(fencing, result)
        if fenced is not None:
            raise fenced
        return None

    # -- eviction

    async def evict(
        self,
        namespace: str,
        name: str,
        *,
        preconditions: Preconditions = Preconditions(),
        fencing: Fencing | None = None,
    ) -> tuple[Resource, EvictionDecision]:
        """Delete an Instance gracefully (finalizers honoured, as DELETE) if its Deployment's
        disruption budget allows; 429 naming the budget when it does not. The delete compares
        every Instance the decision counted as available, so a concurrent eviction (or any
        change to one of them) makes this one look again rather than both passing."""
        info, deployments = BY_KIND["Instance"], BY_KIND["Deployment"]
        key = info.key(namespace, name)
        for _ in range(_UPDATE_ATTEMPTS):
            kv = await self.store.get(key)
            if kv is None:
                raise not_found(info, name)
            current = from_kv(info, kv)
            assert isinstance(current, Instance)
            check_preconditions(info, current, preconditions)
            ref = controller_ref(current)
            deployment: Deployment | None = None
            siblings: list[Instance] = []
            read_at: dict[str, KeyValue] = {}
            if ref is not None and not current.metadata.deletion_timestamp:
                found = await self.store.get(deployments.key(namespace, ref.name))
                if found is not None:
                    stored = from_kv(deployments, found)
                    assert isinstance(stored, Deployment)
                    deployment = stored
                for sibling_kv in (await self.store.range(info.key_prefix(namespace))).kvs:
                    sibling = from_kv(info, sibling_kv)
                    assert isinstance(sibling, Instance)
                    siblings.append(sibling)
                    read_at[sibling.metadata.name] = sibling_kv
            decision = decide_eviction(current, deployment, siblings)
            if not decision.allowed:
                raise budget_exceeded(info, name, decision.message)
            counted = [
                Compare.mod_revision(read_at[n].key, "==", read_at[n].mod_revision)
                for n in decision.counted
                if n != name and n in read_at
            ]
            done = await self._delete_if_unchanged(info, kv, current, counted, fencing)
            if done is not None:
                return done[0], decision
        raise conflict(info, name, "too many concurrent evictions or writers; try again")

    # -- leases

    async def renew(self, namespace: str, name: str, holder: str, token: int) -> Resource:
        """A lease renewal is a store keep-alive, never a store write."""
        info = BY_KIND["Lease"]
        kv = await self.store.get(info.key(namespace, name))
        if kv is None:
            raise not_found(info, name)
        lease = from_kv(info, kv)
        assert isinstance(lease, Lease)
        if lease.spec.holder_identity != holder or kv.create_revision != token:
            raise conflict(
                info,
                name,
                f"held by {lease.spec.holder_identity!r} with fencing token "
                f"{kv.create_revision}, not {holder!r} with {token}",
            )
        try:
            await self.store.keepalive(kv.lease)
        except LeaseNotFound:
            raise not_found(info, name) from None
        self.renewals[(namespace, name)] = self.clock.wall()
        return lease

    # -- bootstrap

    async def ensure_namespaces(self, names: tuple[str, ...] = SYSTEM_NAMESPACES) -> None:
        info = BY_KIND["Namespace"]
        for name in names:
            if await self.store.get(info.key("", name)) is not None:
                continue
            obj = Namespace(metadata=ObjectMeta(name=name))
            try:
                await self.create(info, obj, namespace="")
            except ApiError as exc:
                if exc.reason != "AlreadyExists":  # another API server was quicker
                    raise
