"""Field ownership at the API server: every write records which field manager set which
fields (`metadata.managedFields`, see `keel.api.managedfields`), and a component writing a
field the registry gives another component is refused (403 naming the field, its owner and
the writer). Pure: the storage layer calls `track` with the object before and after.

Who writes: a node's agent is the manager `agent`, the scheduler `scheduler`, each
controller of the controller-manager its own name (`deployment`, `nodelifecycle`...);
users name theirs (`fieldManager`, or kubectl's). Users (admin) are recorded, not refused:
an operator may always repair an object by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from keel.api.managedfields import (
    Entry,
    Path,
    decode_entries,
    encode_entries,
    fields_of,
    readable,
    record_update,
    value_at,
)
from keel.api.registry import FIELD_OWNERS, FieldOwner
from keel.api.resources import ManagedFieldsEntry, Resource, StatusCause, StatusDetails

__all__ = [
    "FieldsOwnedElsewhere",
    "Writer",
    "builtins_of",
    "entries_of",
    "owner_of",
    "track",
    "with_entries",
]


class FieldsOwnedElsewhere(Exception):
    """A component wrote fields another one owns (the API server answers 403)."""

    def __init__(self, message: str, details: StatusDetails) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Writer:
    """Who writes: the field manager, and whether the registry's field owners bind it.
    `sent`: on a create, the fields the request itself set (the rest are the kind's
    defaults, which nobody owns, as in Kubernetes); None: every field of the object."""

    manager: str
    enforced: bool = False
    sent: frozenset[Path] | None = None


def builtins_of(obj: Resource) -> dict[str, Any]:
    """The object as JSON, without its managedFields (they are not fields anyone owns)."""
    document = msgspec.to_builtins(obj)
    assert isinstance(document, dict)
    document.get("metadata", {}).pop("managedFields", None)
    return document


def entries_of(obj: Resource) -> list[Entry]:
    return decode_entries([msgspec.to_builtins(e) for e in obj.metadata.managed_fields])


def with_entries(obj: Resource, entries: list[Entry]) -> Resource:
    encoded = [msgspec.convert(e, ManagedFieldsEntry) for e in encode_entries(entries)]
    meta = msgspec.structs.replace(obj.metadata, managed_fields=encoded)
    return msgspec.structs.replace(obj, metadata=meta)


def owner_of(kind: str, path: Path) -> FieldOwner | None:
    """The most specific declared owner of the field at `path`, if any."""
    best: FieldOwner | None = None
    for rule in FIELD_OWNERS.get(kind, ()):
        if path[: len(rule.path)] == rule.path and (
            best is None or len(rule.path) > len(best.path)
        ):
            best = rule
    return best


def track(
    kind: str,
    before: Resource | None,
    after: Resource,
    writer: Writer,
    *,
    now: str,
    subresource: str = "",
) -> Resource:
    """`after` with its managedFields moved on for `writer`'s write (None `before`: a
    create); `Forbidden` when an enforced writer changed a field another component owns."""
    old = builtins_of(before) if before is not None else None
    new = builtins_of(after)
    entries = entries_of(before) if before is not None else []
    updated = record_update(
        old, new, entries, manager=writer.manager, now=now, subresource=subresource
    )
    if before is None and writer.sent is not None and updated:
        [entry] = updated
        updated = (
            [replace(entry, fields=entry.fields & writer.sent)]
            if entry.fields & writer.sent
            else []
        )
    if writer.enforced:
        changed = _changed(old, new)
        if before is None:
            # A create: its status is the kind's defaults, for its owner to fill in.
            changed = [p for p in changed if p[:1] != ("f:status",)]
        refused = _refused(kind, changed, writer.manager)
        if refused:
            raise _forbidden(kind, after.metadata.name, refused, writer.manager)
    if updated == entries and before is not None:
        return msgspec.structs.replace(
            after,
            metadata=msgspec.structs.replace(
                after.metadata, managed_fields=before.metadata.managed_fields
            ),
        )
    return with_entries(after, updated)


def _changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Path]:
    before = fields_of(old) if old is not None else frozenset()
    after = fields_of(new)
    changed = [p for p in after if p not in before or value_at(old, p) != value_at(new, p)]
    return sorted([*changed, *(before - after)])


def _refused(kind: str, changed: list[Path], manager: str) -> list[tuple[Path, FieldOwner]]:
    refused: list[tuple[Path, FieldOwner]] = []
    for path in changed:
        rule = owner_of(kind, path)
        if rule is not None and manager not in rule.managers:
            refused.append((path, rule))
    return refused


def _forbidden(
    kind: str, name: str, refused: list[tuple[Path, FieldOwner]], manager: str
) -> FieldsOwnedElsewhere:
    path, rule = refused[0]
    owners = " or ".join(f'"{m}"' for m in sorted(rule.managers))
    message = (
        f"{kind} {name}: field {readable(path)} is owned by {owners} ({rule.why}); "
        f'field manager "{manager}" may not write it'
    )
    causes = [
        StatusCause(
            readable(p).lstrip("."),
            f"owned by {', '.join(sorted(r.managers))}",
            "FieldManagerConflict",
        )
        for p, r in refused[:10]
    ]
    return FieldsOwnedElsewhere(message, StatusDetails(name=name, kind=kind, causes=causes))
