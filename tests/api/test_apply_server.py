"""Server-side apply and field ownership through a real API server: apply creates and
records managedFields; another manager changing an owned field gets a 409 naming it (and
takes it over with force); a field its only applier stops applying goes; components are
held to the registry's owners (a controller writing another's field: 403), users are not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from support import ApiServer

V1 = "/apis/keel.dev/v1"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
DEPLOYMENTS = f"{V1}/namespaces/default/deployments"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver-apply")) as api:
        yield api


def manifest(name: str, replicas: int = 2, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, **labels}},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"command": ["sleep"]}},
        },
    }


def apply(server: ApiServer, body: dict[str, Any], manager: str, force: bool = False) -> Any:
    name = body["metadata"]["name"]
    query = f"?fieldManager={manager}" + ("&force=true" if force else "")
    text = yaml.safe_dump(body).encode()
    return server.http().request(
        "PATCH", f"{DEPLOYMENTS}/{name}{query}", raw=text, content_type=APPLY
    )


def managers(obj: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}


def test_apply_creates_then_merges_and_records_who_owns_what(server: ApiServer) -> None:
    created = apply(server, manifest("a1"), "alice")
    assert created.status == 201, created.json
    assert managers(created.json) == {("alice", "Apply")}
    entry = created.json["metadata"]["managedFields"][0]
    assert entry["fieldsType"] == "FieldsV1"
    assert entry["fieldsV1"]["f:spec"]["f:replicas"] == {}
    again = apply(server, manifest("a1"), "alice")
    assert again.status == 200
    assert again.json["metadata"]["resourceVersion"] == created.json["metadata"]["resourceVersion"]


def test_another_managers_field_conflicts_and_force_takes_it_over(server: ApiServer) -> None:
    apply(server, manifest("a2", replicas=2), "alice")
    clash = apply(server, manifest("a2", replicas=5), "bob")
    assert clash.status == 409
    assert clash.json["message"].startswith(
        'Apply failed with 1 conflict: conflict with "alice": .spec.replicas'
    )
    [cause] = clash.json["details"]["causes"]
    assert (cause["field"], cause["reason"]) == (".spec.replicas", "FieldManagerConflict")
    assert server.http().get(f"{DEPLOYMENTS}/a2").json["spec"]["replicas"] == 2
    forced = apply(server, manifest("a2", replicas=5), "bob", force=True)
    assert forced.status == 200 and forced.json["spec"]["replicas"] == 5
    # kubectl scale (an update) takes the field from its applier in turn.
    scaled = server.http().patch(
        f"{DEPLOYMENTS}/a2?fieldManager=kubectl-scale", {"spec": {"replicas": 7}}, MERGE
    )
    assert scaled.status == 200 and ("kubectl-scale", "Update") in managers(scaled.json)
    assert apply(server, manifest("a2", replicas=5), "bob").status == 409


def test_labels_merge_key_by_key_and_a_dropped_one_goes(server: ApiServer) -> None:
    apply(server, manifest("a3", tier="web"), "alice")
    server.http().patch(
        f"{DEPLOYMENTS}/a3?fieldManager=ops", {"metadata": {"labels": {"team": "ops"}}}, MERGE
    )
    dropped = apply(server, manifest("a3"), "alice")
    assert dropped.status == 200
    assert dropped.json["metadata"]["labels"] == {"app": "a3", "team": "ops"}


def test_bad_apply_requests_are_refused_by_name(server: ApiServer) -> None:
    http = server.http()
    text = yaml.safe_dump(manifest("a4")).encode()
    missing = http.request("PATCH", f"{DEPLOYMENTS}/a4", raw=text, content_type=APPLY)
    assert missing.status == 400 and "fieldManager: required" in missing.json["message"]
    bad = http.request(
        "PATCH", f"{DEPLOYMENTS}/a4?fieldManager=x", raw=b"spec: [unclosed", content_type=APPLY
    )
    assert bad.status == 400 and "not valid YAML" in bad.json["message"]
    wrong = manifest("a4")
    wrong["spec"]["replicas"] = "many"
    invalid = apply(server, wrong, "x")
    assert invalid.status == 422 and "spec.replicas" in invalid.json["message"]


def test_components_are_held_to_the_registrys_owners_and_users_are_not(
    server: ApiServer,
) -> None:
    apply(server, manifest("a5"), "alice")
    status = {"status": {"readyReplicas": 1}}
    controller = server.http("controller")
    refused = controller.request(
        "PATCH",
        f"{DEPLOYMENTS}/a5/status",
        status,
        content_type=MERGE,
        headers={"Keel-Field-Manager": "nodelifecycle"},
    )
    assert refused.status == 403
    assert refused.json["message"] == (
        'Deployment a5: field .status.readyReplicas is owned by "deployment" (the deployment '
        'controller reports rollouts); field manager "nodelifecycle" may not write it'
    )
    allowed = controller.request(
        "PATCH",
        f"{DEPLOYMENTS}/a5/status",
        status,
        content_type=MERGE,
        headers={"Keel-Field-Manager": "deployment"},
    )
    assert allowed.status == 200
    by_hand = server.http().patch(
        f"{DEPLOYMENTS}/a5/status", {"status": {"readyReplicas": 2}}, MERGE
    )
    assert by_hand.status == 200


def test_defaults_a_create_did_not_send_are_nobodys(server: ApiServer) -> None:
    created = server.http().post(f"{DEPLOYMENTS}?fieldManager=kubectl-create", manifest("a6"))
    assert created.status == 201
    owned = created.json["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]
    assert "f:replicas" in owned and "f:bakeSeconds" not in owned  # a default
    later = manifest("a6")
    later["spec"]["bakeSeconds"] = 3
    applied = apply(server, later, "alice")
    assert applied.status == 200 and applied.json["spec"]["bakeSeconds"] == 3
