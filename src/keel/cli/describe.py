"""`keel describe KIND NAME`: one object for a person to read: identity, owner, a summary of
its spec and status, its conditions, and its recent events (from telemetry, never stored).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from keel.api.columns import age
from keel.api.registry import KindInfo
from keel.api.resources import (
    Condition,
    Deployment,
    HealthCheck,
    Instance,
    InstanceSpec,
    Lease,
    Node,
    Resource,
    ResourceQuota,
    Service,
)
from keel.cli._common import (
    Session,
    add_connection_args,
    command,
    resolve_kind,
    to_builtins,
)
from keel.cli._tables import Printer, node_status
from keel.cli._units import cpu, memory, show_cpu, show_memory
from keel.client import ApiError, KeelClient

Lines = list[tuple[str, str]]


def add_describe_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "describe",
        help="show one object in detail, with its conditions and recent events",
        description="Show an object's spec summary, status, conditions, owner and recent events.",
    )
    parser.add_argument("kind", metavar="KIND")
    parser.add_argument("names", metavar="NAME", nargs="+")
    add_connection_args(parser)
    parser.set_defaults(run=command(_describe))


async def _describe(args: argparse.Namespace, session: Session) -> int:
    info = resolve_kind(args.kind)
    namespace = session.namespace if info.namespaced else None
    texts = []
    for name in args.names:
        obj = await session.client.get(info, name, namespace=namespace)
        texts.append(await describe(session, info, obj))
    print("\n\n".join(texts))
    return 0


async def describe(session: Session, info: KindInfo, obj: Resource) -> str:
    now = datetime.now(UTC)
    meta = obj.metadata
    lines: Lines = [("Name", meta.name)]
    if info.namespaced:
        lines.append(("Namespace", meta.namespace))
    lines += [
        ("Kind", info.kind),
        ("Labels", _mapping(meta.labels)),
        ("Annotations", _mapping(meta.annotations)),
        (
            "Created",
            f"{meta.creation_timestamp or '<unknown>'} ({age(meta.creation_timestamp, now)} ago)",
        ),
    ]
    owners = [
        f"{ref.kind}/{ref.name}{' (controller)' if ref.controller else ''}"
        for ref in meta.owner_references
    ]
    lines.append(("Owner", ", ".join(owners) or "<none>"))
    if meta.finalizers:
        lines.append(("Finalizers", ", ".join(meta.finalizers)))
    if meta.deletion_timestamp:
        lines.append(("Deleting since", meta.deletion_timestamp))

    client = session.client
    blocks: list[str] = []
    conditions: Sequence[Condition] = ()
    if isinstance(obj, Instance):
        lines += await _instance(client, obj)
        conditions = obj.status.conditions
    elif isinstance(obj, Deployment):
        lines += _deployment(obj)
        conditions = obj.status.conditions
    elif isinstance(obj, Node):
        lines += await _node(client, obj)
        conditions = obj.status.conditions
    elif isinstance(obj, Service):
        lines += await _service(client, obj)
    elif isinstance(obj, Lease):
        lines += _lease(obj, now)
    elif isinstance(obj, ResourceQuota):
        blocks.append(_quota(obj))
    else:
        data = to_builtins(obj)
        assert isinstance(data, dict)
        for section in [k for k in data if k not in ("apiVersion", "kind", "metadata")]:
            dumped = yaml.safe_dump(data[section], sort_keys=False, default_flow_style=False)
            blocks.append(f"{section.capitalize()}:\n" + _indent(dumped.rstrip()))
        status = getattr(obj, "status", None)
        conditions = getattr(status, "conditions", ()) or ()

    text = _fields(lines)
    if blocks:
        text += "\n" + "\n".join(blocks)
    text += "\n" + _conditions(conditions, now)
    text += "\n" + await _events(session, info, obj, now)
    return text


# --------------------------------------------------------------------------- per kind


def _command(spec: InstanceSpec) -> str:
    return " ".join(spec.command)


def _health(check: HealthCheck | None) -> str:
    if check is None:
        return "<none>"
    if check.type == "http":
        target = f"http :{check.port}{check.path}"
    elif check.type == "tcp":
        target = f"tcp :{check.port}"
    else:
        target = "exec " + " ".join(check.command)
    return (
        f"{target} every {check.period_seconds}s, timeout {check.timeout_seconds}s, "
        f"delay {check.initial_delay_seconds}s, failure threshold {check.failure_threshold}"
    )


def _template_lines(spec: InstanceSpec) -> Lines:
    return [
        ("Command", _command(spec)),
        ("Working dir", spec.working_dir or "<default>"),
        ("Env", _mapping(spec.env)),
        ("Requests", f"cpu={spec.resources.cpu}, memory={spec.resources.memory}"),
        ("Ports", ", ".join(f"{p.name}:{p.port or 'auto'}" for p in spec.ports) or "<none>"),
        ("Health check", _health(spec.health_check)),
        ("Liveness check", _health(spec.liveness_check)),
        ("Restart policy", spec.restart_policy),
        ("Exclusive", "yes" if spec.exclusive else "no"),
    ]


async def _instance(client: KeelClient, obj: Instance) -> Lines:
    status = obj.status
    lines: Lines = [("Node", obj.spec.node_name or "<not scheduled>")]
    lines += _template_lines(obj.spec)
    lines += [
        ("Phase", status.phase),
        ("Host IP", status.host_ip or "<none>"),
        ("Assigned ports", ", ".join(f"{p.name}={p.port}" for p in status.ports) or "<none>"),
        ("Started", status.started_at or "<not started>"),
    ]
    if status.message:
        lines.append(("Message", status.message))
    usage = await _telemetry(client, "instanceusages", obj.metadata.name, obj.metadata.namespace)
    if usage:
        lines += [
            ("Restarts", str(usage.get("restarts", "-"))),
            ("Usage", _usage(usage.get("cpu"), usage.get("memory"))),
        ]
    return lines


def _deployment(obj: Deployment) -> Lines:
    spec, status = obj.spec, obj.status
    placement = spec.placement
    lines: Lines = [
        (
            "Replicas",
            f"{spec.replicas} desired | {status.updated_replicas} updated | "
            f"{status.ready_replicas} ready | {status.available_replicas} available",
        ),
        ("Strategy", spec.strategy.type + (" (paused)" if spec.paused else "")),
        (
            "Placement",
            f"clusters={','.join(placement.clusters) or 'any'}, "
            f"spread across {placement.spread_across}",
        ),
        (
            "Cluster failover",
            placement.cluster_failover
            + (
                f" (grace {placement.failover_grace_seconds}s)"
                if placement.cluster_failover == "Graceful"
                else ""
            )
            + (", rebalance" if placement.rebalance else ""),
        ),
        ("Revision", status.update_revision or "<none>"),
        (
            "Observed gen.",
            f"{status.observed_generation} (spec generation {obj.metadata.generation})",
        ),
        ("Template labels", _mapping(spec.template.metadata.labels)),
    ]
    return lines + _template_lines(spec.template.spec)


async def _node(client: KeelClient, obj: Node) -> Lines:
    spec, status = obj.spec, obj.status
    lines: Lines = [
        ("Cluster", spec.cluster or "<none>"),
        ("Status", node_status(obj)),
        ("Capacity", f"cpu={spec.capacity.cpu}, memory={spec.capacity.memory}"),
    ]
    if status.allocatable is not None:
        lines.append(
            (
                "Allocatable",
                f"cpu={status.allocatable.cpu}, memory={status.allocatable.memory}",
            )
        )
    lines += [
        ("Addresses", ", ".join(f"{a.type}={a.address}" for a in status.addresses) or "<none>"),
        ("Taints", ", ".join(f"{t.key}={t.value}:{t.effect}" for t in spec.taints) or "<none>"),
    ]
    beat = await _telemetry(client, "nodeheartbeats", obj.metadata.name, None)
    if beat:
        lines.append(
            (
                "Usage",
                f"{_usage(beat.get('cpuUsage'), beat.get('memoryUsage'))} "
                f"(heartbeat {beat.get('time', '?')})",
            )
        )
    return lines


async def _service(client: KeelClient, obj: Service) -> Lines:
    selector = obj.spec.selector
    lines: Lines = [
        ("Selector", _mapping(selector) if selector is not None else "<external>"),
        (
            "Ports",
            ", ".join(
                f"{p.name or '-'} {p.port}->{p.target_port or p.port}/{p.protocol}"
                for p in obj.spec.ports
            )
            or "<none>",
        ),
    ]
    try:
        endpoints = await client.get(
            "endpoints", obj.metadata.name, namespace=obj.metadata.namespace
        )
    except ApiError:
        return [*lines, ("Endpoints", "<none>")]
    addresses = [
        f"{a.ip}:{a.port}{'' if a.ready else ' (not ready)'}"
        for subset in getattr(endpoints, "subsets", [])
        for a in subset.addresses
    ]
    return [*lines, ("Endpoints", ", ".join(addresses) or "<none>")]


def _lease(obj: Lease, now: datetime) -> Lines:
    return [
        ("Holder", obj.spec.holder_identity),
        ("Duration", f"{obj.spec.lease_duration_seconds}s"),
        ("Fencing token", str(obj.status.fencing_token)),
        (
            "Acquired",
            f"{obj.status.acquire_time or '<unknown>'} ({age(obj.status.acquire_time, now)} ago)",
        ),
    ]


def _quota(obj: ResourceQuota) -> str:
    """As `kubectl describe quota`: one row per limited resource, used beside hard."""
    rows = [("Resource", "Used", "Hard"), ("--------", "----", "----")]
    rows += [(r, obj.status.used.get(r, "?"), obj.spec.hard[r]) for r in sorted(obj.spec.hard)]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(
        f"{row[0].ljust(widths[0])}   {row[1].ljust(widths[1])}   {row[2]}".rstrip() for row in rows
    )


# --------------------------------------------------------------------------- sections


def _usage(cpu_value: object, memory_value: object) -> str:
    return f"cpu={show_cpu(cpu(cpu_value))}, memory={show_memory(memory(memory_value))}"


async def _telemetry(
    client: KeelClient, kind: str, name: str, namespace: str | None
) -> dict[str, Any] | None:
    try:
        record = await client.get_telemetry(kind, name, namespace=namespace)
    except ApiError:
        return None
    return record if isinstance(record, dict) else None


def _conditions(conditions: Sequence[Condition], now: datetime) -> str:
    if not conditions:
        return "Conditions:   <none>"
    printer = Printer(["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"])
    rows = [
        [
            c.type,
            c.status,
            c.reason or "-",
            c.message or "-",
            age(c.last_transition_time, now) if c.last_transition_time else "-",
        ]
        for c in conditions
    ]
    return "Conditions:\n" + _indent("\n".join(printer.render(rows)))


async def _events(session: Session, info: KindInfo, obj: Resource, now: datetime) -> str:
    # Events of cluster-scoped objects are filed under the reporter's namespace (the
    # client's, by default): look there.
    namespace = obj.metadata.namespace or session.namespace
    try:
        events = await session.client.events(namespace, obj.metadata.name)
    except ApiError:
        events = []
    mine = [
        e
        for e in events
        if str(e.get("involvedObject", {}).get("kind", info.kind)).lower()
        in (info.kind.lower(), info.plural)
    ]
    if not mine:
        return "Events:       <none>"
    printer = Printer(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"])
    rows = [
        [
            str(e.get("type", "")),
            str(e.get("reason", "")),
            age(e.get("time"), now),
            str(e.get("source") or e.get("node") or "-"),
            str(e.get("message", "")),
        ]
        for e in mine[-20:]
    ]
    return "Events:\n" + _indent("\n".join(printer.render(rows)))


def _mapping(values: Mapping[str, str] | None) -> str:
    if not values:
        return "<none>"
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _fields(lines: Lines) -> str:
    width = max(len(label) for label, _ in lines) + 2
    return "\n".join(f"{(label + ':').ljust(width)}{value}" for label, value in lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())
