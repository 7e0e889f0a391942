"""What kubectl and other Kubernetes clients read from Keel, checked without I/O (pure parts)
and over real HTTP against an in-process API server: aggregated discovery, Tables with
`keel get`'s columns, the Deployment scale subresource, the core group's Namespaces and
Events, and OpenAPI v3 in Kubernetes' layout."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
from support import V1, ApiServer

from keel.api import core, discovery, protobuf, scale, tables
from keel.api.columns import TABLES, Extras
from keel.api.resources import Deployment, Node, StatusCause, StatusDetails
from keel.api.server import strict_decoding_error
from keel.api.storage import ApiError

KUBECTL_DISCOVERY_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
    "application/json"
)
KUBECTL_TABLE_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
    "g=meta.k8s.io,application/json"
)
DEPLOYMENT = {
    "apiVersion": "keel.dev/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"command": ["sleep", "9"]}},
    },
}


# --------------------------------------------------------------------------- pure


def test_accept_headers_choose_aggregated_discovery_and_tables_as_kubectl_sends_them() -> None:
    assert discovery.aggregated_version(KUBECTL_DISCOVERY_ACCEPT) == "v2"
    assert discovery.aggregated_version("application/json") is None
    assert discovery.aggregated_version("") is None
    assert tables.table_version(KUBECTL_TABLE_ACCEPT) == "v1"
    assert tables.table_version("application/json;as=Table;v=v1beta1;g=meta.k8s.io") == "v1beta1"
    # plain JSON first: the client prefers it
    plain_first = "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
    assert tables.table_version(plain_first) is None
    assert tables.table_version("application/json") is None


def test_aggregated_discovery_folds_subresources_into_their_resource() -> None:
    groups = discovery.aggregated_groups("v2")
    keel = next(g for g in groups["items"] if g["metadata"]["name"] == "keel.dev")
    resources = {r["resource"]: r for r in keel["versions"][0]["resources"]}
    deployments = resources["deployments"]
    assert deployments["scope"] == "Namespaced" and deployments["shortNames"] == ["deploy"]
    subs = {s["subresource"]: s for s in deployments["subresources"]}
    assert subs["scale"]["responseKind"] == {
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
    }
    assert "status" in subs
    # the core group owns "ns": keel.dev's Namespace does not repeat it
    assert "shortNames" not in resources["namespaces"]
    core_group = discovery.aggregated_core("v2")["items"][0]
    names = {r["resource"] for r in core_group["versions"][0]["resources"]}
    assert core_group["metadata"]["name"] == "" and names == {"namespaces", "events"}


def test_table_columns_are_keel_gets_with_wide_ones_at_priority_1() -> None:
    columns = tables.column_definitions("Node")
    table = TABLES["Node"]
    assert [c["name"].upper() for c in columns] == table.headers + table.wide_headers
    assert [c["priority"] for c in columns] == [0] * len(table.headers) + [1] * len(
        table.wide_headers
    )
    assert columns[0]["format"] == "name"
    node = msgspec.convert(
        {"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
         "spec": {"cluster": "c1", "capacity": {"cpu": "4", "memory": "8Gi"}}},
        Node,
    )  # fmt: skip
    now = datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC)
    body = tables.table("Node", [(node, None)], Extras(now=now))
    assert body["kind"] == "Table" and body["apiVersion"] == "meta.k8s.io/v1"
    row = body["rows"][0]
    assert row["cells"][:6] == ["n1", "c1", "Unknown", "4", "8Gi", "60s"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "n1"


def test_scale_of_a_deployment_and_back() -> None:
    deployment = msgspec.convert(DEPLOYMENT, Deployment)
    shown = scale.scale_of(deployment)
    assert shown["apiVersion"] == "autoscaling/v1" and shown["spec"] == {"replicas": 2}
    assert shown["status"]["selector"] == "app=web"
    wanted = msgspec.json.decode(
        b'{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"resourceVersion":"7"},'
        b'"spec":{"replicas":5}}',
        type=scale.Scale,
    )
    scaled = scale.scaled(deployment, wanted)
    assert scaled.spec.replicas == 5 and scaled.metadata.resource_version == "7"
    assert scale.check_identity(wanted, "web", "default") is None
    other = msgspec.structs.replace(wanted, kind="Deployment")
    assert "kind: expected Scale" in (scale.check_identity(other, "web", "default") or "")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"spec":{"replicas":-1}}', type=scale.Scale)


def test_events_take_the_core_shape_and_field_selectors() -> None:
    record = {
        "involvedObject": {"kind": "Instance", "name": "web-1", "namespace": "default"},
        "reason": "Started",
        "message": "pid 1",
        "type": "Normal",
        "time": "2026-01-01T00:00:00Z",
        "source": "agent",
        "node": "n1",
    }
    event = core.core_event(record)
    assert event["apiVersion"] == "v1" and event["kind"] == "Event"
    assert event["metadata"]["namespace"] == "default"
    assert event["involvedObject"]["apiVersion"] == "keel.dev/v1"
    assert core.core_event(record)["metadata"]["name"] == event["metadata"]["name"]  # stable
    assert core.event_filter("involvedObject.name=web-1,involvedObject.uid=x")(event)
    assert not core.event_filter("involvedObject.name=web-2")(event)
    assert core.event_filter("type!=Warning")(event)
    with pytest.raises(ValueError, match="fieldSelector"):
        core.event_filter("spec.bogus=1")
    now = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    row = core.event_table([event], now, "v1")["rows"][0]["cells"]
    assert row == ["30s", "Normal", "Started", "instance/web-1", "pid 1"]


def test_telemetry_lists_as_tables_name_their_rows() -> None:
    usage = {"instance": "web-1", "node": "n1", "cpu": "5m", "memory": "1Mi", "restarts": 2}
    body = tables.telemetry_table("instanceusages", [usage])
    assert [c["name"] for c in body["columnDefinitions"]] == [
        "Instance", "Node", "CPU", "Memory", "Restarts",
    ]  # fmt: skip
    assert body["rows"][0]["cells"] == ["web-1", "n1", "5m", "1Mi", "2"]
    assert body["rows"][0]["object"]["metadata"] == {"name": "web-1"}


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_a_protobuf_namespace_from_client_go_reads_as_json() -> None:
    meta = _field(1, b"team") + _field(11, _field(1, b"env") + _field(2, b"prod"))
    raw = _field(1, meta)
    type_meta = _field(1, b"v1") + _field(2, b"Namespace")
    body = protobuf.MAGIC + _field(1, type_meta) + _field(2, raw)
    assert protobuf.decode_namespace(body) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "labels": {"env": "prod"}},
    }
    with pytest.raises(ValueError, match="envelope"):
        protobuf.decode_namespace(b"{}")


def test_unknown_fields_under_strict_validation_read_as_kube_apiserver_says_them() -> None:
    cause = StatusCause(
        "spec.bogus", "Object contains unknown field `bogus`", "FieldValueNotSupported"
    )
    invalid = ApiError(
        422, "Invalid", "x", details=StatusDetails(kind="deployments", causes=[cause])
    )
    strict = strict_decoding_error("Deployment", invalid)
    assert strict.code == 400 and strict.reason == "BadRequest"
    assert strict.message == (
        'Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: '
        'unknown field "spec.bogus"'
    )
    other = StatusCause("spec.replicas", "Expected int", "FieldValueInvalid")
    typed = ApiError(422, "Invalid", "x", details=StatusDetails(causes=[other]))
    assert strict_decoding_error("Deployment", typed) is typed


# --------------------------------------------------------------------------- over HTTP


def test_discovery_tables_scale_and_core_namespaces_over_http(apiserver: ApiServer) -> None:
    http = apiserver.http()
    aggregated = http.get("/apis", headers={"Accept": KUBECTL_DISCOVERY_ACCEPT})
    assert aggregated.headers["content-type"].startswith(
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    assert aggregated.json["kind"] == "APIGroupDiscoveryList"
    assert http.get("/apis").json["kind"] == "APIGroupList"  # classic still served
    core_list = http.get("/api/v1").json
    assert {r["name"] for r in core_list["resources"]} >= {"namespaces", "events"}

    assert http.post(f"{V1}/namespaces/default/deployments", DEPLOYMENT).status == 201
    table = http.get(
        f"{V1}/namespaces/default/deployments", headers={"Accept": KUBECTL_TABLE_ACCEPT}
    )
    assert table.headers["content-type"].startswith("application/json;as=Table")
    body = table.json
    assert [c["name"] for c in body["columnDefinitions"]][:3] == ["Name", "Ready", "Up-To-Date"]
    assert body["rows"][0]["cells"][0] == "web"
    assert body["metadata"]["resourceVersion"]
    one = http.get(
        f"{V1}/namespaces/default/deployments/web?includeObject=Object",
        headers={"Accept": KUBECTL_TABLE_ACCEPT},
    ).json
    assert one["rows"][0]["object"]["kind"] == "Deployment"

    path = f"{V1}/namespaces/default/deployments/web/scale"
    current = http.get(path).json
    patched = http.request(
        "PATCH", path, {"spec": {"replicas": 4}}, content_type="application/merge-patch+json"
    )
    assert patched.status == 200 and patched.json["spec"]["replicas"] == 4
    stale = {**current, "spec": {"replicas": 1}}
    conflict = http.put(path, stale)
    assert conflict.status == 409 and conflict.json["reason"] == "Conflict"
    bad = http.put(path, {**current, "spec": {"replicas": "many"}})
    assert bad.status == 422 and "spec.replicas" in bad.body.decode()
    assert http.get(f"{V1}/namespaces/default/deployments/web").json["spec"]["replicas"] == 4
    assert apiserver.http("viewer").put(path, http.get(path).json).status == 403

    created = http.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": "core-ns"}})  # fmt: skip
    assert created.status == 201 and created.json["apiVersion"] == "v1"
    assert http.get(f"{V1}/namespaces/core-ns").json["apiVersion"] == "keel.dev/v1"
    listed = http.get("/api/v1/namespaces").json
    assert listed["kind"] == "NamespaceList" and listed["apiVersion"] == "v1"
    assert all(item["apiVersion"] == "v1" for item in listed["items"])
    events = http.get("/api/v1/namespaces/default/events").json
    assert events["kind"] == "EventList"
    assert http.get("/api/v1/pods").status == 404


def test_openapi_v3_index_and_group_version_documents(apiserver: ApiServer) -> None:
    http = apiserver.http()
    index = http.get("/openapi/v3").json["paths"]
    assert set(index) == {"apis/keel.dev/v1", "api/v1"}
    keel_url = index["apis/keel.dev/v1"]["serverRelativeURL"]
    assert keel_url.startswith("/openapi/v3/apis/keel.dev/v1?hash=")
    document = http.get(keel_url)
    assert document.headers.get("cache-control") == "public, immutable"
    doc = document.json
    gvk = {"group": "keel.dev", "version": "v1", "kind": "Deployment"}
    assert doc["components"]["schemas"]["Deployment"]["x-kubernetes-group-version-kind"] == [gvk]
    patch = doc["paths"]["/apis/keel.dev/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == gvk
    assert any(p.get("name") == "fieldValidation" for p in patch["parameters"])
    core_doc = http.get(index["api/v1"]["serverRelativeURL"]).json
    ns = core_doc["components"]["schemas"]["io.k8s.api.core.v1.Namespace"]
    assert ns["x-kubernetes-group-version-kind"] == [
        {"group": "", "version": "v1", "kind": "Namespace"}
    ]
    assert http.get("/openapi/v3/apis/nope/v1").status == 404
    assert json.loads(http.get("/openapi/v3/api/v1").body)["openapi"] == "3.0.3"
