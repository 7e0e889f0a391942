"""The controller SDK: declare the watched kinds and how related objects map to keys,
implement `reconcile(ctx, key) -> Result`; `ControllerRunner` supplies shared informers,
work queues, workers, retries, shard filtering and fencing-aware writes.

A level-based controller is short. This one labels every Service with its port count::

    class PortCount:
        name = "port-count"
        primary = Service
        related = ()

        async def reconcile(self, ctx: Context, key: str) -> Result:
            service = ctx.cache(Service).get(key)
            if service is None:
                return Result()  # gone: nothing to converge
            wanted = str(len(service.spec.ports))
            if service.metadata.labels.get("ports") != wanted:
                await ctx.client.patch(
                    Service, service.metadata.name, {"metadata": {"labels": {"ports": wanted}}},
                    namespace=service.metadata.namespace,
                )
            return Result()

Handlers only enqueue keys; `reconcile` reads the current state from the caches, so
duplicated, reordered or coalesced events all converge to the same writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from keel.api.registry import BY_KIND
from keel.api.resources import Resource
from keel.client import Conflict, FencingTokenRejected, KeelClient
from keel.clock import Clock
from keel.runtime.checkpoint import Checkpoint
from keel.runtime.informer import Indexer, Informer, object_key
from keel.runtime.workqueue import Histogram, ReadyLane, WorkQueue

__all__ = [
    "Context",
    "Controller",
    "ControllerMetrics",
    "ControllerRunner",
    "Partition",
    "Related",
    "Result",
    "owner_keys",
]

R = TypeVar("R", bound=Resource)
KeyFilter = Callable[[str], bool]
logger = logging.getLogger("keel.controller")


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for next: nothing, or another look after `requeue_after` s."""

    requeue_after: float | None = None


@dataclass(frozen=True)
class Related:
    """A kind whose changes concern some primary objects: `to_keys` names them.

    `to_keys=None` means "the owners of the primary kind named in ownerReferences", the
    common case of a controller that creates the objects it watches.
    """

    kind: type[Resource]
    to_keys: Callable[[Resource], Iterable[str]] | None = None


class Controller(Protocol):
    """A level-based controller: its name, the kind its keys name, the kinds that map to
    those keys, and the reconcile of one key (class attributes satisfy the properties)."""

    @property
    def name(self) -> str: ...

    @property
    def primary(self) -> type[Resource]: ...

    @property
    def related(self) -> Sequence[Related]: ...

    async def reconcile(self, ctx: Context, key: str) -> Result: ...


@dataclass
class Context:
    """What a reconcile may use. `client` writes with the current fencing token (when run
    by the manager); `cache(kind)` is the shared, read-only informer cache of a kind."""

    client: KeelClient
    cache: Callable[[type[Any]], Indexer[Any]]
    clock: Clock
    log: logging.Logger


@dataclass
class ControllerMetrics:
    reconciles: int = 0
    errors: int = 0
    requeues: int = 0
    fenced: int = 0
    reconcile_seconds: float = 0.0  # total; divide by reconciles for the mean
    latency: Histogram = field(default_factory=Histogram)  # each reconcile's duration


def owner_keys(primary: type[Resource]) -> Callable[[Resource], Iterable[str]]:
    """Keys of the `primary` objects named as owners of an object (same namespace for a
    namespaced owner, as owner references cannot cross namespaces)."""
    info = BY_KIND[primary.kind_name]

    def to_keys(obj: Resource) -> Iterable[str]:
        namespace = obj.metadata.namespace
        for ref in obj.metadata.owner_references:
            if ref.kind == info.kind:
                yield f"{namespace}/{ref.name}" if info.namespaced and namespace else ref.name

    return to_keys


class _Informer(Protocol):
    """The part of `Informer` the runner uses (tests may pass a factory of their own)."""

    @property
    def cache(self) -> Indexer[Any]: ...

    def add_handler(self, on_event: Callable[[str, Any, Any], None]) -> None: ...

    async def run(self) -> None: ...

    async def wait_synced(self, timeout: float | None = None) -> bool: ...


InformerFactory = Callable[[type[Resource]], _Informer]


class Partition:
    """The controllers' work for one slice of the key space under one fencing token: a
    queue and workers per controller. Stopping drops the queues and cancels the workers."""

    def __init__(
        self,
        runner: ControllerRunner,
        name: str,
        client: KeelClient,
        accepts: KeyFilter,
        on_fenced: Callable[[Partition, FencingTokenRejected], None] | None,
    ) -> None:
        self.runner = runner
        self.name = name
        self.accepts = accepts
        self._on_fenced = on_fenced
        self.client = client.guarded(self._rejected)
        self.queues: dict[str, WorkQueue] = {
            c.name: runner._new_queue(c.name) for c in runner.controllers.values()
        }
        self.stopped = False
        self._task: asyncio.Task[None] | None = None

    def enqueue(self, controller: str, key: str) -> None:
        if not self.stopped and self.accepts(key):
            self.queues[controller].add(key)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"partition-{self.name}"
        )

    async def _run(self) -> None:
        try:
            await self._work()
        except Exception:
            # Reconcile errors are retried inside the workers; this is a bug in the runner
            # or a controller. Say so loudly rather than lead with no work being done.
            self.runner.log.exception("partition %s failed; its work has stopped", self.name)
            self.stop_now()
            raise

    async def _work(self) -> None:
        runner = self.runner
        await runner.wait_synced()
        # The level-based start: every object the caches hold gets one look.
        for controller in runner.controllers.values():
            for key in list(runner.cache(controller.primary).keys()):
                self.enqueue(controller.name, key)
        async with asyncio.TaskGroup() as group:
            for controller in runner.controllers.values():
                ctx = Context(
                    # Each controller writes as its own field manager: its fields are its.
                    client=self.client.as_manager(controller.name),
                    cache=runner.cache,
                    clock=runner.clock,
                    log=runner.log.getChild(controller.name),
                )
                for index in range(runner.workers[controller.name]):
                    group.create_task(
                        self._worker(controller, ctx),
                        name=f"{self.name}-{controller.name}-{index}",
                    )

    async def _worker(self, controller: Controller, ctx: Context) -> None:
        queue = self.queues[controller.name]
        metrics = self.runner.metrics[controller.name]
        clock = self.runner.clock
        while not self.stopped:
            key = await queue.get()
            if key is None:
                return
            started = clock.now()
            try:
                result = await controller.reconcile(ctx, key)
            except FencingTokenRejected as exc:
                metrics.fenced += 1
                if self.client.fencing_rejected is None:
                    self._rejected(exc)  # raised by a client other than ctx.client
                return  # the partition is stopping
            except Exception as exc:
                metrics.errors += 1
                # One line per retry (a traceback each time would drown the log); a Conflict
                # is the normal outcome of acting on a slightly stale cache.
                level = logging.INFO if isinstance(exc, Conflict) else logging.WARNING
                ctx.log.log(
                    level,
                    "reconcile %s failed (retry %d): %s: %s",
                    key,
                    queue.retries(key) + 1,
                    type(exc).__name__,
                    exc,
                )
                if not self.stopped:
                    queue.add_rate_limited(key)
            else:
                metrics.reconciles += 1
                queue.forget(key)
                if result.requeue_after is not None and not self.stopped:
                    metrics.requeues += 1
                    queue.add_after(key, result.requeue_after)
            finally:
                elapsed = clock.now() - started
                metrics.reconcile_seconds += elapsed
                metrics.latency.observe(elapsed)
                queue.done(key)

    def _rejected(self, exc: FencingTokenRejected) -> None:
        self.runner.metrics_fenced += 1
        self.stop_now()
        if self._on_fenced is not None:
            self._on_fenced(self, exc)

    def stop_now(self) -> None:
        """Drop the queues and cancel in-flight work without waiting (safe in callbacks)."""
        if self.stopped:
            return
        self.stopped = True
        self.runner._retire_queues(self.queues)
        for queue in self.queues.values():
            queue.drop_all()
            queue.shutdown()
        if self._task is not None:
            self._task.cancel()
        self.runner._partitions.pop(self.name, None)

    async def stop(self) -> None:
        """Stop, and return once every worker has finished (its in-flight work abandoned)."""
        self.stop_now()
        if self._task is not None and self._task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self) -> None:
        """Until the partition has stopped (for callers that only observe it)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class ControllerRunner:
    """Runs controllers: one informer per kind shared by all, and work partitions.

    `run_informers()` keeps the caches warm (a standby runs it too, so it can act at once when
    it takes over); `start(name, client, accepts=...)` begins reconciling the keys `accepts`
    admits with that client; `stop(name)` drops them.
    """

    def __init__(
        self,
        client: KeelClient,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
        state_dir: Path | None = None,
        resync_period: float = 300.0,
        informer_factory: InformerFactory | None = None,
        queue_factory: Callable[[], WorkQueue] | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or logger
        self.state_dir = state_dir
        self.resync_period = resync_period
        self._informer_factory = informer_factory or self._default_informer
        self._queue_factory = queue_factory
        self.controllers: dict[str, Controller] = {}
        self.workers: dict[str, int] = {}
        self._ready_lanes: dict[str, Callable[[str], ReadyLane]] = {}
        self.metrics: dict[str, ControllerMetrics] = {}
        self.metrics_fenced = 0
        # Queue counts of stopped partitions, per controller: [adds, retries] (the live
        # queues' counts are added on top when metrics are read).
        self.retired_queue_counts: dict[str, list[int]] = {}
        self.informers: dict[type[Resource], _Informer] = {}
        self._routes: dict[type[Resource], list[tuple[str, Callable[[Resource], Iterable[str]]]]]
        self._routes = {}
        self._partitions: dict[str, Partition] = {}

    # -- setup

    def register(
        self,
        controller: Controller,
        *,
        workers: int = 2,
        ready_lane: Callable[[str], ReadyLane] | None = None,
    ) -> None:
        """Add a controller (before `start`); its kinds get informers if they have none.
        `ready_lane(lane)` orders its work queue's lanes (FIFO without; see `WorkQueue`)."""
        if controller.name in self.controllers:
            raise ValueError(f"controller {controller.name!r} registered twice")
        if self._partitions:
            raise RuntimeError("register controllers before starting partitions")
        self.controllers[controller.name] = controller
        self.workers[controller.name] = max(1, workers)
        if ready_lane is not None:
            self._ready_lanes[controller.name] = ready_lane
        self.metrics[controller.name] = ControllerMetrics()
        self._route(controller.primary, controller.name, _primary_key)
        for related in controller.related:
            to_keys = related.to_keys or owner_keys(controller.primary)
            self._route(related.kind, controller.name, to_keys)

    def _route(
        self, kind: type[Resource], controller: str, to_keys: Callable[[Resource], Iterable[str]]
    ) -> None:
        if kind not in self.informers:
            informer = self._informer_factory(kind)
            self.informers[kind] = informer
            self._routes[kind] = []

            def handler(_type: str, old: Any, new: Any, kind: type[Resource] = kind) -> None:
                self._on_event(kind, old, new)

            informer.add_handler(handler)
        self._routes[kind].append((controller, to_keys))

    def _default_informer(self, kind: type[Resource]) -> _Informer:
        checkpoint = None
        if self.state_dir is not None:
            plural = BY_KIND[kind.kind_name].plural
            checkpoint = Checkpoint(self.state_dir / f"{plural}.checkpoint")
        return Informer(
            self.client,
            kind,
            resync_period=self.resync_period,
            clock=self.clock,
            rng=random.Random(self.rng.random()),
            checkpoint=checkpoint,
        )

    def _new_queue(self, controller: str) -> WorkQueue:
        if self._queue_factory is not None:
            return self._queue_factory()
        return WorkQueue(
            clock=self.clock,
            rng=random.Random(self.rng.random()),
            ready_lane=self._ready_lanes.get(controller),
        )

    def _retire_queues(self, queues: dict[str, WorkQueue]) -> None:
        for name, queue in queues.items():
            counts = self.retired_queue_counts.setdefault(name, [0, 0])
            counts[0] += queue.metrics.adds
            counts[1] += queue.metrics.retries

    def queue_counts(self, controller: str) -> tuple[int, int, int]:
        """(depth, adds, retries) of `controller`'s queues, adds and retries since start."""
        adds, retries = self.retired_queue_counts.get(controller, (0, 0))
        depth = 0
        for partition in self._partitions.values():
            queue = partition.queues.get(controller)
            if queue is not None and not partition.stopped:
                depth += len(queue)
                adds += queue.metrics.adds
                retries += queue.metrics.retries
        return depth, adds, retries

    def cache(self, kind: type[R]) -> Indexer[R]:
        informer = self.informers.get(kind)
        if informer is None:
            raise KeyError(f"no informer for {kind.kind_name}: declare it as primary or related")
        return informer.cache

    # -- events: keys only, never payloads

    def _on_event(self, kind: type[Resource], old: Resource | None, new: Resource | None) -> None:
        if not self._partitions:
            return
        for controller, to_keys in self._routes[kind]:
            # Ordered, not a set: the order keys are queued in must not depend on
            # PYTHONHASHSEED (a simulation seed replays exactly in any interpreter).
            keys: dict[str, None] = {}
            for obj in (old, new):
                if obj is not None:
                    keys.update(dict.fromkeys(to_keys(obj)))
            for key in keys:
                for partition in list(self._partitions.values()):
                    partition.enqueue(controller, key)

    # -- running

    async def run_informers(self) -> None:
        """List and watch every kind until cancelled."""
        async with asyncio.TaskGroup() as group:
            for kind, informer in self.informers.items():
                group.create_task(informer.run(), name=f"informer-{kind.kind_name}")

    async def wait_synced(self, timeout: float | None = None) -> bool:
        results = await asyncio.gather(
            *(informer.wait_synced(timeout) for informer in self.informers.values())
        )
        return all(results)

    def start(
        self,
        name: str,
        client: KeelClient,
        *,
        accepts: KeyFilter = lambda _key: True,
        on_fenced: Callable[[Partition, FencingTokenRejected], None] | None = None,
    ) -> Partition:
        """Begin reconciling the keys `accepts` admits, writing through `client`."""
        if name in self._partitions:
            raise RuntimeError(f"partition {name!r} is already running")
        partition = Partition(self, name, client, accepts, on_fenced)
        self._partitions[name] = partition
        partition.start()
        return partition

    async def stop(self, name: str) -> None:
        partition = self._partitions.get(name)
        if partition is not None:
            await partition.stop()

    async def stop_all(self) -> None:
        for partition in list(self._partitions.values()):
            await partition.stop()

    @property
    def partitions(self) -> dict[str, Partition]:
        return dict(self._partitions)

    async def run(self, *, workers_client: KeelClient | None = None) -> None:
        """Unmanaged mode (tests, single process without election): informers plus one
        partition taking every key, until cancelled."""
        informers = asyncio.get_running_loop().create_task(self.run_informers())
        try:
            partition = self.start("all", workers_client or self.client)
            await partition.wait()
        finally:
            await self.stop_all()
            informers.cancel()
            await asyncio.gather(informers, return_exceptions=True)


def _primary_key(obj: Resource) -> Iterable[str]:
    return (object_key(obj),)
