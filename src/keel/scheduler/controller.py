"""The scheduler's shell on the controller runtime: for each unbound Instance, build a
snapshot from the caches, ask `schedule`, and bind with OCC (a 409 retries the key), or
record why it cannot be placed; Node and Deployment changes bring unbound Instances back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from keel.api.resources import Condition, Deployment, Instance, Node, Resource
from keel.client import Conflict, NotFound
from keel.clock import rfc3339
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer, object_key
from keel.scheduler.metrics import SchedulerStats
from keel.scheduler.policy import Decision, build_snapshot, schedule

__all__ = [
    "RETRY_UNSCHEDULABLE",
    "SCHEDULED",
    "SchedulerController",
    "scheduled_condition",
]

SCHEDULED = "Scheduled"
RETRY_UNSCHEDULABLE = 5.0  # seconds: capacity freed by a deletion has no Node event
ASSUME_FOR = 30.0  # seconds an own binding counts before the cache must have shown it
TERMINAL = frozenset({"Succeeded", "Failed"})


def scheduled_condition(instance: Instance) -> Condition | None:
    return next((c for c in instance.status.conditions if c.type == SCHEDULED), None)


class SchedulerController:
    """Places Instances: see the module docstring. Run it with one worker, so that each
    decision sees the previous ones (`assumed` bridges the gap until the cache does)."""

    name = "scheduler"
    primary = Instance

    def __init__(
        self,
        cache: Callable[[type[Any]], Indexer[Any]],
        *,
        retry_after: float = RETRY_UNSCHEDULABLE,
    ) -> None:
        self._cache = cache
        self.retry_after = retry_after
        self.related = (
            Related(Node, self._unbound),
            Related(Deployment, self._unbound_of_deployment),
        )
        self._assumed: dict[str, tuple[str, str, float]] = {}  # key -> (node, uid, when)
        self.stats = SchedulerStats()  # counts for /metrics (keel.scheduler.metrics)
        self._pending_since: dict[str, tuple[str, float]] = {}  # key -> (uid, first seen)

    def _unbound(self, _node: Resource) -> Iterable[str]:
        instances: Indexer[Instance] = self._cache(Instance)
        return [
            object_key(i)
            for i in instances
            if not i.spec.node_name
            and not i.metadata.deletion_timestamp
            and i.status.phase not in TERMINAL
        ]

    def _unbound_of_deployment(self, deployment: Resource) -> Iterable[str]:
        instances: Indexer[Instance] = self._cache(Instance)
        return [
            object_key(i)
            for i in instances.by_index("owner", deployment.metadata.uid)
            if not i.spec.node_name
        ]

    def _assumptions(self, now: float, instances: Indexer[Instance]) -> dict[str, str]:
        """Own bindings the cache has not shown yet (dropped once it has, or after a while)."""
        for key, (_node, uid, when) in list(self._assumed.items()):
            cached = instances.get(key)
            if (
                cached is None
                or cached.metadata.uid != uid  # deleted and recreated under the same name
                or cached.spec.node_name
                or now - when > ASSUME_FOR
            ):
                del self._assumed[key]
        return {key: node for key, (node, _uid, _when) in self._assumed.items()}

    async def reconcile(self, ctx: Context, key: str) -> Result:
        instances: Indexer[Instance] = ctx.cache(Instance)
        instance = instances.get(key)
        now = ctx.clock.now()
        assumed = self._assumptions(now, instances)
        if (
            instance is None
            or instance.metadata.deletion_timestamp
            or instance.status.phase in TERMINAL
        ):
            self._pending_since.pop(key, None)
            return Result()
        if instance.spec.node_name:
            self._pending_since.pop(key, None)
            await self._mark_scheduled(ctx, instance)
            return Result()
        since = self._pending_since.get(key)
        if since is None or since[0] != instance.metadata.uid:
            self._pending_since[key] = (instance.metadata.uid, now)
        if key in assumed:
            # Bound by us a moment ago: the cache will show it (look again if it never does).
            return Result(requeue_after=ASSUME_FOR)
        snapshot = build_snapshot(
            ctx.cache(Node), instances, ctx.cache(Deployment), assumed=assumed
        )
        decision = schedule(instance, snapshot)
        if decision.node is None:
            self.stats.unschedulable += 1
            await self._mark_unschedulable(ctx, instance, decision)
            return Result(requeue_after=self.retry_after)
        meta = instance.metadata
        try:
            await ctx.client.bind(
                meta.namespace, meta.name, decision.node, resource_version=meta.resource_version
            )
        except NotFound:
            return Result()
        except Conflict:
            # Stale resourceVersion, or bound meanwhile: the runner retries the key with
            # backoff and the next look sees the newer Instance.
            self.stats.conflicts += 1
            raise
        self.stats.placements += 1
        _uid, first_seen = self._pending_since.pop(key, (meta.uid, now))
        self.stats.pending_to_bound.observe(max(0.0, ctx.clock.now() - first_seen))
        self._assumed[key] = (decision.node, meta.uid, now)
        ctx.log.info("bound %s to %s", key, decision.node)
        return Result()

    async def _mark_unschedulable(self, ctx: Context, instance: Instance, why: Decision) -> None:
        current = scheduled_condition(instance)
        if current is not None and (current.status, current.reason, current.message) == (
            "False",
            "Unschedulable",
            why.reason,
        ):
            return
        ctx.log.info("%s is unschedulable: %s", object_key(instance), why.reason)
        condition = Condition(
            type=SCHEDULED,
            status="False",
            reason="Unschedulable",
            message=why.reason,
            last_transition_time=rfc3339(ctx.clock.wall())
            if current is None or current.status != "False"
            else current.last_transition_time,
        )
        await self._set_condition(ctx, instance, condition)

    async def _mark_scheduled(self, ctx: Context, instance: Instance) -> None:
        """A bound Instance that was once unschedulable says so no longer."""
        current = scheduled_condition(instance)
        if current is None or current.status == "True":
            return
        condition = Condition(
            type=SCHEDULED,
            status="True",
            reason="Bound",
            message=f"bound to node {instance.spec.node_name}",
            last_transition_time=rfc3339(ctx.clock.wall()),
        )
        await self._set_condition(ctx, instance, condition)

    @staticmethod
    async def _set_condition(ctx: Context, instance: Instance, condition: Condition) -> None:
        others = [c for c in instance.status.conditions if c.type != SCHEDULED]
        status = msgspec.structs.replace(instance.status, conditions=[*others, condition])
        # A Conflict propagates: the runner retries with the newer Instance from the cache.
        with contextlib.suppress(NotFound):
            await ctx.client.update_status(msgspec.structs.replace(instance, status=status))
