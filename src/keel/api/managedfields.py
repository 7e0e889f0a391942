"""Field ownership, as Kubernetes' server-side apply defines it: every object carries
`metadata.managedFields`, one entry per field manager and operation (Apply or Update) with
the set of fields it owns (FieldsV1). Pure functions over decoded JSON; the API server calls
`apply` for `application/apply-patch+yaml` PATCHes and `record_update` for every other write.

- A field is a path of FieldsV1 keys: `f:NAME` for a member of an object, `k:{"name":"x"}`
  for the item of a keyed list (its own presence is the path ending in `.`), `v:VALUE` for a
  member of a set-like list. Other lists (and scalars) are atomic: one field.
- **Apply** (a manager's whole intent): the applied fields become the manager's Apply set.
  Setting a field another manager owns to a different value is a **conflict** (409 naming
  the fields and managers) unless forced, which takes the field over. Fields the manager
  applied before and no longer applies are removed from the object, unless another manager
  also owns them. Applying a field to the value it already has makes the managers co-owners.
- **Update** (PUT, PATCH, status writes): the fields the write changed move to the writer's
  Update entry, out of everybody else's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "APPLY",
    "UPDATE",
    "Conflict",
    "Entry",
    "Path",
    "apply",
    "decode_entries",
    "encode_entries",
    "fields_of",
    "from_fieldsv1",
    "record_update",
    "to_fieldsv1",
]

Path = tuple[str, ...]
Operation = Literal["Apply", "Update"]
APPLY: Operation = "Apply"
UPDATE: Operation = "Update"

_MISSING: Any = object()
_SET: tuple[str, ...] = ()  # a set-like list of scalars: members are `v:` fields

# Lists merged by key rather than replaced whole (field names from the object's root; the
# same in every kind). Any other list is atomic.
LIST_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("metadata", "ownerReferences"): ("uid",),
    ("metadata", "finalizers"): _SET,
    ("status", "conditions"): ("type",),
    ("spec", "ports"): ("name",),
    ("spec", "template", "spec", "ports"): ("name",),
    ("spec", "taints"): ("key", "effect"),
    ("status", "addresses"): ("type", "address"),
}

# Never owned by anyone: identity and bookkeeping the server sets.
_UNOWNED: frozenset[tuple[str, ...]] = frozenset(
    {
        ("apiVersion",),
        ("kind",),
        ("metadata", "name"),
        ("metadata", "namespace"),
        ("metadata", "uid"),
        ("metadata", "resourceVersion"),
        ("metadata", "generation"),
        ("metadata", "creationTimestamp"),
        ("metadata", "deletionTimestamp"),
        ("metadata", "managedFields"),
        ("metadata", "generateName"),
    }
)


@dataclass(frozen=True)
class Entry:
    manager: str
    operation: Operation
    fields: frozenset[Path]
    time: str = ""
    api_version: str = ""
    subresource: str = ""


@dataclass(frozen=True)
class Conflict:
    path: Path
    manager: str

    def describe(self) -> str:
        return f'{readable(self.path)} (owned by "{self.manager}")'


@dataclass
class ApplyResult:
    object: dict[str, Any]
    entries: list[Entry]
    conflicts: list[Conflict] = field(default_factory=list)


# --------------------------------------------------------------------------- field sets


def _key(item: Mapping[str, Any], keys: Sequence[str]) -> str:
    return "k:" + json.dumps({k: item.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))


def _value_key(value: Any) -> str:
    return "v:" + json.dumps(value, sort_keys=True, separators=(",", ":"))


def fields_of(document: Mapping[str, Any]) -> frozenset[Path]:
    """The fields `document` sets (decoded JSON of a whole object); null, empty strings,
    objects and lists are unset."""
    out: set[Path] = set()
    _walk(document, (), (), out)
    return frozenset(out)


def _walk(value: Mapping[str, Any], names: tuple[str, ...], path: Path, out: set[Path]) -> None:
    for name, child in value.items():
        here = (*names, name)
        if here in _UNOWNED:
            continue
        if child is None or child in ({}, [], ""):
            continue  # unset: a default, owned by nobody
        at = (*path, f"f:{name}")
        keys = LIST_KEYS.get(here)
        if isinstance(child, dict):
            _walk(child, here, at, out)
        elif isinstance(child, list) and keys is not None:
            for item in child:
                if keys is _SET:
                    out.add((*at, _value_key(item)))
                elif isinstance(item, dict):
                    item_path = (*at, _key(item, keys))
                    out.add((*item_path, "."))
                    _walk(item, here, item_path, out)
                else:
                    out.add(at)
        else:
            out.add(at)


def to_fieldsv1(paths: Iterable[Path]) -> dict[str, Any]:
    """The FieldsV1 JSON of a field set: nested objects, `{}` at the leaves."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
    return root


def from_fieldsv1(document: Mapping[str, Any]) -> frozenset[Path]:
    out: set[Path] = set()

    def walk(node: Mapping[str, Any], path: Path) -> None:
        for key, child in node.items():
            at = (*path, key)
            if isinstance(child, dict) and child:
                walk(child, at)
            else:
                out.add(at)

    walk(document, ())
    return frozenset(out)


def readable(path: Path) -> str:
    """`.spec.replicas`, `.spec.ports[name="http"].port`, `.metadata.finalizers[="x"]`."""
    text = ""
    for element in path:
        kind, _, rest = element.partition(":")
        if element == ".":
            continue
        if kind == "f":
            text += f".{rest}"
        elif kind == "k":
            pairs = json.loads(rest)
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in pairs.items()) + "]"
        elif kind == "v":
            text += f"[={rest}]"
    return text or "."


# --------------------------------------------------------------------------- documents


def _names(path: Path) -> tuple[str, ...]:
    return tuple(e[2:] for e in path if e.startswith("f:"))


def value_at(document: Any, path: Path) -> Any:
    """The value at `path` in `document`, or a sentinel (compare with `is_missing`)."""
    current = document
    names: tuple[str, ...] = ()
    for element in path:
        if element == ".":
            return current
        kind, _, rest = element.partition(":")
        if kind == "f":
            if not isinstance(current, dict) or rest not in current:
                return _MISSING
            current = current[rest]
            names = (*names, rest)
        elif kind == "k":
            keys = LIST_KEYS.get(names) or ()
            wanted = json.loads(rest)
            if not isinstance(current, list):
                return _MISSING
            found = [
                i for i in current if isinstance(i, dict) and {k: i.get(k) for k in keys} == wanted
            ]
            if not found:
                return _MISSING
            current = found[0]
        elif kind == "v":
            member = json.loads(rest)
            return member if isinstance(current, list) and member in current else _MISSING
    return current


def is_missing(value: Any) -> bool:
    return value is _MISSING


def _remove(document: dict[str, Any], path: Path) -> None:
    """Remove the field at `path` (an item's `.`: the whole item), if present."""
    if not path:
        return
    parent_path, last = path[:-1], path[-1]
    if last == ".":
        parent_path, last = path[:-2], path[-2]
    parent = value_at(document, parent_path) if parent_path else document
    if is_missing(parent):
        return
    kind, _, rest = last.partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind == "k" and isinstance(parent, list):
        keys = LIST_KEYS.get(_names(parent_path)) or ()
        wanted = json.loads(rest)
        parent[:] = [
            i for i in parent if not (isinstance(i, dict) and {k: i.get(k) for k in keys} == wanted)
        ]
    elif kind == "v" and isinstance(parent, list):
        member = json.loads(rest)
        parent[:] = [i for i in parent if i != member]


def merge(current: Any, applied: Any, names: tuple[str, ...] = ()) -> Any:
    """`applied` merged into `current`: objects member by member, keyed lists item by
    item, set-like lists as a union; anything else replaced."""
    if isinstance(applied, dict) and isinstance(current, dict):
        result = dict(current)
        for name, value in applied.items():
            result[name] = merge(current.get(name, _MISSING), value, (*names, name))
        return result
    keys = LIST_KEYS.get(names)
    if isinstance(applied, list) and isinstance(current, list) and keys is not None:
        if keys is _SET:
            return [*current, *(v for v in applied if v not in current)]
        result_list = list(current)
        for item in applied:
            if not isinstance(item, dict):
                return copy.deepcopy(applied)
            wanted = {k: item.get(k) for k in keys}
            for index, existing in enumerate(result_list):
                if isinstance(existing, dict) and {k: existing.get(k) for k in keys} == wanted:
                    result_list[index] = merge(existing, item, names)
                    break
            else:
                result_list.append(copy.deepcopy(item))
        return result_list
    return copy.deepcopy(applied)


# --------------------------------------------------------------------------- operations


def apply(
    current: Mapping[str, Any] | None,
    applied: Mapping[str, Any],
    entries: Sequence[Entry],
    *,
    manager: str,
    force: bool,
    now: str,
    api_version: str = "",
) -> ApplyResult:
    """Server-side apply of `applied` (the manager's whole intent) onto `current` (None:
    create). Conflicts leave everything unchanged unless `force`."""
    base: dict[str, Any] = copy.deepcopy(dict(current)) if current is not None else {}
    wanted = fields_of(applied)
    conflicts: list[Conflict] = []
    for entry in entries:
        if entry.manager == manager and entry.operation == APPLY:
            continue  # its own intent (its Update entry is another owner, as in Kubernetes)
        for path in sorted(entry.fields & wanted):
            if path[-1] == ".":
                continue  # an item's presence: shared, never a conflict
            if value_at(base, path) != value_at(applied, path):
                conflicts.append(Conflict(path, entry.manager))
    if conflicts and not force:
        return ApplyResult(base, list(entries), conflicts)
    taken = {c.path for c in conflicts}
    others = [
        e
        if e.manager == manager and e.operation == APPLY
        else Entry(e.manager, e.operation, e.fields - taken, e.time, e.api_version, e.subresource)
        for e in entries
    ]
    previous = next(
        (e.fields for e in entries if e.manager == manager and e.operation == APPLY), frozenset()
    )
    owned_by_others = frozenset().union(
        *(e.fields for e in others if not (e.manager == manager and e.operation == APPLY))
    )
    merged = merge(base, dict(applied))
    for path in sorted(previous - wanted - owned_by_others, key=len, reverse=True):
        _remove(merged, path)
    own = next((e for e in entries if e.manager == manager and e.operation == APPLY), None)
    stamp = own.time if own is not None and own.fields == wanted and own.time else now
    mine = Entry(manager, APPLY, wanted, stamp, api_version)
    # In place (an unchanged apply must leave the entries exactly as they were).
    placed = [mine if e.manager == manager and e.operation == APPLY else e for e in others]
    if own is None:
        placed.append(mine)
    return ApplyResult(merged, _tidy(placed))


def record_update(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    entries: Sequence[Entry],
    *,
    manager: str,
    now: str,
    api_version: str = "",
    subresource: str = "",
) -> list[Entry]:
    """The entries after a non-apply write by `manager` turned `before` into `after`: the
    fields it set or changed become its own (operation Update), out of everybody else's;
    fields it removed are nobody's. Entries whose sets do not change keep their time."""
    old = fields_of(before) if before is not None else frozenset()
    new = fields_of(after)
    changed = frozenset(p for p in new if p not in old or value_at(before, p) != value_at(after, p))
    removed = old - new
    if not changed and not removed:
        return list(entries)
    result: list[Entry] = []
    mine: Entry | None = None
    for entry in entries:
        if (
            entry.manager == manager
            and entry.operation == UPDATE
            and entry.subresource == subresource
        ):
            mine = entry
            continue
        fields = entry.fields - changed - removed
        if fields == entry.fields:
            result.append(entry)
            continue
        result.append(
            Entry(
                entry.manager,
                entry.operation,
                fields,
                entry.time,
                entry.api_version,
                entry.subresource,
            )
        )
    fields = ((mine.fields if mine is not None else frozenset()) | changed) - removed
    if mine is None or fields != mine.fields:
        mine = Entry(manager, UPDATE, fields, now, api_version, subresource)
    result.append(mine)
    return _tidy(result)


def _tidy(entries: Iterable[Entry]) -> list[Entry]:
    return [e for e in entries if e.fields]


# --------------------------------------------------------------------------- encoding


def encode_entries(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """metadata.managedFields as Kubernetes writes it."""
    encoded: list[dict[str, Any]] = []
    for entry in entries:
        item: dict[str, Any] = {
            "manager": entry.manager,
            "operation": entry.operation,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fieldsv1(entry.fields),
        }
        if entry.api_version:
            item["apiVersion"] = entry.api_version
        if entry.time:
            item["time"] = entry.time
        if entry.subresource:
            item["subresource"] = entry.subresource
        encoded.append(item)
    return encoded


def decode_entries(items: Sequence[Mapping[str, Any]]) -> list[Entry]:
    entries: list[Entry] = []
    for item in items:
        operation = item.get("operation") or UPDATE
        fields = item.get("fieldsV1")
        manager = item.get("manager")
        if operation not in (APPLY, UPDATE) or not isinstance(fields, dict):
            continue
        if not isinstance(manager, str):
            continue
        entries.append(
            Entry(
                manager,
                APPLY if operation == APPLY else UPDATE,
                from_fieldsv1(fields),
                str(item.get("time") or ""),
                str(item.get("apiVersion") or ""),
                str(item.get("subresource") or ""),
            )
        )
    return entries
