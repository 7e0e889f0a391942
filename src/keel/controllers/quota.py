"""The quota controller: keeps each ResourceQuota's `status` (the limits it enforces and what
the namespace's Instances request) equal to the Instances that exist. Admission raises
`status.used` in the same transaction as each create; this controller lowers it after any
deletion, whichever path deleted (DELETE, a finalizer removed, the namespace's deletion, the
garbage collector), and fills it for a new quota. It writes only when the value changes.

The cache proposes, a live read confirms: the status is recomputed from the quota and an
Instance list at least as new as it, and written conditionally on the quota's
resourceVersion, so a create admitted meanwhile (which moved the quota) is never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from keel.api.quota import status_change
from keel.api.resources import Instance, Resource, ResourceQuota
from keel.client import NotFound
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer

__all__ = ["QuotaController"]

# A list older than the quota read before it (a lagging watch cache): look again this soon.
STALE_LIST_RETRY = 0.2


class QuotaController:
    """Recomputes ResourceQuota status: see the module docstring. An Instance concerns every
    quota of its namespace."""

    name = "quota"
    primary = ResourceQuota

    def __init__(self, cache: Callable[[type[Any]], Indexer[Any]] | None = None) -> None:
        self._cache = cache
        self.related = (Related(Instance, self._quotas_of),)

    def _quotas_of(self, obj: Resource) -> Iterable[str]:
        if self._cache is None:
            return ()
        namespace = obj.metadata.namespace
        return [
            f"{namespace}/{quota.metadata.name}"
            for quota in self._cache(ResourceQuota).by_index("namespace", namespace)
        ]

    async def reconcile(self, ctx: Context, key: str) -> Result:
        cached: ResourceQuota | None = ctx.cache(ResourceQuota).get(key)
        if cached is None:
            return Result()
        namespace, name = cached.metadata.namespace, cached.metadata.name
        instances = ctx.cache(Instance).by_index("namespace", namespace)
        if status_change(cached, instances) is None:
            return Result()  # the cache agrees with the ledger: nothing to write
        try:
            quota = await ctx.client.get(ResourceQuota, name, namespace=namespace)
        except NotFound:
            return Result()
        listed = await ctx.client.list(Instance, namespace=namespace)
        if int(listed.resource_version or 0) < int(quota.metadata.resource_version or 0):
            return Result(requeue_after=STALE_LIST_RETRY)  # would miss an admitted create
        wanted = status_change(quota, listed.items)
        if wanted is None:
            return Result()
        ctx.log.info("quota %s: used %s (hard %s)", key, wanted.used, wanted.hard)
        try:
            # Conditional on the quota as read: a create admitted since moved it, and the
            # Conflict brings this key back (rate limited) to look again.
            await ctx.client.update_status(msgspec.structs.replace(quota, status=wanted))
        except NotFound:
            return Result()
        return Result()
