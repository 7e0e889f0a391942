"""Authorization by role through a real server: what a node agent may and may not write."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_objects import instance
from support import ApiServer

V1 = "/apis/keel.dev/v1"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver-roles"), nodes=["n1"]) as api:
        yield api


def node(name: str) -> dict[str, object]:
    return {"apiVersion": "keel.dev/v1", "kind": "Node", "metadata": {"name": name}}


def test_a_node_registers_only_itself(server: ApiServer) -> None:
    agent = server.http("node:n1")
    assert agent.post(f"{V1}/nodes", node("n1")).status == 201
    refused = agent.post(f"{V1}/nodes", node("n2"))
    assert refused.status == 403
    assert refused.json["reason"] == "Forbidden"
    status = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert agent.patch(f"{V1}/nodes/n1/status", status, MERGE).status == 200


def test_a_node_writes_status_only_of_instances_bound_to_it(server: ApiServer) -> None:
    admin, agent = server.http(), server.http("node:n1")
    instances = f"{V1}/namespaces/default/instances"
    admin.post(instances, instance("mine", node="n1"))
    admin.post(instances, instance("theirs", node="n2"))
    running_phase = {"status": {"phase": "Running"}}
    assert agent.patch(f"{instances}/mine/status", running_phase, MERGE).status == 200
    assert agent.patch(f"{instances}/theirs/status", running_phase, MERGE).status == 403
    assert agent.patch(f"{instances}/mine", {"spec": {"priority": 5}}, MERGE).status == 403
    assert admin.get(f"{instances}/mine").json["status"]["phase"] == "Running"


def test_a_node_holds_only_its_own_node_lease(server: ApiServer) -> None:
    agent = server.http("node:n1")
    leases = f"{V1}/namespaces/keel-node-lease/leases"
    body = {
        "metadata": {"name": "n1"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 10},
    }
    created = agent.post(leases, body)
    assert created.status == 201
    token = created.json["status"]["fencingToken"]
    renew = {"holderIdentity": "n1", "fencingToken": token}
    assert agent.post(f"{leases}/n1/renew", renew).status == 200
    other = dict(body, metadata={"name": "n2"})
    assert agent.post(leases, other).status == 403


def test_telemetry_a_node_sends_must_be_about_itself(server: ApiServer) -> None:
    agent = server.http("node:n1")
    beat = {"cpuUsage": "100m", "memoryUsage": "1Mi", "time": "2026-01-01T00:00:00Z"}
    base = "/apis/telemetry.keel.dev/v1/nodeheartbeats"
    assert agent.put(f"{base}/n1", {"node": "n1", **beat}).status == 200
    assert agent.put(f"{base}/n2", {"node": "n2", **beat}).status == 403
