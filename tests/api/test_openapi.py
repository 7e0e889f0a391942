"""The OpenAPI document is valid OpenAPI 3.0.3, covers every route of DESIGN.md section 4,
and its schemas say what the models accept, so generated requests are meaningful."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from keel.api import telemetry
from keel.api.openapi import ERRORS, JSON_PATCH, MERGE_PATCH, build_openapi, to_openapi_30
from keel.api.registry import KINDS, KindInfo
from keel.api.resources import (
    Binding,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Lease,
    LeaseSpec,
    LeaseStatus,
    Node,
    NodeSpec,
    NodeTarget,
    ObjectMeta,
    PortSpec,
    ResourceList,
    Status,
    StatusCause,
    StatusDetails,
)
from keel.api.resources import HealthCheck as Probe

DOC = build_openapi(KINDS)
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
V1 = "/apis/keel.dev/v1"


def prefix(info: KindInfo) -> str:
    return (
        f"{V1}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{V1}/{info.plural}"
    )


def walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable` spelled as JSON Schema, to validate instances."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def validator(name: str) -> jsonschema_rs.Validator:
    schema = {
        "$ref": f"#/components/schemas/{name}",
        "components": as_json_schema({"schemas": SCHEMAS}),
    }
    return jsonschema_rs.Draft4Validator(schema)


def draw_one(operation: Any) -> list[Any]:
    seen: list[Any] = []

    @settings(max_examples=1, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(operation.as_strategy())
    def draw(case: Any) -> None:
        seen.append(case)

    draw()
    return seen


# --------------------------------------------------------------------------- validity


def test_document_is_valid_openapi_3_0_by_schemathesis_own_meta_schema() -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

    errors = [str(e)[:300] for e in OPENAPI_30_VALIDATOR.iter_errors(DOC)]
    assert errors == []
    assert DOC["openapi"] == "3.0.3"


def test_every_reference_resolves() -> None:
    refs = {n["$ref"] for n in walk(DOC) if isinstance(n, dict) and "$ref" in n}
    assert refs
    for ref in refs:
        section, name = re.fullmatch(r"#/components/(\w+)/(.+)", ref).groups()  # type: ignore[union-attr]
        assert name in DOC["components"][section], ref


def test_no_json_schema_2020_spellings_remain() -> None:
    for node in walk(SCHEMAS):
        if isinstance(node, dict):
            assert node.get("type") != "null"
            assert "$defs" not in node and "prefixItems" not in node and "const" not in node
            assert node.get("required") != []
            for bound in ("exclusiveMinimum", "exclusiveMaximum"):
                assert bound not in node or node[bound] is True
            if "$ref" in node:
                assert len(node) == 1, node


def test_schemathesis_loads_it_and_can_generate_a_request_for_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(DOC)
    results: list[Any] = list(schema.get_all_operations())  # Ok | Err: load errors fail here
    operations = [result.ok() for result in results]
    assert len(operations) > 90
    for operation in operations:
        assert draw_one(operation), operation.label


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_every_route_of_the_api_contract_is_documented(info: KindInfo) -> None:
    paths = DOC["paths"]
    base = prefix(info)
    assert {"get", "post"} <= set(paths[base])
    assert {"get", "put", "patch", "delete"} <= set(paths[f"{base}/{{name}}"])
    if info.namespaced:
        assert "get" in paths[f"{V1}/{info.plural}"]
    if "status" in info.subresources:
        assert {"get", "put", "patch"} <= set(paths[f"{base}/{{name}}/status"])
    if info.kind == "Instance":
        assert "post" in paths[f"{base}/{{name}}/binding"]
    if info.kind == "Lease":
        assert "post" in paths[f"{base}/{{name}}/renew"]


def test_system_discovery_and_telemetry_routes_are_documented() -> None:
    for path in ("/api", "/apis", V1, "/version", "/healthz", "/readyz", "/metrics", "/openapi/v3"):
        assert "get" in DOC["paths"][path], path
    for public in ("/healthz", "/readyz", "/version"):  # no token needed
        assert DOC["paths"][public]["get"]["security"] == []
    t = "/apis/telemetry.keel.dev/v1"
    assert {"get", "post"} <= set(DOC["paths"][f"{t}/nodeheartbeats"])
    assert {"get", "put"} <= set(DOC["paths"][f"{t}/nodeheartbeats/{{name}}"])
    for kind in ("instanceusages", "events"):
        assert {"get", "post"} <= set(DOC["paths"][f"{t}/namespaces/{{namespace}}/{kind}"])


def test_operation_ids_are_unique() -> None:
    ids = [
        op["operationId"]
        for item in DOC["paths"].values()
        for method, op in item.items()
        if method != "parameters"
    ]
    assert len(ids) == len(set(ids))
    assert {"listNamespacedDeployment", "createNamespacedInstanceBinding", "renewNamespacedLease",
            "patchNodeStatus", "listInstanceForAllNamespaces"} <= set(ids)  # fmt: skip


def test_list_takes_selectors_paging_and_watch_parameters() -> None:
    params = DOC["paths"][f"{V1}/namespaces/{{namespace}}/deployments"]["get"]["parameters"]
    names = {p["$ref"].rsplit("/", 1)[1] for p in params}
    assert names == {"labelSelector", "fieldSelector", "limit", "continue", "resourceVersion",
                     "watch", "allowWatchBookmarks", "timeoutSeconds"}  # fmt: skip
    unwatched = build_openapi(KINDS, with_watch=False)
    params = unwatched["paths"][f"{V1}/namespaces/{{namespace}}/deployments"]["get"]["parameters"]
    assert not {"watch", "allowWatchBookmarks"} & {p["$ref"].rsplit("/", 1)[1] for p in params}
    shared = DOC["components"]["parameters"]
    assert shared["namespace"]["in"] == "path" and shared["namespace"]["required"] is True
    assert shared["limit"]["schema"] == {"type": "integer", "minimum": 0}
    assert shared["watch"]["schema"] == {"type": "boolean"}


def test_patch_accepts_merge_patch_and_json_patch() -> None:
    patch = DOC["paths"][f"{V1}/namespaces/{{namespace}}/deployments/{{name}}"]["patch"]
    content = patch["requestBody"]["content"]
    assert set(content) == {MERGE_PATCH, JSON_PATCH}
    op = validator("JsonPatchOperation")
    assert op.is_valid({"op": "replace", "path": "/spec/replicas", "value": 3})
    assert op.is_valid({"op": "remove", "path": "/metadata/labels/a~1b"})
    assert op.is_valid({"op": "move", "from": "/a", "path": "/b"})
    assert not op.is_valid({"op": "replace", "path": "/spec/replicas"})  # value missing
    assert not op.is_valid({"op": "jump", "path": "/a"})
    assert not op.is_valid({"op": "add", "path": "no-slash", "value": 1})


def test_writes_document_bodies_and_the_fencing_header() -> None:
    item = DOC["paths"][f"{V1}/namespaces/{{namespace}}/leases/{{name}}"]
    assert item["put"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Lease"
    }
    assert {"$ref": "#/components/parameters/fencingToken"} in item["put"]["parameters"]
    header = DOC["components"]["parameters"]["fencingToken"]
    assert header["in"] == "header" and header["name"] == "Keel-Fencing-Token"
    assert re.match(header["schema"]["pattern"], "keel-system/leader=42")
    assert not re.match(header["schema"]["pattern"], "leader=42")
    renew = DOC["paths"][f"{V1}/namespaces/{{namespace}}/leases/{{name}}/renew"]["post"]
    assert renew["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/LeaseRenewal"
    )


def test_every_operation_answers_errors_as_status_with_retry_after_on_429() -> None:
    responses = DOC["components"]["responses"]
    for code in ("400", "401", "403", "404", "409", "410", "413", "422", "429"):
        assert code in ERRORS
        body = responses[f"Error{code}"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/Status"}
    assert responses["Error429"]["headers"]["Retry-After"]["required"] is True
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method == "parameters" or path in ("/healthz", "/readyz", "/version"):
                continue
            assert set(ERRORS) <= set(op["responses"]), (method, path)
            assert any(code in op["responses"] for code in ("200", "201")), (method, path)
    create = DOC["paths"][f"{V1}/nodes"]["post"]["responses"]["201"]
    assert create["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Node"}


def test_security_is_bearer_tokens() -> None:
    assert DOC["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from the API server's token file",
    }
    assert DOC["security"] == [{"bearerAuth": []}]


# --------------------------------------------------------------------------- faithfulness


def test_schemas_come_from_the_models() -> None:
    for info in KINDS:
        fields = {f.encode_name for f in msgspec.structs.fields(info.model)}
        assert set(SCHEMAS[info.kind]["properties"]) == fields, info.kind
        assert SCHEMAS[info.kind]["additionalProperties"] is False
        assert SCHEMAS[info.kind]["properties"]["kind"]["enum"] == [info.kind, ""]
        assert SCHEMAS[f"{info.kind}List"]["properties"]["items"]["items"] == {
            "$ref": f"#/components/schemas/{info.kind}"
        }
    for record in ("Status", "Binding", "LeaseRenewal", "NodeHeartbeat", "InstanceUsage", "Event"):
        assert record in SCHEMAS


def test_required_fields_enums_patterns_and_bounds_are_kept() -> None:
    assert "command" in SCHEMAS["InstanceSpec"]["required"]
    assert SCHEMAS["InstanceSpec"]["properties"]["command"]["minItems"] == 1
    restart = SCHEMAS["InstanceSpec"]["properties"]["restartPolicy"]
    assert restart["enum"] == ["Always", "Never", "OnFailure"] and restart["type"] == "string"
    replicas = SCHEMAS["DeploymentSpec"]["properties"]["replicas"]
    assert (replicas["minimum"], replicas["maximum"]) == (0, 100_000)
    duration = SCHEMAS["LeaseSpec"]["properties"]["leaseDurationSeconds"]
    assert (duration["minimum"], duration["maximum"]) == (2, 3600)
    assert set(SCHEMAS["LeaseSpec"]["required"]) == {"holderIdentity", "leaseDurationSeconds"}
    assert "pattern" in SCHEMAS["ResourceList"]["properties"]["cpu"]
    assert SCHEMAS["ObjectMeta"]["properties"]["labels"]["additionalProperties"]["maxLength"] == 63
    # Optional fields of X | None are nullable, not anyOf with a null type
    created = SCHEMAS["ObjectMeta"]["properties"]["creationTimestamp"]
    assert created["nullable"] is True and created["type"] == "string"
    check = SCHEMAS["InstanceSpec"]["properties"]["healthCheck"]
    assert check == {"allOf": [{"$ref": "#/components/schemas/HealthCheck"}], "nullable": True,
                     "default": None}  # fmt: skip
    live = SCHEMAS["LivenessCheck"]["properties"]
    assert live.keys() == SCHEMAS["HealthCheck"]["properties"].keys()  # the same shape
    assert live["successThreshold"]["maximum"] == 1  # one success resets the failure count
    ttl = SCHEMAS["NodeHeartbeat"]["properties"]["ttlSeconds"]
    assert (ttl["minimum"], ttl["exclusiveMinimum"]) == (0, True)


def test_to_openapi_30_rewrites_nullable_refs_and_bounds() -> None:
    assert to_openapi_30({"anyOf": [{"type": "integer"}, {"type": "null"}]}) == {
        "type": "integer",
        "nullable": True,
    }
    assert to_openapi_30(
        {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}
    ) == {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "nullable": True,
    }
    assert to_openapi_30({"$ref": "#/x", "default": {}}) == {"$ref": "#/x"}
    assert to_openapi_30({"type": "number", "exclusiveMaximum": 5}) == {
        "type": "number",
        "maximum": 5,
        "exclusiveMaximum": True,
    }
    assert to_openapi_30({"type": "object", "required": []}) == {"type": "object"}
    assert to_openapi_30({"enum": ["a", "b"]}) == {"enum": ["a", "b"], "type": "string"}


def test_objects_the_server_sends_validate_against_their_schemas() -> None:
    meta = ObjectMeta(name="web", namespace="default", uid="u1", resource_version="7",
                      labels={"app": "web", "keel.dev/tier": "front"},
                      creation_timestamp="2024-05-01T12:00:00Z")  # fmt: skip
    spec = InstanceSpec(command=["python", "-m", "http.server"],
                        resources=ResourceList(cpu="500m", memory="256Mi"),
                        ports=[PortSpec(name="http")],
                        health_check=Probe(type="http", port="http"))  # fmt: skip
    samples: list[tuple[str, msgspec.Struct]] = [
        ("Node", Node(kind="Node", metadata=ObjectMeta(name="n1"),
                      spec=NodeSpec(cluster="c1", capacity=ResourceList(cpu="4", memory="8Gi")))),
        ("Instance", Instance(kind="Instance", metadata=meta, spec=spec)),
        ("Deployment", Deployment(kind="Deployment", metadata=meta,
                                  spec=DeploymentSpec(template=InstanceTemplate(spec=spec),
                                                      replicas=3))),
        ("Lease", Lease(kind="Lease", metadata=meta,
                        spec=LeaseSpec(holder_identity="cm-1", lease_duration_seconds=15),
                        status=LeaseStatus(fencing_token=12, acquire_time="2024-05-01T12:00:00Z"))),
        ("Binding", Binding(target=NodeTarget(name="n1"))),
        ("Status", Status(message="stale", reason="Conflict", code=409,
                          details=StatusDetails(name="web", kind="Deployment",
                                                causes=[StatusCause("spec.replicas", "bad")]))),
    ]  # fmt: skip
    for name, obj in samples:
        # both encodings: as sent (defaults omitted) and with every field spelled out
        for instance in (msgspec.to_builtins(obj), msgspec.json.decode(msgspec.json.encode(obj))):
            errors = [str(e) for e in validator(name).iter_errors(instance)]
            assert errors == [], (name, errors)
    lease = Lease(metadata=meta, spec=LeaseSpec(holder_identity="x", lease_duration_seconds=2))
    full = msgspec.to_builtins(lease)
    full["spec"]["leaseDurationSeconds"] = 1
    assert not validator("Lease").is_valid(full)


# ...and a registration's address, an IP address or a DNS name: a union of formats that
# the generator does not honour.
_CROSS_FIELD_RULES = re.compile(
    r"invalid label key|port names must be unique|command: required for an exec check"
    r"|livenessCheck\.port: "
    r"|address: expected an IP address or a DNS name"
    # a Deployment's selector must match its template's labels; strategy combinations
    # (canary with its type, waves naming clusters once, a step of one kind)
    r"|selector: does not match|selector\.matchLabels: must name"
    r"|canary: required with type|canary: only with type|waves: |a wave names its clusters"
    r"|clusterSelector\.matchLabels|a canary step holds exactly one|probe\.command: required"
    # a quota's resource names (label-key syntax) and counts (whole numbers)
    r"|spec\.hard: invalid resource name|spec\.hard\.[^:]+: expected a whole number"
    # scheduling fields: extended resource names and whole units, operators and their
    # values, tolerationSeconds only for NoExecute, the four topology keys
    r"|invalid resource name|not a whole number of units|are not extended resources"
    r"|must be empty for operator|required for operator|only for effect NoExecute"
    r"|an empty key needs operator Exists|is not a topology key"
)


@pytest.mark.parametrize("info", KINDS, ids=lambda i: i.kind)
def test_generated_bodies_fail_only_on_rules_openapi_3_0_cannot_state(info: KindInfo) -> None:
    """A body the schema allows is accepted by the model, except for the cross-field checks
    (label keys, unique port names, exec command, a liveness check's port) that the server
    reports as 422."""
    schema = schemathesis.openapi.from_dict(DOC)
    scope = "Namespaced" if info.namespaced else ""
    operation = schema.find_operation_by_id(f"create{scope}{info.kind}")
    unexpected: list[str] = []

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(operation.as_strategy())
    def check(case: Any) -> None:
        try:
            msgspec.convert(case.body, info.model)
        except msgspec.ValidationError as exc:
            if not _CROSS_FIELD_RULES.search(str(exc)):
                unexpected.append(str(exc))

    check()
    assert unexpected == []


@pytest.mark.parametrize("kind", list(telemetry.MODELS))
def test_generated_telemetry_bodies_are_all_accepted(kind: str) -> None:
    schema = schemathesis.openapi.from_dict(DOC)
    operation = schema.find_operation_by_id("create" + kind[0].upper() + kind[1:])
    rejected: list[str] = []

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(operation.as_strategy())
    def check(case: Any) -> None:
        try:
            telemetry.validate(kind, case.body)
        except telemetry.TelemetryError as exc:
            rejected.append(str(exc))

    check()
    assert rejected == []


def test_create_requires_a_name_or_generate_name_and_links_to_the_new_object() -> None:
    create = DOC["paths"][f"{V1}/namespaces/{{namespace}}/deployments"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["allOf"][0] == {"$ref": "#/components/schemas/Deployment"}
    metadata = body["allOf"][1]["properties"]["metadata"]
    assert [option["required"] for option in metadata["anyOf"]] == [["name"], ["generateName"]]
    links = create["responses"]["201"]["links"]
    ids = {op["operationId"] for item in DOC["paths"].values()
           for m, op in item.items() if m != "parameters"}  # fmt: skip
    assert {link["operationId"] for link in links.values()} <= ids
    assert links["Read"]["parameters"] == {
        "name": "$response.body#/metadata/name",
        "namespace": "$request.path.namespace",
    }


def test_patch_without_a_patch_media_type_is_a_documented_415() -> None:
    assert "415" in ERRORS
    patch = DOC["paths"][f"{V1}/nodes/{{name}}"]["patch"]
    assert patch["responses"]["415"] == {"$ref": "#/components/responses/Error415"}
