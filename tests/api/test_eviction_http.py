"""The `eviction` subresource of Instances over HTTP, against a real `keel apiserver`: an
eviction deletes gracefully only within the owning Deployment's disruption budget, and
concurrent evictions cannot overdraw it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from api_objects import instance
from support import ApiServer, HttpClient

from keel.api.resources import Instance
from keel.client import Preconditions, TooManyRequests, is_budget_refusal

V1 = "/apis/keel.dev/v1"
MERGE = "application/merge-patch+json"
INSTANCES = f"{V1}/namespaces/default/instances"
READY = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver-eviction")) as api:
        yield api


def deploy(admin: HttpClient, name: str, replicas: int, max_unavailable: int) -> list[str]:
    """A Deployment and its `replicas` Instances, all Ready (no controller runs here)."""
    body = {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"command": ["sleep", "1"]}},
            "strategy": {"rollingUpdate": {"maxUnavailable": max_unavailable}},
        },
    }
    created = admin.post(f"{V1}/namespaces/default/deployments", body)
    assert created.status == 201, created.body
    owner = {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "name": name,
        "uid": created.json["metadata"]["uid"],
        "controller": True,
    }
    names = []
    for index in range(replicas):
        obj: dict[str, Any] = instance(f"{name}-{index}", node="n1")
        obj["metadata"]["ownerReferences"] = [owner]
        assert admin.post(INSTANCES, obj).status == 201
        assert admin.patch(f"{INSTANCES}/{name}-{index}/status", READY, MERGE).status == 200
        names.append(f"{name}-{index}")
    return names


def evict(client: HttpClient, name: str, body: Any = None) -> Any:
    return client.post(f"{INSTANCES}/{name}/eviction", body)


def test_an_eviction_within_the_budget_deletes_the_instance(server: ApiServer) -> None:
    admin = server.http()
    names = deploy(admin, "allowed", replicas=3, max_unavailable=1)
    answer = evict(admin, names[0], {"apiVersion": "keel.dev/v1", "kind": "Eviction"})
    assert answer.status == 201, answer.body
    assert answer.json["status"] == "Success"
    assert "within the disruption budget of deployment allowed" in answer.json["message"]
    assert admin.object(f"{INSTANCES}/{names[0]}") is None


def test_an_eviction_beyond_the_budget_is_refused_with_429_naming_it(server: ApiServer) -> None:
    admin = server.http()
    names = deploy(admin, "budget", replicas=3, max_unavailable=1)
    assert evict(admin, names[0]).status == 201
    refused = evict(admin, names[1])
    assert refused.status == 429
    assert refused.json["reason"] == "TooManyRequests"
    assert refused.json["message"] == (
        "would violate the disruption budget of deployment budget: "
        "2 of 3 available, at most 1 may be unavailable"
    )
    assert refused.headers.get("retry-after") == "2"
    assert admin.object(f"{INSTANCES}/{names[1]}") is not None  # nothing was done


def test_concurrent_evictions_cannot_overdraw_the_budget(server: ApiServer) -> None:
    admin = server.http()
    names = deploy(admin, "race", replicas=4, max_unavailable=1)
    with ThreadPoolExecutor(len(names)) as pool:
        codes = sorted(pool.map(lambda n: evict(admin, n).status, names))
    assert codes == [201, 429, 429, 429]
    left = [n for n in names if admin.object(f"{INSTANCES}/{n}") is not None]
    assert len(left) == 3


def test_an_instance_without_a_deployment_is_evicted_unchecked(server: ApiServer) -> None:
    admin = server.http()
    assert admin.post(INSTANCES, instance("loner", node="n1")).status == 201
    answer = evict(admin, "loner")
    assert answer.status == 201
    assert "no owning Deployment: no disruption budget checked" in answer.json["message"]


def test_an_exclusive_instance_is_evicted_gracefully_keeping_its_finalizer(
    server: ApiServer,
) -> None:
    admin = server.http()
    obj = instance("single", node="n1")
    obj["spec"]["exclusive"] = True
    assert admin.post(INSTANCES, obj).status == 201
    assert evict(admin, "single").status == 201
    marked = admin.object(f"{INSTANCES}/single")
    assert marked is not None  # waits for its agent to confirm the copy stopped
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["finalizers"] == ["keel.dev/stop-confirmed"]


def test_who_may_evict(server: ApiServer) -> None:
    admin = server.http()
    for name in ("by-viewer", "by-node", "by-controller", "by-scheduler"):
        assert admin.post(INSTANCES, instance(name, node="n1")).status == 201
    viewer = evict(server.http("viewer"), "by-viewer")
    assert viewer.status == 403
    assert viewer.json["reason"] == "Forbidden"
    assert evict(server.http("controller"), "by-controller").status == 201
    # the scheduler preempts lower-priority Instances through the same budget check
    assert evict(server.http("scheduler"), "by-scheduler").status == 201
    assert admin.object(f"{INSTANCES}/by-viewer") is not None


def test_evicting_what_is_not_there(server: ApiServer) -> None:
    admin = server.http()
    missing = evict(admin, "nowhere")
    assert missing.status == 404
    assert missing.json["reason"] == "NotFound"
    assert admin.get(f"{INSTANCES}/nowhere/eviction").status == 405
    assert admin.post(INSTANCES, instance("other-uid", node="n1")).status == 201
    stale = {"deleteOptions": {"preconditions": {"uid": "not-this-one"}}}
    assert evict(admin, "other-uid", stale).status == 409
    assert evict(admin, "other-uid", {"kind": "Binding"}).status == 400
    bad = evict(admin, "other-uid", {"deleteOptions": {"gracePeriod": 1}})
    assert bad.status == 422
    assert bad.json["details"]["causes"][0]["field"] == "deleteOptions.gracePeriod"


def test_the_client_raises_a_budget_refusal_at_once(server: ApiServer) -> None:
    names = deploy(server.http(), "client", replicas=2, max_unavailable=1)
    with server.sync_client() as client:
        first: Instance = client.get(Instance, names[0], namespace="default")
        status = client.evict(
            names[0], namespace="default", preconditions=Preconditions(uid=first.metadata.uid)
        )
        assert "evicted instance client-0" in status.message
        started = time.monotonic()
        with pytest.raises(TooManyRequests) as refused:
            client.evict(names[1], namespace="default")
        assert time.monotonic() - started < 1.5  # not retried behind the caller's back
        assert is_budget_refusal(refused.value)
        assert "1 of 2 available" in refused.value.message
