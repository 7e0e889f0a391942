"""The scheduler as a service: its controller on a `ControllerRunner` under leader election
on Lease `keel-system/scheduler`, so only one replica binds and every binding carries the
lease's fencing token (a deposed leader's late binding is rejected by the store).
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
        clock=clock,
        rng=rng,
        namespace=LEASE_NAMESPACE,
        lease_name=LEASE_NAME,
    )
