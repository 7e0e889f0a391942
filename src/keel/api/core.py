"""The core group (`/api/v1`) that tools written for Kubernetes look for: Namespaces and Events.

Namespaces are keel.dev's own objects (one source of truth): a request to
`/api/v1/namespaces/...` is served by the keel.dev handler, its body's `apiVersion: v1` read
as keel.dev/v1 and the answer's written back as v1. Events are telemetry (never stored),
shown in the shape of core/v1 Event. Pure functions; the server wires them to HTTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from starlette.responses import Response, StreamingResponse

from keel.api.columns import age
from keel.api.resources import API_VERSION
from keel.api.tables import TABLE_GROUP

_KEEL_NAMESPACE = b'"apiVersion":"' + API_VERSION.encode() + b'","kind":"Namespace'
_CORE_NAMESPACE = b'"apiVersion":"v1","kind":"Namespace'
EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "type",
    "reason",
    "metadata.namespace",
)


def to_keel_body(body: bytes) -> bytes:
    """A request body with `apiVersion: v1` read as keel.dev/v1 (anything else unchanged)."""
    try:
        document = json.loads(body) if body.strip() else None
    except ValueError:
        return body  # the handler reports it
    if (
        isinstance(document, dict)
        and document.get("apiVersion") == "v1"
        and document.get("kind") in (None, "Namespace")
    ):
        document["apiVersion"] = API_VERSION
        return json.dumps(document).encode()
    return body


_KEEL_BOOKMARK = b'"kind":"Namespace","apiVersion":"' + API_VERSION.encode() + b'"'
_CORE_BOOKMARK = b'"kind":"Namespace","apiVersion":"v1"'


def to_core_bytes(data: bytes) -> bytes:
    return data.replace(_KEEL_NAMESPACE, _CORE_NAMESPACE).replace(_KEEL_BOOKMARK, _CORE_BOOKMARK)


def to_core_response(response: Response) -> Response:
    """The keel.dev handler's answer with its Namespaces as core v1 objects."""
    if isinstance(response, StreamingResponse):
        source = response.body_iterator

        async def rewritten() -> AsyncIterator[bytes]:
            async for chunk in source:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                yield to_core_bytes(data)

        response.body_iterator = rewritten()
        return response
    headers = {
        k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
    }
    return Response(
        to_core_bytes(bytes(response.body)),
        status_code=response.status_code,
        headers=headers,
        media_type=response.headers.get("content-type"),
    )


# --------------------------------------------------------------------------- events


def core_event(record: dict[str, Any]) -> dict[str, Any]:
    """A telemetry event as a core/v1 Event (named after its object and a digest of it)."""
    involved = record.get("involvedObject", {})
    namespace = involved.get("namespace") or "default"
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    when = record.get("time")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{involved.get('name', 'unknown')}.{digest}",
            "namespace": namespace,
            "creationTimestamp": when,
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": involved.get("kind", ""),
            "name": involved.get("name", ""),
            "namespace": involved.get("namespace", ""),
        },
        "reason": record.get("reason", ""),
        "message": record.get("message", ""),
        "type": record.get("type", "Normal"),
        "source": {"component": record.get("source", ""), "host": record.get("node", "")},
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
        "reportingComponent": record.get("source", ""),
        "reportingInstance": record.get("node", ""),
    }


def telemetry_event(event: dict[str, Any], namespace: str | None, now: str) -> dict[str, Any]:
    """A core/v1 Event, as an event recorder posts it (client-go's, the Python client's),
    as the telemetry record Keel keeps (validated by the caller): the object, reason,
    message and type, the newest of its times (else `now`), the reporting component."""
    involved = event.get("involvedObject") or event.get("regarding") or {}
    source = event.get("source") or {}
    when = (
        event.get("eventTime") or event.get("lastTimestamp") or event.get("firstTimestamp") or now
    )
    record: dict[str, Any] = {
        "involvedObject": {
            "kind": involved.get("kind", ""),
            "name": involved.get("name", ""),
            "namespace": involved.get("namespace") or namespace or "",
        },
        "reason": event.get("reason", ""),
        "message": event.get("message") or event.get("note") or "",
        "type": event.get("type") or "Normal",
        "time": when,
        "source": source.get("component") or event.get("reportingComponent") or "",
    }
    return record


def core_events(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [core_event(r) for r in records]


def _field(event: dict[str, Any], path: str) -> str:
    value: Any = event
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def event_filter(selector: str) -> Callable[[dict[str, Any]], bool]:
    """A fieldSelector over Events (`involvedObject.name=x,type!=Normal`). The uid is not
    recorded by telemetry, so a uid requirement matches every event of the named object."""
    requirements: list[tuple[str, str, bool]] = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, sep, value = term.partition("!=" if negate else "=")
        key = key.strip().rstrip("=")
        value = value.lstrip("=").strip()
        if not sep or key not in EVENT_FIELDS:
            raise ValueError(
                f"fieldSelector: {term!r}: expected FIELD=VALUE or FIELD!=VALUE with FIELD one "
                f"of {', '.join(EVENT_FIELDS)}"
            )
        if key != "involvedObject.uid":
            requirements.append((key, value, negate))

    def matches(event: dict[str, Any]) -> bool:
        return all((_field(event, key) == value) != negate for key, value, negate in requirements)

    return matches


def event_list(events: Sequence[dict[str, Any]], version: str = "") -> dict[str, Any]:
    """An EventList; `version` (the telemetry sequence) is where a watch may resume."""
    metadata = {"resourceVersion": version} if version else {}
    return {"apiVersion": "v1", "kind": "EventList", "metadata": metadata, "items": list(events)}


EVENT_COLUMNS = (
    ("Last Seen", "Time since the event was last seen."),
    ("Type", "Normal or Warning."),
    ("Reason", "Why the event happened (a short, machine-readable word)."),
    ("Object", "The object the event is about."),
    ("Message", "What happened, for people."),
)


def event_table(events: Sequence[dict[str, Any]], now: datetime, version: str) -> dict[str, Any]:
    """Events as a Table with kubectl's columns (LAST SEEN, TYPE, REASON, OBJECT, MESSAGE)."""
    rows = [
        {
            "cells": [
                age(e["lastTimestamp"], now),
                e["type"],
                e["reason"],
                f"{e['involvedObject']['kind'].lower()}/{e['involvedObject']['name']}",
                e["message"],
            ],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": f"{TABLE_GROUP}/v1",
                "metadata": e["metadata"],
            },
        }
        for e in events
    ]
    return {
        "kind": "Table",
        "apiVersion": f"{TABLE_GROUP}/{version}",
        "metadata": {},
        "columnDefinitions": [
            {
                "name": name,
                "type": "string",
                "format": "",
                "description": why,
                "priority": 0,
            }
            for name, why in EVENT_COLUMNS
        ],
        "rows": rows,
    }
