"""The workloads of `keel verify`: clients that exercise one guarantee each and record what
they saw, as history events, with the machine's monotonic clock.

Each workload is a small asyncio task group against the running cluster; none judges what it
records (the checkers do that afterwards). An operation whose answer is lost (a timeout, a
reset connection, a 5xx after the request went out) is recorded as `info`: it may or may not
have happened, and the process that issued it continues under a new process number, as
Jepsen's clients do, so no process ever has two operations outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from keel.api.registry import BY_KIND
from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    HealthCheck,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    PortSpec,
    ResourceList,
    Service,
    ServicePort,
    ServiceSpec,
    TemplateMeta,
)
from keel.client import (
    AlreadyExists,
    ApiUnavailable,
    Conflict,
    FencingTokenRejected,
    KeelClient,
    NotFound,
    ServerError,
    TooManyRequests,
    TransportError,
)
from keel.store import Compare, CompareTarget, EventType, Op, OpKind, Store, open_store
from keel.verify.history import Event

__all__ = ["BROKEN_MODES", "Recorder", "WorkloadOptions", "Workloads"]

NAMESPACE = "verify"
WATCH_NAMESPACE = "verify-watch"
VALUE_ANNOTATION = "verify.keel.dev/value"
FENCING_LEASE = "fencing"
EXCLUSIVE = "exclusive"
PLAIN = "plain"
# Client faults switched on to prove each checker can fail (keel verify --broken MODE).
BROKEN_MODES = ("fencing-no-token", "exclusive-by-hand", "watch-skip", "register-stale")
# An answer lost in transit: the operation may or may not have taken effect.
INDETERMINATE = (
    ApiUnavailable,
    TransportError,
    ServerError,
    TimeoutError,
    aiohttp.ClientError,
    OSError,
)


@dataclass
class _Cursor:
    """Where one watcher stands: the last revision it saw, and how many changes so far."""

    process: str
    position: str
    delivered: int
    skip_at: int  # deliberately broken watchers drop this change (-1: none)


class Recorder:
    """Appends history events to memory and, line by line, to a file that survives a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._out = path.open("a", encoding="utf-8")

    def record(self, workload: str, **fields: Any) -> Event:
        event: Event = {"workload": workload, **fields}
        event.setdefault("time", time.monotonic_ns())
        self.events.append(event)
        self._out.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
        self._out.flush()
        return event

    def close(self) -> None:
        self._out.close()


@dataclass(frozen=True)
class WorkloadOptions:
    workloads: tuple[str, ...] = ("register", "store-register", "watch", "fencing", "exclusive")
    keys: int = 4
    clients_per_key: int = 3
    watchers: int = 3
    contenders: int = 3
    fencing_ttl: int = 3
    plain_replicas: int = 3
    broken: tuple[str, ...] = ()
    request_timeout: float = 3.0


@dataclass
class Workloads:
    """Every workload of one run, sharing one recorder."""

    api_urls: list[str]
    token: str
    store_url: str
    run_dir: Path
    recorder: Recorder
    options: WorkloadOptions
    rng: random.Random
    python: str = sys.executable
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _clients: list[KeelClient] = field(default_factory=list)
    _next_process: int = 0

    # ------------------------------------------------------------------ plumbing

    def client(self, index: int) -> KeelClient:
        client = KeelClient(
            self.api_urls[index % len(self.api_urls)],
            token=self.token,
            timeout=self.options.request_timeout,
        )
        self._clients.append(client)
        return client

    def _process(self) -> int:
        self._next_process += 1
        return self._next_process

    def _spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a workload bug must show in the report, not hang
                self.recorder.record("errors", type="error", process=name, error=repr(exc))

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _pace(self, low: float = 0.01, high: float = 0.05) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    @property
    def exclusive_log(self) -> Path:
        return self.run_dir / "exclusive.jsonl"

    @property
    def duplicates_log(self) -> Path:
        return self.run_dir / "duplicates.jsonl"

    # ------------------------------------------------------------------ life

    async def setup(self) -> None:
        """Namespaces, register keys, and the deployments the platform must keep running."""
        admin = self.client(0)
        from keel.api.resources import Namespace

        for namespace in (NAMESPACE, WATCH_NAMESPACE):
            with contextlib.suppress(AlreadyExists):
                await admin.create(Namespace(metadata=ObjectMeta(name=namespace)))
        for key in range(self.options.keys):
            with contextlib.suppress(AlreadyExists):
                await admin.create(_register_service(f"k{key}", None))
        with contextlib.suppress(AlreadyExists):
            await admin.create(_register_service("fenced", None))
        if "exclusive" in self.options.workloads:
            for deployment in (
                self._probe_deployment(EXCLUSIVE, 1, exclusive=True, log=self.exclusive_log),
                self._probe_deployment(
                    PLAIN, self.options.plain_replicas, exclusive=False, log=self.duplicates_log
                ),
            ):
                with contextlib.suppress(AlreadyExists):
                    await admin.create(deployment)
            with contextlib.suppress(AlreadyExists):
                await admin.create(
                    Service(
                        metadata=ObjectMeta(name=PLAIN, namespace=NAMESPACE),
                        spec=ServiceSpec(
                            selector={"app": PLAIN},
                            ports=[ServicePort(name="http", port=80, target_port="http")],
                        ),
                    )
                )

    def _probe_deployment(
        self, name: str, replicas: int, *, exclusive: bool, log: Path
    ) -> Deployment:
        workload = "exclusive" if exclusive else "duplicates"
        return Deployment(
            metadata=ObjectMeta(name=name, namespace=NAMESPACE, labels={"app": name}),
            spec=DeploymentSpec(
                replicas=replicas,
                template=InstanceTemplate(
                    metadata=TemplateMeta(labels={"app": name}),
                    spec=InstanceSpec(
                        command=[
                            self.python,
                            "-m",
                            "keel.verify.probe",
                            "--log",
                            str(log),
                            "--workload",
                            workload,
                        ],
                        resources=ResourceList(cpu="50m", memory="32Mi"),
                        ports=[PortSpec(name="http", port=0)],
                        health_check=HealthCheck(
                            type="http",
                            port="http",
                            path="/",
                            period_seconds=1,
                            failure_threshold=2,
                        ),
                        exclusive=exclusive,
                        termination_grace_period_seconds=3,
                    ),
                ),
            ),
        )

    def start(self) -> None:
        chosen = set(self.options.workloads)
        if "register" in chosen:
            for key in range(self.options.keys):
                for c in range(self.options.clients_per_key):
                    self._spawn(
                        f"register-{key}-{c}",
                        functools.partial(self._register_http, f"k{key}", key_index=key * 7 + c),
                    )
        if "store-register" in chosen:
            self._spawn("store-register", self._store_register)
        if "watch" in chosen:
            self._spawn("watch-writer", self._watch_writer)
            for w in range(self.options.watchers):
                self._spawn(f"watcher-{w}", functools.partial(self._watcher, w))
        if "fencing" in chosen:
            for c in range(self.options.contenders):
                self._spawn(f"contender-{c}", functools.partial(self._contender, c))
        if "exclusive" in chosen:
            self._spawn("surge-sampler", self._surge_sampler)
            if "exclusive-by-hand" in self.options.broken:
                self._spawn("exclusive-by-hand", self._exclusive_by_hand)

    async def stop(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            if task.get_name().startswith("watcher-"):
                task.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=self.options.request_timeout + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()

    # ------------------------------------------------------------------ register (HTTP)

    async def _register_http(self, key: str, *, key_index: int) -> None:
        """Reads, writes and compare-and-sets of one key, spread over the API servers."""
        client = self.client(key_index)
        process = self._process()
        stale: dict[str, Any] = {}
        while not self.stopping.is_set():
            f, value = self._invoke("register", process, key)
            try:
                if f == "read":
                    service = await client.get(Service, key, namespace=NAMESPACE)
                    seen = _register_value(service)
                    if "register-stale" in self.options.broken:
                        # Deliberately broken: answer a read from an old copy now and then.
                        seen = stale.get(key, seen) if self.rng.random() < 0.3 else seen
                        stale.setdefault(key, seen)
                    self._complete("register", process, "ok", f=f, key=key, value=seen)
                elif f == "write":
                    await client.replace(_register_service(key, value))
                    self._complete("register", process, "ok", f=f, key=key, value=value)
                else:
                    expected, new = value
                    current = await client.get(Service, key, namespace=NAMESPACE)
                    if _register_value(current) != expected:
                        self._complete("register", process, "fail", f=f, key=key, value=value)
                    else:
                        proposed = _register_service(
                            key, new, resource_version=current.metadata.resource_version
                        )
                        await client.replace(proposed)
                        self._complete("register", process, "ok", f=f, key=key, value=value)
            except (Conflict, NotFound, TooManyRequests, FencingTokenRejected) as exc:
                self._complete(
                    "register", process, "fail", f=f, key=key, value=value, error=_name(exc)
                )
            except INDETERMINATE as exc:
                outcome = "fail" if f == "read" else "info"
                self._complete(
                    "register", process, outcome, f=f, key=key, value=value, error=_name(exc)
                )
                if outcome == "info":
                    process = self._process()
            await self._pace()

    def _invoke(self, workload: str, process: int, key: str) -> tuple[str, Any]:
        """Draw the next register operation (half reads; values 0-4, so compare-and-sets
        fail now and then) and record its invocation."""
        f = self.rng.choice(("read", "read", "write", "cas"))
        value: Any = None
        if f == "write":
            value = self.rng.randrange(5)
        elif f == "cas":
            value = [self.rng.randrange(5), self.rng.randrange(5)]
        self.recorder.record(workload, process=process, type="invoke", f=f, key=key, value=value)
        return f, value

    def _complete(
        self,
        workload: str,
        process: int,
        outcome: str,
        *,
        f: str,
        key: str,
        value: Any,
        **extra: Any,
    ) -> None:
        self.recorder.record(
            workload, process=process, type=outcome, f=f, key=key, value=value, **extra
        )

    # ------------------------------------------------------------------ register (raw store)

    async def _store_register(self) -> None:
        """The same register workload against the store client itself (no API server)."""
        store = await open_store(self.store_url)
        try:
            await asyncio.gather(
                *(
                    self._store_register_process(store, f"s{k}")
                    for k in range(self.options.keys)
                    for _ in range(self.options.clients_per_key)
                )
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), 5)

    async def _store_register_process(self, store: Store, key: str) -> None:
        process = self._process()
        path = f"/verify/register/{key}".encode()
        timeout = self.options.request_timeout
        while not self.stopping.is_set():
            f, value = self._invoke("store-register", process, key)
            try:
                if f == "read":
                    kv = await asyncio.wait_for(store.get(path), timeout)
                    seen = json.loads(kv.value) if kv is not None else None
                    self._complete("store-register", process, "ok", f=f, key=key, value=seen)
                elif f == "write":
                    await asyncio.wait_for(store.put(path, json.dumps(value).encode()), timeout)
                    self._complete("store-register", process, "ok", f=f, key=key, value=value)
                else:
                    expected, new = value
                    guard = (
                        Compare(CompareTarget.VALUE, path, "==", json.dumps(expected).encode())
                        if expected is not None
                        else Compare(CompareTarget.CREATE_REVISION, path, "==", 0)
                    )
                    result = await asyncio.wait_for(
                        store.txn([guard], [Op(OpKind.PUT, path, json.dumps(new).encode())], []),
                        timeout,
                    )
                    outcome = "ok" if result.succeeded else "fail"
                    self._complete("store-register", process, outcome, f=f, key=key, value=value)
            except Exception as exc:  # the store's errors: unknown outcome for writes
                outcome = "fail" if f == "read" else "info"
                self._complete(
                    "store-register", process, outcome, f=f, key=key, value=value, error=_name(exc)
                )
                if outcome == "info":
                    process = self._process()
            await self._pace()

    # ------------------------------------------------------------------ watch

    async def _watch_writer(self) -> None:
        """Creates, updates and deletes a few Services, so watchers have a stream to follow."""
        client = self.client(0)
        names = [f"w{i}" for i in range(6)]
        present: set[str] = set()
        counter = 0
        while not self.stopping.is_set():
            name = self.rng.choice(names)
            counter += 1
            try:
                if name not in present:
                    await client.create(_register_service(name, counter, namespace=WATCH_NAMESPACE))
                    present.add(name)
                elif self.rng.random() < 0.2:
                    await client.delete(Service, name, namespace=WATCH_NAMESPACE)
                    present.discard(name)
                else:
                    await client.replace(
                        _register_service(name, counter, namespace=WATCH_NAMESPACE)
                    )
            except AlreadyExists:
                present.add(name)
            except NotFound:
                present.discard(name)
            except Exception:  # the writer only feeds watchers; its outcomes are not checked
                pass
            await self._pace(0.02, 0.08)

    async def _watcher(self, index: int) -> None:
        """A watcher that lists, then follows every change, resuming after disconnects."""
        client = self.client(index)
        process = f"watcher-{index}"
        prefix = WATCH_NAMESPACE
        skip_at = 5 if "watch-skip" in self.options.broken and index == 0 else -1
        while not self.stopping.is_set():
            try:
                listed = await client.list(Service, namespace=WATCH_NAMESPACE)
                break
            except Exception:
                await asyncio.sleep(0.5)
        else:
            return
        self.recorder.record(
            "watch",
            process=process,
            type="start",
            prefix=prefix,
            revision=int(listed.resource_version),
        )
        position = listed.resource_version
        delivered = 0
        resumes = 0
        while not self.stopping.is_set():
            # Each session ends after a few seconds, on purpose, and the next one resumes from
            # the last revision seen, through the next API server: a client failing over.
            session = self.rng.uniform(2.0, 6.0)
            if resumes:
                self.recorder.record(
                    "watch", process=process, type="start", prefix=prefix, revision=int(position)
                )
            watch = self.client(index + resumes).watch(
                Service, namespace=WATCH_NAMESPACE, resource_version=position, idle_timeout=10.0
            )
            cursor = _Cursor(process, position, delivered, skip_at)
            await self._follow(watch, cursor, session)
            position, delivered = cursor.position, cursor.delivered
            resumes += 1
            self.recorder.record("watch", process=process, type="disconnect", prefix=prefix)

    async def _follow(self, watch: Any, cursor: _Cursor, seconds: float) -> None:
        """Record one watch session's changes for `seconds`, advancing `cursor`."""
        prefix = WATCH_NAMESPACE
        process = cursor.process
        synthetic = 0

        async def consume() -> None:
            nonlocal synthetic
            async for event in watch:
                if event.type == "RELIST":
                    self.recorder.record("watch", process=process, type="expired", prefix=prefix)
                    self.recorder.record(
                        "watch",
                        process=process,
                        type="relist",
                        prefix=prefix,
                        revision=int(event.resource_version),
                    )
                    cursor.position = event.resource_version
                    synthetic = len(event.objects)
                    continue
                if synthetic:
                    synthetic -= 1  # the relist's own ADDED events: state, not changes
                    continue
                if event.type not in ("ADDED", "MODIFIED", "DELETED") or event.object is None:
                    continue
                cursor.delivered += 1
                cursor.position = event.resource_version
                if cursor.delivered == cursor.skip_at:
                    continue  # deliberately broken: drop one change
                self.recorder.record(
                    "watch",
                    process=process,
                    type="event",
                    prefix=prefix,
                    revision=int(event.resource_version),
                    key=event.object.metadata.name,
                    event=event.type,
                )

        # The session is a task cancelled from outside: cancelling a pending __anext__ of the
        # watch itself (a timeout around it) would close its generator for good.
        async with watch:
            task = asyncio.create_task(consume())
            try:
                await asyncio.wait({task}, timeout=seconds)
            finally:  # also when the run ends: the consumer must be gone before the watch
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ------------------------------------------------------------------ fencing

    async def _contender(self, index: int) -> None:
        """Campaigns for one Lease; while it believes it leads, writes through the fence.

        Now and then it stalls longer than the lease TTL while believing it still leads (the
        seeds' GC pause) and then writes with its old token: the store must refuse those.
        """
        client = self.client(index)
        holder = f"contender-{index}"
        ttl = self.options.fencing_ttl
        no_token = "fencing-no-token" in self.options.broken and index == 0
        sequence = 0
        while not self.stopping.is_set():
            try:
                lease = await client.acquire_lease(NAMESPACE, FENCING_LEASE, holder, ttl)
            except (AlreadyExists, Conflict):
                await self._pace(0.1, 0.4)
                continue
            except Exception:
                await self._pace(0.2, 0.5)
                continue
            token = lease.status.fencing_token
            loop = asyncio.get_running_loop()
            believed_until = loop.time() + ttl * 0.8
            self.recorder.record("fencing", process=holder, type="acquired", token=token)
            paused = False
            while not self.stopping.is_set() and loop.time() < believed_until:
                if not paused and self.rng.random() < 0.05:
                    paused = True
                    await asyncio.sleep(ttl * 1.5)  # a pause: the lease runs out meanwhile
                sequence += 1
                value = f"{holder}:{sequence}"
                sent_token = None if no_token else token
                self.recorder.record(
                    "fencing",
                    process=holder,
                    type="invoke",
                    f="write",
                    key="fenced",
                    token=sent_token,
                    value=value,
                )
                try:
                    if no_token:
                        written = await client.replace(_register_service("fenced", value))
                    else:
                        async with client.fenced(NAMESPACE, FENCING_LEASE, token) as view:
                            written = await view.replace(_register_service("fenced", value))
                    self.recorder.record(
                        "fencing",
                        process=holder,
                        type="ok",
                        f="write",
                        key="fenced",
                        token=sent_token,
                        value=value,
                        revision=int(written.metadata.resource_version),
                    )
                except FencingTokenRejected:
                    self.recorder.record(
                        "fencing",
                        process=holder,
                        type="fail",
                        f="write",
                        key="fenced",
                        token=sent_token,
                        value=value,
                        reason="stale-token",
                    )
                    break
                except (Conflict, NotFound, TooManyRequests) as exc:
                    self.recorder.record(
                        "fencing",
                        process=holder,
                        type="fail",
                        f="write",
                        key="fenced",
                        token=sent_token,
                        value=value,
                        reason=_name(exc),
                    )
                except INDETERMINATE as exc:
                    self.recorder.record(
                        "fencing",
                        process=holder,
                        type="info",
                        f="write",
                        key="fenced",
                        token=sent_token,
                        value=value,
                        reason=_name(exc),
                    )
                if paused:
                    break
                with contextlib.suppress(Exception):
                    if loop.time() > believed_until - ttl * 0.5:
                        lease = await client.renew_lease(lease)
                        believed_until = loop.time() + ttl * 0.8
                await self._pace(0.05, 0.15)
            await self._pace(0.1, 0.3)

    # ------------------------------------------------------------------ exclusive and surge

    async def _surge_sampler(self) -> None:
        """Samples the instances of the plain Deployment: never more than replicas + surge."""
        client = self.client(0)
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                deployment = await client.get(Deployment, PLAIN, namespace=NAMESPACE)
                listed = await client.list(
                    Instance, namespace=NAMESPACE, label_selector={"app": PLAIN}
                )
                surge = _absolute(
                    deployment.spec.strategy.rolling_update.max_surge, deployment.spec.replicas
                )
                self.recorder.record(
                    "surge",
                    type="sample",
                    deployment=PLAIN,
                    replicas=deployment.spec.replicas,
                    max_surge=surge,
                    instances=[i.metadata.name for i in listed.items],
                    terminating=[
                        i.metadata.name for i in listed.items if i.metadata.deletion_timestamp
                    ],
                    revision=int(listed.resource_version),
                )
            await asyncio.sleep(0.5)

    async def _exclusive_by_hand(self) -> None:
        """Deliberately broken: a copy of the exclusive workload started beside Keel's."""
        await asyncio.sleep(3.0)
        client = self.client(0)
        names: list[str] = []
        while not names and not self.stopping.is_set():
            with contextlib.suppress(Exception):
                listed = await client.list(
                    Instance, namespace=NAMESPACE, label_selector={"app": EXCLUSIVE}
                )
                names = [i.metadata.name for i in listed.items]
            await asyncio.sleep(0.5)
        if not names:
            return
        process = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "keel.verify.probe",
            "--log",
            str(self.exclusive_log),
            "--workload",
            "exclusive",
            "--instance",
            names[0],
        )
        try:
            await asyncio.sleep(2.0)
        finally:
            process.terminate()
            await process.wait()

    async def rollout(self) -> None:
        """A template change of the plain Deployment mid-run: a rolling update under faults."""
        client = self.client(0)
        for _ in range(5):
            try:
                current = await client.get(Deployment, PLAIN, namespace=NAMESPACE)
                spec = current.spec.template.spec
                env = {**spec.env, "VERSION": str(int(spec.env.get("VERSION", "0")) + 1)}
                import msgspec

                changed = msgspec.structs.replace(
                    current,
                    spec=msgspec.structs.replace(
                        current.spec,
                        template=msgspec.structs.replace(
                            current.spec.template, spec=msgspec.structs.replace(spec, env=env)
                        ),
                    ),
                )
                await client.replace(changed)
                self.recorder.record(
                    "nemesis", type="rollout", deployment=PLAIN, version=env["VERSION"]
                )
                return
            except Exception:
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ ground truth

    async def collect_truth(self, store: Store) -> None:
        """What the store itself holds after the run: every change under the watched prefix,
        and every holder of the fencing lease, read from the store's own history."""
        head = (await store.status()).revision
        if "watch" in self.options.workloads:
            prefix = BY_KIND["Service"].key_prefix(WATCH_NAMESPACE)
            for event in await _history(store, prefix, head):
                kv = event.kv
                kind = (
                    "DELETED"
                    if event.type is EventType.DELETE
                    else "ADDED"
                    if kv.create_revision == kv.mod_revision
                    else "MODIFIED"
                )
                self.recorder.record(
                    "watch",
                    process="store",
                    type="commit",
                    prefix=WATCH_NAMESPACE,
                    revision=kv.mod_revision,
                    key=kv.key[len(prefix) :].decode(),
                    event=kind,
                )
        if "fencing" in self.options.workloads:
            key = BY_KIND["Lease"].key(NAMESPACE, FENCING_LEASE)
            for event in await _history(store, key, head):
                kv = event.kv
                if event.type is EventType.DELETE or kv.create_revision != kv.mod_revision:
                    continue
                body = json.loads(kv.value)
                self.recorder.record(
                    "fencing",
                    process="store",
                    type="lease",
                    holder=body.get("spec", {}).get("holderIdentity"),
                    # The token is the lease's create revision (the server fills it in on read).
                    token=body.get("status", {}).get("fencingToken") or kv.create_revision,
                    revision=kv.mod_revision,
                )


async def _history(store: Store, prefix: bytes, head: int) -> list[Any]:
    """Every change under `prefix` from the first revision up to `head`, in order."""
    events: list[Any] = []
    if head <= 1:
        return events

    async def follow() -> None:
        async for batch in store.watch(prefix, start_revision=1, progress_notify=True):
            for event in batch.events:
                if event.kv.mod_revision <= head:
                    events.append(event)
            if batch.revision >= head:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(follow(), 20)
    return events


def _register_service(
    name: str, value: Any, *, namespace: str = NAMESPACE, resource_version: str = ""
) -> Service:
    annotations = {} if value is None else {VALUE_ANNOTATION: json.dumps(value)}
    return Service(
        metadata=ObjectMeta(
            name=name,
            namespace=namespace,
            annotations=annotations,
            resource_version=resource_version,
        ),
        spec=ServiceSpec(selector=None),
    )


def _register_value(service: Service) -> Any:
    raw = service.metadata.annotations.get(VALUE_ANNOTATION)
    return json.loads(raw) if raw is not None else None


def _absolute(value: int | str, replicas: int) -> int:
    if isinstance(value, int):
        return value
    percent = int(str(value).rstrip("%"))
    return -(-replicas * percent // 100)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
