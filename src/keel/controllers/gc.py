"""Garbage collection: an object whose ownerReferences all name owners that no longer exist
(absent, or present with another uid) is deleted. The cache proposes; a live GET confirms;
the delete is conditional on the dependent's uid, so a recreated object is never collected.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keel.api.registry import BY_KIND, KINDS
from keel.api.resources import OwnerReference, Resource
from keel.client import Conflict, KeelClient, NotFound, Preconditions
from keel.runtime.controller import Context, Controller, Related, Result
from keel.runtime.informer import Indexer, object_key

__all__ = [
    "COLLECTED_KINDS",
    "Delete",
    "GarbageCollector",
    "Unknown",
    "execute",
    "garbage_collectors",
    "plan",
]

# Leases expire by themselves; the controller-manager's own must never depend on an owner.
COLLECTED_KINDS: tuple[type[Resource], ...] = tuple(i.model for i in KINDS if i.kind != "Lease")


class Unknown(enum.Enum):
    """An owner whose existence cannot be judged (a kind this build does not know)."""

    OWNER = "unknown"


OwnerState = Resource | None | Unknown


@dataclass(frozen=True)
class Delete:
    kind: str
    namespace: str
    name: str
    uid: str


def plan(obj: Resource | None, owners: Sequence[OwnerState]) -> list[Delete]:
    """Delete `obj` iff it has owner references and every one is dangling.

    `owners[i]` is what exists under `obj.metadata.owner_references[i]`: the object, None if
    absent, or `Unknown.OWNER`. An owner of the same name but another uid is a new object,
    not the owner. Objects already being deleted are left to their finalizers.
    """
    if obj is None or obj.metadata.deletion_timestamp:
        return []
    refs = obj.metadata.owner_references
    if not refs or len(owners) != len(refs):
        return []
    for ref, owner in zip(refs, owners, strict=True):
        if isinstance(owner, Unknown):
            return []  # cannot tell: keeping is the safe mistake
        if owner is not None and owner.metadata.uid == ref.uid:
            return []
    kind = obj.kind or type(obj).kind_name
    return [Delete(kind, obj.metadata.namespace, obj.metadata.name, obj.metadata.uid)]


async def execute(client: KeelClient, action: Delete) -> None:
    """Delete exactly the planned incarnation; gone already or recreated both mean done."""
    with contextlib.suppress(NotFound, Conflict):
        await client.delete(
            BY_KIND[action.kind].model,
            action.name,
            namespace=action.namespace or None,
            preconditions=Preconditions(uid=action.uid),
        )


def owner_location(obj: Resource, ref: OwnerReference) -> tuple[type[Resource], str | None] | None:
    """The model and namespace of an owner reference (owners never cross namespaces)."""
    info = BY_KIND.get(ref.kind)
    if info is None:
        return None
    return info.model, (obj.metadata.namespace or None) if info.namespaced else None


def cached_owners(ctx: Context, obj: Resource) -> list[OwnerState]:
    owners: list[OwnerState] = []
    for ref in obj.metadata.owner_references:
        where = owner_location(obj, ref)
        if where is None or where[0] not in COLLECTED_KINDS:
            owners.append(Unknown.OWNER)
            continue
        model, namespace = where
        key = f"{namespace}/{ref.name}" if namespace else ref.name
        owners.append(ctx.cache(model).get(key))
    return owners


async def live_owners(client: KeelClient, obj: Resource) -> list[OwnerState]:
    owners: list[OwnerState] = []
    for ref in obj.metadata.owner_references:
        where = owner_location(obj, ref)
        if where is None:
            owners.append(Unknown.OWNER)
            continue
        model, namespace = where
        try:
            owners.append(await client.get(model, ref.name, namespace=namespace))
        except NotFound:
            owners.append(None)
    return owners


class GarbageCollector:
    """Collects orphans of one kind; `related` maps any owner's change to its dependents."""

    def __init__(self, kind: type[Resource], cache: Callable[[type[Any]], Indexer[Any]]):
        self.kind = kind
        self.name = f"gc-{BY_KIND[kind.kind_name].plural}"
        self.primary = kind
        self._cache = cache
        self.related = tuple(Related(owner, self._dependents) for owner in COLLECTED_KINDS)

    def _dependents(self, owner: Resource) -> Iterable[str]:
        uid = owner.metadata.uid
        return (object_key(obj) for obj in self._cache(self.kind).by_index("owner", uid))

    async def reconcile(self, ctx: Context, key: str) -> Result:
        obj = ctx.cache(self.kind).get(key)
        if not plan(obj, cached_owners(ctx, obj) if obj is not None else []):
            return Result()
        assert obj is not None
        # The cache says orphan; only the API server may confirm it before a delete.
        try:
            live = await ctx.client.get(self.kind, obj.metadata.name,
                                        namespace=obj.metadata.namespace or None)  # fmt: skip
        except NotFound:
            return Result()
        for action in plan(live, await live_owners(ctx.client, live)):
            ctx.log.info("collecting %s %s: every owner is gone", action.kind, key)
            await execute(ctx.client, action)
        return Result()


def garbage_collectors(cache: Callable[[type[Any]], Indexer[Any]]) -> list[Controller]:
    """One collector per kind, sharing the runner's caches (pass `runner.cache`)."""
    return [GarbageCollector(kind, cache) for kind in COLLECTED_KINDS]
