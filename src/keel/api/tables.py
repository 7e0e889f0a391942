"""meta.k8s.io/v1 Table answers (what `kubectl get` asks for), built from the same column
definitions `keel get` prints (`keel.api.columns`), wide columns at priority 1. Pure: objects
in, JSON-ready dicts out; the server decides when a request wants a Table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from keel.api.columns import TABLES, Extras, Table, age
from keel.api.resources import Resource

TABLE_GROUP = "meta.k8s.io"
TABLE_VERSIONS = ("v1", "v1beta1")
INCLUDE_OBJECT = ("None", "Metadata", "Object")

_DESCRIPTIONS = {
    "NAME": "Name must be unique within a namespace.",
    "AGE": "Time since the object was created (metadata.creationTimestamp).",
}


def table_version(accept: str) -> str | None:
    """The meta.k8s.io Table version an Accept header asks for first (kubectl sends
    `application/json;as=Table;v=v1;g=meta.k8s.io,application/json`), else None."""
    for media in accept.split(","):
        parts = [p.strip() for p in media.split(";")]
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if parts[0] != "application/json":
            continue
        if params.get("as") == "Table" and params.get("g") == TABLE_GROUP:
            if params.get("v") in TABLE_VERSIONS:
                return params["v"]
            continue
        if not params.get("as"):
            return None
    return None


def content_type(version: str) -> str:
    return f"application/json;as=Table;v={version};g={TABLE_GROUP}"


def column_definitions(kind: str) -> list[dict[str, Any]]:
    """A kind's columns as TableColumnDefinitions: `keel get`'s, then `-o wide`'s."""
    table = TABLES.get(kind, Table(["NAME", "AGE"], lambda obj, extras: []))
    columns: list[dict[str, Any]] = []
    for priority, headers in ((0, table.headers), (1, table.wide_headers)):
        for header in headers:
            columns.append(
                {
                    "name": header.title() if header != "NAME" else "Name",
                    "type": "string",
                    "format": "name" if header == "NAME" else "",
                    "description": _DESCRIPTIONS.get(header, f"{header.lower()} ({kind})"),
                    "priority": priority,
                }
            )
    return columns


def cells(obj: Resource, extras: Extras) -> list[str]:
    """One row's cells, every column (wide ones too: kubectl hides priority > 0)."""
    table = TABLES.get(obj.kind_name)
    if table is None:
        return [obj.metadata.name, age(obj.metadata.creation_timestamp, extras.now)]
    row = table.row(obj, extras)
    if table.wide_row is not None:
        row += table.wide_row(obj, extras)
    return row


def _row_object(obj: Resource, data: bytes | None, include: str) -> Any:
    if include == "None":
        return None
    if include == "Object":
        return msgspec.json.decode(data) if data is not None else msgspec.to_builtins(obj)
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"{TABLE_GROUP}/v1",
        "metadata": msgspec.to_builtins(obj.metadata),
    }


def table(
    kind: str,
    objects: Iterable[tuple[Resource, bytes | None]],
    extras: Extras,
    *,
    version: str = "v1",
    include: str = "Metadata",
    list_meta: Mapping[str, Any] | None = None,
    with_columns: bool = True,
) -> dict[str, Any]:
    """A Table of `objects` ((object, its wire form or None) pairs)."""
    rows = []
    for obj, data in objects:
        row: dict[str, Any] = {"cells": cells(obj, extras)}
        included = _row_object(obj, data, include)
        if included is not None:
            row["object"] = included
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"{TABLE_GROUP}/{version}",
        "metadata": dict(list_meta or {}),
        "columnDefinitions": column_definitions(kind) if with_columns else [],
        "rows": rows,
    }


def restarts_from_usage(records: Sequence[Any]) -> dict[tuple[str, str], int]:
    """(namespace, instance) -> restarts from instanceusages telemetry records."""
    restarts: dict[tuple[str, str], int] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("restarts"), int):
            key = (str(record.get("namespace", "")), str(record.get("instance", "")))
            restarts[key] = record["restarts"]
    return restarts


# Telemetry as Tables, so `kubectl get nodeheartbeats,instanceusages` works too: (column,
# field path) per kind; events take the core Event table (keel.api.core).
TELEMETRY_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "nodeheartbeats": (("Node", "node"), ("CPU", "cpuUsage"), ("Memory", "memoryUsage"),
                       ("Time", "time")),
    "instanceusages": (("Instance", "instance"), ("Node", "node"), ("CPU", "cpu"),
                       ("Memory", "memory"), ("Restarts", "restarts")),
}  # fmt: skip


def telemetry_table(kind: str, records: Sequence[Any], version: str = "v1") -> dict[str, Any]:
    """Heartbeats or usages as a Table (the first column names the row)."""
    columns = TELEMETRY_COLUMNS[kind]
    rows = []
    for record in records:
        if not isinstance(record, dict):
            continue
        cells = [str(record.get(path, "")) for _, path in columns]
        rows.append(
            {
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": f"{TABLE_GROUP}/v1",
                    "metadata": {"name": cells[0]},
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": f"{TABLE_GROUP}/{version}",
        "metadata": {},
        "columnDefinitions": [
            {
                "name": name,
                "type": "string",
                "format": "name" if i == 0 else "",
                "description": f"{path} (telemetry, never stored)",
                "priority": 0,
            }
            for i, (name, path) in enumerate(columns)
        ],
        "rows": rows,
    }
