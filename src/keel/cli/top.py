"""`keel top nodes|instances`: current cpu and memory use, from the telemetry agents report
(node heartbeats, instance usages); nothing here reads or writes the store's history.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keel.api.resources import Instance, Node
from keel.cli._common import CommandError, Session, add_connection_args, command
from keel.cli._tables import Printer
from keel.cli._units import cpu, memory, show_cpu, show_memory

TARGETS = {"nodes": "nodes", "node": "nodes", "no": "nodes"} | {
    "instances": "instances",
    "instance": "instances",
    "inst": "instances",
}


def add_top_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "top",
        help="cpu and memory use of nodes or instances",
        description="Show current cpu and memory use reported by the agents.",
    )
    parser.add_argument("target", metavar="nodes|instances")
    add_connection_args(parser, all_namespaces=True)
    parser.set_defaults(run=command(_top))


async def _top(args: argparse.Namespace, session: Session) -> int:
    target = TARGETS.get(args.target.lower())
    if target is None:
        raise CommandError(f"top: expected nodes or instances, not {args.target!r}")
    lines = await (_nodes(session) if target == "nodes" else _instances(args, session))
    if not lines:
        print("No usage reported yet (agents send it every few seconds).", file=sys.stderr)
        return 0
    print("\n".join(lines))
    return 0


def _percent(used: int | None, total: int) -> str:
    if used is None or total <= 0:
        return "-"
    return f"{100 * used // total}%"


async def _nodes(session: Session) -> list[str]:
    client = session.client
    beats = {
        str(b.get("node")): b
        for b in await client.get_telemetry("nodeheartbeats")
        if isinstance(b, dict)
    }
    nodes = {n.metadata.name: n for n in (await client.list(Node)).items}
    printer = Printer(["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"])
    rows = []
    for name in sorted(set(beats) | set(nodes)):
        beat = beats.get(name, {})
        used_cpu, used_memory = cpu(beat.get("cpuUsage")), memory(beat.get("memoryUsage"))
        node = nodes.get(name)
        capacity = node.spec.capacity if node is not None else None
        rows.append(
            [
                name,
                show_cpu(used_cpu),
                _percent(used_cpu, capacity.millicpu) if capacity else "-",
                show_memory(used_memory),
                _percent(used_memory, capacity.memory_bytes) if capacity else "-",
            ]
        )
    return printer.render(rows) if beats else []


async def _instances(args: argparse.Namespace, session: Session) -> list[str]:
    client = session.client
    namespace = None if args.all_namespaces else session.namespace
    usages = [u for u in await client.get_telemetry("instanceusages", namespace=namespace)]
    if not usages:
        return []
    headers = ["NAME", "NODE", "CPU(cores)", "MEMORY(bytes)", "RESTARTS"]
    namespaces: dict[tuple[str, str], str] = {}
    if namespace is None:
        # Usage records do not carry their namespace: find it from the instances.
        headers.insert(0, "NAMESPACE")
        for inst in (await client.list(Instance, namespace=None)).items:
            namespaces[(inst.metadata.name, inst.spec.node_name)] = inst.metadata.namespace
            namespaces.setdefault((inst.metadata.name, ""), inst.metadata.namespace)
    printer = Printer(headers)
    rows = []
    for usage in sorted(
        (u for u in usages if isinstance(u, dict)), key=lambda u: str(u.get("instance"))
    ):
        name, node = str(usage.get("instance", "")), str(usage.get("node", ""))
        row = [
            name,
            node or "<none>",
            show_cpu(cpu(usage.get("cpu"))),
            show_memory(memory(usage.get("memory"))),
            str(usage.get("restarts", "-")),
        ]
        if namespace is None:
            found = namespaces.get((name, node)) or namespaces.get((name, ""), "<unknown>")
            row.insert(0, found)
        rows.append(row)
    if namespace is None:
        rows.sort()
    return printer.render(rows)
