"""Garbage collection: an object whose ownerReferences all name owners that no longer exist
(absent, or present with another uid) is deleted. The cache proposes; a live GET confirms;
the delete is conditional on the dependent's uid, so a recreated object is never collected.

Owners deleted with propagationPolicy Foreground or Orphan carry a finalizer
(`foregroundDeletion`, `orphan`) that the collector of their kind finishes (`plan_owner`):
Foreground deletes every dependent and removes the finalizer once none whose reference sets
`blockOwnerDeletion` is left; Orphan removes the owner's reference from each dependent, then
the finalizer. Finalizer and reference edits are JSON patches tested against the
resourceVersion read, so a concurrent change is never overwritten.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from keel.api.registry import BY_KIND, KINDS
from keel.api.resources import (
    FOREGROUND_FINALIZER,
    ORPHAN_FINALIZER,
    OwnerReference,
    Resource,
)
from keel.client import Conflict, KeelClient, NotFound, Preconditions
from keel.runtime.controller import Context, Controller, Related, Result
from keel.runtime.informer import Indexer, object_key

__all__ = [
    "COLLECTED_KINDS",
    "Delete",
    "GarbageCollector",
    "Release",
    "RemoveFinalizer",
    "Unknown",
    "execute",
    "garbage_collectors",
    "plan",
    "plan_owner",
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


@dataclass(frozen=True)
class Release:
    """Replace a dependent's ownerReferences with those left once the deleted owner's is
    dropped (Orphan propagation)."""

    kind: str
    namespace: str
    name: str
    resource_version: str
    owner_references: tuple[OwnerReference, ...]


@dataclass(frozen=True)
class RemoveFinalizer:
    kind: str
    namespace: str
    name: str
    resource_version: str
    finalizers: tuple[str, ...]  # what remains


OwnerAction = Delete | Release | RemoveFinalizer


def plan_owner(owner: Resource, dependents: Sequence[Resource]) -> list[OwnerAction]:
    """What finishes a Foreground or Orphan deletion of `owner`, given the objects that
    reference it (any kind). Nothing for an owner not being deleted that way."""
    meta = owner.metadata
    if not meta.deletion_timestamp:
        return []
    uid = meta.uid
    kind = owner.kind or type(owner).kind_name
    refs = [
        (d, next((r for r in d.metadata.owner_references if r.uid == uid), None))
        for d in dependents
    ]
    mine = [(d, r) for d, r in refs if r is not None]
    actions: list[OwnerAction] = []
    remaining = list(meta.finalizers)
    if ORPHAN_FINALIZER in remaining:
        for dependent, _ in mine:
            dm = dependent.metadata
            kept = tuple(r for r in dm.owner_references if r.uid != uid)
            dkind = dependent.kind or type(dependent).kind_name
            actions.append(Release(dkind, dm.namespace, dm.name, dm.resource_version, kept))
        if not mine:
            remaining.remove(ORPHAN_FINALIZER)
    elif FOREGROUND_FINALIZER in remaining:
        for dependent, _ in mine:
            dm = dependent.metadata
            if not dm.deletion_timestamp:
                dkind = dependent.kind or type(dependent).kind_name
                actions.append(Delete(dkind, dm.namespace, dm.name, dm.uid))
        if not any(r.block_owner_deletion for _, r in mine if r is not None):
            remaining.remove(FOREGROUND_FINALIZER)
    if remaining != list(meta.finalizers):
        actions.append(
            RemoveFinalizer(
                kind, meta.namespace, meta.name, meta.resource_version, tuple(remaining)
            )
        )
    return actions


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


async def execute(client: KeelClient, action: OwnerAction) -> None:
    """Delete exactly the planned incarnation; gone already or recreated both mean done.
    Patches test the resourceVersion read: a Conflict means look again (the next pass)."""
    model = BY_KIND[action.kind].model
    namespace = action.namespace or None
    match action:
        case Delete():
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    model,
                    action.name,
                    namespace=namespace,
                    preconditions=Preconditions(uid=action.uid),
                )
        case Release() | RemoveFinalizer():
            if isinstance(action, Release):
                path = "/metadata/ownerReferences"
                value: list[Any] = [msgspec.to_builtins(r) for r in action.owner_references]
            else:
                path, value = "/metadata/finalizers", list(action.finalizers)
            patch = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": action.resource_version,
                },
                {"op": "add", "path": path, "value": value},
            ]
            with contextlib.suppress(NotFound, Conflict):
                await client.patch(model, action.name, patch, namespace=namespace, type="json")


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
        finalizers = obj.metadata.finalizers if obj is not None else []
        if obj is not None and (
            FOREGROUND_FINALIZER in finalizers or ORPHAN_FINALIZER in finalizers
        ):
            return await self._finish_owner(ctx, obj)
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

    async def _finish_owner(self, ctx: Context, owner: Resource) -> Result:
        """Foreground or Orphan deletion of `owner`: act on its dependents (from the caches;
        the deletes are conditional on uid, the patches on resourceVersion), and look again
        until its finalizer is gone."""
        meta = owner.metadata
        dependents: list[Resource] = []
        for kind in COLLECTED_KINDS:
            for dependent in ctx.cache(kind).by_index("owner", meta.uid):
                if not meta.namespace or dependent.metadata.namespace == meta.namespace:
                    dependents.append(dependent)
        actions = plan_owner(owner, dependents)
        for action in actions:
            ctx.log.info("%s %s: %s", meta.name, type(action).__name__, action.name)
            await execute(ctx.client, action)
        done = any(isinstance(a, RemoveFinalizer) for a in actions)
        return Result() if done else Result(requeue_after=0.5)


def garbage_collectors(cache: Callable[[type[Any]], Indexer[Any]]) -> list[Controller]:
    """One collector per kind, sharing the runner's caches (pass `runner.cache`)."""
    return [GarbageCollector(kind, cache) for kind in COLLECTED_KINDS]
