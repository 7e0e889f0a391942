"""Watches, leases and fencing through a real `keel apiserver` process on sqlite."""

from __future__ import annotations

import time
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_objects import deployment, lease, store_writes
from support import ApiServer, HttpClient, wait_for

V1 = "/apis/keel.dev/v1"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver-watch")) as api:
        yield api


@pytest.fixture
def admin(server: ApiServer) -> HttpClient:
    return server.http("admin")


@pytest.fixture
def ns(admin: HttpClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    assert admin.post(f"{V1}/namespaces", {"metadata": {"name": name}}).status == 201
    return name


def deployments(ns: str, name: str = "") -> str:
    return f"{V1}/namespaces/{ns}/deployments" + (f"/{name}" if name else "")


def leases(ns: str, name: str = "") -> str:
    return f"{V1}/namespaces/{ns}/leases" + (f"/{name}" if name else "")


def rv(obj: dict[str, object]) -> int:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return int(meta["resourceVersion"])


# ------------------------------------------------------------------------- watch


def test_watch_without_version_starts_with_current_objects_then_changes(
    admin: HttpClient, ns: str
) -> None:
    admin.post(deployments(ns), deployment("a"))
    admin.post(deployments(ns), deployment("b"))
    watch = admin.watch(deployments(ns) + "?watch=true")
    try:
        first = [watch.next(), watch.next()]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
        ]
        admin.patch(deployments(ns, "a"), {"spec": {"replicas": 3}}, MERGE)
        modified = watch.next()
        assert modified["type"] == "MODIFIED"
        assert modified["object"]["spec"]["replicas"] == 3
    finally:
        watch.close()


def test_watch_resumes_after_a_version_in_order_without_gaps(admin: HttpClient, ns: str) -> None:
    start = rv(admin.post(deployments(ns), deployment("a")).json)
    admin.patch(deployments(ns, "a"), {"spec": {"replicas": 4}}, MERGE)
    admin.post(deployments(ns), deployment("b"))
    deleted_at = rv(admin.delete(deployments(ns, "a")).json)
    watch = admin.watch(deployments(ns) + f"?watch=true&resourceVersion={start}")
    try:
        events = [watch.next() for _ in range(3)]
    finally:
        watch.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]
    versions = [rv(e["object"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > start
    assert versions[-1] == deleted_at
    # resuming from the middle gives exactly the rest
    again = admin.watch(deployments(ns) + f"?watch=true&resourceVersion={versions[1]}")
    try:
        rest = again.next()
    finally:
        again.close()
    assert (rest["type"], rv(rest["object"])) == ("DELETED", deleted_at)


def test_watch_from_a_version_older_than_history_says_410_expired(
    admin: HttpClient, ns: str
) -> None:
    watch = admin.watch(deployments(ns) + "?watch=true&resourceVersion=1")
    try:
        event = watch.next()
    except urllib.error.HTTPError as exc:  # a 410 response is as good as an ERROR event
        assert exc.code == 410
        return
    finally:
        watch.close()
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"


def test_label_selector_watch_sees_objects_leave_and_enter(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("a", app="web"))
    watch = admin.watch(deployments(ns) + "?watch=true&labelSelector=app%3Dweb")
    try:
        assert watch.next()["type"] == "ADDED"
        admin.post(deployments(ns), deployment("other", app="db"))
        admin.patch(deployments(ns, "a"), {"metadata": {"labels": {"app": "db"}}}, MERGE)
        left = watch.next()
        assert (left["type"], left["object"]["metadata"]["name"]) == ("DELETED", "a")
        admin.patch(deployments(ns, "a"), {"metadata": {"labels": {"app": "web"}}}, MERGE)
        entered = watch.next()
        assert (entered["type"], entered["object"]["metadata"]["name"]) == ("ADDED", "a")
    finally:
        watch.close()


def test_bookmarks_are_sent_when_allowed(admin: HttpClient, ns: str) -> None:
    created = rv(admin.post(deployments(ns), deployment("a")).json)
    watch = admin.watch(
        deployments(ns) + f"?watch=true&resourceVersion={created}&allowWatchBookmarks=true"
    )
    try:
        bookmark = watch.until(lambda e: e["type"] == "BOOKMARK", limit=10)
    finally:
        watch.close()
    assert rv(bookmark["object"]) >= created


def test_watch_ends_after_timeout_seconds(admin: HttpClient, ns: str) -> None:
    watch = admin.watch(deployments(ns) + "?watch=true&timeoutSeconds=1")
    started = time.monotonic()
    with pytest.raises(EOFError):
        watch.until(lambda e: False, limit=100)
    assert time.monotonic() - started < 10
    watch.close()


# ------------------------------------------------------------------------- leases


def test_acquiring_a_held_lease_is_409(admin: HttpClient, ns: str) -> None:
    held = admin.post(leases(ns), lease("leader", "a"))
    assert held.status == 201, held.body
    assert held.json["status"]["fencingToken"] == rv(held.json)
    assert held.json["status"]["acquireTime"]
    taken = admin.post(leases(ns), lease("leader", "b"))
    assert taken.status == 409
    assert taken.json["reason"] == "AlreadyExists"
    assert admin.get(leases(ns, "leader")).json["spec"]["holderIdentity"] == "a"


def test_fencing_token_rises_with_every_new_holder(admin: HttpClient, ns: str) -> None:
    first = admin.post(leases(ns), lease("leader", "a")).json["status"]["fencingToken"]
    assert admin.delete(leases(ns, "leader")).status == 200
    second = admin.post(leases(ns), lease("leader", "b"))
    assert second.status == 201  # deleting released the store lease at once
    assert second.json["status"]["fencingToken"] > first


def test_renewal_is_a_keepalive_not_a_store_write(admin: HttpClient, ns: str) -> None:
    token = admin.post(leases(ns), lease("leader", "a", 5)).json["status"]["fencingToken"]
    before = store_writes(admin)
    for _ in range(5):
        renewed = admin.post(
            leases(ns, "leader") + "/renew", {"holderIdentity": "a", "fencingToken": token}
        )
        assert renewed.status == 200, renewed.body
        assert renewed.json["status"]["fencingToken"] == token
    assert store_writes(admin) == before


def test_renewal_by_another_holder_or_token_is_409_and_of_a_lost_lease_404(
    admin: HttpClient, ns: str
) -> None:
    token = admin.post(leases(ns), lease("leader", "a")).json["status"]["fencingToken"]
    path = leases(ns, "leader") + "/renew"
    wrong_holder = admin.post(path, {"holderIdentity": "b", "fencingToken": token})
    assert wrong_holder.status == 409
    wrong_token = admin.post(path, {"holderIdentity": "a", "fencingToken": token - 1})
    assert wrong_token.status == 409
    admin.delete(leases(ns, "leader"))
    lost = admin.post(path, {"holderIdentity": "a", "fencingToken": token})
    assert lost.status == 404


def test_an_expired_lease_vanishes_with_a_deleted_event(admin: HttpClient, ns: str) -> None:
    created = admin.post(leases(ns), lease("short", "a", 2)).json
    watch = admin.watch(leases(ns) + f"?watch=true&resourceVersion={rv(created)}", timeout=15)
    try:
        event = watch.next()
    finally:
        watch.close()
    assert event["type"] == "DELETED"
    assert event["object"]["metadata"]["name"] == "short"
    wait_for("lease gone", lambda: admin.get(leases(ns, "short")).status == 404)
    # and it may be acquired again
    assert admin.post(leases(ns), lease("short", "b", 2)).status == 201


def test_changing_the_holder_by_update_is_refused(admin: HttpClient, ns: str) -> None:
    admin.post(leases(ns), lease("leader", "a"))
    answer = admin.patch(leases(ns, "leader"), {"spec": {"holderIdentity": "b"}}, MERGE)
    assert answer.status == 422
    assert answer.json["details"]["causes"][0]["field"] == "spec.holderIdentity"


def test_stale_fencing_token_is_rejected_after_a_new_holder(admin: HttpClient, ns: str) -> None:
    old = admin.post(leases(ns), lease("leader", "a")).json["status"]["fencingToken"]
    header = {"Keel-Fencing-Token": f"{ns}/leader={old}"}
    ok = admin.post(deployments(ns), deployment("by-a"), headers=header)
    assert ok.status == 201, ok.body
    admin.delete(leases(ns, "leader"))
    new = admin.post(leases(ns), lease("leader", "b")).json["status"]["fencingToken"]
    for attempt in (
        lambda: admin.post(deployments(ns), deployment("late"), headers=header),
        lambda: admin.patch(
            deployments(ns, "by-a"), {"spec": {"replicas": 9}}, MERGE, headers=header
        ),
        lambda: admin.delete(deployments(ns, "by-a"), headers=header),
    ):
        answer = attempt()
        assert answer.status == 409
        assert answer.json["reason"] == "FencingTokenRejected"
    assert admin.get(deployments(ns, "late")).status == 404
    assert admin.get(deployments(ns, "by-a")).json["spec"].get("replicas") != 9
    current = {"Keel-Fencing-Token": f"{ns}/leader={new}"}
    assert admin.delete(deployments(ns, "by-a"), headers=current).status == 200


def test_a_fencing_token_for_a_lease_nobody_holds_is_rejected(admin: HttpClient, ns: str) -> None:
    header = {"Keel-Fencing-Token": f"{ns}/nobody=7"}
    answer = admin.post(deployments(ns), deployment("x"), headers=header)
    assert answer.status == 409
    assert answer.json["reason"] == "FencingTokenRejected"


def test_a_malformed_fencing_header_is_400(admin: HttpClient, ns: str) -> None:
    for value in ("leader=3", f"{ns}/leader", f"{ns}/leader=abc"):
        answer = admin.post(deployments(ns), deployment("x"), headers={"Keel-Fencing-Token": value})
        assert answer.status == 400, value
        assert answer.json["reason"] == "BadRequest"


# ------------------------------------------------------------------------- admission


def test_a_client_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    extra = ("--admission-rate", "0.5", "--admission-burst", "3")
    with ApiServer(tmp_path, *extra) as server:
        admin = server.http("admin")
        answers = [admin.get(f"{V1}/namespaces") for _ in range(5)]
        limited = [a for a in answers if a.status == 429]
        assert limited, [a.status for a in answers]
        assert limited[0].json["reason"] == "TooManyRequests"
        assert int(limited[0].headers["retry-after"]) >= 1
        # other principals are not affected
        assert server.http("viewer").get(f"{V1}/namespaces").status == 200
