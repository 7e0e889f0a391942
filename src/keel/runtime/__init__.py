"""Keel's controller runtime: informers, work queues, leader election with store-enforced
fencing, sharding, checkpoints and the controller SDK (`Controller`, `ControllerRunner`,
`ControllerManager`). Names load lazily, so importing one part never drags in the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.runtime.checkpoint import Checkpoint
    from keel.runtime.controller import (
        Context,
        Controller,
        ControllerMetrics,
        ControllerRunner,
        Partition,
        Related,
        Result,
        owner_keys,
    )
    from keel.runtime.informer import Indexer, Informer, object_key
    from keel.runtime.leaderelection import LeaderElector
    from keel.runtime.manager import ControllerManager
    from keel.runtime.sharding import ShardCoordinator, shard_of
    from keel.runtime.workqueue import WorkQueue, WorkQueueMetrics

_HOMES: dict[str, str] = {
    "Checkpoint": "checkpoint",
    "Context": "controller",
    "Controller": "controller",
    "ControllerMetrics": "controller",
    "ControllerRunner": "controller",
    "Partition": "controller",
    "Related": "controller",
    "Result": "controller",
    "owner_keys": "controller",
    "Indexer": "informer",
    "Informer": "informer",
    "object_key": "informer",
    "LeaderElector": "leaderelection",
    "ControllerManager": "manager",
    "ShardCoordinator": "sharding",
    "shard_of": "sharding",
    "WorkQueue": "workqueue",
    "WorkQueueMetrics": "workqueue",
}

__all__ = [
    "Checkpoint",
    "Context",
    "Controller",
    "ControllerManager",
    "ControllerMetrics",
    "ControllerRunner",
    "Indexer",
    "Informer",
    "LeaderElector",
    "Partition",
    "Related",
    "Result",
    "ShardCoordinator",
    "WorkQueue",
    "WorkQueueMetrics",
    "object_key",
    "owner_keys",
    "shard_of",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'keel.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keel.runtime.{home}"), name)
    globals()[name] = value
    return value
