"""`keel get KIND [NAME]`: objects as a table (or wide, yaml, json, name), optionally `-w`
streaming a row per change. Restart counts of instances come from telemetry when present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from keel.api.registry import KINDS, KindInfo
from keel.api.resources import Resource
from keel.cli._common import (
    Session,
    add_connection_args,
    command,
    qualified,
    resolve_kind,
    to_builtins,
)
from keel.cli._tables import Extras, Printer, table_for
from keel.client import ApiError, KeelClient

OUTPUTS = ("wide", "yaml", "json", "name")
EXTRAS_MAX_AGE = 5.0  # seconds a watch shows the same restart counts before reading again


def add_get_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "get",
        help="list objects of a kind, or show one",
        description="Show objects of a kind (plural, singular or short name) as a table, "
        "YAML or JSON; -w keeps streaming changes.",
        epilog="kinds: " + ", ".join(_kind_names()),
    )
    parser.add_argument("kind", metavar="KIND")
    parser.add_argument("name", metavar="NAME", nargs="?")
    parser.add_argument("-o", "--output", choices=OUTPUTS, help="output format")
    parser.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector")
    parser.add_argument("--field-selector", metavar="S", help="field selector")
    parser.add_argument("-w", "--watch", action="store_true", help="after listing, stream changes")
    add_connection_args(parser, all_namespaces=True)
    parser.set_defaults(run=command(_get))


def _kind_names() -> list[str]:
    return [
        info.plural + (f" ({', '.join(info.short_names)})" if info.short_names else "")
        for info in KINDS
    ]


def _list_namespace(info: KindInfo, args: argparse.Namespace, session: Session) -> str | None:
    if not info.namespaced or (args.all_namespaces and not args.name):
        return None
    return session.namespace


async def _get(args: argparse.Namespace, session: Session) -> int:
    info = resolve_kind(args.kind)
    client = session.client
    namespace = _list_namespace(info, args, session)
    field_selector = args.field_selector
    if args.name:
        by_name = f"metadata.name={args.name}"
        field_selector = f"{field_selector},{by_name}" if field_selector else by_name

    resource_version = ""
    if args.name and not args.watch:
        objects: list[Resource] = [await client.get(info, args.name, namespace=namespace)]
    else:
        listed = await client.list(
            info,
            namespace=namespace,
            label_selector=args.selector,
            field_selector=field_selector,
        )
        objects = sorted(listed.items, key=lambda o: (o.metadata.namespace, o.metadata.name))
        resource_version = listed.resource_version
        if args.name and not objects:
            await client.get(info, args.name, namespace=namespace)  # raises NotFound

    with_namespace = info.namespaced and namespace is None
    headers, row = table_for(info.kind, wide=args.output == "wide", with_namespace=with_namespace)
    printer = Printer(headers)
    extras = await instance_extras(client, info, namespace)
    output: str | None = args.output

    if output in ("json", "yaml"):
        if not args.name:
            _emit(output, _as_list(objects), first=True)
        elif objects:
            _emit(output, objects[0], first=True)
    elif output == "name":
        for obj in objects:
            print(qualified(info, obj.metadata.name))
    elif objects:
        print("\n".join(printer.render([row(obj, extras) for obj in objects])))
    elif not args.watch:
        where = f" in {namespace} namespace" if namespace else ""
        print(f"No resources found{where}.", file=sys.stderr)
    sys.stdout.flush()

    if not args.watch:
        return 0
    header_printed = bool(objects)
    first = not objects
    extras_at = time.monotonic()
    watch = client.watch(
        info,
        namespace=namespace,
        resource_version=resource_version,
        label_selector=args.selector,
        field_selector=field_selector,
    )
    try:
        async for event in watch:
            changed = event.object
            if changed is None or event.type not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            if output in ("json", "yaml"):
                _emit(output, changed, first=first)
            elif output == "name":
                print(qualified(info, changed.metadata.name))
            else:
                if time.monotonic() - extras_at > EXTRAS_MAX_AGE:
                    extras = await instance_extras(client, info, namespace)
                    extras_at = time.monotonic()
                cells = row(changed, extras)
                lines = printer.render([cells], header=not header_printed)
                header_printed = True
                print("\n".join(lines))
            first = False
            sys.stdout.flush()
    finally:
        await watch.aclose()
    return 0


async def instance_extras(client: KeelClient, info: KindInfo, namespace: str | None) -> Extras:
    """Restart counts of instances, from telemetry; none when it cannot be read."""
    if info.kind != "Instance":
        return Extras()
    try:
        records = await client.get_telemetry("instanceusages", namespace=namespace)
    except ApiError:
        return Extras()
    restarts: dict[tuple[str, str], int] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("restarts"), int):
            restarts[(namespace or "", str(record.get("instance", "")))] = record["restarts"]
    return Extras(restarts=restarts)


def _as_list(objects: Sequence[Resource]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": [to_builtins(o) for o in objects]}


def _emit(output: str, value: object, *, first: bool) -> None:
    data = to_builtins(value) if isinstance(value, Resource) else value
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    if not first:
        print("---")
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
