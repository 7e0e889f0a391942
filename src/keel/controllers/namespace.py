"""Namespace deletion: every Namespace carries the finalizer `keel.dev/namespace`; once one is
being deleted, this controller deletes everything in it and then removes the finalizer, so the
API server lets the Namespace go. `plan` decides (pure); `execute` applies idempotently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from keel.api.registry import BY_KIND, KINDS
from keel.api.resources import Namespace, Resource
from keel.client import Conflict, KeelClient, NotFound, Preconditions
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer

__all__ = [
    "FINALIZER",
    "NAMESPACED_KINDS",
    "AddFinalizer",
    "DeleteObject",
    "MarkTerminating",
    "NamespaceController",
    "RemoveFinalizer",
    "execute",
    "plan",
]

FINALIZER = "keel.dev/namespace"
NAMESPACED_KINDS: tuple[type[Resource], ...] = tuple(i.model for i in KINDS if i.namespaced)
# While contents wait for finalizers of their own, look again even if no event arrives.
WAIT_FOR_CONTENTS = 1.0


@dataclass(frozen=True)
class AddFinalizer:
    namespace: str


@dataclass(frozen=True)
class MarkTerminating:
    namespace: str


@dataclass(frozen=True)
class DeleteObject:
    kind: str
    namespace: str
    name: str
    uid: str  # delete only this incarnation: a recreated object is judged on its own


@dataclass(frozen=True)
class RemoveFinalizer:
    namespace: str


Action = AddFinalizer | MarkTerminating | DeleteObject | RemoveFinalizer


def plan(namespace: Namespace | None, contents: Sequence[Resource], name: str) -> list[Action]:
    """What to do about Namespace `name` (None: it no longer exists) holding `contents`.

    A live Namespace only needs the finalizer. A deleting one has its contents deleted (those
    already being deleted are waited for) and keeps the finalizer until nothing is left. The
    contents of a Namespace that is gone altogether (deleted before it had the finalizer) are
    deleted too: nothing may outlive its Namespace.
    """
    if namespace is not None and not namespace.metadata.deletion_timestamp:
        if FINALIZER in namespace.metadata.finalizers:
            return []
        return [AddFinalizer(name)]
    actions: list[Action] = []
    if namespace is not None and namespace.status.phase != "Terminating":
        actions.append(MarkTerminating(name))
    actions += [
        DeleteObject(obj.kind or type(obj).kind_name, name, obj.metadata.name, obj.metadata.uid)
        for obj in sorted(contents, key=_order)
        if not obj.metadata.deletion_timestamp
    ]
    if namespace is not None and not contents and FINALIZER in namespace.metadata.finalizers:
        actions.append(RemoveFinalizer(name))
    return actions


def _order(obj: Resource) -> tuple[str, str]:
    return (obj.kind or type(obj).kind_name, obj.metadata.name)


async def execute(client: KeelClient, namespace: Namespace | None, action: Action) -> Any:
    """Apply one action. Namespace writes are conditional on the resourceVersion planned on
    (a `Conflict` means: look again); deletes are conditional on the uid, and an object
    already gone counts as done."""
    match action:
        case AddFinalizer():
            assert namespace is not None
            meta = msgspec.structs.replace(
                namespace.metadata, finalizers=[*namespace.metadata.finalizers, FINALIZER]
            )
            return await client.replace(msgspec.structs.replace(namespace, metadata=meta))
        case RemoveFinalizer():
            assert namespace is not None
            kept = [f for f in namespace.metadata.finalizers if f != FINALIZER]
            meta = msgspec.structs.replace(namespace.metadata, finalizers=kept)
            return await client.replace(msgspec.structs.replace(namespace, metadata=meta))
        case MarkTerminating():
            assert namespace is not None
            status = msgspec.structs.replace(namespace.status, phase="Terminating")
            return await client.update_status(msgspec.structs.replace(namespace, status=status))
        case DeleteObject(kind=kind, namespace=ns, name=name, uid=uid):
            # Gone already, or a newer object of that name (not ours to delete): both done.
            with contextlib.suppress(NotFound, Conflict):
                await client.delete(
                    BY_KIND[kind].model, name, namespace=ns, preconditions=Preconditions(uid=uid)
                )
            return namespace


class NamespaceController:
    """Finalizes Namespaces: see the module docstring."""

    name = "namespace"
    primary = Namespace

    def __init__(self, cache: Callable[[type[Any]], Indexer[Any]] | None = None) -> None:
        # A change inside a deleting (or vanished) Namespace may be what it waits for; in a
        # live one it concerns nobody here, so with the caches at hand those are skipped.
        self._cache = cache
        self.related = tuple(Related(kind, self._concerned) for kind in NAMESPACED_KINDS)

    def _concerned(self, obj: Resource) -> Iterable[str]:
        name = obj.metadata.namespace
        if self._cache is not None:
            namespace = self._cache(Namespace).get(name)
            if namespace is not None and not namespace.metadata.deletion_timestamp:
                return ()
        return (name,)

    async def reconcile(self, ctx: Context, key: str) -> Result:
        namespace: Namespace | None = ctx.cache(Namespace).get(key)
        if namespace is not None and not namespace.metadata.deletion_timestamp:
            for action in plan(namespace, (), key):
                await execute(ctx.client, namespace, action)
            return Result()
        contents = cached_contents(ctx, key)
        if namespace is None:
            if not contents:
                return Result()
            # Contents without a Namespace: make sure it is really gone (the Namespace cache
            # may lag behind a create) before deleting anything.
            try:
                await ctx.client.get(Namespace, key)
                return Result()  # it exists: its own event brings us back
            except NotFound:
                contents = await live_contents(ctx.client, key)
        elif not contents:
            # About to let the Namespace go: the cache may lag behind a recent create, so
            # ask the API server itself.
            contents = await live_contents(ctx.client, key)
        current: Any = namespace
        for action in plan(namespace, contents, key):
            ctx.log.info("namespace %s: %s", key, action)
            current = await execute(ctx.client, current, action)
        return Result(requeue_after=WAIT_FOR_CONTENTS if contents else None)


def cached_contents(ctx: Context, namespace: str) -> list[Resource]:
    return [
        obj for kind in NAMESPACED_KINDS for obj in ctx.cache(kind).by_index("namespace", namespace)
    ]


async def live_contents(client: KeelClient, namespace: str) -> list[Resource]:
    found: list[Resource] = []
    for kind in NAMESPACED_KINDS:
        found += (await client.list(kind, namespace=namespace)).items
    return found
