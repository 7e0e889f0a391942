"""The columns shown per kind, as pure functions from an object to a row: `keel get` prints
them, and the API server answers `Accept: ...;as=Table;g=meta.k8s.io;v=v1` with them (so
`kubectl get` shows what `keel get` shows). In the api layer so that both may import it.

One table per kind (`TABLES`), with extra columns for `-o wide` (a Table column's priority
1); a kind without a table gets NAME and AGE. Telemetry (restart counts) arrives as
`Extras`, never fetched here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keel.api.quantity import parse_memory
from keel.api.resources import (
    Cluster,
    Condition,
    Deployment,
    Endpoints,
    Instance,
    Lease,
    Namespace,
    Node,
    Resource,
    ResourceQuota,
    Revision,
    Service,
)

GI = 2**30


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age(value: str | None, now: datetime | None = None) -> str:
    """A short age (`42s`, `5m`, `3h`, `2d`) since an RFC 3339 time; `<unknown>` if none."""
    then = parse_time(value)
    if then is None:
        return "<unknown>"
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m{seconds % 60}s" if minutes < 10 else f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h{minutes % 60}m" if hours < 10 else f"{hours}h"
    return f"{hours // 24}d"


def show_capacity(quantity: str) -> str:
    """A memory capacity as written when it is already short ("8Gi"), else in Gi."""
    try:
        size: int | None = parse_memory(quantity)
    except ValueError:
        size = None
    if size is None or size < GI or len(quantity) <= 5:
        return quantity
    gib = f"{size / GI:.1f}".removesuffix(".0")
    return f"{gib}Gi"


@dataclass(frozen=True)
class Extras:
    """What a row may show besides the object: restart counts from telemetry."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    # (namespace, instance) -> restarts; namespace "" when the record did not say
    restarts: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def restarts_of(self, obj: Resource) -> str:
        meta = obj.metadata
        count = self.restarts.get((meta.namespace, meta.name))
        if count is None:
            count = self.restarts.get(("", meta.name))
        return "-" if count is None else str(count)


Row = Callable[[Any, Extras], list[str]]


@dataclass(frozen=True)
class Table:
    headers: list[str]
    row: Row
    wide_headers: list[str] = field(default_factory=list)
    wide_row: Row | None = None


def condition(conditions: Sequence[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


def _join(values: Sequence[str], limit: int = 3) -> str:
    if not values:
        return "<none>"
    shown = ",".join(values[:limit])
    more = len(values) - limit
    return f"{shown} + {more} more..." if more > 0 else shown


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


# --------------------------------------------------------------------------- per kind


def _instance_ready(obj: Instance) -> str:
    ready = condition(obj.status.conditions, "Ready")
    return "1/1" if ready is not None and ready.status == "True" else "0/1"


def _instance_ports(obj: Instance) -> str:
    if obj.status.ports:
        return _join([f"{p.name}:{p.port}" for p in obj.status.ports], 4)
    return _join([f"{p.name}:{p.port or '*'}" for p in obj.spec.ports], 4)


def _instance(obj: Instance, extras: Extras) -> list[str]:
    return [
        obj.metadata.name,
        obj.spec.node_name or "<none>",
        obj.status.phase,
        _instance_ready(obj),
        _instance_ports(obj),
        extras.restarts_of(obj),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _instance_wide(obj: Instance, extras: Extras) -> list[str]:
    scheduled = condition(obj.status.conditions, "Scheduled")
    message = obj.status.message or (
        scheduled.message if scheduled is not None and scheduled.status == "False" else ""
    )
    return [
        obj.status.host_ip or "<none>",
        obj.metadata.labels.get("keel.dev/deployment", "<none>"),
        message or "<none>",
    ]


def _deployment(obj: Deployment, extras: Extras) -> list[str]:
    status = obj.status
    return [
        obj.metadata.name,
        f"{status.ready_replicas}/{obj.spec.replicas}",
        str(status.updated_replicas),
        str(status.available_replicas),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _deployment_wide(obj: Deployment, extras: Extras) -> list[str]:
    # Why it cannot create its Instances (a ResourceQuota refusing them), as `get -o wide`
    # shows an Instance's message.
    failure = condition(obj.status.conditions, "ReplicaFailure")
    failing = failure is not None and failure.status == "True"
    return [
        " ".join(obj.spec.template.spec.command),
        obj.spec.strategy.type,
        _labels(obj.spec.template.metadata.labels),
        f"{failure.reason}: {failure.message}" if failure is not None and failing else "<none>",
    ]


def node_status(obj: Node) -> str:
    ready = condition(obj.status.conditions, "Ready")
    status = (
        "Unknown" if ready is None else {"True": "Ready", "False": "NotReady"}.get(ready.status)
    )
    status = status or "Unknown"
    return f"{status},SchedulingDisabled" if obj.spec.unschedulable else status


def _node(obj: Node, extras: Extras) -> list[str]:
    return [
        obj.metadata.name,
        obj.spec.cluster or "<none>",
        node_status(obj),
        obj.spec.capacity.cpu,
        show_capacity(obj.spec.capacity.memory),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _node_wide(obj: Node, extras: Extras) -> list[str]:
    internal = [a.address for a in obj.status.addresses if a.type == "InternalIP"]
    return [_join(internal), str(len(obj.spec.taints))]


def _service_ports(obj: Service) -> str:
    ports = []
    for port in obj.spec.ports:
        target = f"->{port.target_port}" if port.target_port not in ("", port.port) else ""
        label = f"{port.name}:" if port.name else ""
        ports.append(f"{label}{port.port}{target}/{port.protocol}")
    return _join(ports, 4)


def _service(obj: Service, extras: Extras) -> list[str]:
    selector = _labels(obj.spec.selector) if obj.spec.selector is not None else "<external>"
    return [
        obj.metadata.name,
        selector,
        _service_ports(obj),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _endpoints(obj: Endpoints, extras: Extras) -> list[str]:
    addresses = [a for subset in obj.subsets for a in subset.addresses]
    ready = [f"{a.ip}:{a.port}" for a in addresses if a.ready]
    return [
        obj.metadata.name,
        _join(ready),
        f"{len(ready)}/{len(addresses)}",
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _lease(obj: Lease, extras: Extras) -> list[str]:
    return [
        obj.metadata.name,
        obj.spec.holder_identity,
        str(obj.status.fencing_token),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _lease_wide(obj: Lease, extras: Extras) -> list[str]:
    return [f"{obj.spec.lease_duration_seconds}s", age(obj.status.acquire_time, extras.now)]


def _cluster(obj: Cluster, extras: Extras) -> list[str]:
    ready = next((c for c in obj.status.conditions if c.type == "Ready"), None)
    return [
        obj.metadata.name,
        ready.reason if ready is not None and ready.reason else "<unknown>",
        obj.spec.region or "<none>",
        obj.spec.zone or "<none>",
        f"{obj.status.ready_nodes}/{obj.status.nodes}",
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _namespace(obj: Namespace, extras: Extras) -> list[str]:
    return [obj.metadata.name, obj.status.phase, age(obj.metadata.creation_timestamp, extras.now)]


def _revision(obj: Revision, extras: Extras) -> list[str]:
    return [
        obj.metadata.name,
        obj.spec.deployment,
        str(obj.spec.revision),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def quota_cell(obj: ResourceQuota, resource: str) -> str:
    """`used/hard` of one resource ("-" when the quota does not limit it; used "?" until
    it is first counted)."""
    hard = obj.spec.hard.get(resource)
    if hard is None:
        return "-"
    return f"{obj.status.used.get(resource, '?')}/{hard}"


_QUOTA_COLUMNS = ("cpu", "memory", "instances")


def _quota(obj: ResourceQuota, extras: Extras) -> list[str]:
    return [
        obj.metadata.name,
        *(quota_cell(obj, resource) for resource in _QUOTA_COLUMNS),
        age(obj.metadata.creation_timestamp, extras.now),
    ]


def _quota_wide(obj: ResourceQuota, extras: Extras) -> list[str]:
    others = [f"{r}={quota_cell(obj, r)}" for r in sorted(obj.spec.hard) if r not in _QUOTA_COLUMNS]
    return [_join(others, 4)]


def _generic(obj: Resource, extras: Extras) -> list[str]:
    return [obj.metadata.name, age(obj.metadata.creation_timestamp, extras.now)]


TABLES: dict[str, Table] = {
    "Instance": Table(
        ["NAME", "NODE", "PHASE", "READY", "PORTS", "RESTARTS", "AGE"],
        _instance,
        ["IP", "DEPLOYMENT", "MESSAGE"],
        _instance_wide,
    ),
    "Deployment": Table(
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        _deployment,
        ["COMMAND", "STRATEGY", "LABELS", "MESSAGE"],
        _deployment_wide,
    ),
    "Node": Table(
        ["NAME", "CLUSTER", "STATUS", "CPU", "MEMORY", "AGE"],
        _node,
        ["INTERNAL-IP", "TAINTS"],
        _node_wide,
    ),
    "Service": Table(["NAME", "SELECTOR", "PORTS", "AGE"], _service),
    "Endpoints": Table(["NAME", "ENDPOINTS", "READY", "AGE"], _endpoints),
    "Lease": Table(
        ["NAME", "HOLDER", "TOKEN", "AGE"], _lease, ["DURATION", "ACQUIRED"], _lease_wide
    ),
    "Cluster": Table(["NAME", "STATUS", "REGION", "ZONE", "NODES", "AGE"], _cluster),
    "Namespace": Table(["NAME", "STATUS", "AGE"], _namespace),
    "Revision": Table(["NAME", "DEPLOYMENT", "REVISION", "AGE"], _revision),
    "ResourceQuota": Table(
        ["NAME", "CPU", "MEMORY", "INSTANCES", "AGE"], _quota, ["OTHER"], _quota_wide
    ),
}


def table_for(kind: str, *, wide: bool, with_namespace: bool) -> tuple[list[str], Row]:
    """Headers and row function for a kind, with `-o wide` and `-A` columns."""
    table = TABLES.get(kind, Table(["NAME", "AGE"], _generic))
    headers = list(table.headers)
    rows: list[Row] = [table.row]
    if wide and table.wide_row is not None:
        headers += table.wide_headers
        rows.append(table.wide_row)
    if with_namespace:
        headers.insert(0, "NAMESPACE")

    def row(obj: Any, extras: Extras) -> list[str]:
        cells = [cell for fn in rows for cell in fn(obj, extras)]
        if with_namespace:
            cells.insert(0, obj.metadata.namespace)
        return cells

    return headers, row
