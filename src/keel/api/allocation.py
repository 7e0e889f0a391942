"""Node room at binding time: what each Node offers and what the Instances bound to it
request, so that the store rejects a binding that would overcommit a Node (OCC between
schedulers), instead of trusting every scheduler's own view.

`NodeRooms` is an index kept current from the API server's watch cache (Node and Instance
changes); `shortfall` is the pure fit check. The ordering comes from a per-node binding key
(`binding_key`) that every binding writes in its own transaction and compares: a binding
checked against the cache at (or after) that key's revision has seen every earlier binding
to the Node, and a binding committed meanwhile by anyone makes the compare fail.
"""

from __future__ import annotations

from collections.abc import Mapping

from keel.api.quota import show
from keel.api.resources import Instance, InstanceSpec, Node, Resource, ResourceList

__all__ = [
    "BINDING_PREFIX",
    "NodeRooms",
    "Room",
    "binding_key",
    "counts_on_node",
    "offered",
    "requested",
    "shortfall",
]

# resource name -> amount in base units (millicores, bytes, whole units of extended resources)
Room = dict[str, int]

BINDING_PREFIX = b"/keel/node-bindings/"  # outside /registry/: no object, never watched
TERMINAL = frozenset({"Succeeded", "Failed"})  # their requests are free again


def binding_key(node: str) -> bytes:
    """The key every binding to `node` writes and compares (its value: the last binding)."""
    return BINDING_PREFIX + node.encode()


def _amounts(resources: ResourceList) -> Room:
    found: Room = {"cpu": resources.millicpu, "memory": resources.memory_bytes}
    found.update(resources.extended_units)
    return found


def requested(spec: InstanceSpec) -> Room:
    return _amounts(spec.resources)


def offered(node: Node) -> Room:
    """What a Node offers Instances: its reported allocatable, else its declared capacity."""
    return _amounts(node.status.allocatable or node.spec.capacity)


def counts_on_node(instance: Instance) -> str:
    """The Node whose room `instance` takes ("" when none): bound and not finished."""
    if instance.status.phase in TERMINAL:
        return ""
    return instance.spec.node_name


def shortfall(node: str, offer: Mapping[str, int], used: Mapping[str, int], want: Room) -> str:
    """ "" when `want` fits in what `node` offers beyond `used`; else why not, per resource."""
    missing = []
    for resource, amount in sorted(want.items()):
        if amount <= 0:
            continue
        free = offer.get(resource, 0) - used.get(resource, 0)
        if amount > free:
            missing.append(
                f"{resource} (requested {show(resource, amount)}, free "
                f"{show(resource, max(0, free))} of {show(resource, offer.get(resource, 0))})"
            )
    if not missing:
        return ""
    return f"node {node!r} has insufficient " + ", ".join(missing)


class NodeRooms:
    """Per Node: what it offers and what its Instances take, fed with every Node and
    Instance the watch cache applies (`on_node`, `on_instance`, keyed by store key)."""

    def __init__(self) -> None:
        self.offers: dict[str, Room] = {}
        self.used: dict[str, Room] = {}
        self._taken: dict[bytes, tuple[str, Room]] = {}  # instance key -> (node, requests)

    def on_node(self, key: bytes, node: Resource | None) -> None:
        name = key.rsplit(b"/", 1)[-1].decode()
        if isinstance(node, Node):
            self.offers[name] = offered(node)
        else:
            self.offers.pop(name, None)

    def on_instance(self, key: bytes, instance: Resource | None) -> None:
        before = self._taken.pop(key, None)
        if before is not None:
            self._add(before[0], before[1], -1)
        node = counts_on_node(instance) if isinstance(instance, Instance) else ""
        if isinstance(instance, Instance) and node:
            room = requested(instance.spec)
            self._taken[key] = (node, room)
            self._add(node, room, 1)

    def _add(self, node: str, room: Room, sign: int) -> None:
        used = self.used.setdefault(node, {})
        for resource, amount in room.items():
            used[resource] = used.get(resource, 0) + sign * amount
        if sign < 0 and not any(used.values()):
            del self.used[node]

    def check(self, node: str, want: Room, staged: Mapping[str, int] | None = None) -> str:
        """Why `want` does not fit on `node` next to its Instances and `staged` (bindings
        earlier in the same plan); "" when it fits or the Node is unknown here (a Node
        this server has not seen: nothing to check against)."""
        offer = self.offers.get(node)
        if offer is None:
            return ""
        used = self.used.get(node, {})
        if staged:
            used = {r: used.get(r, 0) + staged.get(r, 0) for r in set(used) | set(staged)}
        return shortfall(node, offer, used, want)
