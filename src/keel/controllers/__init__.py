"""Keel's platform controllers, one module each, and the names `keel controller-manager
--controllers` knows them by. Each is a pure `plan` plus an idempotent executor run by
`keel.runtime`'s SDK.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.controllers.cluster import ClusterController, FailoverController
from keel.controllers.deployment import DeploymentController
from keel.controllers.endpoints import EndpointsController
from keel.controllers.gc import GarbageCollector, garbage_collectors
from keel.controllers.namespace import NamespaceController
from keel.controllers.nodelifecycle import ClusterEvictionsController, NodeLifecycleController
from keel.controllers.quota import QuotaController
from keel.runtime.controller import Controller
from keel.runtime.informer import Indexer

__all__ = [
    "CONTROLLERS",
    "GarbageCollector",
    "NamespaceController",
    "QuotaController",
    "build",
]

CacheOf = Callable[[type[Any]], Indexer[Any]]

# name -> the controllers it stands for, given the runner's cache accessor
CONTROLLERS: dict[str, Callable[[CacheOf], list[Controller]]] = {
    "namespace": lambda cache: [NamespaceController(cache)],
    "gc": garbage_collectors,
    "deployment": lambda cache: [DeploymentController(cache)],
    "endpoints": lambda cache: [EndpointsController(cache)],
    "nodelifecycle": lambda cache: [NodeLifecycleController(), ClusterEvictionsController(cache)],
    # Cluster status, and cluster failover of Deployments (placement.clusterFailover)
    "cluster": lambda cache: [ClusterController(), FailoverController(cache)],
    # ResourceQuota status: usage recomputed from the Instances that exist (after deletions)
    "quota": lambda cache: [QuotaController(cache)],
}


def build(names: list[str], cache: CacheOf) -> list[Controller]:
    """The controllers for `names` (see CONTROLLERS); ValueError for an unknown name."""
    unknown = [name for name in names if name not in CONTROLLERS]
    if unknown:
        raise ValueError(
            f"unknown controller(s) {', '.join(unknown)}; known: {', '.join(CONTROLLERS)}"
        )
    return [controller for name in names for controller in CONTROLLERS[name](cache)]
