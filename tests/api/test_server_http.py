"""The HTTP API of DESIGN.md section 4 against a real `keel apiserver` process on sqlite."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_objects import deployment, instance, lease, store_writes
from support import ApiServer, HttpClient

MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"
JSON = "application/json"
V1 = "/apis/keel.dev/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver")) as api:
        yield api


@pytest.fixture
def admin(server: ApiServer) -> HttpClient:
    return server.http("admin")


@pytest.fixture
def ns(admin: HttpClient) -> str:
    """A fresh namespace per test, so tests sharing the server do not see each other."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    created = admin.post(f"{V1}/namespaces", {"metadata": {"name": name}})
    assert created.status == 201, created.body
    return name


def deployments(ns: str, name: str = "") -> str:
    return f"{V1}/namespaces/{ns}/deployments" + (f"/{name}" if name else "")


# ------------------------------------------------------------------------- discovery


def test_health_version_and_readiness_need_no_token(server: ApiServer) -> None:
    anonymous = server.http(None)
    assert anonymous.get("/healthz").status == 200
    assert anonymous.get("/readyz").status == 200
    version = anonymous.get("/version")
    assert version.status == 200
    assert version.json["gitVersion"].startswith("v")


def test_discovery_lists_groups_kinds_and_subresources(admin: HttpClient) -> None:
    assert admin.get("/api").json["kind"] == "APIVersions"
    groups = admin.get("/apis").json
    assert groups["kind"] == "APIGroupList"
    assert {g["name"] for g in groups["groups"]} >= {"keel.dev", "telemetry.keel.dev"}
    resources = admin.get(V1).json
    assert resources["kind"] == "APIResourceList"
    assert resources["groupVersion"] == "keel.dev/v1"
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["deployments"]["kind"] == "Deployment"
    assert by_name["deployments"]["namespaced"] is True
    assert by_name["deployments"]["singularName"] == "deployment"
    assert "deploy" in by_name["deployments"]["shortNames"]
    assert "watch" in by_name["deployments"]["verbs"]
    assert by_name["nodes"]["namespaced"] is False
    assert {"deployments/status", "instances/binding", "leases/renew"} <= set(by_name)


def test_metrics_are_prometheus_text(admin: HttpClient) -> None:
    admin.get(f"{V1}/namespaces/default")
    metrics = admin.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.body.decode()
    assert "keel_store_writes_total" in text
    assert "keel_api_request_duration_seconds_bucket" in text


def test_openapi_document_describes_the_paths(admin: HttpClient) -> None:
    index = admin.get("/openapi/v3").json["paths"]
    doc = admin.get(index["apis/keel.dev/v1"]["serverRelativeURL"])
    assert doc.status == 200
    assert doc.json["openapi"].startswith("3.")
    assert any("/deployments" in path for path in doc.json["paths"])


def test_unknown_path_is_a_404_status(admin: HttpClient) -> None:
    for path in (f"{V1}/widgets", "/nope", f"{V1}/namespaces/default/deployments/a/b/c"):
        answer = admin.get(path)
        assert answer.status == 404
        assert answer.json["kind"] == "Status"
        assert answer.json["reason"] == "NotFound"


# ------------------------------------------------------------------------- authn / authz


def test_requests_without_a_valid_token_are_401(server: ApiServer) -> None:
    for client in (server.http(None), HttpClient(server.url, "not-a-token", server.ssl_context)):
        answer = client.get(f"{V1}/namespaces")
        assert answer.status == 401
        assert answer.json["reason"] == "Unauthorized"


def test_viewer_reads_but_cannot_write_403(server: ApiServer, ns: str) -> None:
    viewer = server.http("viewer")
    assert viewer.get(deployments(ns)).status == 200
    answer = viewer.post(deployments(ns), deployment("web"))
    assert answer.status == 403
    assert answer.json["reason"] == "Forbidden"


def test_controller_may_not_bind_but_scheduler_may(server: ApiServer, ns: str) -> None:
    admin = server.http("admin")
    assert admin.post(f"{V1}/namespaces/{ns}/instances", instance("i1")).status == 201
    binding = {"target": {"name": "node-a"}}
    path = f"{V1}/namespaces/{ns}/instances/i1/binding"
    assert server.http("controller").post(path, binding).status == 403
    assert server.http("scheduler").post(path, binding).status == 201


# ------------------------------------------------------------------------- create / get


def test_create_fills_identity_and_get_returns_it(admin: HttpClient, ns: str) -> None:
    created = admin.post(deployments(ns), deployment("web", 2, app="web"))
    assert created.status == 201, created.body
    obj = created.json
    assert obj["apiVersion"] == "keel.dev/v1"
    assert obj["kind"] == "Deployment"
    meta = obj["metadata"]
    assert meta["namespace"] == ns
    assert meta["uid"]
    assert meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    got = admin.get(deployments(ns, "web"))
    assert got.status == 200
    assert got.json["metadata"] == meta
    assert got.json["spec"]["replicas"] == 2


def test_creating_an_existing_name_is_409_already_exists(admin: HttpClient, ns: str) -> None:
    assert admin.post(deployments(ns), deployment("web")).status == 201
    again = admin.post(deployments(ns), deployment("web"))
    assert again.status == 409
    assert again.json["reason"] == "AlreadyExists"


def test_creating_in_a_missing_namespace_is_404(admin: HttpClient) -> None:
    answer = admin.post(deployments("no-such-ns"), deployment("web"))
    assert answer.status == 404
    assert answer.json["reason"] == "NotFound"
    assert "namespaces" in answer.json["message"]


def test_get_of_a_missing_object_is_404(admin: HttpClient, ns: str) -> None:
    answer = admin.get(deployments(ns, "ghost"))
    assert answer.status == 404
    assert answer.json["reason"] == "NotFound"
    assert answer.json["details"]["name"] == "ghost"


def test_generate_name_gives_unique_names(admin: HttpClient, ns: str) -> None:
    body = deployment("")
    body["metadata"] = {"generateName": "web-"}
    names = {admin.post(deployments(ns), body).json["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(n.startswith("web-") and len(n) > 4 for n in names)
    body["metadata"] = {"generateName": "Web_"}
    bad = admin.post(deployments(ns), body)
    assert bad.status == 422
    assert bad.json["details"]["causes"][0]["field"] == "metadata.generateName"


def test_system_namespaces_exist_from_the_start(admin: HttpClient) -> None:
    names = {n["metadata"]["name"] for n in admin.get(f"{V1}/namespaces").json["items"]}
    assert {"default", "keel-system", "keel-node-lease"} <= names


# ------------------------------------------------------------------------- validation


def test_unknown_field_is_422_naming_its_path(admin: HttpClient, ns: str) -> None:
    body = deployment("web")
    body["spec"]["replicaz"] = 3
    answer = admin.post(deployments(ns), body)
    assert answer.status == 422
    assert answer.json["reason"] == "Invalid"
    assert [c["field"] for c in answer.json["details"]["causes"]] == ["spec.replicaz"]
    assert admin.get(deployments(ns, "web")).status == 404


def test_ill_typed_field_is_422_naming_its_path(admin: HttpClient, ns: str) -> None:
    body = deployment("web")
    body["spec"]["replicas"] = "three"
    answer = admin.post(deployments(ns), body)
    assert answer.status == 422
    assert answer.json["details"]["causes"][0]["field"] == "spec.replicas"


def test_nested_field_errors_name_the_full_path(admin: HttpClient, ns: str) -> None:
    body = deployment("web")
    body["spec"]["template"]["spec"]["ports"] = [{"name": "Bad_Name"}]
    answer = admin.post(deployments(ns), body)
    assert answer.status == 422
    assert answer.json["details"]["causes"][0]["field"] == "spec.template.spec.ports[0].name"
    body = deployment("web")
    del body["spec"]["template"]
    missing = admin.post(deployments(ns), body)
    assert missing.status == 422
    assert missing.json["details"]["causes"][0]["field"] == "spec.template"


def test_body_identity_mismatching_the_url_is_400(admin: HttpClient, ns: str) -> None:
    wrong_kind = deployment("web")
    wrong_kind["kind"] = "Service"
    wrong_ns = deployment("web")
    wrong_ns["metadata"]["namespace"] = "elsewhere"
    wrong_version = deployment("web")
    wrong_version["apiVersion"] = "apps/v1"
    for body in (wrong_kind, wrong_ns, wrong_version):
        answer = admin.post(deployments(ns), body)
        assert answer.status == 400, body
        assert answer.json["reason"] == "BadRequest"
    assert admin.post(deployments(ns), deployment("web")).status == 201
    renamed = admin.put(deployments(ns, "web"), deployment("other"))
    assert renamed.status == 400


def test_malformed_json_is_400(admin: HttpClient, ns: str) -> None:
    answer = admin.post(deployments(ns), None, raw=b'{"metadata": ')
    assert answer.status == 400
    assert answer.json["reason"] == "BadRequest"


def test_object_over_the_size_limit_is_413_and_nothing_is_stored(
    admin: HttpClient, ns: str
) -> None:
    body = deployment("big")
    body["metadata"]["annotations"] = {"blob": "x" * (1024 * 1024 + 10)}
    answer = admin.post(deployments(ns), body)
    assert answer.status == 413
    assert answer.json["reason"] == "RequestEntityTooLarge"
    assert admin.get(deployments(ns, "big")).status == 404
    assert admin.post(deployments(ns), deployment("big")).status == 201
    grown = admin.patch(
        deployments(ns, "big"), {"metadata": {"annotations": {"blob": "y" * (1024 * 1024)}}}, MERGE
    )
    assert grown.status == 413
    assert "annotations" not in admin.get(deployments(ns, "big")).json["metadata"]


DEEP = 100_000  # levels: far past Python's recursion limit
TOO_DEEP = "nests deeper than 100 levels"


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_in(body: dict[str, Any], field: str, depth: int) -> bytes:
    """`body` as JSON with `field` (top level) set to `depth` objects, one inside the next."""
    deep = b'{"a":' * depth + b"1" + b"}" * depth
    encoded = json.dumps({**body, field: "DEEP"}).encode()
    return encoded.replace(b'"DEEP"', deep)


def test_a_body_nesting_too_deep_is_400_on_every_write_and_nothing_is_stored(
    server: ApiServer, admin: HttpClient, ns: str
) -> None:
    instances = f"{V1}/namespaces/{ns}/instances"
    leases = f"{V1}/namespaces/{ns}/leases"
    assert admin.post(deployments(ns), deployment("web")).status == 201
    assert admin.post(instances, instance("i1")).status == 201
    assert admin.post(leases, lease("l1", "me")).status == 201
    before = store_writes(admin)
    web = admin.get(deployments(ns, "web")).json
    deep_web = nested_in(web, "spec", DEEP)
    beat = "/apis/telemetry.keel.dev/v1/nodeheartbeats/node-deep"
    writes = [
        ("POST", deployments(ns), nested_arrays(DEEP), JSON),
        ("POST", deployments(ns), nested_in(deployment("deep"), "spec", DEEP), JSON),
        ("PUT", deployments(ns, "web"), deep_web, JSON),
        ("PUT", deployments(ns, "web") + "/status", nested_in(web, "status", DEEP), JSON),
        ("PATCH", deployments(ns, "web"), nested_in({}, "spec", DEEP), MERGE),
        ("PATCH", deployments(ns, "web"), nested_arrays(DEEP), JSONPATCH),
        ("PATCH", deployments(ns, "web") + "/status", nested_in({}, "status", DEEP), MERGE),
        ("DELETE", deployments(ns, "web"), nested_in({}, "preconditions", DEEP), JSON),
        ("POST", f"{instances}/i1/binding", nested_in({}, "target", DEEP), JSON),
        ("POST", f"{leases}/l1/renew", nested_in({}, "holderIdentity", DEEP), JSON),
        ("PUT", beat, nested_in({"node": "node-deep"}, "cpuUsage", DEEP), JSON),
    ]
    answers = [
        (method, path, admin.request(method, path, raw=body, content_type=content_type))
        for method, path, body, content_type in writes
    ]
    assert [(m, p, a.status) for m, p, a in answers] == [(m, p, 400) for m, p, _ in answers]
    for _, _, answer in answers:
        assert answer.json["kind"] == "Status"
        assert answer.json["reason"] == "BadRequest"
        assert TOO_DEEP in answer.json["message"], answer.json
    assert store_writes(admin) == before
    assert admin.get(deployments(ns, "deep")).status == 404
    assert admin.get(deployments(ns, "web")).json == web
    assert admin.get(f"{instances}/i1").json["spec"]["nodeName"] == ""
    assert admin.get(beat).status == 404
    # and the server still serves
    assert server.http(None).get("/readyz").status == 200
    assert admin.post(deployments(ns), deployment("after")).status == 201


def test_the_depth_limit_holds_for_bodies_that_would_decode(admin: HttpClient, ns: str) -> None:
    """101 levels would not exhaust the stack; they are refused all the same, while 100
    levels reach validation (and its 422 naming the field)."""
    over = admin.post(deployments(ns), None, raw=nested_in(deployment("d"), "spec", 100))
    assert over.status == 400
    assert TOO_DEEP in over.json["message"]
    at = admin.post(deployments(ns), None, raw=nested_in(deployment("d"), "spec", 99))
    assert at.status == 422, at.body[:300]
    assert at.json["details"]["causes"][0]["field"] == "spec.a"
    quoted = deployment("quoted")
    quoted["metadata"]["annotations"] = {"brackets": "[{" * 1000}
    assert admin.post(deployments(ns), quoted).status == 201


def test_a_json_patch_cannot_nest_a_service_status_past_the_limit(
    admin: HttpClient, ns: str
) -> None:
    services = f"{V1}/namespaces/{ns}/services"
    assert admin.post(services, {"metadata": {"name": "s"}, "spec": {}}).status == 201
    value = json.loads(b'{"a":' * 60 + b"1" + b"}" * 60)
    first = [{"op": "add", "path": "/status/x", "value": value}]
    assert admin.patch(f"{services}/s/status", first, JSONPATCH).status == 200
    stored = admin.get(f"{services}/s").json
    deeper = [{"op": "add", "path": "/status/x" + "/a" * 59, "value": value}]
    answer = admin.patch(f"{services}/s/status", deeper, JSONPATCH)
    assert answer.status == 422, answer.body[:300]
    assert "the patched object nests deeper than 100 levels" in answer.json["message"]
    assert admin.get(f"{services}/s").json == stored


# ------------------------------------------------------------------------- update / OCC


def test_update_with_a_stale_resource_version_is_409_conflict(admin: HttpClient, ns: str) -> None:
    first = admin.post(deployments(ns), deployment("web", 2)).json
    body = dict(first, spec=dict(first["spec"], replicas=5))
    assert admin.put(deployments(ns, "web"), body).status == 200
    stale = dict(first, spec=dict(first["spec"], replicas=3))
    answer = admin.put(deployments(ns, "web"), stale)
    assert answer.status == 409
    assert answer.json["reason"] == "Conflict"
    assert admin.get(deployments(ns, "web")).json["spec"]["replicas"] == 5


def test_generation_rises_on_spec_changes_only(admin: HttpClient, ns: str) -> None:
    created = admin.post(deployments(ns), deployment("web", 2)).json
    labelled = admin.patch(deployments(ns, "web"), {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert labelled.json["metadata"]["generation"] == 1
    scaled = admin.patch(deployments(ns, "web"), {"spec": {"replicas": 4}}, MERGE)
    assert scaled.json["metadata"]["generation"] == 2
    status = admin.patch(
        deployments(ns, "web") + "/status", {"status": {"readyReplicas": 4}}, MERGE
    )
    assert status.json["metadata"]["generation"] == 2
    assert status.json["metadata"]["uid"] == created["metadata"]["uid"]


def test_status_subresource_changes_only_status(admin: HttpClient, ns: str) -> None:
    obj = admin.post(deployments(ns), deployment("web", 2)).json
    obj["spec"]["replicas"] = 9
    obj["status"] = {"readyReplicas": 1, "observedGeneration": 1}
    updated = admin.put(deployments(ns, "web") + "/status", obj)
    assert updated.status == 200, updated.body
    assert updated.json["spec"]["replicas"] == 2
    assert updated.json["status"]["readyReplicas"] == 1
    # and the main resource ignores status
    obj = updated.json
    obj["status"] = {"readyReplicas": 7}
    obj["spec"]["replicas"] = 2
    main = admin.put(deployments(ns, "web"), obj).json
    assert main["status"]["readyReplicas"] == 1
    assert main["spec"]["replicas"] == 2


def test_update_of_a_missing_object_is_404(admin: HttpClient, ns: str) -> None:
    assert admin.put(deployments(ns, "ghost"), deployment("ghost")).status == 404


def test_an_update_changing_nothing_writes_nothing(admin: HttpClient, ns: str) -> None:
    obj = admin.post(deployments(ns), deployment("web")).json
    again = admin.put(deployments(ns, "web"), obj)
    assert again.status == 200
    assert again.json["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


# ------------------------------------------------------------------------- patch


def test_merge_patch_merges_and_null_removes(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web", 1, app="web", tier="front"))
    patched = admin.patch(
        deployments(ns, "web"), {"metadata": {"labels": {"tier": None, "x": "y"}}}, MERGE
    )
    assert patched.status == 200
    assert patched.json["metadata"]["labels"] == {"app": "web", "x": "y"}


def test_json_patch_applies_each_operation(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web", 1, app="web"))
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/metadata/labels/tier", "value": "db"},
        {"op": "copy", "from": "/metadata/labels/tier", "path": "/metadata/labels/copy"},
        {"op": "move", "from": "/metadata/labels/copy", "path": "/metadata/labels/moved"},
        {"op": "remove", "path": "/metadata/labels/app"},
    ]
    patched = admin.patch(deployments(ns, "web"), ops, JSONPATCH)
    assert patched.status == 200, patched.body
    assert patched.json["spec"]["replicas"] == 3
    assert patched.json["metadata"]["labels"] == {"tier": "db", "moved": "db"}


def test_json_patch_failed_test_is_409_and_changes_nothing(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web", 2))
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "test", "path": "/spec/replicas", "value": 1},
    ]
    answer = admin.patch(deployments(ns, "web"), ops, JSONPATCH)
    assert answer.status == 409
    assert "/spec/replicas" in answer.json["message"]
    assert admin.get(deployments(ns, "web")).json["spec"]["replicas"] == 2


def test_json_patch_errors_are_422_naming_the_operation(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web", 2))
    answer = admin.patch(
        deployments(ns, "web"), [{"op": "remove", "path": "/spec/nothing"}], JSONPATCH
    )
    assert answer.status == 422
    assert "operation 0" in answer.json["message"]
    assert "/spec/nothing" in answer.json["message"]
    typed = admin.patch(
        deployments(ns, "web"),
        [{"op": "replace", "path": "/spec/replicas", "value": "x"}],
        JSONPATCH,
    )
    assert typed.status == 422
    assert typed.json["details"]["causes"][0]["field"] == "spec.replicas"


def test_patch_with_another_content_type_is_415(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web"))
    for content_type in ("application/json", "application/strategic-merge-patch+json"):
        answer = admin.patch(deployments(ns, "web"), {"spec": {"replicas": 2}}, content_type)
        assert answer.status == 415
        assert answer.json["reason"] == "UnsupportedMediaType"


# ------------------------------------------------------------------------- list


def test_label_selectors_filter_lists(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("a", app="web", tier="front"))
    admin.post(deployments(ns), deployment("b", app="web", tier="back"))
    admin.post(deployments(ns), deployment("c", app="db"))

    def names(selector: str) -> list[str]:
        answer = admin.get(deployments(ns) + "?labelSelector=" + selector.replace(" ", "%20"))
        assert answer.status == 200, answer.body
        return [i["metadata"]["name"] for i in answer.json["items"]]

    assert names("app=web") == ["a", "b"]
    assert names("app==web,tier!=front") == ["b"]
    assert names("tier in (front,back)") == ["a", "b"]
    assert names("app notin (web)") == ["c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]


def test_field_selectors_filter_lists(admin: HttpClient, ns: str) -> None:
    instances = f"{V1}/namespaces/{ns}/instances"
    admin.post(instances, instance("i1", node="n1"))
    admin.post(instances, instance("i2", node="n2"))
    admin.post(instances, instance("i3"))
    on_n1 = admin.get(instances + "?fieldSelector=spec.nodeName=n1").json["items"]
    assert [i["metadata"]["name"] for i in on_n1] == ["i1"]
    unbound = admin.get(instances + "?fieldSelector=spec.nodeName==").json["items"]
    assert [i["metadata"]["name"] for i in unbound] == ["i3"]
    named = admin.get(instances + "?fieldSelector=metadata.name!=i1,status.phase=Pending")
    assert [i["metadata"]["name"] for i in named.json["items"]] == ["i2", "i3"]


def test_a_bad_selector_is_400_saying_why(admin: HttpClient, ns: str) -> None:
    for query in ("labelSelector=app%20in%20(a", "labelSelector=a%20b", "fieldSelector=spec.foo=1"):
        answer = admin.get(deployments(ns) + "?" + query)
        assert answer.status == 400, query
        assert answer.json["reason"] == "BadRequest"
        assert answer.json["message"]


def test_list_pages_with_limit_and_continue_form_one_snapshot(admin: HttpClient, ns: str) -> None:
    for i in range(7):
        admin.post(deployments(ns), deployment(f"d{i}"))
    first = admin.get(deployments(ns) + "?limit=3").json
    revision = first["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in first["items"]] == ["d0", "d1", "d2"]
    assert first["metadata"]["remainingItemCount"] == 4
    # changes after the first page are not seen by the following pages
    admin.delete(deployments(ns, "d5"))
    admin.post(deployments(ns), deployment("d9"))
    seen = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        page = admin.get(deployments(ns) + f"?limit=3&continue={token}").json
        assert page["metadata"]["resourceVersion"] == revision
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue", "")
    assert seen == [f"d{i}" for i in range(7)]


def test_a_garbled_continue_token_is_400(admin: HttpClient, ns: str) -> None:
    assert admin.get(deployments(ns) + "?limit=1&continue=garbage!").status == 400


def test_lists_carry_a_resource_version_and_all_namespaces(admin: HttpClient, ns: str) -> None:
    created = admin.post(deployments(ns), deployment("web")).json
    listed = admin.get(f"{V1}/deployments").json
    assert listed["kind"] == "DeploymentList"
    assert int(listed["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])
    assert any(i["metadata"]["namespace"] == ns for i in listed["items"])


# ------------------------------------------------------------------------- delete


def test_delete_removes_the_object(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web"))
    assert admin.delete(deployments(ns, "web")).status == 200
    assert admin.get(deployments(ns, "web")).status == 404
    assert admin.delete(deployments(ns, "web")).status == 404


def test_delete_with_finalizers_marks_and_waits_for_them(admin: HttpClient, ns: str) -> None:
    body = deployment("web")
    body["metadata"]["finalizers"] = ["keel.dev/cleanup"]
    body["metadata"]["ownerReferences"] = [
        {"apiVersion": "keel.dev/v1", "kind": "Service", "name": "owner", "uid": "u-1"}
    ]
    admin.post(deployments(ns), body)
    marked = admin.delete(deployments(ns, "web"))
    assert marked.status == 200
    assert marked.json["metadata"]["deletionTimestamp"]
    kept = admin.get(deployments(ns, "web")).json
    assert kept["metadata"]["deletionTimestamp"] == marked.json["metadata"]["deletionTimestamp"]
    assert kept["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    # a second DELETE changes nothing
    assert admin.delete(deployments(ns, "web")).json["metadata"]["deletionTimestamp"]
    emptied = admin.patch(deployments(ns, "web"), {"metadata": {"finalizers": None}}, MERGE)
    assert emptied.status == 200
    assert admin.get(deployments(ns, "web")).status == 404


def test_no_object_can_be_created_in_a_namespace_being_deleted(admin: HttpClient) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin.post(f"{V1}/namespaces", {"metadata": {"name": name, "finalizers": ["keel.dev/x"]}})
    assert admin.post(deployments(name), deployment("before")).status == 201
    assert admin.delete(f"{V1}/namespaces/{name}").status == 200  # marked, finalizer pending
    refused = admin.post(deployments(name), deployment("after"))
    assert refused.status == 403
    assert "being deleted" in refused.json["message"]
    assert admin.get(deployments(name, "after")).status == 404
    assert admin.get(deployments(name, "before")).status == 200


def test_delete_preconditions_on_uid_and_resource_version(admin: HttpClient, ns: str) -> None:
    obj = admin.post(deployments(ns), deployment("web")).json
    meta = obj["metadata"]
    wrong_uid = admin.delete(deployments(ns, "web"), {"preconditions": {"uid": "other"}})
    assert wrong_uid.status == 409
    admin.patch(deployments(ns, "web"), {"spec": {"replicas": 3}}, MERGE)
    stale = admin.delete(
        deployments(ns, "web"), {"preconditions": {"resourceVersion": meta["resourceVersion"]}}
    )
    assert stale.status == 409
    assert stale.json["reason"] == "Conflict"
    ok = admin.delete(deployments(ns, "web"), {"preconditions": {"uid": meta["uid"]}})
    assert ok.status == 200
    assert admin.get(deployments(ns, "web")).status == 404


# ------------------------------------------------------------------------- binding


def test_binding_sets_the_node_once(admin: HttpClient, ns: str) -> None:
    instances = f"{V1}/namespaces/{ns}/instances"
    admin.post(instances, instance("i1"))
    bound = admin.post(f"{instances}/i1/binding", {"target": {"name": "node-a"}})
    assert bound.status == 201, bound.body
    assert bound.json["spec"]["nodeName"] == "node-a"
    again = admin.post(f"{instances}/i1/binding", {"target": {"name": "node-b"}})
    assert again.status == 409
    assert again.json["reason"] == "Conflict"
    assert admin.get(f"{instances}/i1").json["spec"]["nodeName"] == "node-a"


def test_binding_with_a_stale_resource_version_is_409(admin: HttpClient, ns: str) -> None:
    instances = f"{V1}/namespaces/{ns}/instances"
    created = admin.post(instances, instance("i1")).json
    admin.patch(f"{instances}/i1", {"metadata": {"labels": {"x": "y"}}}, MERGE)
    stale = admin.post(
        f"{instances}/i1/binding",
        {
            "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
            "target": {"name": "node-a"},
        },
    )
    assert stale.status == 409
    assert admin.get(f"{instances}/i1").json["spec"]["nodeName"] == ""


def test_node_name_changes_only_through_binding(admin: HttpClient, ns: str) -> None:
    instances = f"{V1}/namespaces/{ns}/instances"
    admin.post(instances, instance("i1", node="node-a"))
    answer = admin.patch(f"{instances}/i1", {"spec": {"nodeName": "node-b"}}, MERGE)
    assert answer.status == 422
    assert answer.json["details"]["causes"][0]["field"] == "spec.nodeName"


def test_binding_a_missing_instance_is_404(admin: HttpClient, ns: str) -> None:
    answer = admin.post(f"{V1}/namespaces/{ns}/instances/ghost/binding", {"target": {"name": "n"}})
    assert answer.status == 404


# ------------------------------------------------------------------------- writes counted


def test_store_writes_are_counted_per_kind_and_verb(admin: HttpClient, ns: str) -> None:
    before = store_writes(admin)
    admin.post(deployments(ns), deployment("web"))
    admin.patch(deployments(ns, "web"), {"spec": {"replicas": 2}}, MERGE)
    admin.delete(deployments(ns, "web"))
    after = store_writes(admin)

    def delta(verb: str) -> float:
        return after.get(("Deployment", verb), 0) - before.get(("Deployment", verb), 0)

    assert (delta("create"), delta("patch"), delta("delete")) == (1, 1, 1)


def test_reads_are_not_store_writes(admin: HttpClient, ns: str) -> None:
    admin.post(deployments(ns), deployment("web"))
    before = store_writes(admin)
    for _ in range(5):
        admin.get(deployments(ns, "web"))
        admin.get(deployments(ns))
    assert store_writes(admin) == before


# ------------------------------------------------------------------------- telemetry


def test_telemetry_is_served_from_memory_and_never_stored(
    server: ApiServer, admin: HttpClient
) -> None:
    before = store_writes(admin)
    beat = {
        "node": "node-7",
        "cpuUsage": "250m",
        "memoryUsage": "1Gi",
        "time": "2026-01-01T00:00:00Z",
    }
    path = "/apis/telemetry.keel.dev/v1/nodeheartbeats/node-7"
    assert admin.put(path, beat).status == 200
    assert admin.get(path).json["cpuUsage"] == "250m"
    listed = admin.get("/apis/telemetry.keel.dev/v1/nodeheartbeats").json["items"]
    assert any(item["node"] == "node-7" for item in listed)
    bad = admin.put(path, {"node": "node-7"})
    assert bad.status == 422
    assert server.http("viewer").put(path, beat).status == 403
    assert store_writes(admin) == before


def test_path_not_found_for_unknown_telemetry_kind(admin: HttpClient) -> None:
    assert admin.get("/apis/telemetry.keel.dev/v1/widgets").status == 404
