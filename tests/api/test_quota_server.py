"""Namespace quotas against a real API server (sqlite, and etcd): creates are refused with a
403 naming the exceeded limit, concurrent creates never exceed a quota together, deleting
frees capacity (the quota controller recomputes usage), an idle quota writes nothing, and a
Deployment over quota reports FailedCreate and stops at the limit."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_objects import store_writes
from support import V1, ApiServer, HttpClient, wait_for_async

from keel.api.quantity import parse_cpu
from keel.client import Forbidden, KeelClient
from keel.clock import SystemClock
from keel.controllers import build
from keel.runtime.controller import ControllerRunner
from keel.runtime.manager import ControllerManager

MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    store = None
    if request.param == "etcd":
        store = request.getfixturevalue("etcd_cluster_1").url
    with ApiServer(tmp_path_factory.mktemp(f"quota-{request.param}"), store=store) as api:
        yield api


@pytest.fixture
def ns(server: ApiServer) -> str:
    name = f"q-{uuid.uuid4().hex[:8]}"
    assert server.http().post(f"{V1}/namespaces", {"metadata": {"name": name}}).status == 201
    return name


@contextlib.asynccontextmanager
async def controllers(
    server: ApiServer, names: list[str], *, resync: float = 300.0
) -> AsyncIterator[ControllerRunner]:
    """A controller-manager with the named controllers, in this process, for the block."""
    client = server.client("controller")
    clock = SystemClock()
    runner = ControllerRunner(client, clock=clock, resync_period=resync)
    for controller in build(names, runner.cache):
        runner.register(controller, workers=2)
    manager = ControllerManager(client, runner, identity=f"t-{uuid.uuid4().hex[:6]}", clock=clock)
    task = asyncio.get_running_loop().create_task(manager.run())
    try:
        await wait_for_async("leadership", manager.leading)
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


def quota(name: str, **hard: str) -> dict[str, Any]:
    return {"kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}}


def instance(name: str, cpu: str = "0") -> dict[str, Any]:
    return {
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"command": ["sleep", "1"], "resources": {"cpu": cpu}},
    }


def used(http: HttpClient, ns: str, name: str = "team-a") -> dict[str, str]:
    found = http.object(f"{V1}/namespaces/{ns}/resourcequotas/{name}")
    assert found is not None
    result: dict[str, str] = found["status"]["used"]
    return result


async def test_creates_up_to_the_limit_then_403_naming_it_and_deleting_frees_capacity(
    server: ApiServer, ns: str
) -> None:
    http = server.http()
    quotas, instances = f"{V1}/namespaces/{ns}/resourcequotas", f"{V1}/namespaces/{ns}/instances"
    assert http.post(quotas, quota("team-a", cpu="2", instances="4")).status == 201
    async with controllers(server, ["quota"]):
        # The controller counts the namespace (empty) and records the limits.
        await wait_for_async(
            "usage counted", lambda: used(http, ns) == {"cpu": "0", "instances": "0"}
        )
        for name, cpu in (("a", "500m"), ("b", "500m"), ("c", "800m")):
            assert http.post(instances, instance(name, cpu)).status == 201
        assert used(http, ns) == {"cpu": "1800m", "instances": "3"}  # raised at admission

        refused = http.post(instances, instance("d", "500m"))
        assert refused.status == 403, refused.body
        assert refused.json["reason"] == "Forbidden"
        assert refused.json["message"] == (
            'instances "d" is forbidden: exceeded quota "team-a": requested cpu=500m, '
            "used cpu=1800m, limited cpu=2"
        )
        assert refused.json["details"]["causes"][0]["reason"] == "QuotaExceeded"
        assert http.get(f"{instances}/d").status == 404  # nothing stored

        assert http.post(instances, instance("e", "200m")).status == 201  # exactly 2 cpus
        full = http.post(instances, instance("f"))
        assert full.status == 403
        assert (
            "requested instances=1, used instances=4, limited instances=4" in full.json["message"]
        )

        # Deleting frees capacity: the quota controller lowers the ledger.
        assert http.delete(f"{instances}/c").status == 200
        await wait_for_async(
            "usage lowered", lambda: used(http, ns) == {"cpu": "1200m", "instances": "3"}
        )
        assert http.post(instances, instance("d", "500m")).status == 201
        assert used(http, ns) == {"cpu": "1700m", "instances": "4"}

        # Raising an Instance's request is admitted like a create of the difference.
        more = http.patch(f"{instances}/e", {"spec": {"resources": {"cpu": "1"}}}, MERGE)
        assert more.status == 403
        assert "requested cpu=800m, used cpu=1700m, limited cpu=2" in more.json["message"]
        less = http.patch(f"{instances}/e", {"spec": {"resources": {"cpu": "100m"}}}, MERGE)
        assert less.status == 200
        await wait_for_async("usage lowered", lambda: used(http, ns)["cpu"] == "1600m")

        # Deleting the namespace's whole contents, by any path, is counted too.
        for name in ("a", "b", "d", "e"):
            assert http.delete(f"{instances}/{name}").status == 200
        await wait_for_async(
            "usage back to zero", lambda: used(http, ns) == {"cpu": "0", "instances": "0"}
        )


async def test_a_quota_over_its_limit_deletes_nothing_and_refuses_creates(
    server: ApiServer, ns: str
) -> None:
    http = server.http()
    instances = f"{V1}/namespaces/{ns}/instances"
    for name in ("a", "b", "c"):
        assert http.post(instances, instance(name, "1")).status == 201
    # No controller runs: admission counts the Instances itself for a quota not yet counted.
    assert http.post(f"{V1}/namespaces/{ns}/resourcequotas", quota("team-a", cpu="2")).status == 201
    refused = http.post(instances, instance("d", "1"))
    assert refused.status == 403
    assert "requested cpu=1, used cpu=3, limited cpu=2" in refused.json["message"]
    assert len(http.get(instances).json["items"]) == 3
    assert http.post(instances, instance("free")).status == 201  # asks for no cpu


async def _create(client: KeelClient, ns: str, name: str, cpu: str) -> str:
    from keel.api.resources import Instance, InstanceSpec, ObjectMeta, ResourceList

    obj = Instance(
        metadata=ObjectMeta(name=name, namespace=ns),
        spec=InstanceSpec(command=["sleep", "1"], resources=ResourceList(cpu=cpu)),
    )
    try:
        await client.create(obj)
    except Forbidden as exc:
        assert "exceeded quota" in exc.message
        return "refused"
    return "created"


async def test_concurrent_creates_never_exceed_the_quota_together(
    server: ApiServer, ns: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """60 creates at once (on etcd through two API servers), no controller running: the
    admission ledger alone keeps them within the quota, and ends equal to what exists."""
    http = server.http()
    hard = {"cpu": "3", "instances": "10"}
    assert http.post(f"{V1}/namespaces/{ns}/resourcequotas", quota("team-a", **hard)).status == 201
    servers = [server]
    if server.store:  # etcd: a second API server over the same store
        servers.append(
            ApiServer(tmp_path / "second", store=server.store, token_file=server.token_file).start()
        )
    rng = random.Random(7)
    sizes = [f"{rng.choice([100, 200, 250, 400, 700])}m" for _ in range(60)]
    clients = [s.client("admin") for s in servers for _ in range(3)]
    try:
        outcomes = await asyncio.gather(
            *(_create(clients[i % len(clients)], ns, f"i{i}", cpu) for i, cpu in enumerate(sizes))
        )
    finally:
        for client in clients:
            await client.close()
        for extra in servers[1:]:
            extra.stop()
    items = http.get(f"{V1}/namespaces/{ns}/instances").json["items"]
    total = sum(parse_cpu(i["spec"]["resources"]["cpu"]) for i in items)
    assert outcomes.count("created") == len(items)
    assert 1 <= len(items) <= 10
    assert total <= 3000
    assert used(http, ns) == {"cpu": f"{total}m" if total % 1000 else str(total // 1000),
                              "instances": str(len(items))}  # fmt: skip
    assert "refused" in outcomes  # 60 creates of 100m-700m cannot all fit


async def test_an_idle_quota_writes_nothing(server: ApiServer, ns: str) -> None:
    http = server.http()
    assert http.post(f"{V1}/namespaces/{ns}/resourcequotas", quota("team-a", cpu="2")).status == 201
    assert http.post(f"{V1}/namespaces/{ns}/instances", instance("a", "1")).status == 201
    async with controllers(server, ["quota"], resync=0.5):
        await wait_for_async("usage counted", lambda: used(http, ns) == {"cpu": "1"})
        before = store_writes(http)
        await asyncio.sleep(2.5)  # several resyncs of every cached quota and Instance
        after = store_writes(http)
    assert {k: v for k, v in after.items() if k[0] == "ResourceQuota"} == {
        k: v for k, v in before.items() if k[0] == "ResourceQuota"
    }
    assert sum(after.values()) == sum(before.values())


async def test_a_deployment_over_quota_reports_failed_create_and_stops_at_the_limit(
    server: ApiServer, ns: str
) -> None:
    http = server.http()
    assert (
        http.post(f"{V1}/namespaces/{ns}/resourcequotas", quota("team-a", instances="3")).status
        == 201
    )
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 5, "template": {"spec": {"command": ["sleep", "1"]}}},
    }
    assert http.post(f"{V1}/namespaces/{ns}/deployments", deployment).status == 201
    path = f"{V1}/namespaces/{ns}/instances"
    async with controllers(server, ["deployment", "quota"]) as runner:
        async with server.client("viewer") as viewer:

            async def failed_create() -> list[dict[str, Any]]:
                events = await viewer.events(ns, "web")
                return [e for e in events if e.get("reason") == "FailedCreate"]

            events = await wait_for_async("a FailedCreate event", failed_create)
        assert events[0]["type"] == "Warning"
        assert (
            'exceeded quota "team-a": requested instances=1, used instances=3'
            in (events[0]["message"])
        )
        assert len(http.get(path).json["items"]) == 3
        errors = runner.metrics["deployment"].errors
        await asyncio.sleep(2.0)
        assert len(http.get(path).json["items"]) == 3  # stopped at the limit
        assert runner.metrics["deployment"].errors - errors < 15  # backs off, no hot loop

        # Raising the limit brings the Deployment back (a quota change wakes it up).
        patch = {"spec": {"hard": {"instances": "5"}}}
        merged = http.patch(f"{V1}/namespaces/{ns}/resourcequotas/team-a", patch, MERGE)
        assert merged.status == 200
        await wait_for_async(
            "5 instances", lambda: len(http.get(path).json["items"]) == 5, timeout=10
        )
