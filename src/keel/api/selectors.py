"""Label and field selectors of list and watch requests, parsed once and matched many times.

Pure: strings in, predicates out. A malformed selector raises `SelectorError` whose message
says what was expected; the server answers 400 with it.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

LabelOp = Literal["=", "!=", "in", "notin", "exists", "!exists"]
FieldOp = Literal["=", "!="]

_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

# Fields a field selector may name, as wire paths; a kind supports those its model has.
FIELD_PATHS: tuple[str, ...] = (
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
)


class SelectorError(ValueError):
    """A selector that cannot be parsed, or names a field the kind does not have."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: LabelOp
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        # "!=" and "notin" match objects without the label too, as in Kubernetes
        return value is None or value not in self.values


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: str  # wire path, e.g. "spec.nodeName"
    op: FieldOp
    value: str


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Any) -> bool:
        return all(
            (field_value(obj, r.path) == r.value) == (r.op == "=") for r in self.requirements
        )

    @property
    def empty(self) -> bool:
        return not self.requirements


# ------------------------------------------------------------------------- label selectors


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str, text: str) -> str:
    if not _LABEL_KEY_RE.match(key):
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if not _LABEL_VALUE_RE.match(value):
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def _parse_requirement(part: str, text: str) -> Requirement:
    part = part.strip()
    if not part:
        raise SelectorError(f"empty requirement in selector {text!r}")
    set_match = _SET_RE.match(part)
    if set_match:
        key = _check_key(set_match["key"], text)
        raw = [v.strip() for v in set_match["values"].split(",")]
        if raw == [""]:
            raise SelectorError(
                f"{set_match['op']} needs at least one value in parentheses, in {text!r}"
            )
        values = frozenset(_check_value(v, text) for v in raw)
        op: LabelOp = "in" if set_match["op"] == "in" else "notin"
        return Requirement(key, op, values)
    for token, eq_op in (("!=", "!="), ("==", "="), ("=", "=")):
        if token in part:
            key, _, value = part.partition(token)
            op = "!=" if eq_op == "!=" else "="
            return Requirement(
                _check_key(key.strip(), text), op, frozenset({_check_value(value.strip(), text)})
            )
    if part.startswith("!"):
        return Requirement(_check_key(part[1:].strip(), text), "!exists")
    if " " in part or "(" in part:
        raise SelectorError(
            f"cannot parse {part!r} in selector {text!r}: expected key, !key, key=value, "
            "key==value, key!=value, key in (v1,v2) or key notin (v1,v2)"
        )
    return Requirement(_check_key(part, text), "exists")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse `app=web,tier!=db,env in (a,b),!canary`; empty or None selects everything."""
    if text is None or not text.strip():
        return LabelSelector()
    return LabelSelector(tuple(_parse_requirement(p, text) for p in _split_top_level(text)))


# ------------------------------------------------------------------------- field selectors


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def field_value(obj: Any, path: str) -> str | None:
    """The value at a wire path of an object (e.g. spec.nodeName), as a string."""
    current = obj
    for part in path.split("."):
        current = getattr(current, _snake(part), None)
        if current is None:
            return None
    return current if isinstance(current, str) else str(current)


def _model_has(model: type, path: str) -> bool:
    current: Any = model
    for part in path.split("."):
        try:
            hints = typing.get_type_hints(current)
        except (TypeError, NameError):
            return False
        hint = hints.get(_snake(part))
        if hint is None:
            return False
        # unwrap Optional/Annotated to the struct type, if any
        args = [a for a in typing.get_args(hint) if isinstance(a, type)]
        current = hint if isinstance(hint, type) else (args[0] if args else hint)
    return True


@functools.cache
def supported_fields(model: type) -> frozenset[str]:
    """The field paths of FIELD_PATHS that a kind's model has."""
    return frozenset(p for p in FIELD_PATHS if _model_has(model, p))


def parse_field_selector(text: str | None, supported: Iterable[str] = FIELD_PATHS) -> FieldSelector:
    """Parse `metadata.name=x,status.phase!=Running`; the fields must be in `supported`."""
    if text is None or not text.strip():
        return FieldSelector()
    allowed = frozenset(supported)
    requirements: list[FieldRequirement] = []
    for raw in text.split(","):
        part = raw.strip()
        for token in ("!=", "==", "="):
            if token in part:
                path, _, value = part.partition(token)
                path = path.strip()
                if path not in allowed:
                    raise SelectorError(
                        f"field label not supported: {path!r} (supported: "
                        f"{', '.join(sorted(allowed))})"
                    )
                op: FieldOp = "!=" if token == "!=" else "="
                requirements.append(FieldRequirement(path, op, value.strip()))
                break
        else:
            raise SelectorError(
                f"cannot parse {part!r} in field selector {text!r}: expected field=value, "
                "field==value or field!=value"
            )
    return FieldSelector(tuple(requirements))
