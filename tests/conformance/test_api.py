"""Conformance: the keel.dev/v1 API, one table of cases run unchanged against every backend.

- `http`: `keel apiserver` as a subprocess on its sqlite store, over real HTTP on loopback
  (one server for the module; each case works in namespaces of its own, named after it).
- `sim`: the simulation's `SimCluster` (the real API server app on a MemoryStore in virtual
  time) through its in-memory transport, a fresh cluster per case on `run_virtual`.

A case sees only the public `KeelClient` and `Api`: its namespaces, clients per role, a
`wait_for`, and `/metrics` (store writes, compaction) through the backend's transport. Time
passes by `asyncio.sleep`: real on `http`, virtual on `sim`. History is trimmed by the
server's own compactor (on `http` started with a short retention, on `sim` with the defaults
in virtual time). Lists and watches name their namespace: `namespace=None` means all of them.
A case that passes on one backend and fails on the other has found a difference between the
simulation and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_mod
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec
import pytest
from support import ApiServer, wait_for_async

from keel.api.resources import (
    STOP_CONFIRMED,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Lease,
    Namespace,
    ObjectMeta,
    PortSpec,
    Resource,
    Service,
)
from keel.cli.boundary import parse_store_writes
from keel.client import (
    AiohttpTransport,
    AlreadyExists,
    BadRequest,
    Conflict,
    FencingTokenRejected,
    Forbidden,
    HttpRequest,
    HttpTransport,
    Invalid,
    KeelClient,
    NotFound,
    Preconditions,
    TooLarge,
    Unauthorized,
    WatchEvent,
)
from keel.sim import SimCluster, run_virtual

T = TypeVar("T")

TTL = 2  # seconds: the shortest lease a Lease object may ask for
# The http server's compactor: keep this much history, sampled this often. Short, so that a
# case can outwait it; long enough that every other case resumes its watches well within it.
COMPACTION_RETENTION = 2.0
COMPACTION_INTERVAL = 0.25


# ------------------------------------------------------------------------- backends


class Backend(Protocol):
    """How cases reach one kind of API server."""

    def run(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `main` on this backend's event loop (real or virtual time)."""
        ...

    async def connect(self) -> Connection: ...


class Connection(Protocol):
    """One case's way to the server, opened inside the backend's loop."""

    url: str
    transport: HttpTransport  # for requests outside the client's API
    poll: float  # seconds between polls of `Api.wait_for`
    # Seconds within which the server's compactor passes the revision current at any moment.
    compaction_bound: float

    def token(self, role: str) -> str: ...

    def client(self, role: str, namespace: str) -> KeelClient:
        """A client with the bearer token of `role`."""
        ...

    def anonymous(self, namespace: str) -> KeelClient:
        """A client without a bearer token."""
        ...

    async def close(self) -> None: ...


@dataclass
class Api:
    """What a case gets: an admin client whose default namespace is the case's own, and what
    the cases need beyond the client."""

    client: KeelClient
    namespace: str
    _connection: Connection
    _base: str
    _namespaces: list[str] = field(default_factory=list)
    _clients: list[KeelClient] = field(default_factory=list)

    async def new_namespace(self) -> str:
        """Another namespace of this case's own."""
        name = f"{self._base}-{len(self._namespaces)}"
        await self.client.create(Namespace(metadata=ObjectMeta(name=name)))
        self._namespaces.append(name)
        return name

    def client_as(self, role: str | None) -> KeelClient:
        """A client with the token of `role` (admin, viewer, controller, scheduler), or with
        no token at all (None)."""
        if role is None:
            made = self._connection.anonymous(self.namespace)
        else:
            made = self._connection.client(role, self.namespace)
        self._clients.append(made)
        return made

    async def metrics(self) -> str:
        connection = self._connection
        response = await connection.transport.send(
            HttpRequest(
                "GET",
                connection.url + "/metrics",
                headers={"authorization": f"Bearer {connection.token('admin')}"},
            )
        )
        assert response.status == 200, response.body
        return response.body.decode()

    async def store_writes(self) -> int:
        """Every store write the API server has made (`keel_store_writes_total`)."""
        writes = parse_store_writes(await self.metrics())
        return sum(sum(verbs.values()) for verbs in writes.values())

    async def compacted_revision(self) -> int:
        for line in (await self.metrics()).splitlines():
            if line.startswith("keel_store_compacted_revision "):
                return int(float(line.split()[1]))
        return 0

    async def revision(self) -> int:
        """The server's current revision (a list's resourceVersion)."""
        return int((await self.client.list(Namespace, limit=1)).resource_version)

    async def trim_history(self) -> None:
        """Let the server's compactor pass the current revision: every resourceVersion up to
        now becomes too old to watch from."""
        now = await self.revision()

        async def compacted() -> bool:
            return await self.compacted_revision() >= now

        timeout = self._connection.compaction_bound + 10.0
        await self.wait_for(f"compaction past revision {now}", compacted, timeout=timeout)

    async def wait_for(
        self, what: str, condition: Callable[[], Awaitable[T]], *, timeout: float = 30.0
    ) -> T:
        """`wait_for_async`, polling at this backend's pace (virtual seconds on `sim`)."""
        return await wait_for_async(
            what, condition, timeout=timeout, interval=self._connection.poll
        )

    async def gone(self, kind: type[Resource], name: str, namespace: str | None = None) -> bool:
        try:
            await self.client.get(kind, name, namespace=namespace)
        except NotFound:
            return True
        return False

    async def close(self) -> None:
        # Leases left behind would expire during a later case on a shared server.
        for namespace in self._namespaces:
            for lease in (await self.client.list(Lease, namespace=namespace)).items:
                with contextlib.suppress(NotFound):
                    await self.client.delete(Lease, lease.metadata.name, namespace=namespace)
        for made in self._clients:
            await made.close()
        await self.client.close()
        await self._connection.close()


async def open_api(backend: Backend, base: str) -> Api:
    connection = await backend.connect()
    admin = connection.client("admin", base)
    api = Api(admin, base, connection, base)
    await admin.create(Namespace(metadata=ObjectMeta(name=base)))
    api._namespaces.append(base)
    return api


Case = Callable[[Api], Awaitable[None]]


def run_case(backend: Backend, case: Case, base: str) -> None:
    async def main() -> None:
        api = await open_api(backend, base)
        try:
            await case(api)
        finally:
            await api.close()

    backend.run(main)


# -- http: one `keel apiserver` process


class HttpConnection:
    poll = 0.05
    compaction_bound = COMPACTION_RETENTION + 2 * COMPACTION_INTERVAL

    def __init__(self, url: str, tokens: dict[str, str], ssl: ssl_mod.SSLContext | None) -> None:
        self.url = url
        self._tokens = tokens
        self._ssl = ssl
        self.transport: HttpTransport = AiohttpTransport(ssl=ssl)

    def token(self, role: str) -> str:
        return self._tokens[role]

    def client(self, role: str, namespace: str) -> KeelClient:
        return KeelClient(self.url, token=self._tokens[role], namespace=namespace, ssl=self._ssl)

    def anonymous(self, namespace: str) -> KeelClient:
        return KeelClient(self.url, namespace=namespace, ssl=self._ssl)

    async def close(self) -> None:
        await self.transport.aclose()


@dataclass
class HttpBackend:
    url: str
    tokens: dict[str, str]
    ssl: ssl_mod.SSLContext | None = None

    def run(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        asyncio.run(main())

    async def connect(self) -> HttpConnection:
        return HttpConnection(self.url, self.tokens, self.ssl)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpBackend]:
    server = ApiServer(
        tmp_path_factory.mktemp("apiserver"),
        "--compaction-interval", str(COMPACTION_INTERVAL),
        "--compaction-retention", str(COMPACTION_RETENTION),
    )  # fmt: skip
    with server:
        roles = ("admin", "viewer", "controller", "scheduler")
        tokens = {role: server.token(role) for role in roles}
        yield HttpBackend(server.url, tokens, server.ssl_context)


# -- sim: a SimCluster per case, in virtual time


class SimConnection:
    poll = 1.0  # virtual seconds: polls cost loop iterations, no real time

    def __init__(self, cluster: SimCluster) -> None:
        self._cluster = cluster
        self.url = cluster.url
        self.transport: HttpTransport = cluster.app
        # The server's own compaction settings (the defaults), in virtual seconds.
        server = cluster.server
        self.compaction_bound = server.compaction_retention + 2 * server.compaction_interval

    def token(self, role: str) -> str:
        return self._cluster.token(role)

    def client(self, role: str, namespace: str) -> KeelClient:
        return self._cluster.client(f"tester-{role}", role=role, faulty=False, namespace=namespace)

    def anonymous(self, namespace: str) -> KeelClient:
        cluster = self._cluster
        return KeelClient(
            cluster.url, namespace=namespace, transport=cluster.app, clock=cluster.clock
        )

    async def close(self) -> None:
        await self._cluster.stop()


@dataclass
class SimBackend:
    seed: int = 0

    def run(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        run_virtual(main)

    async def connect(self) -> SimConnection:
        cluster = SimCluster(seed=self.seed)
        await cluster.start()
        return SimConnection(cluster)


@pytest.fixture(params=["http", "sim"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "http":
        server: HttpBackend = request.getfixturevalue("http_server")
        return server
    return SimBackend(seed=7)


# ------------------------------------------------------------------------- objects


def _deployment(name: str = "web", replicas: int = 1, **meta: object) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, **meta),  # type: ignore[arg-type]
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(spec=InstanceSpec(command=["sleep", "inf"])),
        ),
    )


def _service(name: str, **labels: str) -> Service:
    return Service(metadata=ObjectMeta(name=name, labels=labels))


def _now() -> float:
    return asyncio.get_running_loop().time()


def _names(objects: list[Service] | list[Deployment]) -> list[str]:
    return [o.metadata.name for o in objects]


async def create_sets_identity_from_the_global_counter(api: Api) -> None:
    c = api.client
    first = await c.create(_deployment("a"))
    second = await c.create(_service("b"))
    assert int(second.metadata.resource_version) == int(first.metadata.resource_version) + 1
    assert first.metadata.uid and first.metadata.uid != second.metadata.uid
    assert first.metadata.generation == 1
    assert first.metadata.creation_timestamp is not None
    assert first.kind == "Deployment" and first.metadata.namespace == api.namespace


async def create_of_a_taken_name_is_already_exists(api: Api) -> None:
    await api.client.create(_deployment())
    with pytest.raises(AlreadyExists):
        await api.client.create(_deployment())


async def create_in_a_missing_namespace_is_not_found(api: Api) -> None:
    with pytest.raises(NotFound):
        await api.client.create(_deployment(namespace="nowhere"))


async def create_validates_like_the_server(api: Api) -> None:
    with pytest.raises(Invalid):
        await api.client.create(_deployment("Not_A_Name"))
    with pytest.raises(Invalid):
        await api.client.create(_deployment(""))  # neither name nor generateName


async def an_unknown_field_is_invalid_and_named(api: Api) -> None:
    await api.client.create(_deployment())
    with pytest.raises(Invalid) as caught:
        await api.client.patch(Deployment, "web", {"spec": {"replicass": 2}})
    assert "replicass" in str(caught.value)
    assert (await api.client.get(Deployment, "web")).spec.replicas == 1


async def an_object_over_the_size_limit_is_too_large(api: Api) -> None:
    big = _deployment(annotations={"blob": "x" * (1024 * 1024 + 1)})
    with pytest.raises(TooLarge):
        await api.client.create(big)
    with pytest.raises(NotFound):  # nothing is half-written
        await api.client.get(Deployment, "web")


async def generate_name_makes_a_fresh_name(api: Api) -> None:
    a = await api.client.create(_deployment("", generate_name="web-"))
    b = await api.client.create(_deployment("", generate_name="web-"))
    assert a.metadata.name.startswith("web-") and a.metadata.name != b.metadata.name


async def get_of_a_missing_object_is_not_found(api: Api) -> None:
    with pytest.raises(NotFound):
        await api.client.get(Deployment, "ghost")


async def an_instance_keeps_its_spec(api: Api) -> None:
    spec = InstanceSpec(
        command=["run", "--fast"],
        env={"A": "1"},
        ports=[PortSpec(name="http")],
        exclusive=True,
        priority=7,
    )
    await api.client.create(Instance(metadata=ObjectMeta(name="i"), spec=spec))
    assert (await api.client.get(Instance, "i")).spec == spec


async def replace_with_a_stale_resource_version_is_conflict(api: Api) -> None:
    c = api.client
    created = await c.create(_deployment())
    spec = msgspec.structs.replace(created.spec, replicas=2)
    updated = await c.replace(msgspec.structs.replace(created, spec=spec))
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    spec3 = msgspec.structs.replace(created.spec, replicas=3)
    with pytest.raises(Conflict):
        await c.replace(msgspec.structs.replace(created, spec=spec3))  # based on the old rv
    assert (await c.get(Deployment, "web")).spec.replicas == 2


async def replace_without_resource_version_is_unconditional(api: Api) -> None:
    c = api.client
    created = await c.create(_deployment())
    await c.patch(Deployment, "web", {"spec": {"replicas": 2}})
    blind = msgspec.structs.replace(
        created,
        metadata=msgspec.structs.replace(created.metadata, resource_version=""),
        spec=msgspec.structs.replace(created.spec, replicas=4),
    )
    assert (await c.replace(blind)).spec.replicas == 4


async def an_unchanged_replace_writes_nothing(api: Api) -> None:
    created = await api.client.create(_deployment())
    writes = await api.store_writes()
    same = await api.client.replace(created)
    patched = await api.client.patch(Deployment, "web", {"spec": {"replicas": 1}})
    assert same.metadata.resource_version == created.metadata.resource_version
    assert patched.metadata.resource_version == created.metadata.resource_version
    assert await api.store_writes() == writes


async def generation_counts_spec_changes_only(api: Api) -> None:
    c = api.client
    created = await c.create(_deployment())
    labelled = await c.patch(Deployment, "web", {"metadata": {"labels": {"a": "b"}}})
    assert labelled.metadata.generation == 1
    scaled = await c.patch(Deployment, "web", {"spec": {"replicas": 5}})
    assert scaled.metadata.generation == 2
    status = await c.patch(Deployment, "web", {"status": {"replicas": 5}}, subresource="status")
    assert status.metadata.generation == 2
    assert created.metadata.uid == status.metadata.uid


async def a_merge_patch_null_removes_a_key(api: Api) -> None:
    await api.client.create(_deployment(labels={"a": "1", "b": "2"}))
    patched = await api.client.patch(Deployment, "web", {"metadata": {"labels": {"a": None}}})
    assert patched.metadata.labels == {"b": "2"}


async def replace_leaves_status_to_the_subresource(api: Api) -> None:
    c = api.client
    created = await c.create(_deployment())
    status = msgspec.structs.replace(created.status, replicas=7)
    kept = await c.replace(msgspec.structs.replace(created, status=status))
    assert kept.status.replicas == 0  # the main resource cannot write status
    written = await c.update_status(msgspec.structs.replace(kept, status=status))
    assert written.status.replicas == 7
    other_spec = msgspec.structs.replace(written.spec, replicas=9)
    only_status = await c.update_status(msgspec.structs.replace(written, spec=other_spec))
    assert only_status.spec.replicas == 1  # the status subresource cannot write spec


async def json_patch_test_failure_is_conflict(api: Api) -> None:
    c = api.client
    created = await c.create(_deployment())
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "999999999"},
        {"op": "replace", "path": "/spec/replicas", "value": 3},
    ]
    with pytest.raises(Conflict):
        await c.patch(Deployment, "web", stale, type="json")
    fresh = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": created.metadata.resource_version,
        },
        {"op": "replace", "path": "/spec/replicas", "value": 3},
    ]
    assert (await c.patch(Deployment, "web", fresh, type="json")).spec.replicas == 3


async def patch_to_an_invalid_object_is_invalid(api: Api) -> None:
    await api.client.create(_deployment())
    with pytest.raises(Invalid):
        await api.client.patch(Deployment, "web", {"spec": {"replicas": -1}})


async def delete_without_finalizers_removes_at_once(api: Api) -> None:
    c = api.client
    await c.create(_deployment())
    last = await c.delete(Deployment, "web")
    assert last is not None and last.metadata.name == "web"
    with pytest.raises(NotFound):
        await c.get(Deployment, "web")
    with pytest.raises(NotFound):
        await c.delete(Deployment, "web")


async def delete_preconditions_are_checked(api: Api) -> None:
    c = api.client
    created = await c.create(_deployment())
    with pytest.raises(Conflict):
        await c.delete(Deployment, "web", preconditions=Preconditions(uid="someone-else"))
    with pytest.raises(Conflict):
        await c.delete(Deployment, "web", preconditions=Preconditions(resource_version="1"))
    await c.delete(Deployment, "web", preconditions=Preconditions(uid=created.metadata.uid))
    with pytest.raises(NotFound):
        await c.get(Deployment, "web")


async def finalizers_hold_deletion_until_removed(api: Api) -> None:
    c = api.client
    await c.create(_deployment(finalizers=["keel.dev/test"]))
    marked = await c.delete(Deployment, "web")
    assert marked is not None and marked.metadata.deletion_timestamp is not None
    again = await c.delete(Deployment, "web")  # a second delete changes nothing
    assert again is not None and again.metadata.resource_version == marked.metadata.resource_version
    current = await c.get(Deployment, "web")
    assert current.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    await c.patch(Deployment, "web", {"metadata": {"finalizers": []}})
    with pytest.raises(NotFound):
        await c.get(Deployment, "web")


async def list_is_complete_ordered_and_filtered(api: Api) -> None:
    c = api.client
    await c.create(_service("b", tier="web"))
    await c.create(_service("a", tier="db"))
    last = await c.create(_service("c", tier="web"))
    listed = await c.list(Service, namespace=api.namespace)
    assert _names(listed.items) == ["a", "b", "c"]
    assert listed.resource_version == last.metadata.resource_version
    web = await c.list(Service, namespace=api.namespace, label_selector={"tier": "web"})
    assert _names(web.items) == ["b", "c"]
    named = await c.list(Service, namespace=api.namespace, field_selector="metadata.name=a")
    assert _names(named.items) == ["a"]
    with pytest.raises(BadRequest):
        await c.list(Service, namespace=api.namespace, field_selector="spec.nonsense=1")


async def list_pages_are_one_snapshot(api: Api) -> None:
    c = api.client
    for name in "edcba":
        await c.create(_service(name))
    pages = c.pages(Service, namespace=api.namespace, limit=2)
    first = await anext(pages)
    await c.create(_service("f"))  # after the list began: not part of it
    await c.delete(Service, "e")
    rest = [page async for page in pages]
    assert [_names(p.items) for p in [first, *rest]] == [["a", "b"], ["c", "d"], ["e"]]
    assert {p.resource_version for p in rest} == {first.resource_version}
    assert rest[-1].continue_token == ""


async def a_viewer_reads_but_does_not_write(api: Api) -> None:
    await api.client.create(_service("a"))
    viewer = api.client_as("viewer")
    assert _names((await viewer.list(Service, namespace=api.namespace)).items) == ["a"]
    with pytest.raises(Forbidden):
        await viewer.create(_service("b"))
    with pytest.raises(Forbidden):
        await viewer.delete(Service, "a")
    with pytest.raises(Unauthorized):
        await api.client_as(None).get(Service, "a")


# ---------------------------------------------------------------------- leases and fencing


async def a_lease_token_is_its_create_revision(api: Api) -> None:
    c, ns = api.client, api.namespace
    lease = await c.acquire_lease(ns, "lock", "me", TTL)
    assert lease.status.fencing_token == int(lease.metadata.resource_version)
    with pytest.raises(AlreadyExists):
        await c.acquire_lease(ns, "lock", "you", TTL)
    assert await c.release_lease(lease)


async def a_lease_vanishes_after_its_ttl(api: Api) -> None:
    c, ns = api.client, api.namespace
    started = _now()
    lease = await c.acquire_lease(ns, "lock", "me", TTL)
    watch = c.watch(Lease, namespace=ns, resource_version=lease.metadata.resource_version)
    event = await anext(watch)
    elapsed = _now() - started
    await watch.aclose()
    assert event.type == "DELETED" and event.object is not None
    assert event.object.metadata.name == "lock"
    assert TTL <= elapsed < TTL + 1.0  # not before its time, and not long after
    with pytest.raises(NotFound):
        await c.renew_lease(lease)
    second = await c.acquire_lease(ns, "lock", "you", TTL)
    assert second.status.fencing_token > lease.status.fencing_token
    assert await c.release_lease(second)


async def renewal_keeps_a_lease_alive_without_writing(api: Api) -> None:
    c, ns = api.client, api.namespace
    lease = await c.acquire_lease(ns, "lock", "me", TTL)
    writes = await api.store_writes()
    for _ in range(2):  # renewals outlive the lease's TTL
        await asyncio.sleep(TTL * 0.6)
        renewed = await c.renew_lease(lease)
        assert renewed.metadata.resource_version == lease.metadata.resource_version
    held = await c.get(Lease, "lock", namespace=ns)
    assert held.status.fencing_token == lease.status.fencing_token
    assert await api.store_writes() == writes  # a keep-alive is not a write
    stopped = _now()
    await api.wait_for("the lease to expire", lambda: api.gone(Lease, "lock", ns))
    assert TTL - 0.25 <= _now() - stopped <= TTL + 1.0  # a TTL after the last renewal


async def renewal_by_another_holder_is_conflict(api: Api) -> None:
    c, ns = api.client, api.namespace
    lease = await c.acquire_lease(ns, "lock", "me", TTL)
    spec = msgspec.structs.replace(lease.spec, holder_identity="you")
    with pytest.raises(Conflict):
        await c.renew_lease(msgspec.structs.replace(lease, spec=spec))
    status = msgspec.structs.replace(lease.status, fencing_token=1)
    with pytest.raises(Conflict):
        await c.renew_lease(msgspec.structs.replace(lease, status=status))
    assert await c.release_lease(lease)


async def fenced_writes_need_the_current_token(api: Api) -> None:
    c, ns = api.client, api.namespace
    old = await c.acquire_lease(ns, "lock", "me", TTL)
    async with c.fenced(ns, "lock", old.status.fencing_token) as view:
        await view.create(_deployment("one"))
        # The holder pauses past its TTL, and someone else takes the lease over.
        await api.wait_for("the lease to expire", lambda: api.gone(Lease, "lock", ns))
        new = await c.acquire_lease(ns, "lock", "you", TTL)
        writes = await api.store_writes()
        with pytest.raises(FencingTokenRejected):
            await view.create(_deployment("two"))
        with pytest.raises(FencingTokenRejected):
            await view.patch(Deployment, "one", {"spec": {"replicas": 3}})
        with pytest.raises(FencingTokenRejected):
            await view.delete(Deployment, "one")
        assert await api.store_writes() == writes  # nothing was written
    async with c.fenced(ns, "lock", new.status.fencing_token) as fresh:
        await fresh.create(_deployment("two"))
    with pytest.raises(RuntimeError):
        await view.create(_deployment("three"))  # the view ended with its block
    deployments = (await c.list(Deployment, namespace=api.namespace)).items
    assert [(d.metadata.name, d.spec.replicas) for d in deployments] == [("one", 1), ("two", 1)]
    assert await c.release_lease(new)


async def release_deletes_only_the_same_incarnation(api: Api) -> None:
    c, ns = api.client, api.namespace
    lease = await c.acquire_lease(ns, "lock", "me", TTL)
    assert await c.release_lease(lease) is True
    assert await c.release_lease(lease) is False
    other = await c.acquire_lease(ns, "lock", "you", TTL)
    assert await c.release_lease(lease) is False  # someone else's incarnation stays
    assert (await c.get(Lease, "lock", namespace=ns)).spec.holder_identity == "you"
    assert await c.release_lease(other) is True


# ---------------------------------------------------------------------- watch


def _seen(event: WatchEvent[Service]) -> tuple[str, str]:
    return event.type, event.object.metadata.name if event.object else ""


async def watch_resumes_from_a_resource_version(api: Api) -> None:
    c, ns = api.client, api.namespace
    first = await c.create(_service("a"))
    await c.create(_service("b"))
    await c.patch(Service, "a", {"metadata": {"labels": {"x": "y"}}})
    await c.delete(Service, "b")
    watch = c.watch(Service, namespace=ns, resource_version=first.metadata.resource_version)
    events = [await anext(watch) for _ in range(3)]
    await watch.aclose()
    assert [_seen(e) for e in events] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    versions = [int(e.resource_version) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 3


async def watch_from_zero_starts_with_every_object(api: Api) -> None:
    c, ns = api.client, api.namespace
    await c.create(_service("a"))
    await c.create(_service("b"))
    watch = c.watch(Service, namespace=ns, resource_version="0")
    initial = [await anext(watch) for _ in range(2)]
    await c.create(_service("c"))
    later = await anext(watch)
    await watch.aclose()
    assert [_seen(e) for e in [*initial, later]] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]


async def watch_older_than_the_history_relists(api: Api) -> None:
    c, ns = api.client, api.namespace
    first = await c.create(_service("a"))
    await c.create(_service("b"))
    await c.delete(Service, "a")
    await api.trim_history()
    watch = c.watch(Service, namespace=ns, resource_version=first.metadata.resource_version)
    relist = await anext(watch)
    added = await anext(watch)
    await c.create(_service("c"))
    after = await anext(watch)
    await watch.aclose()
    assert relist.type == "RELIST" and _names(list(relist.objects)) == ["b"]
    assert _seen(added) == ("ADDED", "b")
    assert _seen(after) == ("ADDED", "c")


async def watch_sends_bookmarks_when_idle(api: Api) -> None:
    c, ns = api.client, api.namespace
    start = (await c.list(Service, namespace=api.namespace)).resource_version
    created = await c.create(_service("a"))
    watch = c.watch(Service, namespace=ns, resource_version=start, emit_bookmarks=True)
    event = await anext(watch)
    assert _seen(event) == ("ADDED", "a")
    bookmark = await anext(watch)
    await watch.aclose()
    assert bookmark.type == "BOOKMARK"
    assert bookmark.resource_version == created.metadata.resource_version
    assert watch.resource_version == bookmark.resource_version


async def a_selected_watch_sees_objects_leave_as_deleted(api: Api) -> None:
    c, ns = api.client, api.namespace
    start = (await c.list(Service, namespace=api.namespace)).resource_version
    await c.create(_service("a", tier="web"))
    await c.patch(Service, "a", {"metadata": {"labels": {"tier": "db"}}})
    await c.patch(Service, "a", {"metadata": {"labels": {"tier": "web"}}})
    watch = c.watch(Service, namespace=ns, resource_version=start, label_selector="tier=web")
    types = [(await anext(watch)).type for _ in range(3)]
    await watch.aclose()
    assert types == ["ADDED", "DELETED", "ADDED"]


async def watch_of_a_namespace_sees_only_it(api: Api) -> None:
    c, ns = api.client, api.namespace
    other = await api.new_namespace()
    start = (await c.list(Deployment, namespace=api.namespace)).resource_version
    await c.create(_deployment("a", namespace=other))
    await c.create(_deployment("b"))
    watch = c.watch(Deployment, namespace=ns, resource_version=start)
    event = await anext(watch)
    await watch.aclose()
    assert event.object is not None
    assert (event.object.metadata.name, event.object.metadata.namespace) == ("b", ns)


async def binding_sets_the_node_once_with_occ(api: Api) -> None:
    c, ns = api.client, api.namespace
    created = await c.create(
        Instance(metadata=ObjectMeta(name="i"), spec=InstanceSpec(command=["sleep", "inf"]))
    )
    await c.patch(Instance, "i", {"metadata": {"labels": {"moved": "on"}}})
    with pytest.raises(Conflict):  # the instance changed since the scheduler saw it
        await c.bind(ns, "i", "n1", resource_version=created.metadata.resource_version)
    current = await c.get(Instance, "i")
    bound = await c.bind(ns, "i", "n1", resource_version=current.metadata.resource_version)
    assert bound is not None and bound.spec.node_name == "n1"
    with pytest.raises(Conflict):  # bound once, never again
        await c.bind(ns, "i", "n2")
    assert (await c.get(Instance, "i")).spec.node_name == "n1"


async def a_bound_exclusive_instance_keeps_its_name_until_its_stop_is_confirmed(
    api: Api,
) -> None:
    """Binding an exclusive Instance adds `keel.dev/stop-confirmed`: deleting it leaves it
    terminating, its name taken (no replacement created, none bound) until a controller
    removes the finalizer; a plain Instance is deleted at once, as before."""
    c, ns = api.client, api.namespace
    scheduler, controller = api.client_as("scheduler"), api.client_as("controller")
    spec = InstanceSpec(command=["sleep", "inf"], exclusive=True)
    await c.create(Instance(metadata=ObjectMeta(name="solo"), spec=spec))
    assert (await c.get(Instance, "solo")).metadata.finalizers == []  # unbound: nothing runs
    bound = await scheduler.bind(ns, "solo", "n1")
    assert bound is not None and bound.metadata.finalizers == [STOP_CONFIRMED]
    marked = await c.delete(Instance, "solo")
    assert marked is not None and marked.metadata.deletion_timestamp is not None
    terminating = await c.get(Instance, "solo")
    assert terminating.metadata.finalizers == [STOP_CONFIRMED]
    with pytest.raises(AlreadyExists):  # the replacement waits: the name is taken
        await c.create(Instance(metadata=ObjectMeta(name="solo"), spec=spec))
    with pytest.raises(Conflict):
        await scheduler.bind(ns, "solo", "n2")
    meta = msgspec.structs.replace(terminating.metadata, finalizers=[])
    await controller.replace(msgspec.structs.replace(terminating, metadata=meta))
    assert await api.gone(Instance, "solo", ns)
    await c.create(Instance(metadata=ObjectMeta(name="solo"), spec=spec))  # the name is free

    await c.create(Instance(metadata=ObjectMeta(name="plain"), spec=InstanceSpec(command=["x"])))
    plain = await scheduler.bind(ns, "plain", "n1")
    assert plain is not None and plain.metadata.finalizers == []
    await c.delete(Instance, "plain")
    with pytest.raises(NotFound):
        await c.get(Instance, "plain")


CASES: list[Case] = [
    create_sets_identity_from_the_global_counter,
    create_of_a_taken_name_is_already_exists,
    create_in_a_missing_namespace_is_not_found,
    create_validates_like_the_server,
    an_unknown_field_is_invalid_and_named,
    an_object_over_the_size_limit_is_too_large,
    generate_name_makes_a_fresh_name,
    get_of_a_missing_object_is_not_found,
    an_instance_keeps_its_spec,
    replace_with_a_stale_resource_version_is_conflict,
    replace_without_resource_version_is_unconditional,
    an_unchanged_replace_writes_nothing,
    generation_counts_spec_changes_only,
    a_merge_patch_null_removes_a_key,
    replace_leaves_status_to_the_subresource,
    json_patch_test_failure_is_conflict,
    patch_to_an_invalid_object_is_invalid,
    delete_without_finalizers_removes_at_once,
    delete_preconditions_are_checked,
    finalizers_hold_deletion_until_removed,
    list_is_complete_ordered_and_filtered,
    list_pages_are_one_snapshot,
    a_viewer_reads_but_does_not_write,
    a_lease_token_is_its_create_revision,
    a_lease_vanishes_after_its_ttl,
    renewal_keeps_a_lease_alive_without_writing,
    renewal_by_another_holder_is_conflict,
    fenced_writes_need_the_current_token,
    release_deletes_only_the_same_incarnation,
    watch_resumes_from_a_resource_version,
    watch_from_zero_starts_with_every_object,
    watch_older_than_the_history_relists,
    watch_sends_bookmarks_when_idle,
    a_selected_watch_sees_objects_leave_as_deleted,
    watch_of_a_namespace_sees_only_it,
    binding_sets_the_node_once_with_occ,
    a_bound_exclusive_instance_keeps_its_name_until_its_stop_is_confirmed,
]


def _namespace_of(case: Case) -> str:
    # Each case's own namespace, unique on a shared server and readable in its logs.
    return case.__name__.replace("_", "-")[:56].rstrip("-")


assert len({_namespace_of(case) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_the_api_behaves_alike_on_every_backend(backend: Backend, case: Case) -> None:
    run_case(backend, case, _namespace_of(case))
