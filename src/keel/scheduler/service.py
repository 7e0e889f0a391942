"""The scheduler as a service: its controller on a `ControllerRunner` under leader election
on Lease `keel-system/scheduler`, so only one replica binds and every binding carries the
lease's fencing token (a deposed leader's late binding is rejected by the store).

With `shards` > 0 several replicas place at once (Omega's shared state): the Instances are
split by key hash over `shards` shard leases, each replica holds its share of them, and all
see every Node. Two replicas choosing the same Node's last room is settled by the API
server: bindings are checked against node room in their store transaction, so the later
one is refused (409) and that replica looks again.
"""

from __future__ import annotations

import random

from keel.client import KeelClient
from keel.clock import Clock
from keel.runtime.controller import ControllerRunner
from keel.runtime.manager import ControllerManager
from keel.scheduler.controller import SchedulerController
from keel.scheduler.policy import DEFAULT_CONFIG, SchedulerConfig

__all__ = ["LEASE_NAME", "LEASE_NAMESPACE", "new_scheduler"]

LEASE_NAMESPACE = "keel-system"
LEASE_NAME = "scheduler"


def new_scheduler(
    client: KeelClient,
    *,
    identity: str,
    clock: Clock,
    ttl: int = 2,
    rng: random.Random | None = None,
    config: SchedulerConfig = DEFAULT_CONFIG,
    shards: int = 0,
    fairness: bool = True,
) -> ControllerManager:
    """A manager to `run()`: informers always (warm standby), binding only while leading.

    One worker: each decision must see the previous one's binding (bindings themselves are
    written concurrently). Waiting Instances are retried on events, not on a timer. Pending
    Instances are taken in fair order (`fairness=False`: arrival order).
    """
    runner = ControllerRunner(client, clock=clock, rng=rng)
    controller = SchedulerController(runner.cache, config=config, fairness=fairness)
    runner.register(controller, workers=1, ready_lane=controller.ready_lane)
    controller.attach(runner)
    return ControllerManager(
        client,
        runner,
        identity=identity,
        ttl=ttl,
        shards=shards,
        clock=clock,
        rng=rng,
        namespace=LEASE_NAMESPACE,
        lease_name=LEASE_NAME,
    )
