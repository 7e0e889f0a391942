"""The informer against a real `keel apiserver` subprocess on sqlite: list + watch, indexes,
resync without API calls (counted on the server's /metrics), resume after SIGKILL, relist on
410, and restarts from a checkpoint that skip the relist. The relist storm guard runs against
a scripted client in virtual time, because it needs many watches to expire at once."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ApiServer, wait_for_async

from keel.api.resources import (
    Instance,
    InstanceSpec,
    Namespace,
    Node,
    ObjectMeta,
    OwnerReference,
)
from keel.client import ApiUnavailable, Expired, KeelClient, ListResult, WatchEvent
from keel.clock import ManualClock, SystemClock
from keel.runtime.checkpoint import Checkpoint
from keel.runtime.informer import Indexer, Informer, object_key, relist_delay
from keel.store import open_store

DEADLINE = 30.0  # upper bound when waiting for something; never a sleep


def requests_made(server: ApiServer, verb: str, kind: str) -> int:
    """`keel_api_requests_total` for a verb and kind, over every status code."""
    text = server.http().get("/metrics").body.decode()
    pattern = re.compile(
        rf'^keel_api_requests_total\{{verb="{verb}",kind="{kind}",code="\d+"\}} (\S+)$',
        re.MULTILINE,
    )
    return sum(int(float(value)) for value in pattern.findall(text))


# ---------------------------------------------------------------------- helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def node(name: str, run: str, **labels: str) -> Node:
    return Node(metadata=ObjectMeta(name=name, labels={"run": run, **labels}))


class Recorder:
    """A handler that only records (type, key), as a real one would only enqueue the key."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, kind: str, old: Any, new: Any) -> None:
        obj = new if new is not None else old
        self.events.append((kind, object_key(obj)))

    def of(self, key: str) -> list[str]:
        return [kind for kind, k in self.events if k == key]


@asynccontextmanager
async def running(informer: Informer[Any]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(informer.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def synced(informer: Informer[Any]) -> None:
    assert await asyncio.wait_for(informer.wait_synced(), DEADLINE)


def names(indexer: Indexer[Any]) -> set[str]:
    return set(indexer.keys())


async def requests(server: ApiServer, verb: str, kind: str) -> int:
    return await asyncio.to_thread(requests_made, server, verb, kind)


# ---------------------------------------------------------------------- list + watch


async def test_list_then_watch_mirrors_creates_updates_and_deletes(apiserver: ApiServer) -> None:
    run = unique("run")
    a, b, c = unique("a"), unique("b"), unique("c")
    recorder = Recorder()
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(a, run))
        await client.create(node(b, run))
        lists_before = await requests(apiserver, "list", "Node")
        informer = Informer(
            client, Node, label_selector={"run": run}, clock=SystemClock(), page_size=1
        )
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
            assert names(informer.cache) == {a, b}
            # page_size=1: the list followed `continue` over three pages (the last is empty).
            assert await requests(apiserver, "list", "Node") - lists_before >= 2
            await client.create(node(c, run))
            await client.patch(Node, a, {"spec": {"unschedulable": True}})
            await client.delete(Node, b)
            await wait_for_async("the changes", lambda: names(informer.cache) == {a, c})
            await wait_for_async("a's update", lambda: recorder.of(a) == ["ADDED", "MODIFIED"])
            cached = informer.cache.get(a)
            assert cached is not None and cached.spec.unschedulable
    assert recorder.of(b) == ["ADDED", "DELETED"]
    assert recorder.of(c) == ["ADDED"]
    assert informer.metrics.lists == 1 and informer.metrics.relists == 0
    assert int(informer.resource_version) >= int(cached.metadata.resource_version)


async def test_indexes_follow_namespace_labels_owner_and_node_name(apiserver: ApiServer) -> None:
    ns1, ns2 = unique("ns"), unique("ns")
    run = unique("run")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        for ns in (ns1, ns2):
            await client.create(Namespace(metadata=ObjectMeta(name=ns)))
        owner = OwnerReference(api_version="keel.dev/v1", kind="Deployment", name="d", uid="u-1")

        def instance(name: str, ns: str, **labels: str) -> Instance:
            return Instance(
                metadata=ObjectMeta(
                    name=name,
                    namespace=ns,
                    labels={"run": run, **labels},
                    owner_references=[owner] if name.startswith("owned") else [],
                ),
                spec=InstanceSpec(command=["true"]),
            )

        await client.create(instance("owned-1", ns1, tier="web"))
        await client.create(instance("owned-2", ns2, tier="web"))
        await client.create(instance("free", ns1, tier="db"))
        informer = Informer(client, Instance, label_selector=f"run={run}", clock=SystemClock())
        async with running(informer):
            await synced(informer)
            cache = informer.cache
            assert {o.metadata.name for o in cache.list(ns1)} == {"owned-1", "free"}
            assert {o.metadata.name for o in cache.by_index("namespace", ns2)} == {"owned-2"}
            assert set(cache.index_keys("owner", "u-1")) == {f"{ns1}/owned-1", f"{ns2}/owned-2"}
            assert set(cache.index_keys("label:tier", "web")) == {
                f"{ns1}/owned-1",
                f"{ns2}/owned-2",
            }
            assert cache.by_index("nodeName", "n1") == []

            await client.bind(ns1, "free", "n1")
            await client.patch(Instance, "owned-2", {"metadata": {"labels": {"tier": "db"}}},
                               namespace=ns2)  # fmt: skip
            await client.delete(Instance, "owned-1", namespace=ns1)
            await wait_for_async(
                "the binding", lambda: cache.index_keys("nodeName", "n1") == [f"{ns1}/free"]
            )
            await wait_for_async("the delete", lambda: f"{ns1}/owned-1" not in cache)
            await wait_for_async(
                "the relabel",
                lambda: (
                    set(cache.index_keys("label:tier", "db")) == {f"{ns1}/free", f"{ns2}/owned-2"}
                ),
            )
            assert cache.index_keys("label:tier", "web") == []
            assert cache.index_keys("owner", "u-1") == [f"{ns2}/owned-2"]
            assert {o.metadata.name for o in cache.list(ns1)} == {"free"}
            with pytest.raises(KeyError, match="no index"):
                cache.index_keys("color", "red")
            cache.add_index("first-letter", lambda o: [o.metadata.name[0]])
            assert set(cache.index_keys("first-letter", "f")) == {f"{ns1}/free"}
        one_namespace = Informer(client, Instance, namespace=ns2, clock=SystemClock())
        async with running(one_namespace):
            await synced(one_namespace)
            await client.create(instance("later", ns1))
            await client.create(instance("later", ns2))
            await wait_for_async("the create", lambda: f"{ns2}/later" in one_namespace.cache)
        assert set(one_namespace.cache.keys()) == {f"{ns2}/owned-2", f"{ns2}/later"}


async def test_resync_redelivers_the_cache_without_api_calls(apiserver: ApiServer) -> None:
    run = unique("run")
    clock = ManualClock()
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        for i in range(5):
            await client.create(node(f"{run}-{i}", run))
        recorder = Recorder()
        informer = Informer(
            client, Node, label_selector={"run": run}, clock=clock, resync_period=60.0
        )
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
            before = {
                verb: await requests(apiserver, verb, "Node") for verb in ("list", "get", "watch")
            }
            for round_ in (1, 2):
                await wait_for_async("the resync timer", lambda: clock.sleepers > 0)
                clock.advance(60.0)
                await wait_for_async("a resync", lambda r=round_: informer.metrics.resyncs == r)
            after = {
                verb: await requests(apiserver, verb, "Node") for verb in ("list", "get", "watch")
            }
    resynced = [key for kind, key in recorder.events if kind == "RESYNC"]
    assert sorted(resynced) == sorted(2 * [f"{run}-{i}" for i in range(5)])
    assert after == before  # not one request to the API for a resync


async def test_a_failing_handler_does_not_stop_the_others(apiserver: ApiServer) -> None:
    run = unique("run")
    recorder = Recorder()

    def broken(kind: str, old: Any, new: Any) -> None:
        raise RuntimeError("handler bug")

    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        informer = Informer(client, Node, label_selector={"run": run}, clock=SystemClock())
        informer.add_handler(broken)
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
            await client.create(node(f"{run}-x", run))
            await wait_for_async("the event", lambda: recorder.of(f"{run}-x") == ["ADDED"])
    assert informer.metrics.handler_errors == 1


# ---------------------------------------------------------------------- faults


async def test_the_watch_resumes_from_its_version_after_the_server_is_killed(
    own_apiserver: ApiServer,
) -> None:
    before, after = unique("before"), unique("after")
    recorder = Recorder()
    async with KeelClient.from_kubeconfig(own_apiserver.kubeconfig) as client:
        informer = Informer(client, Node, clock=SystemClock())
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
            await client.create(Node(metadata=ObjectMeta(name=before)))
            await wait_for_async("the first object", lambda: before in informer.cache)
            await asyncio.to_thread(own_apiserver.stop, signal.SIGKILL)
            await asyncio.to_thread(own_apiserver.start)  # same port, same database
            await client.create(Node(metadata=ObjectMeta(name=after)))
            await wait_for_async("the object created after", lambda: after in informer.cache)
            lists_since_restart = await requests(own_apiserver, "list", "Node")
            listed, _ = await client.list(Node)
    assert names(informer.cache) == {o.metadata.name for o in listed}
    assert recorder.of(before) == ["ADDED"]  # resumed, not replayed
    assert recorder.of(after) == ["ADDED"]
    assert informer.metrics.lists == 1 and informer.metrics.relists == 0
    assert lists_since_restart == 0  # the restarted server saw no list


async def test_a_version_older_than_the_history_relists_and_diffs_the_cache(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    """The checkpoint claims resourceVersion 1 (long compacted out of the watch history) and
    holds one object that is gone and an old version of one that changed: the watch gets
    410, the informer relists and tells handlers exactly the differences."""
    run = unique("run")
    kept, changed, gone, new = (f"{run}-{n}" for n in ("kept", "changed", "gone", "new"))
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        kept_obj = await client.create(node(kept, run))
        changed_obj = await client.create(node(changed, run))
        await client.create(node(new, run))
        await client.patch(Node, changed, {"spec": {"unschedulable": True}})
        stale = [kept_obj, changed_obj, node(gone, run)]
        checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
        informer = Informer(
            client, Node, label_selector={"run": run}, clock=SystemClock(), checkpoint=checkpoint
        )
        checkpoint.save("1", stale, kind=Node, scope=informer.scope)
        recorder = Recorder()
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
            await wait_for_async(
                "the relist", lambda: names(informer.cache) == {kept, changed, new}
            )
    assert informer.metrics.checkpoint_loads == 1 and informer.metrics.relists == 1
    assert recorder.of(kept) == ["ADDED"]  # from the checkpoint; unchanged by the relist
    assert recorder.of(changed) == ["ADDED", "MODIFIED"]
    assert recorder.of(gone) == ["ADDED", "DELETED"]
    assert recorder.of(new) == ["ADDED"]
    cached = informer.cache.get(changed)
    assert cached is not None and cached.spec.unschedulable


async def test_a_restart_that_lost_the_watch_history_relists_and_reports_the_differences(
    own_apiserver: ApiServer,
) -> None:
    """While the server is down the store changes behind its back (one node deleted, one
    created): the restarted server's history starts after those changes, so the watch's
    resume gets 410, and the relist must tell handlers what was missed."""
    kept, removed, created = unique("kept"), unique("removed"), unique("created")
    recorder = Recorder()
    async with KeelClient.from_kubeconfig(own_apiserver.kubeconfig) as client:
        informer = Informer(client, Node, clock=SystemClock())
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
            await client.create(Node(metadata=ObjectMeta(name=kept)))
            await client.create(Node(metadata=ObjectMeta(name=removed)))
            await wait_for_async("the objects", lambda: removed in informer.cache)
            await asyncio.to_thread(own_apiserver.stop, signal.SIGKILL)
            store = await open_store(f"sqlite:///{own_apiserver.state_dir / 'keel.db'}")
            try:
                await store.delete(f"/registry/nodes/{removed}".encode())
                body = msgspec.json.encode(Node(kind="Node", metadata=ObjectMeta(name=created)))
                await store.put(f"/registry/nodes/{created}".encode(), body)
            finally:
                await store.close()
            await asyncio.to_thread(own_apiserver.start)
            await wait_for_async("the relist", lambda: created in informer.cache)
            await wait_for_async("the relist", lambda: removed not in informer.cache)
    assert informer.metrics.relists == 1
    assert recorder.of(kept) == ["ADDED"]
    assert recorder.of(removed) == ["ADDED", "DELETED"]  # a delete nobody saw as an event
    assert recorder.of(created) == ["ADDED"]


class ScriptedClient:
    """Lists return nothing at resourceVersion 10; the first watch of each informer says 410
    Expired (an API server came back without our history), later watches stay open."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.list_times: list[float] = []
        self.watches = 0

    async def list(self, kind: Any, **_: Any) -> ListResult[Any]:
        self.list_times.append(self.clock.now())
        return ListResult([], "10")

    def watch(self, kind: Any, **_: Any) -> Any:
        self.watches += 1
        return _ExpiredOnce()


class _ExpiredOnce:
    resource_version = "10"

    def __init__(self) -> None:
        self.calls = 0

    def __aiter__(self) -> _ExpiredOnce:
        return self

    async def __anext__(self) -> Any:
        raise Expired(410, "Expired", "too old resource version")

    async def aclose(self) -> None:
        pass


async def test_informers_spread_their_relists_after_a_mass_410() -> None:
    clock = ManualClock()
    clients = [ScriptedClient(clock) for _ in range(40)]
    informers = [
        Informer(c, Node, clock=clock, rng=random.Random(i), relist_base=1.0, resync_period=0)  # type: ignore[arg-type]
        for i, c in enumerate(clients)
    ]
    tasks = [asyncio.create_task(i.run()) for i in informers]
    try:
        await wait_for_async("initial lists", lambda: all(len(c.list_times) == 1 for c in clients))
        await wait_for_async("every watch expired", lambda: clock.sleepers == 40)
        while any(len(c.list_times) < 2 for c in clients):
            clock.advance(0.01)
            await asyncio.sleep(0)
            assert clock.now() <= 1.0 + 1e-9, "a relist waited longer than its window"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    relists = sorted(c.list_times[1] for c in clients)
    assert all(0.0 <= t <= 1.0 for t in relists)
    assert relists[-1] - relists[0] > 0.5  # spread over the window, not a storm at t=0
    assert len({round(t, 2) for t in relists}) > 20
    assert all(i.metrics.relists >= 1 for i in informers)


class FlakyListClient:
    """A list that fails twice (the API server is unreachable), then a watch that never
    says anything; lists are timed in virtual time."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.list_times: list[float] = []

    async def list(self, kind: Any, **_: Any) -> ListResult[Any]:
        self.list_times.append(self.clock.now())
        if len(self.list_times) <= 2:
            raise ApiUnavailable("connection refused")
        return ListResult([node("n1", "r")], "5")

    def watch(self, kind: Any, **_: Any) -> Any:
        return _Silent()


class _Silent:
    resource_version = "5"

    def __aiter__(self) -> _Silent:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Future()  # never

    async def aclose(self) -> None:
        pass


async def test_a_failed_list_is_retried_with_backoff_and_wait_synced_times_out() -> None:
    clock = ManualClock()
    client = FlakyListClient(clock)
    informer = Informer(client, Node, clock=clock, rng=random.Random(2), resync_period=0)  # type: ignore[arg-type]
    async with running(informer):
        waiting = asyncio.create_task(informer.wait_synced(timeout=0.5))
        await wait_for_async("the first list", lambda: len(client.list_times) == 1)
        await wait_for_async("the backoff and the timeout", lambda: clock.sleepers >= 2)
        clock.advance(0.5)
        assert await asyncio.wait_for(waiting, DEADLINE) is False  # 0.5 s of virtual time
        while len(client.list_times) < 3:
            clock.advance(0.05)
            await asyncio.sleep(0)
            assert clock.now() < 1.0 + 2.0 + 1e-9  # within the two jittered windows
        await synced(informer)
    assert client.list_times[0] == 0.0
    assert informer.cache.keys() == ["n1"] and informer.metrics.lists == 1


def test_relist_delay_is_full_jitter_under_a_doubling_cap() -> None:
    rng = random.Random(5)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 30.0), (1000, 30.0)]:
        delays = [relist_delay(attempt, 1.0, 30.0, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling


# ---------------------------------------------------------------------- checkpoints


async def test_a_restart_from_a_checkpoint_resumes_the_watch_without_a_list(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    run = unique("run")
    x, y, z = (f"{run}-{n}" for n in "xyz")
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(x, run))
        await client.create(node(y, run))
        first = Informer(
            client, Node, label_selector={"run": run}, clock=SystemClock(), checkpoint=checkpoint
        )
        async with running(first):
            await synced(first)
        assert first.metrics.checkpoint_saves == 1  # saved on the way out
        # While no informer runs, things change.
        await client.create(node(z, run))
        await client.delete(Node, x)
        await client.patch(Node, y, {"spec": {"unschedulable": True}})
        lists_before = await requests(apiserver, "list", "Node")

        recorder = Recorder()
        second = Informer(
            client, Node, label_selector={"run": run}, clock=SystemClock(), checkpoint=checkpoint
        )
        second.add_handler(recorder)
        async with running(second):
            await synced(second)
            await wait_for_async("the missed changes", lambda: names(second.cache) == {y, z})
            await wait_for_async("y's update", lambda: recorder.of(y) == ["ADDED", "MODIFIED"])
        lists_after = await requests(apiserver, "list", "Node")
    assert lists_after == lists_before  # no list at all: the watch resumed
    assert second.metrics.lists == 0 and second.metrics.checkpoint_loads == 1
    assert recorder.of(x) == ["ADDED", "DELETED"]
    assert recorder.of(z) == ["ADDED"]
    cached = second.cache.get(y)
    assert cached is not None and cached.spec.unschedulable


async def test_the_checkpoint_is_saved_periodically(apiserver: ApiServer, tmp_path: Path) -> None:
    run = unique("run")
    clock = ManualClock()
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(f"{run}-1", run))
        informer = Informer(
            client,
            Node,
            label_selector={"run": run},
            clock=clock,
            checkpoint=checkpoint,
            checkpoint_interval=30.0,
            resync_period=0,
        )
        async with running(informer):
            await synced(informer)
            assert checkpoint.load(Node, scope=informer.scope) is None
            await wait_for_async("the checkpoint timer", lambda: clock.sleepers > 0)
            clock.advance(30.0)
            await wait_for_async("a save", lambda: informer.metrics.checkpoint_saves == 1)
            loaded = checkpoint.load(Node, scope=informer.scope)
            assert loaded is not None
            assert loaded[0] == informer.resource_version
            assert [o.metadata.name for o in loaded[1]] == [f"{run}-1"]
            await client.create(node(f"{run}-2", run))
            await wait_for_async("the second object", lambda: len(informer.cache) == 2)
            clock.advance(30.0)
            await wait_for_async("another save", lambda: informer.metrics.checkpoint_saves == 2)
    loaded = checkpoint.load(Node, scope=informer.scope)
    assert loaded is not None and len(loaded[1]) == 2


async def test_a_checkpoint_with_damaged_objects_falls_back_to_a_list(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    run = unique("run")
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(f"{run}-1", run))
        informer = Informer(
            client, Node, label_selector={"run": run}, clock=SystemClock(), checkpoint=checkpoint
        )
        checkpoint.save("5", [node("phantom", run)], kind=Node, scope=informer.scope)
        data = checkpoint.path.read_bytes()
        checkpoint.path.write_bytes(data[:-3] + b"\xff\xff\xff")  # the header still reads
        async with running(informer):
            await synced(informer)
    assert informer.metrics.checkpoint_loads == 0 and informer.metrics.lists == 1
    assert names(informer.cache) == {f"{run}-1"}


async def test_a_checkpoint_for_another_scope_is_ignored(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    run = unique("run")
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(f"{run}-1", run))
        checkpoint.save(
            "1", [node("phantom", "other")], kind=Node, scope="ns=;labels=run=other;fields="
        )
        informer = Informer(
            client, Node, label_selector={"run": run}, clock=SystemClock(), checkpoint=checkpoint
        )
        async with running(informer):
            await synced(informer)
    assert informer.metrics.checkpoint_loads == 0 and informer.metrics.lists == 1
    assert names(informer.cache) == {f"{run}-1"}


# ---------------------------------------------------------------------- properties

STORE_OPS = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(["a", "b", "c", "d"])),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(STORE_OPS, st.data())
def test_property_duplicates_and_relists_leave_cache_and_handlers_consistent(
    ops: list[tuple[str, str]], data: st.DataObject
) -> None:
    """A watch stream with re-delivered (older) events and relists at random points: the
    cache ends equal to the store, and the handlers' view, built only from the events they
    got, equals the cache (never ADDED twice, never MODIFIED or DELETED for the unknown)."""
    store: dict[str, Node] = {}
    history: list[WatchEvent[Node]] = []
    for revision, (op, name) in enumerate(ops, start=2):
        meta = ObjectMeta(name=name, resource_version=str(revision), labels={"rev": str(revision)})
        if op == "put":
            kind = "MODIFIED" if name in store else "ADDED"
            store[name] = Node(metadata=meta)
            history.append(WatchEvent(kind, store[name], str(revision)))
        elif name in store:
            del store[name]
            history.append(WatchEvent("DELETED", Node(metadata=meta), str(revision)))
    view: dict[str, Node] = {}

    def handler(kind: str, old: Node | None, new: Node | None) -> None:
        key = object_key(new if new is not None else old)  # type: ignore[arg-type]
        if kind == "ADDED":
            assert key not in view, f"ADDED for {key}, which handlers already know"
            view[key] = new  # type: ignore[assignment]
        elif kind == "MODIFIED":
            assert key in view and old is not None and view[key] == old
            view[key] = new  # type: ignore[assignment]
        else:
            assert key in view, f"DELETED for {key}, which handlers never saw"
            del view[key]

    informer: Informer[Node] = Informer(None, Node, clock=ManualClock())  # type: ignore[arg-type]
    informer.add_handler(handler)
    replayed: dict[str, Node] = {}  # the store as of the events delivered so far
    stream: list[WatchEvent[Node]] = []
    for event in history:
        stream.append(event)
        if event.type == "DELETED":
            replayed.pop(event.object.metadata.name, None)  # type: ignore[union-attr]
        else:
            replayed[event.object.metadata.name] = event.object  # type: ignore[union-attr]
        if stream and data.draw(st.booleans(), "duplicate an earlier event"):
            stream.append(data.draw(st.sampled_from(stream[:-1] or stream), "which"))
        if data.draw(st.integers(0, 9), "relist") == 0:
            snapshot = tuple(replayed.values())
            stream.append(WatchEvent("RELIST", None, event.resource_version, snapshot))
            stream.extend(WatchEvent("ADDED", o, o.metadata.resource_version) for o in snapshot)

    async def feed() -> None:
        for event in stream:
            await informer._apply(event)

    asyncio.run(feed())
    assert {k: o.metadata.resource_version for k, o in informer.cache._items.items()} == {
        k: o.metadata.resource_version for k, o in store.items()
    }
    assert view == informer.cache._items
    for name, obj in store.items():
        assert informer.cache.index_keys("label:rev", obj.metadata.labels["rev"]) == [name]


async def test_run_again_after_a_cancel_resumes_the_watch(apiserver: ApiServer) -> None:
    run = unique("run")
    recorder = Recorder()
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(f"{run}-1", run))
        informer = Informer(client, Node, label_selector={"run": run}, clock=SystemClock())
        informer.add_handler(recorder)
        async with running(informer):
            await synced(informer)
        await client.create(node(f"{run}-2", run))
        await client.delete(Node, f"{run}-1")
        async with running(informer):
            await wait_for_async("the changes", lambda: names(informer.cache) == {f"{run}-2"})
    assert informer.metrics.lists == 1  # no second list
    assert recorder.of(f"{run}-1") == ["ADDED", "DELETED"]
    assert recorder.of(f"{run}-2") == ["ADDED"]


async def test_bookmarks_move_the_resume_point_past_changes_the_informer_filters_out(
    apiserver: ApiServer,
) -> None:
    """Without bookmarks a label-filtered informer would keep the version of its own last
    object, and a resume after other writes could fall out of the history (410)."""
    run = unique("run")
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig) as client:
        await client.create(node(f"{run}-mine", run))
        informer = Informer(client, Node, label_selector={"run": run}, clock=SystemClock())
        async with running(informer):
            await synced(informer)
            other = await client.create(node(unique("other"), unique("run")))
            later = int(other.metadata.resource_version)
            await wait_for_async("a bookmark", lambda: int(informer.resource_version) >= later)
    assert names(informer.cache) == {f"{run}-mine"}
