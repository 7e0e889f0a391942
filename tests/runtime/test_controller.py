"""The controller SDK: events become keys, reconciles read caches, results requeue, failures
retry with backoff, shards filter keys, and a rejected fencing token stops the work at once.

The informers here are in-memory stand-ins (the real one is tested in test_informer.py), the
work queues and the manual clock are the real ones: time moves only when a test says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import msgspec
import pytest
from support import wait_for_async

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    OwnerReference,
    Resource,
    Service,
)
from keel.client import HttpRequest, HttpResponse, KeelClient
from keel.clock import ManualClock
from keel.runtime.controller import (
    Context,
    ControllerRunner,
    Partition,
    Related,
    Result,
    owner_keys,
)
from keel.runtime.sharding import shard_of

# ----------------------------------------------------------------------------- fakes


def key_of(obj: Resource) -> str:
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


class FakeIndexer:
    def __init__(self) -> None:
        self.objects: dict[str, Resource] = {}

    def get(self, key: str) -> Resource | None:
        return self.objects.get(key)

    def items(self, namespace: str | None = None) -> list[Resource]:
        return [o for o in self.objects.values() if namespace in (None, o.metadata.namespace)]

    def by_index(self, name: str, value: str) -> list[Resource]:
        if name == "namespace":
            return self.items(value)
        if name == "owner":
            return [
                o
                for o in self.objects.values()
                if any(ref.uid == value for ref in o.metadata.owner_references)
            ]
        raise KeyError(name)

    def keys(self) -> Iterator[str]:
        return iter(list(self.objects))


class FakeInformer:
    """Holds a cache and calls handlers like the real informer: keys only, no payloads."""

    made: list[type[Resource]] = []

    def __init__(self, kind: type[Resource]) -> None:
        self.kind = kind
        self.cache = FakeIndexer()
        self.handlers: list[Callable[[str, Any, Any], None]] = []
        self.synced = asyncio.Event()
        self.synced.set()

    def add_handler(self, on_event: Callable[[str, Any, Any], None]) -> None:
        self.handlers.append(on_event)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        await self.synced.wait()
        return True

    def put(self, obj: Resource) -> None:
        key = key_of(obj)
        old = self.cache.objects.get(key)
        self.cache.objects[key] = obj
        for handler in self.handlers:
            handler("MODIFIED" if old else "ADDED", old, obj)

    def remove(self, obj: Resource) -> None:
        old = self.cache.objects.pop(key_of(obj))
        for handler in self.handlers:
            handler("DELETED", old, None)


class RecordingTransport:
    """Below a real KeelClient, stands in for the server of a fenced view: records the
    writes (name, decoded body); `reject` answers them with FencingTokenRejected."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []
        self.reject = False

    async def send(self, request: HttpRequest) -> HttpResponse:
        if self.reject:
            status = {"kind": "Status", "code": 409, "reason": "FencingTokenRejected"}
            return HttpResponse(409, {}, json.dumps(status).encode())
        name = unquote(request.url.rsplit("/", 1)[-1])
        self.writes.append((name, json.loads(request.body or b"null")))
        answer = Deployment(
            metadata=ObjectMeta(name=name.replace("/", "-")),
            spec=DeploymentSpec(template=InstanceTemplate(spec=InstanceSpec(command=["x"]))),
        )
        return HttpResponse(200, {}, msgspec.json.encode(answer))

    def stream(self, request: HttpRequest, *, idle_timeout: float | None) -> Any:
        raise AssertionError("the runner's workers never watch")

    async def aclose(self) -> None:
        return None


class Rig:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.informers: dict[type[Resource], FakeInformer] = {}
        self.server = RecordingTransport()
        self.client = KeelClient("http://test", transport=self.server)
        self.runner = ControllerRunner(
            self.client,
            clock=self.clock,
            informer_factory=self._informer,  # type: ignore[arg-type]  # a duck Indexer
        )

    def _informer(self, kind: type[Resource]) -> FakeInformer:
        informer = FakeInformer(kind)
        self.informers[kind] = informer
        return informer

    def start(self, **options: Any) -> Partition:
        return self.runner.start("test", self.client, **options)


def deployment(name: str, replicas: int = 1, namespace: str = "ns") -> Deployment:
    template = InstanceTemplate(spec=InstanceSpec(command=["sleep", "1"]))
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, uid=f"uid-{name}"),
        spec=DeploymentSpec(template=template, replicas=replicas),
    )


def instance(name: str, owner: str | None = None, namespace: str = "ns") -> Instance:
    refs = []
    if owner is not None:
        refs = [OwnerReference("keel.dev/v1", "Deployment", owner, f"uid-{owner}")]
    return Instance(
        metadata=ObjectMeta(name=name, namespace=namespace, owner_references=refs),
        spec=InstanceSpec(command=["sleep", "1"]),
    )


class Recorder:
    """A controller that records each reconcile and what the cache said at that moment."""

    name = "recorder"
    primary: type[Resource] = Deployment
    related: tuple[Related, ...] = (Related(Instance),)

    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None]] = []
        self.results: dict[str, Result] = {}
        self.failures: dict[str, int] = {}

    async def reconcile(self, ctx: Context, key: str) -> Result:
        current = ctx.cache(Deployment).get(key)
        self.seen.append((key, current.spec.replicas if current else None))
        if self.failures.get(key, 0) > 0:
            self.failures[key] -= 1
            raise RuntimeError("transient")
        await ctx.client.patch(Deployment, key, {"seen": True})
        return self.results.get(key, Result())


# ----------------------------------------------------------------------------- tests


async def test_reconcile_reads_the_cache_not_the_event() -> None:
    rig = Rig()
    recorder = Recorder()
    rig.runner.register(recorder, workers=1)
    partition = rig.start()
    informer = rig.informers[Deployment]
    # Three quick changes before the worker runs: one reconcile, of the latest state.
    informer.put(deployment("web", 1))
    informer.put(deployment("web", 2))
    informer.put(deployment("web", 3))
    await wait_for_async("a reconcile", lambda: recorder.seen)
    await wait_for_async("done", lambda: not partition.queues["recorder"].metrics.processing)
    assert recorder.seen == [("ns/web", 3)]
    await partition.stop()


async def test_existing_objects_are_reconciled_once_at_start() -> None:
    rig = Rig()
    recorder = Recorder()
    rig.runner.register(recorder)
    for name in ("a", "b", "c"):
        rig.runner.cache(Deployment).objects[f"ns/{name}"] = deployment(name)  # type: ignore[attr-defined]
    partition = rig.start()
    await wait_for_async("three reconciles", lambda: len(recorder.seen) == 3)
    assert sorted(key for key, _ in recorder.seen) == ["ns/a", "ns/b", "ns/c"]
    await partition.stop()


async def test_related_objects_map_to_their_owner_key() -> None:
    rig = Rig()
    recorder = Recorder()
    rig.runner.register(recorder)
    partition = rig.start()
    rig.informers[Instance].put(instance("web-1", owner="web"))
    rig.informers[Instance].put(instance("stray"))  # no owner: no key
    await wait_for_async("the owner's reconcile", lambda: recorder.seen)
    assert recorder.seen == [("ns/web", None)]
    assert list(owner_keys(Deployment)(instance("x", owner="api", namespace="n2"))) == ["n2/api"]
    await partition.stop()


async def test_one_informer_per_kind_is_shared_by_controllers() -> None:
    rig = Rig()
    first, second = Recorder(), Recorder()
    second.name = "second"
    rig.runner.register(first)
    rig.runner.register(second)
    assert set(rig.informers) == {Deployment, Instance}
    partition = rig.start()
    rig.informers[Deployment].put(deployment("web"))
    await wait_for_async("both controllers", lambda: first.seen and second.seen)
    await partition.stop()


async def test_requeue_after_runs_again_when_the_time_has_come() -> None:
    rig = Rig()
    recorder = Recorder()
    recorder.results["ns/web"] = Result(requeue_after=5.0)
    rig.runner.register(recorder)
    partition = rig.start()
    rig.informers[Deployment].put(deployment("web"))
    await wait_for_async("first reconcile", lambda: len(recorder.seen) == 1)
    await wait_for_async("workers wait for the requeue", lambda: rig.clock.next_deadline() == 5.0)
    rig.clock.advance(4.9)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(recorder.seen) == 1
    rig.clock.advance(0.1)
    await wait_for_async("the requeued reconcile", lambda: len(recorder.seen) == 2)
    assert rig.runner.metrics["recorder"].requeues >= 1
    await partition.stop()


async def test_failures_retry_with_backoff_and_success_forgets_them() -> None:
    rig = Rig()
    recorder = Recorder()
    recorder.failures["ns/web"] = 2
    rig.runner.register(recorder, workers=1)
    partition = rig.start()
    queue = partition.queues["recorder"]
    rig.informers[Deployment].put(deployment("web"))
    await wait_for_async("first attempt", lambda: len(recorder.seen) == 1)
    await wait_for_async("a retry scheduled", lambda: queue.retries("ns/web") == 1)
    await wait_for_async("waiting for the backoff", lambda: rig.clock.next_deadline() is not None)
    assert len(recorder.seen) == 1  # not at once: after the backoff
    rig.clock.advance(1.0)
    await wait_for_async("second attempt", lambda: len(recorder.seen) == 2)
    await wait_for_async("waiting for the backoff", lambda: rig.clock.next_deadline() is not None)
    rig.clock.advance(1.0)
    await wait_for_async("the successful third attempt", lambda: rig.server.writes)
    assert len(recorder.seen) == 3
    assert queue.retries("ns/web") == 0
    metrics = rig.runner.metrics["recorder"]
    assert (metrics.errors, metrics.reconciles) == (2, 1)
    await partition.stop()


async def test_a_shard_reconciles_only_its_own_keys() -> None:
    rig = Rig()
    recorder = Recorder()
    rig.runner.register(recorder)
    names = [f"d{i}" for i in range(40)]
    mine = {f"ns/{n}" for n in names if shard_of(f"ns/{n}", 4) == 1}
    assert 0 < len(mine) < len(names)
    partition = rig.start(accepts=lambda key: shard_of(key, 4) == 1)
    for name in names:
        rig.informers[Deployment].put(deployment(name))
    await wait_for_async("this shard's keys", lambda: len(recorder.seen) == len(mine))
    for _ in range(100):
        await asyncio.sleep(0)
    assert {key for key, _ in recorder.seen} == mine
    await partition.stop()


async def test_a_rejected_fencing_token_stops_all_work_at_once() -> None:
    rig = Rig()
    recorder = Recorder()
    rig.runner.register(recorder, workers=3)
    fenced: list[Partition] = []
    partition = rig.start(on_fenced=lambda p, exc: fenced.append(p))
    rig.server.reject = True
    for name in ("a", "b", "c", "d", "e"):
        rig.informers[Deployment].put(deployment(name))
    await wait_for_async("the fencing callback", lambda: fenced)
    await partition.wait()
    assert fenced == [partition]
    assert partition.stopped and rig.runner.partitions == {}
    assert len(partition.queues["recorder"]) == 0
    # Each worker tried at most once; the rest of the queue was dropped, not attempted.
    assert len(recorder.seen) <= 3
    assert rig.runner.metrics["recorder"].errors == 0
    # Events after the stop enqueue nothing.
    rig.informers[Deployment].put(deployment("f"))
    assert len(partition.queues["recorder"]) == 0


async def test_stopping_cancels_in_flight_work_and_drops_the_queue() -> None:
    rig = Rig()
    started = asyncio.Event()
    cancelled: list[str] = []

    class Slow:
        name = "slow"
        primary: type[Resource] = Service
        related: tuple[Related, ...] = ()

        async def reconcile(self, ctx: Context, key: str) -> Result:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(key)
                raise
            return Result()

    rig.runner.register(Slow(), workers=1)
    partition = rig.start()
    for name in ("a", "b"):
        rig.informers[Service].put(Service(metadata=ObjectMeta(name=name, namespace="ns")))
    await started.wait()
    await partition.stop()
    assert cancelled == ["ns/a"]
    assert len(partition.queues["slow"]) == 0


async def test_registering_after_start_or_twice_is_refused() -> None:
    rig = Rig()
    rig.runner.register(Recorder())
    with pytest.raises(ValueError, match="twice"):
        rig.runner.register(Recorder())
    partition = rig.start()
    other = Recorder()
    other.name = "late"
    with pytest.raises(RuntimeError):
        rig.runner.register(other)
    await partition.stop()


async def test_the_controller_in_the_module_docstring_runs() -> None:
    """The SDK's own example is real code: lifted from the docstring and run."""
    import textwrap

    import keel.runtime.controller as sdk

    doc = sdk.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\n\n", 1)[0] + "\n"
    rest = doc.split("::\n", 1)[1].split("\n\n")[1:]
    while rest and rest[0].startswith("    "):  # the example's later paragraphs
        block += "\n" + rest.pop(0) + "\n"
    namespace: dict[str, Any] = {"Context": Context, "Result": Result, "Service": Service}
    exec(textwrap.dedent(block), namespace)
    rig = Rig()
    rig.runner.register(namespace["PortCount"]())
    partition = rig.start()
    rig.informers[Service].put(Service(metadata=ObjectMeta(name="web", namespace="ns")))
    await wait_for_async("the example's write", lambda: rig.server.writes)
    assert rig.server.writes == [("web", {"metadata": {"labels": {"ports": "0"}}})]
    await partition.stop()
