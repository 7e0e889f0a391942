"""A stand-in for the node lifecycle controller's FullDisruption rule (issue 10, item 3,
built on another branch), loaded into a real `keel controller-manager` with
`--controller controllers.full_disruption:controllers`; holds no tests.

It is the real NodeLifecycleController, except that while every node of a cluster has lost
its lease it evicts nothing there (the Ready transitions and the release of fenced exclusive
Instances go on): that case is left to cluster failover, which the failover tests exercise.
Once the real rule is merged, those tests can run `nodelifecycle` itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keel.api.resources import Instance, Lease, Node
from keel.controllers.nodelifecycle import LEASE_NAMESPACE, NodeLifecycleController
from keel.runtime.controller import Context, Controller, Result
from keel.runtime.manager import ControllerManager


class _OnlyTerminating:
    """An Instance cache that shows a node's terminating Instances only (nothing to evict)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def by_index(self, index: str, value: str) -> list[Instance]:
        return [i for i in self.inner.by_index(index, value) if i.metadata.deletion_timestamp]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FullDisruptionNodeLifecycle(NodeLifecycleController):
    name = "nodelifecycle-full-disruption"

    async def reconcile(self, ctx: Context, key: str) -> Result:
        node: Node | None = ctx.cache(Node).get(key)
        if node is None or not self._cluster_lost(ctx, node.spec.cluster):
            return await super().reconcile(ctx, key)
        real = ctx.cache

        def cache(kind: type[Any]) -> Any:
            return _OnlyTerminating(real(kind)) if kind is Instance else real(kind)

        return await super().reconcile(dataclasses.replace(ctx, cache=cache), key)

    @staticmethod
    def _cluster_lost(ctx: Context, cluster: str) -> bool:
        leases = ctx.cache(Lease)
        nodes = [n for n in ctx.cache(Node) if n.spec.cluster == cluster]
        return bool(nodes) and all(
            leases.get(f"{LEASE_NAMESPACE}/{n.metadata.name}") is None for n in nodes
        )


def controllers(manager: ControllerManager) -> list[Controller]:
    del manager
    return [FullDisruptionNodeLifecycle()]
