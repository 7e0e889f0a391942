"""PATCH bodies applied to an object's JSON: RFC 7386 merge patch and RFC 6902 JSON patch.

Pure functions over decoded JSON values; the input is never modified. Errors name the failing
operation and path; the server maps `PatchError` to 422 and `PatchTestFailed` to 409.
"""

from __future__ import annotations

import copy
from typing import Any

_MISSING = object()


class PatchError(ValueError):
    """The patch is malformed or cannot be applied to this document."""

    def __init__(self, message: str, *, index: int | None = None, path: str = "") -> None:
        prefix = f"json patch operation {index} " if index is not None else ""
        super().__init__(prefix + message)
        self.index = index
        self.path = path


class PatchTestFailed(PatchError):
    """A `test` operation found a different value: the document changed under the caller."""


# ---------------------------------------------------------------------------- RFC 7386


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch: objects merge recursively, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------- RFC 6902


def parse_pointer(pointer: str) -> list[str]:
    """RFC 6901: '' is the whole document, '/a/b~1c' is ['a', 'b/c']."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"JSON pointer {pointer!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise LookupError(f"{token!r} is not an array index")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise LookupError(f"array index {index} is out of range (length {len(container)})")
    return index


def _resolve(doc: Any, tokens: list[str]) -> Any:
    current = doc
    for token in tokens:
        if isinstance(current, dict):
            if token not in current:
                raise LookupError(f"member {token!r} does not exist")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, for_add=False)]
        else:
            raise LookupError(f"cannot descend into a {type(current).__name__} at {token!r}")
    return current


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise LookupError(f"cannot add to a {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> tuple[Any, Any]:
    if not tokens:
        raise LookupError("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise LookupError(f"member {last!r} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, for_add=False))
    raise LookupError(f"cannot remove from a {type(parent).__name__}")


def _json_equal(a: Any, b: Any) -> bool:
    # RFC 6902 test: numbers compare by value, but true is not 1
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _member(op: dict[str, Any], name: str, index: int) -> Any:
    if name not in op:
        raise PatchError(f"({op.get('op')}): missing {name!r}", index=index)
    return op[name]


def _pointer(op: dict[str, Any], name: str, index: int) -> list[str]:
    raw = _member(op, name, index)
    if not isinstance(raw, str):
        raise PatchError(f"({op.get('op')}): {name!r} must be a string", index=index)
    try:
        return parse_pointer(raw)
    except ValueError as exc:
        raise PatchError(f"({op.get('op')}): {exc}", index=index, path=raw) from None


def json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch atomically: all operations or none."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be an array of operations")
    doc = copy.deepcopy(document)
    for index, op in enumerate(operations):
        if not isinstance(op, dict):
            raise PatchError("must be an object", index=index)
        name = op.get("op")
        path_text = op.get("path", "")
        path = _pointer(op, "path", index)
        try:
            if name == "add":
                doc = _add(doc, path, copy.deepcopy(_member(op, "value", index)))
            elif name == "remove":
                doc, _ = _remove(doc, path)
            elif name == "replace":
                value = copy.deepcopy(_member(op, "value", index))
                _resolve(doc, path)  # the target must exist
                if path:
                    doc, _ = _remove(doc, path)
                doc = _add(doc, path, value)
            elif name in ("move", "copy"):
                source = _pointer(op, "from", index)
                if name == "move" and path[: len(source)] == source and path != source:
                    raise LookupError("cannot move a value into one of its own children")
                if name == "move":
                    doc, value = _remove(doc, source)
                else:
                    value = copy.deepcopy(_resolve(doc, source))
                doc = _add(doc, path, value)
            elif name == "test":
                expected = _member(op, "value", index)
                try:
                    actual = _resolve(doc, path)
                except LookupError as exc:
                    raise PatchTestFailed(
                        f"(test) at {path_text!r} failed: {exc}", index=index, path=path_text
                    ) from None
                if not _json_equal(actual, expected):
                    raise PatchTestFailed(
                        f"(test) at {path_text!r} failed: expected {expected!r}, found {actual!r}",
                        index=index,
                        path=path_text,
                    )
            else:
                raise PatchError(
                    f"has unknown op {name!r} (expected add, remove, replace, move, copy, test)",
                    index=index,
                    path=path_text,
                )
        except LookupError as exc:
            raise PatchError(
                f"({name}) at {path_text!r}: {exc}", index=index, path=path_text
            ) from None
    return doc
