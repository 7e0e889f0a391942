"""Telemetry (node heartbeats, instance usage, events): validated at the edge and held in the
API server's memory with TTLs, bounded in size, never written to the store (DESIGN.md §1).
Pure logic over an injected clock; the server maps `/apis/telemetry.keel.dev/v1/...` onto it.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from typing import Annotated, Any, Literal

import msgspec

from keel.api.resources import NAME_RE
from keel.clock import Clock, SystemClock

TELEMETRY_GROUP_VERSION = "telemetry.keel.dev/v1"
NODEHEARTBEATS = "nodeheartbeats"
INSTANCEUSAGES = "instanceusages"
EVENTS = "events"

# How long an entry lives unless the writer says otherwise: a heartbeat is stale after a
# minute (agents send one every few seconds); events are kept for an hour.
DEFAULT_TTL: dict[str, float] = {NODEHEARTBEATS: 60.0, INSTANCEUSAGES: 120.0, EVENTS: 3600.0}
NAMESPACED: dict[str, bool] = {NODEHEARTBEATS: False, INSTANCEUSAGES: True, EVENTS: True}
DEFAULT_MAX_ENTRIES = 50_000  # per kind: heartbeats/usages by name; events in total
DEFAULT_MAX_EVENTS_PER_OBJECT = 100
_SYSTEM_CLOCK = SystemClock()

# --------------------------------------------------------------------------- records

RFC3339_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
Time = Annotated[str, msgspec.Meta(pattern=RFC3339_RE, description="RFC 3339 time")]
Name = Annotated[str, msgspec.Meta(pattern=NAME_RE, max_length=253)]
OptionalName = Annotated[str, msgspec.Meta(pattern="^(|" + NAME_RE[1:-1] + ")$", max_length=253)]
# A usage: a quantity string ("250m", "128Mi") or a plain number (cores, bytes).
Usage = (
    Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]
    | Annotated[float, msgspec.Meta(ge=0)]
)


# Optional on every record: how long the entry lives (else DEFAULT_TTL of its kind).
TtlSeconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class _Record(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, rename="camel"
):
    pass


class NodeHeartbeat(_Record, frozen=True):
    """A node agent's periodic report: alive, and how loaded."""

    node: Name
    cpu_usage: Usage
    memory_usage: Usage
    time: Time
    ttl_seconds: TtlSeconds | None = None


class InstanceUsage(_Record, frozen=True):
    """What one instance uses, and how often it restarted."""

    instance: Name
    node: Name
    cpu: Usage
    memory: Usage
    restarts: Annotated[int, msgspec.Meta(ge=0)]
    time: Time | None = None
    ttl_seconds: TtlSeconds | None = None
    log_path: Annotated[str, msgspec.Meta(max_length=4096)] | None = None  # for `keel logs`


class ObjectReference(_Record, frozen=True):
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    name: Name
    namespace: OptionalName = ""


class Event(_Record, frozen=True):
    """Something that happened to an object (for `keel describe`)."""

    involved_object: ObjectReference
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    message: Annotated[str, msgspec.Meta(max_length=4096)]
    type: Literal["Normal", "Warning"]
    time: Time
    source: Annotated[str, msgspec.Meta(max_length=253)] = ""  # reporting component
    node: OptionalName = ""
    ttl_seconds: TtlSeconds | None = None


MODELS: dict[str, type[_Record]] = {
    NODEHEARTBEATS: NodeHeartbeat,
    INSTANCEUSAGES: InstanceUsage,
    EVENTS: Event,
}


class TelemetryError(ValueError):
    """An invalid telemetry body or request; `field` is the path of the offending field."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


_CHOICES = {"type": "Normal or Warning"}


def _error(kind: str, exc: msgspec.ValidationError | msgspec.DecodeError) -> TelemetryError:
    """msgspec's message, with the field path spelled `involvedObject.name`."""
    text = str(exc)
    at = _AT.search(text)
    path = at.group("path").lstrip(".") if at else ""
    named = _NAMED.match(text)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    message = _AT.sub("", text)
    if not isinstance(exc, msgspec.ValidationError):
        message = f"invalid JSON: {message}"
    elif message.startswith("Invalid enum value") and path in _CHOICES:
        message = f"{message}: expected {_CHOICES[path]}"
    prefix = f"{kind}: {path}: " if path else f"{kind}: "
    return TelemetryError(prefix + message, path)


def _model(kind: str) -> type[_Record]:
    try:
        return MODELS[kind]
    except KeyError:
        raise TelemetryError(
            f"unknown telemetry kind {kind!r}: expected one of {', '.join(MODELS)}"
        ) from None


def validate(kind: str, body: object) -> dict[str, Any]:
    """The body checked against its kind's record; raises TelemetryError naming the field."""
    model = _model(kind)
    try:
        record = msgspec.convert(body, type=model)
    except msgspec.ValidationError as exc:
        raise _error(kind, exc) from None
    result: dict[str, Any] = msgspec.to_builtins(record)
    return result


def decode(kind: str, data: bytes) -> dict[str, Any]:
    """A JSON request body decoded and validated (see `validate`)."""
    model = _model(kind)
    try:
        record = msgspec.json.decode(data, type=model)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _error(kind, exc) from None
    result: dict[str, Any] = msgspec.to_builtins(record)
    return result


def key_of(kind: str, namespace: str | None, name: str | None, body: dict[str, Any]) -> str:
    """The name a validated body is stored under; the URL's name, if any, must agree.

    nodeheartbeats: the node; instanceusages: the instance; events: the involved object's
    name (its namespace must be the URL's).
    """
    if kind == NODEHEARTBEATS:
        field, key = "node", str(body["node"])
    elif kind == INSTANCEUSAGES:
        field, key = "instance", str(body["instance"])
    else:
        field, key = "involvedObject.name", str(body["involvedObject"]["name"])
        ns = body["involvedObject"].get("namespace", "")
        if ns and namespace and ns != namespace:
            raise TelemetryError(
                f"events: involvedObject.namespace: {ns!r} differs from the URL's namespace "
                f"{namespace!r}",
                "involvedObject.namespace",
            )
    if name and name != key:
        raise TelemetryError(
            f"{kind}: {field}: {key!r} differs from the URL's name {name!r}", field
        )
    return key


def ttl_of(body: dict[str, Any]) -> float | None:
    """The TTL a validated body asks for (`ttlSeconds`), or None for its kind's default."""
    ttl = body.get("ttlSeconds")
    return float(ttl) if ttl is not None else None


def subject_node(kind: str, body: dict[str, Any]) -> str | None:
    """The node a validated body is about, for authorization (`Request.telemetry_node`)."""
    if kind in (NODEHEARTBEATS, INSTANCEUSAGES):
        return str(body["node"])
    if body.get("node"):
        return str(body["node"])
    involved = body["involvedObject"]
    if involved["kind"] == "Node":
        return str(involved["name"])
    return None


# --------------------------------------------------------------------------- store


class TelemetryStore:
    """Latest heartbeat per node, latest usage per instance, recent events per object.

    Entries expire `ttl` seconds after they were written: expired entries are never
    returned, and `sweep()` drops them. Size is bounded: at most `max_entries` heartbeats,
    usages and events (each), dropping the least recently written first, and at most
    `max_events_per_object` events per object (name), dropping the oldest.
    """

    def __init__(
        self,
        clock: Clock = _SYSTEM_CLOCK,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_events_per_object: int = DEFAULT_MAX_EVENTS_PER_OBJECT,
    ) -> None:
        if max_entries < 1 or max_events_per_object < 1:
            raise ValueError("max_entries and max_events_per_object: expected at least 1")
        self._clock = clock
        self.max_entries = max_entries
        self.max_events_per_object = max_events_per_object
        # (namespace, name) -> (expires, body); least recently written first
        self._latest: dict[str, OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]]] = {
            NODEHEARTBEATS: OrderedDict(),
            INSTANCEUSAGES: OrderedDict(),
        }
        # (namespace, name) -> events (seq, expires, body), oldest first; objects least
        # recently written first, so the global bound drops the oldest events.
        self._events: OrderedDict[tuple[str, str], deque[tuple[int, float, dict[str, Any]]]] = (
            OrderedDict()
        )
        self._event_count = 0
        self._seq = 0

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in MODELS:
            raise TelemetryError(
                f"unknown telemetry kind {kind!r}: expected one of {', '.join(MODELS)}"
            )

    def count(self, kind: str) -> int:
        """Entries held (including expired ones not yet swept)."""
        self._check_kind(kind)
        if kind == EVENTS:
            return self._event_count
        return len(self._latest[kind])

    def put(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        ttl: float | None = None,
    ) -> None:
        """Store `body` (already validated). Events append; other kinds replace."""
        self._check_kind(kind)
        now = self._clock.now()
        expires = now + (DEFAULT_TTL[kind] if ttl is None else ttl)
        key = (namespace or "", name)
        if kind != EVENTS:
            entries = self._latest[kind]
            entries.pop(key, None)
            entries[key] = (expires, body)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
            return
        events = self._events.pop(key, None)
        if events is None:
            events = deque()
        self._events[key] = events
        self._seq += 1
        events.append((self._seq, expires, body))
        self._event_count += 1
        if len(events) > self.max_events_per_object:
            events.popleft()
            self._event_count -= 1
        while self._event_count > self.max_entries:
            oldest_key, oldest = next(iter(self._events.items()))
            oldest.popleft()
            self._event_count -= 1
            if not oldest:
                del self._events[oldest_key]

    def events_since(self, seq: int) -> tuple[list[dict[str, Any]], int]:
        """Live events recorded after sequence number `seq` (oldest first), and the newest
        sequence number: what a dashboard streams on."""
        if seq >= self._seq:
            return [], self._seq
        now = self._clock.now()
        found = [
            (s, body)
            for events in self._events.values()
            for s, expires, body in events
            if s > seq and expires > now
        ]
        found.sort(key=lambda item: item[0])
        return [body for _, body in found], self._seq

    def latest(self, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
        """(namespace, name) -> live entry of a heartbeat or usage kind (bodies are replaced,
        never changed in place, so a caller may tell a new entry by its identity)."""
        self._check_kind(kind)
        now = self._clock.now()
        return {key: body for key, (expires, body) in self._latest[kind].items() if expires > now}

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The latest live entry (for events: the newest event of the object), or None."""
        self._check_kind(kind)
        if kind == EVENTS:
            events = self.events(namespace, name)
            return events[-1] if events else None
        key = (namespace or "", name)
        entries = self._latest[kind]
        entry = entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock.now():
            del entries[key]
            return None
        return entry[1]

    def events(self, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """The live events of one object, oldest first."""
        key = (namespace or "", name)
        events = self._events.get(key)
        if events is None:
            return []
        self._expire_events(key, events, self._clock.now())
        return [body for _, _, body in events]

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every live entry of a kind (one namespace, or all when None).

        Heartbeats and usages are sorted by (namespace, name); events by arrival.
        """
        self._check_kind(kind)
        now = self._clock.now()
        if kind == EVENTS:
            found: list[tuple[int, dict[str, Any]]] = []
            for key in [k for k in self._events if namespace is None or k[0] == namespace]:
                events = self._events[key]
                self._expire_events(key, events, now)
                found.extend((seq, body) for seq, _, body in events)
            found.sort(key=lambda item: item[0])
            return [body for _, body in found]
        entries = self._latest[kind]
        live = []
        for key, (expires, body) in list(entries.items()):
            if expires <= now:
                del entries[key]
            elif namespace is None or key[0] == namespace:
                live.append((key, body))
        live.sort(key=lambda item: item[0])
        return [body for _, body in live]

    def sweep(self) -> int:
        """Drop every expired entry; returns how many were dropped."""
        now = self._clock.now()
        dropped = 0
        for entries in self._latest.values():
            expired = [key for key, (expires, _) in entries.items() if expires <= now]
            for key in expired:
                del entries[key]
            dropped += len(expired)
        for key, events in list(self._events.items()):
            dropped += self._expire_events(key, events, now)
        return dropped

    def _expire_events(
        self, key: tuple[str, str], events: deque[tuple[int, float, dict[str, Any]]], now: float
    ) -> int:
        before = len(events)
        if any(expires <= now for _, expires, _ in events):
            live = [event for event in events if event[1] > now]
            events.clear()
            events.extend(live)
        dropped = before - len(events)
        self._event_count -= dropped
        if not events:
            self._events.pop(key, None)
        return dropped
