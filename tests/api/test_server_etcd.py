"""Two `keel apiserver` processes over one 3-member etcd behave as one API server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api_objects import deployment, lease, store_writes
from support import ApiServer, wait_for

from keel.dev.etcd_cluster import EtcdCluster
from keel.store import open_store

pytestmark = pytest.mark.etcd

V1 = "/apis/keel.dev/v1"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def pair(
    etcd_cluster_3: EtcdCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiServer, ApiServer]]:
    with ApiServer(tmp_path_factory.mktemp("api-a"), store=etcd_cluster_3.url) as first:
        second = ApiServer(
            tmp_path_factory.mktemp("api-b"), store=etcd_cluster_3.url, token_file=first.token_file
        )
        with second:
            yield first, second


@pytest.fixture
def ns(pair: tuple[ApiServer, ApiServer]) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert pair[0].http().post(f"{V1}/namespaces", {"metadata": {"name": name}}).status == 201
    return name


def test_a_write_through_one_server_is_read_at_once_through_the_other(
    pair: tuple[ApiServer, ApiServer], ns: str
) -> None:
    a, b = pair[0].http(), pair[1].http()
    path = f"{V1}/namespaces/{ns}/deployments"
    created = a.post(path, deployment("web", 3))
    assert created.status == 201, created.body
    got = b.get(f"{path}/web")  # no polling: reads are at least as fresh as a quorum read
    assert got.status == 200
    assert got.json["metadata"]["resourceVersion"] == created.json["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in b.get(path).json["items"]] == ["web"]


def test_a_watch_on_one_server_sees_writes_through_the_other(
    pair: tuple[ApiServer, ApiServer], ns: str
) -> None:
    a, b = pair[0].http(), pair[1].http()
    path = f"{V1}/namespaces/{ns}/deployments"
    watch = b.watch(f"{path}?watch=true")
    try:
        a.post(path, deployment("web", 2))
        a.patch(f"{path}/web", {"spec": {"replicas": 5}}, MERGE)
        a.delete(f"{path}/web")
        events = [watch.next() for _ in range(3)]
    finally:
        watch.close()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_occ_holds_across_servers(pair: tuple[ApiServer, ApiServer], ns: str) -> None:
    a, b = pair[0].http(), pair[1].http()
    path = f"{V1}/namespaces/{ns}/deployments"
    first = a.post(path, deployment("web", 2)).json
    assert b.put(f"{path}/web", dict(first, spec=dict(first["spec"], replicas=4))).status == 200
    stale = a.put(f"{path}/web", dict(first, spec=dict(first["spec"], replicas=6)))
    assert stale.status == 409
    assert stale.json["reason"] == "Conflict"


def test_a_lease_held_through_one_server_is_held_for_the_other(
    pair: tuple[ApiServer, ApiServer], ns: str
) -> None:
    a, b = pair[0].http(), pair[1].http()
    path = f"{V1}/namespaces/{ns}/leases"
    token = a.post(path, lease("leader", "a", 2)).json["status"]["fencingToken"]
    assert b.post(path, lease("leader", "b")).status == 409
    before = store_writes(b)
    renewed = b.post(f"{path}/leader/renew", {"holderIdentity": "a", "fencingToken": token})
    assert renewed.status == 200
    assert store_writes(b) == before
    # once it expires (no more renewals) the other holder gets it, and a new token
    wait_for("lease expiry", lambda: b.post(path, lease("leader", "b")).status == 201, timeout=20)
    new = b.get(f"{path}/leader").json["status"]["fencingToken"]
    assert new > token
    late = a.post(
        f"{V1}/namespaces/{ns}/deployments",
        deployment("late"),
        headers={"Keel-Fencing-Token": f"{ns}/leader={token}"},
    )
    assert late.status == 409
    assert late.json["reason"] == "FencingTokenRejected"


def test_both_servers_share_the_system_namespaces(pair: tuple[ApiServer, ApiServer]) -> None:
    for server in pair:
        names = {n["metadata"]["name"] for n in server.http().get(f"{V1}/namespaces").json["items"]}
        assert {"default", "keel-system", "keel-node-lease"} <= names


def test_tokens_are_shared_when_the_file_is(pair: tuple[ApiServer, ApiServer]) -> None:
    _, second = pair
    assert not (second.state_dir / "tokens.csv").exists()  # no tokens of its own
    assert second.http("viewer").get(f"{V1}/namespaces").status == 200


def test_a_continue_token_older_than_the_compaction_is_410_expired(
    new_etcd_cluster: Callable[[int], EtcdCluster], tmp_path: Path
) -> None:
    cluster = new_etcd_cluster(1)
    with ApiServer(tmp_path, store=cluster.url) as server:
        admin = server.http()
        path = f"{V1}/namespaces/default/deployments"
        for i in range(3):
            admin.post(path, deployment(f"d{i}"))
        first = admin.get(f"{path}?limit=1").json
        admin.post(path, deployment("later"))

        async def compact() -> None:
            store = await open_store(cluster.url)
            try:
                await store.compact((await store.status()).revision)
            finally:
                await store.close()

        asyncio.run(compact())
        expired = admin.get(f"{path}?limit=1&continue={first['metadata']['continue']}")
        assert expired.status == 410
        assert expired.json["reason"] == "Expired"
        # a fresh list still works
        assert len(admin.get(path).json["items"]) == 4


def test_a_store_outage_is_503_or_504_saying_the_outcome_and_the_server_recovers(
    new_etcd_cluster: Callable[[int], EtcdCluster], tmp_path: Path
) -> None:
    cluster = new_etcd_cluster(1)
    with ApiServer(tmp_path, store=cluster.url + "?timeout=2") as server:
        admin = server.http()
        path = f"{V1}/namespaces/default/deployments"
        assert admin.post(path, deployment("before")).status == 201
        cluster.pause_member(0)
        try:
            answer = admin.post(path, deployment("during"))
        finally:
            cluster.resume_member(0)
        assert answer.status in (503, 504), answer.body
        assert answer.json["kind"] == "Status"
        if answer.status == 504:
            assert "outcome is unknown" in answer.json["message"]
        else:
            assert answer.json["reason"] == "ServiceUnavailable"
        # once etcd is back, so is the API, with the outcome visible to a read
        wait_for("recovery", lambda: admin.get(f"{path}/before").status == 200)
        during = admin.get(f"{path}/during").status
        assert during in (200, 404)
        assert admin.post(path, deployment("after")).status == 201
