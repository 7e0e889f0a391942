"""The scheduler's shell on the controller runtime. Watch events keep the columnar
`ClusterState` current (`attach`); for each unbound Instance, `reconcile` asks the pure
policy, counts the binding at once (assumed) and writes it in the background with OCC, so
decisions are not serialized behind store round trips. When nothing fits, a higher-priority
Instance preempts: it is nominated in status, its victims are evicted through the eviction
API (budgets and grace periods honoured), and it binds once their deletions free the room.
Unschedulable Instances say why in a condition and an event, and are retried when a Node is
added or changes, or an Instance frees resources, never on a timer. Pending Instances are
taken from the work queue in fair order (keel.scheduler.fairness: priority, then weighted
dominant-resource fairness across namespaces), retries of waiting ones included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import msgspec

from keel.api.resources import (
    Cluster,
    Condition,
    Deployment,
    Instance,
    Namespace,
    Node,
    PlanBinding,
    PlanResult,
    Resource,
)
from keel.client import (
    Conflict,
    FencingTokenRejected,
    KeelClientError,
    NotFound,
    Preconditions,
    TooManyRequests,
)
from keel.clock import rfc3339
from keel.runtime.controller import Context, ControllerRunner, Related, Result
from keel.runtime.informer import Indexer, object_key
from keel.runtime.workqueue import ReadyLane
from keel.scheduler.fairness import FairLane, weighted_share
from keel.scheduler.metrics import SchedulerStats
from keel.scheduler.policy import (
    DEFAULT_CONFIG,
    Decision,
    Preemption,
    SchedulerConfig,
    noexecute_deadline,
    preempt,
    schedule,
)
from keel.scheduler.state import ClusterState, effective_priority, instance_key

__all__ = [
    "MAX_IN_FLIGHT",
    "SCHEDULED",
    "SchedulerController",
    "scheduled_condition",
]

SCHEDULED = "Scheduled"
PLAN_SIZE = 50  # bindings per plan: the API server commits a plan in one store transaction
PLANS_IN_FLIGHT = 4  # plans sent concurrently (per partition)
MAX_IN_FLIGHT = PLAN_SIZE * PLANS_IN_FLIGHT  # bindings decided but not yet answered
RETRY_BUDGET = 2.0  # seconds: a preemption a disruption budget refused is tried again
TERMINAL = frozenset({"Succeeded", "Failed"})
log = logging.getLogger("keel.scheduler")


def scheduled_condition(instance: Instance) -> Condition | None:
    return next((c for c in instance.status.conditions if c.type == SCHEDULED), None)


class SchedulerController:
    """Places Instances: see the module docstring. Run it with one worker, so that each
    decision sees the previous ones (the assumed bindings bridge the gap until the watch
    shows them)."""

    name = "scheduler"
    primary = Instance

    def __init__(
        self,
        cache: Callable[[type[Any]], Indexer[Any]],
        *,
        config: SchedulerConfig = DEFAULT_CONFIG,
        max_in_flight: int = MAX_IN_FLIGHT,
        fairness: bool = True,
    ) -> None:
        self._cache = cache
        self.config = config
        self.fairness = fairness  # False: pending Instances in arrival order (FIFO)
        self.state = ClusterState()
        self.related = (
            Related(Node, lambda _n: ()),
            Related(Cluster, lambda _c: ()),
            Related(Deployment, self._unbound_of_deployment),
            Related(Namespace, lambda _n: ()),  # their scheduling weights
        )
        self._runner: ControllerRunner | None = None
        self._waiting: dict[str, None] = {}  # unschedulable keys, retried on relevant events
        self._preempting: dict[str, tuple[str, frozenset[str]]] = {}  # key -> (node, victims)
        self._victims: dict[str, str] = {}  # victim key -> the preemptor waiting for it
        self._sweep_pending = False
        self._sweep_all = False  # the pending sweep looks at every waiting Instance
        self._marking: set[str] = set()  # bound keys whose Scheduled=True is being written
        # node -> (taint key, value) -> when this scheduler first saw that NoExecute taint
        self._tainted: dict[str, dict[tuple[str, str], float]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._plans: dict[int, _PlanBuffer] = {}  # id(ctx) -> bindings waiting to be sent
        self.use_plans = True  # False once an API server without plans answered 404
        self.bound = 0
        self.preemptions = 0
        self.stats = SchedulerStats()  # counts for /metrics (keel.scheduler.metrics)
        self._pending_since: dict[str, tuple[str, float]] = {}  # key -> (uid, first seen)

    # ------------------------------------------------------------------ events

    def attach(self, runner: ControllerRunner) -> None:
        """Keep the state current from the runner's informers (register first)."""
        self._runner = runner
        runner.informers[Node].add_handler(self._on_node)
        runner.informers[Cluster].add_handler(self._on_cluster)
        runner.informers[Deployment].add_handler(self._on_deployment)
        runner.informers[Instance].add_handler(self._on_instance)

    def _on_node(self, kind: str, old: Node | None, new: Node | None) -> None:
        if new is None:
            if old is not None:
                self.state.remove_node(old.metadata.name)
                self._tainted.pop(old.metadata.name, None)
            return
        self.state.upsert_node(new)
        if kind != "RESYNC":
            self._note_noexecute(new)
            self._retry_waiting()

    def _note_noexecute(self, node: Node) -> None:
        """Remember since when each NoExecute taint is on the Node (as first seen here), and
        look at the Instances on it when they change."""
        name = node.metadata.name
        now = self._now()
        before = self._tainted.get(name, {})
        current = {
            (t.key, t.value): before.get((t.key, t.value), now)
            for t in node.spec.taints
            if t.effect == "NoExecute"
        }
        if current:
            self._tainted[name] = current
        else:
            self._tainted.pop(name, None)
        if current.keys() != before.keys():
            slot = self.state.slots.get(name)
            for key in sorted(self.state.by_slot[slot]) if slot is not None else ():
                self._enqueue(key)

    def _now(self) -> float:
        return self._runner.clock.now() if self._runner is not None else 0.0

    async def _noexecute(self, ctx: Context, instance: Instance) -> Result:
        """Evict a bound Instance that does not (or no longer) tolerates its Node's NoExecute
        taints, at once or after its tolerationSeconds."""
        taints = self._tainted.get(instance.spec.node_name)
        if not taints:
            return Result()
        due = noexecute_deadline(
            instance.spec.tolerations, [(k, v, since) for (k, v), since in taints.items()]
        )
        if due is None:
            return Result()
        wait = due - ctx.clock.now()
        if wait > 0:
            return Result(requeue_after=wait)
        meta = instance.metadata
        ctx.log.info(
            "evicting %s: NoExecute taint on %s", object_key(instance), instance.spec.node_name
        )
        try:
            await ctx.client.evict(
                meta.name, namespace=meta.namespace, preconditions=Preconditions(uid=meta.uid)
            )
        except NotFound:
            return Result()
        except TooManyRequests:
            return Result(requeue_after=RETRY_BUDGET)  # its disruption budget: later
        await _event(
            ctx,
            _involved(instance),
            "TaintEviction",
            f"evicted: node {instance.spec.node_name} has a NoExecute taint it does not "
            "tolerate (any longer)",
            warning=True,
        )
        return Result()

    def _on_cluster(self, kind: str, old: Cluster | None, new: Cluster | None) -> None:
        if new is None:
            if old is not None:
                self.state.remove_cluster(old.metadata.name)
            return
        self.state.upsert_cluster(new)
        if kind != "RESYNC":
            self._retry_waiting()

    def _on_deployment(self, _kind: str, old: Deployment | None, new: Deployment | None) -> None:
        if new is not None:
            self.state.upsert_deployment(new)
        elif old is not None:
            self.state.remove_deployment(object_key(old))

    def _on_instance(self, kind: str, old: Instance | None, new: Instance | None) -> None:
        if new is None:
            if old is None:
                return
            key = instance_key(old)
            freed = self.state.remove_instance(key)
            self._forget_preemptor(key)
        else:
            key = instance_key(new)
            freed = self.state.upsert_instance(new)
        if freed and kind != "RESYNC":
            preemptor = self._victims.pop(key, None)
            if preemptor is not None:
                self._enqueue(preemptor, "high")  # its room may be free now: bind it first
            self._retry_waiting(freed=True)

    def _forget_preemptor(self, key: str) -> None:
        self._waiting.pop(key, None)
        self.state.release_nomination(key)
        pending = self._preempting.pop(key, None)
        if pending is not None:
            for victim in pending[1]:
                if self._victims.get(victim) == key:
                    del self._victims[victim]
                    self.state.evicting.discard(victim)

    def _victims_going(self, key: str) -> bool:
        """`key` preempts, and some of its victims are still there (being evicted)."""
        pending = self._preempting.get(key)
        if pending is None:
            return False
        node, victims = pending
        return node in self.state.slots and any(v in self.state.placed for v in victims)

    def _retry_waiting(self, *, freed: bool = False) -> None:
        """Look again at the unschedulable Instances, once per burst of events: all of them
        after a Node or Cluster changed, only those that fit the room free on some Node
        when Instances merely freed resources (each deletion of a victim frees some: to
        look at every waiting Instance each time would be quadratic)."""
        if not freed:
            self._sweep_all = True
        if self._sweep_pending or not self._waiting:
            return
        self._sweep_pending = True
        asyncio.get_running_loop().call_soon(self._sweep)

    def _sweep(self) -> None:
        self._sweep_pending = False
        everything, self._sweep_all = self._sweep_all, False
        instances: Indexer[Instance] = self._cache(Instance)
        room = None if everything else self.state.largest_free()
        for key in list(self._waiting):
            instance = instances.get(key)
            if room is not None and instance is not None and not room.may_fit(instance):
                continue
            self._enqueue(key)

    def _enqueue(self, key: str, lane: str = "normal") -> None:
        if self._runner is None:
            return
        for partition in list(self._runner.partitions.values()):
            if not partition.stopped and partition.accepts(key):
                partition.queues[self.name].add(key, lane)

    def _unbound_of_deployment(self, deployment: Resource) -> Iterable[str]:
        instances: Indexer[Instance] = self._cache(Instance)
        return [
            object_key(i)
            for i in instances.by_index("owner", deployment.metadata.uid)
            if not i.spec.node_name
        ]

    # ------------------------------------------------------------------ fairness

    def ready_lane(self, lane: str) -> ReadyLane:
        """The order of the work queue's lane `lane` (pass to `ControllerRunner.register`):
        the normal lane is fair; the high lane (preemptors whose room is free) stays FIFO."""
        if self.fairness and lane == "normal":
            return FairLane(self._classify, self.weighted_share)
        return deque()

    def _classify(self, key: str) -> tuple[str, int] | None:
        instance: Instance | None = self._cache(Instance).get(key)
        if (
            instance is None
            or instance.spec.node_name
            or instance.metadata.deletion_timestamp
            or instance.status.phase in TERMINAL
        ):
            return None  # not pending: quick work, no capacity taken
        priority = effective_priority(instance, self.state.deployment_of(instance))
        return instance.metadata.namespace, priority

    def weight(self, namespace: str) -> float:
        """The namespace's `spec.scheduling.weight` (1 until its Namespace is seen)."""
        found: Namespace | None = self._cache(Namespace).get(namespace)
        return found.spec.scheduling.weight if found is not None else 1.0

    def weighted_share(self, namespace: str) -> float:
        """The namespace's dominant share of the schedulable capacity over its weight,
        counting bound and assumed Instances (so each decision sees the previous ones)."""
        used = self.state.namespace_used.get(namespace)
        if not used:
            return 0.0
        return weighted_share(used, self.state.schedulable_capacity(), self.weight(namespace))

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, ctx: Context, key: str) -> Result:
        instances: Indexer[Instance] = ctx.cache(Instance)
        instance = instances.get(key)
        state = self.state
        if (
            instance is None
            or instance.metadata.deletion_timestamp
            or instance.status.phase in TERMINAL
        ):
            self._forget_preemptor(key)
            self._pending_since.pop(key, None)
            return Result()
        if instance.spec.node_name:
            self._forget_preemptor(key)
            self._pending_since.pop(key, None)
            if _was_unscheduled(instance) and key not in self._marking:
                # Written in the background, as bindings are: the next decision need not
                # wait for it.
                self._marking.add(key)
                self._spawn(self._mark_scheduled(ctx, instance), f"scheduled-{key}")
            return await self._noexecute(ctx, instance)
        since = self._pending_since.get(key)
        if since is None or since[0] != instance.metadata.uid:
            self._pending_since[key] = (instance.metadata.uid, ctx.clock.now())
        placed = state.placed.get(key)
        if placed is not None and placed.assumed and placed.uid == instance.metadata.uid:
            return Result()  # our binding is being written
        if self._victims_going(key):
            return Result()  # its room is held; its victims' deletions wake it up
        state.release_nomination(key)  # its own held room is free for it
        decision = schedule(instance, state, self.config)
        if decision.node is None:
            self.stats.unschedulable += 1
            return await self._cannot_place(ctx, instance, decision)
        await self._slots.acquire()
        self._forget_preemptor(key)
        state.assume(instance, decision.node)
        self._queue_binding(ctx, instance, decision.node)
        return Result()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _queue_binding(self, ctx: Context, instance: Instance, node: str) -> None:
        """Send the binding in the next plan of this partition. While plans are in flight
        the decisions made meanwhile gather into the next one, so plans grow with load and
        a lone binding goes out at once."""
        buffer = self._plans.get(id(ctx))
        if buffer is None or buffer.ctx is not ctx:
            buffer = self._plans[id(ctx)] = _PlanBuffer(ctx)
        buffer.bindings.append((instance, node))
        if buffer.senders < PLANS_IN_FLIGHT:
            buffer.senders += 1
            self._spawn(self._send_plans(buffer), "binding-plans")

    async def _send_plans(self, buffer: _PlanBuffer) -> None:
        try:
            while buffer.bindings:
                batch = buffer.bindings[:PLAN_SIZE]
                del buffer.bindings[:PLAN_SIZE]
                try:
                    await self._send_plan(buffer.ctx, batch)
                finally:
                    for _ in batch:
                        self._slots.release()
        finally:
            buffer.senders -= 1

    async def _send_plan(self, ctx: Context, batch: list[tuple[Instance, str]]) -> None:
        if not self.use_plans:
            await asyncio.gather(*(self._bind(ctx, instance, node) for instance, node in batch))
            return
        plan = [
            PlanBinding(i.metadata.namespace, i.metadata.name, node, i.metadata.resource_version)
            for i, node in batch
        ]
        try:
            results = await ctx.client.bind_plan(plan)
        except NotFound:
            # An API server from before binding plans: bind one by one from now on.
            ctx.log.warning("the API server has no bindingplans: binding one at a time")
            self.use_plans = False
            await asyncio.gather(*(self._bind(ctx, instance, node) for instance, node in batch))
            return
        except FencingTokenRejected:
            for instance, _ in batch:
                self.state.forget(instance_key(instance))  # deposed: the partition stops
            return
        except (KeelClientError, OSError) as exc:
            ctx.log.info("a plan of %d bindings failed: %s", len(batch), exc)
            for instance, _ in batch:
                self._refused(instance_key(instance), retry=True)
            return
        self.stats.plans += 1
        for (instance, node), result in zip(batch, results, strict=True):
            self._answered(ctx, instance, node, result)

    def _answered(self, ctx: Context, instance: Instance, node: str, result: PlanResult) -> None:
        key = instance_key(instance)
        if result.bound:
            self._bound(ctx, instance, node)
            return
        if result.code == 404:
            self.state.forget(key)
            return
        # 409: the Instance changed (or was bound by another scheduler), or the Node had no
        # room left for it (another scheduler bound there first): look again with what the
        # cache shows next, after a short backoff so the watch can catch up.
        self.stats.conflicts += 1
        ctx.log.info("binding %s to %s refused: %s", key, node, result.message)
        self._refused(key, retry=True, backoff=True)

    def _refused(self, key: str, *, retry: bool, backoff: bool = False) -> None:
        self.state.forget(key)
        if not retry or self._runner is None:
            return
        if not backoff:
            self._enqueue(key)
            return
        for partition in list(self._runner.partitions.values()):
            if not partition.stopped and partition.accepts(key):
                partition.queues[self.name].add_rate_limited(key)

    def _bound(self, ctx: Context, instance: Instance, node: str) -> None:
        meta = instance.metadata
        key = instance_key(instance)
        self.bound += 1
        self.stats.placements += 1
        _uid, first_seen = self._pending_since.pop(key, (meta.uid, ctx.clock.now()))
        self.stats.pending_to_bound.observe(max(0.0, ctx.clock.now() - first_seen))
        ctx.log.debug("bound %s to %s", key, node)

    async def _bind(self, ctx: Context, instance: Instance, node: str) -> None:
        """One binding through the `binding` subresource (API servers without plans)."""
        meta = instance.metadata
        key = instance_key(instance)
        try:
            await ctx.client.bind(
                meta.namespace, meta.name, node, resource_version=meta.resource_version
            )
        except NotFound:
            self.state.forget(key)
        except FencingTokenRejected:
            self.state.forget(key)  # deposed: the partition is stopping
        except Conflict as exc:
            self.stats.conflicts += 1
            ctx.log.info("binding %s to %s refused: %s", key, node, exc)
            self._refused(key, retry=True, backoff=True)
        except (KeelClientError, OSError) as exc:
            ctx.log.info("binding %s to %s failed: %s", key, node, exc)
            self._refused(key, retry=True)
        else:
            self._bound(ctx, instance, node)

    async def _cannot_place(self, ctx: Context, instance: Instance, decision: Decision) -> Result:
        key = instance_key(instance)
        state = self.state
        if key in self._preempting:
            self._forget_preemptor(key)  # its victims are gone, yet it does not fit
        preemption = preempt(instance, state)
        if preemption is None:
            self._waiting[key] = None
            await self._mark_unschedulable(ctx, instance, decision, nominated="")
            return Result()
        self._waiting.pop(key, None)
        state.nominate(instance, preemption.node)
        self._preempting[key] = (preemption.node, frozenset(preemption.victims))
        for victim in preemption.victims:
            self._victims[victim] = key
            state.evicting.add(victim)
        self.preemptions += 1
        self.stats.preemptions += len(preemption.victims)
        ctx.log.info("%s: %s", key, preemption.reason)
        # The writes go on in the background, as bindings do: the next decision already
        # sees the room held and the victims on their way out, and need not wait for a
        # slot (the task does).
        self._spawn(self._preempt(ctx, instance, preemption), f"preempt-{key}")
        return Result()

    async def _preempt(self, ctx: Context, instance: Instance, preemption: Preemption) -> None:
        """Record the nomination, then evict the victims (the room is held for `instance`
        meanwhile); their deletions wake `instance` up to bind. The nomination goes first
        (as Kubernetes does it), so that the cache shows it by the time the deletions do and
        the binding is written against the Instance's current version."""
        key = instance_key(instance)
        state = self.state
        await self._slots.acquire()
        try:
            why = Decision(None, preemption.reason)
            # If the Instance changed meanwhile (bound already), nothing is left to say.
            with contextlib.suppress(Conflict, NotFound):
                await self._mark_unschedulable(ctx, instance, why, nominated=preemption.node)
            for victim in preemption.victims:
                placed = state.placed.get(victim)
                if placed is None:
                    continue
                if key not in self._preempting:
                    return  # it was placed (or deleted) meanwhile: no victim need go
                namespace, _, name = victim.partition("/")
                try:
                    await ctx.client.evict(
                        name, namespace=namespace, preconditions=Preconditions(uid=placed.uid)
                    )
                except NotFound:
                    continue
                if placed.instance is not None:
                    self._spawn(
                        _event(
                            ctx,
                            _involved(placed.instance),
                            "Preempted",
                            f"preempted by {key} (priority {instance.spec.priority}) "
                            f"on {preemption.node}",
                            warning=True,
                        ),
                        f"event-{victim}",
                    )
        except FencingTokenRejected:
            self._forget_preemptor(key)
        except (TooManyRequests, Conflict, KeelClientError, OSError) as exc:
            # A budget refusal (or a changed victim): give the room back and look again
            # once the budget may allow it.
            ctx.log.info("%s: preemption on %s stopped: %s", key, preemption.node, exc)
            self.stats.preemptions_stopped += 1
            self._forget_preemptor(key)
            asyncio.get_running_loop().call_later(RETRY_BUDGET, self._enqueue, key)
        finally:
            self._slots.release()

    async def _mark_unschedulable(
        self, ctx: Context, instance: Instance, why: Decision, *, nominated: str
    ) -> None:
        current = scheduled_condition(instance)
        reason = "Preempting" if nominated else "Unschedulable"
        if (
            current is not None
            and (current.status, current.reason, current.message) == ("False", reason, why.reason)
            and instance.status.nominated_node_name == nominated
        ):
            return
        ctx.log.info("%s is unschedulable: %s", object_key(instance), why.reason)
        condition = Condition(
            type=SCHEDULED,
            status="False",
            reason=reason,
            message=why.reason,
            last_transition_time=rfc3339(ctx.clock.wall())
            if current is None or current.status != "False"
            else current.last_transition_time,
        )
        await self._set_condition(ctx, instance, condition, nominated=nominated)
        self._spawn(
            _event(
                ctx,
                _involved(instance),
                "Preempting" if nominated else "FailedScheduling",
                why.reason,
                warning=not nominated,
            ),
            f"event-{object_key(instance)}",
        )

    async def _mark_scheduled(self, ctx: Context, instance: Instance) -> None:
        """A bound Instance that was once unschedulable (or nominated) says so no longer."""
        key = instance_key(instance)
        condition = Condition(
            type=SCHEDULED,
            status="True",
            reason="Bound",
            message=f"bound to node {instance.spec.node_name}",
            last_transition_time=rfc3339(ctx.clock.wall()),
        )
        try:
            await self._set_condition(ctx, instance, condition, nominated="")
        except FencingTokenRejected:
            pass  # deposed: the partition is stopping
        except (Conflict, KeelClientError, OSError) as exc:
            ctx.log.info("marking %s scheduled failed: %s; again", key, exc)
            self._enqueue(key)  # look again with what the cache shows next
        finally:
            self._marking.discard(key)

    @staticmethod
    async def _set_condition(
        ctx: Context, instance: Instance, condition: Condition, *, nominated: str
    ) -> None:
        others = [c for c in instance.status.conditions if c.type != SCHEDULED]
        status = msgspec.structs.replace(
            instance.status, conditions=[*others, condition], nominated_node_name=nominated
        )
        # A Conflict propagates: the runner retries with the newer Instance from the cache.
        with contextlib.suppress(NotFound):
            await ctx.client.update_status(msgspec.structs.replace(instance, status=status))

    async def drain(self) -> None:
        """Wait for the bindings being written (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class _PlanBuffer:
    """Bindings decided in one partition (one fenced client), waiting for a plan."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.bindings: list[tuple[Instance, str]] = []
        self.senders = 0


def _was_unscheduled(instance: Instance) -> bool:
    """Bound, but its status still says it was not placed (or nominated somewhere)."""
    current = scheduled_condition(instance)
    return (current is not None and current.status != "True") or bool(
        instance.status.nominated_node_name
    )


def _involved(instance: Instance) -> dict[str, str]:
    meta = instance.metadata
    return {"kind": "Instance", "name": meta.name, "namespace": meta.namespace}


async def _event(
    ctx: Context, involved: dict[str, str], reason: str, message: str, *, warning: bool
) -> None:
    """An event (telemetry, never stored); losing one is not worth failing a reconcile."""
    if not involved:
        return
    event = {
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "time": rfc3339(ctx.clock.wall()),
        "source": "keel-scheduler",
    }
    try:
        await ctx.client.record_event(event, namespace=involved.get("namespace"))
    except (KeelClientError, OSError) as exc:
        log.info("event not recorded: %s", exc)
