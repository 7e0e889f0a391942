"""The OpenAPI 3.0.3 document of the keel.dev/v1 API (served at /openapi/v3), generated from
the same msgspec models that validate requests, so the schema cannot drift from the server.
Pure: `build_openapi(KINDS)` returns a dict; nothing here knows about HTTP.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from keel.api import telemetry
from keel.api.registry import KINDS, TELEMETRY_GROUP, KindInfo
from keel.api.resources import (
    API_GROUP,
    API_VERSION,
    NAME_RE,
    Binding,
    Eviction,
    LeaseRenewal,
    Status,
)
from keel.api.scale import Scale

Schema = dict[str, Any]
OPENAPI_VERSION = "3.0.3"
REF = "#/components/schemas/{name}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
TELEMETRY_KINDS = (telemetry.NODEHEARTBEATS, telemetry.INSTANCEUSAGES, telemetry.EVENTS)

# Every error is a Status; which codes an operation may answer, and why.
ERRORS: dict[str, str] = {
    "400": "Bad request (malformed query, header or body)",
    "401": "No valid bearer token",
    "403": "The principal's role does not allow this, or a ResourceQuota refuses the Instance",
    "404": "Not found",
    "409": "AlreadyExists, Conflict (stale resourceVersion) or FencingTokenRejected",
    "410": "Expired: the resourceVersion is older than the retained history",
    "413": "The object is over the size limit",
    "415": "UnsupportedMediaType: PATCH takes merge-patch+json or json-patch+json",
    "422": "Invalid: the causes name the field paths",
    "429": "TooManyRequests: retry after the Retry-After header's seconds",
    "500": "Internal error",
    "503": "The store or the watch cache is unavailable: retry after Retry-After",
    "504": "Timeout waiting for the store",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(name=name)}


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


# --------------------------------------------------------------------------- JSON Schema -> 3.0


def to_openapi_30(schema: Any) -> Any:
    """msgspec's JSON Schema (draft 2020-12 flavoured) rewritten in OpenAPI 3.0's dialect.

    `anyOf [X, {type: null}]` becomes `nullable`; a `$ref` loses its siblings (3.0 ignores
    them); empty `required` lists go (3.0 wants at least one); enums get their type.
    """
    if isinstance(schema, list):
        return [to_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: to_openapi_30(value) for key, value in schema.items()}
    for keyword in ("anyOf", "oneOf"):
        options = out.get(keyword)
        if options and any(option == {"type": "null"} for option in options):
            rest = [option for option in options if option != {"type": "null"}]
            del out[keyword]
            if len(rest) == 1:
                only = rest[0]
                if "$ref" in only:
                    out["allOf"] = [only]
                else:
                    out.update(only)
            else:
                out[keyword] = rest
            out["nullable"] = True
    if "$ref" in out and len(out) > 1:
        out = {"$ref": out["$ref"]}
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[inclusive] = out[bound]
            out[bound] = True
    if out.get("required") == []:
        del out["required"]
    enum = out.get("enum")
    if enum and "type" not in out:
        kinds = {type(value) for value in enum if value is not None}
        if kinds == {str}:
            out["type"] = "string"
        elif kinds == {int}:
            out["type"] = "integer"
    return out


def model_schemas(models: Iterable[type[Any]]) -> dict[str, Schema]:
    """Component schemas of msgspec models, `$ref`s pointing into #/components/schemas."""
    _, components = msgspec.json.schema_components(tuple(models), ref_template=REF)
    result: dict[str, Schema] = to_openapi_30(components)
    return result


# --------------------------------------------------------------------------- shared pieces


def _parameters() -> dict[str, Schema]:
    name_schema = {"type": "string", "pattern": NAME_RE, "maxLength": 253}

    def query(name: str, schema: Schema, description: str) -> Schema:
        return {"name": name, "in": "query", "required": False, "schema": schema,
                "description": description}  # fmt: skip

    return {
        "namespace": {
            "name": "namespace",
            "in": "path",
            "required": True,
            "schema": name_schema,
            "description": "The object's namespace",
        },
        "name": {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": name_schema,
            "description": "The object's name",
        },
        "labelSelector": query(
            "labelSelector",
            {"type": "string"},
            "Only objects whose labels match: `a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, "
            "`a`, `!a`, comma-separated",
        ),
        "fieldSelector": query(
            "fieldSelector",
            {"type": "string"},
            "Only objects whose fields match: `metadata.name=x`, `spec.nodeName!=y`, ...",
        ),
        "limit": query(
            "limit",
            {"type": "integer", "minimum": 0},
            "At most this many items; `metadata.continue` of the list fetches the rest",
        ),
        "continue": query(
            "continue", {"type": "string"}, "The continue token of the previous page"
        ),
        "resourceVersion": query(
            "resourceVersion",
            {"type": "string"},
            "A revision (digits). Reads: '0' accepts the cache as it is; watches: every "
            "change after this revision",
        ),
        "watch": query(
            "watch",
            {"type": "boolean"},
            "Stream changes as JSON lines (WatchEvent) instead of answering a list",
        ),
        "allowWatchBookmarks": query(
            "allowWatchBookmarks",
            {"type": "boolean"},
            "Watches: send BOOKMARK events carrying the current resourceVersion",
        ),
        "timeoutSeconds": query(
            "timeoutSeconds",
            {"type": "integer", "minimum": 0},
            "Watches: end the stream after this many seconds",
        ),
        "fencingToken": {
            "name": "Keel-Fencing-Token",
            "in": "header",
            "required": False,
            "description": "`{namespace}/{lease}={token}`: do the write only while the Lease "
            "still has this fencing token (else 409 FencingTokenRejected)",
            "schema": {
                "type": "string",
                "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?="
                r"[0-9]+$",
            },
        },
    }


def _extra_schemas(kinds: Sequence[KindInfo]) -> dict[str, Schema]:
    schemas: dict[str, Schema] = {
        "WatchEvent": {
            "type": "object",
            "description": "One line of a watch stream",
            "required": ["type", "object"],
            "properties": {
                "type": {
                    "type": "string",
                    "enum": ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"],
                },
                "object": {
                    "type": "object",
                    "description": "The object; for ERROR a Status; for BOOKMARK only "
                    "kind, apiVersion and metadata.resourceVersion",
                },
            },
        },
        "DeleteOptions": {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "preconditions": {
                    "type": "object",
                    "description": "Delete only if the object still has this uid and version",
                    "properties": {
                        "uid": {"type": "string"},
                        "resourceVersion": {"type": "string"},
                    },
                },
            },
        },
        "MergePatch": {
            "type": "object",
            "description": "RFC 7386 JSON merge patch: null deletes a field",
        },
        "JsonPatch": {
            "type": "array",
            "description": "RFC 6902 JSON patch, applied atomically",
            "items": {"$ref": REF.format(name="JsonPatchOperation")},
        },
        "JsonPatchOperation": {
            "oneOf": [
                _patch_op(["add", "replace", "test"], ["op", "path", "value"]),
                _patch_op(["remove"], ["op", "path"]),
                _patch_op(["move", "copy"], ["op", "path", "from"]),
            ]
        },
        "TelemetryList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Discovery": {
            "type": "object",
            "description": "APIVersions, APIGroupList, APIGroup or APIResourceList",
            "required": ["kind"],
            "properties": {"kind": {"type": "string"}, "apiVersion": {"type": "string"}},
        },
    }
    for info in kinds:
        schemas[f"{info.kind}List"] = {
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string", "enum": [API_VERSION]},
                "kind": {"type": "string", "enum": [f"{info.kind}List"]},
                "metadata": _ref("ListMeta"),
                "items": {"type": "array", "items": _ref(info.kind)},
            },
        }
    return schemas


def _patch_op(ops: list[str], required: list[str]) -> Schema:
    pointer = {"type": "string", "pattern": r"^(/([^/~]|~[01])*)*$"}
    properties: Schema = {"op": {"type": "string", "enum": ops}, "path": pointer}
    if "value" in required:
        properties["value"] = {}
    if "from" in required:
        properties["from"] = pointer
    return {"type": "object", "required": required, "properties": properties}


def _error_responses() -> dict[str, Schema]:
    """components/responses: one Status response per error code."""
    responses: dict[str, Schema] = {}
    for code, why in ERRORS.items():
        response: Schema = {"description": why, "content": {JSON: {"schema": _ref("Status")}}}
        if code in ("429", "503"):
            response["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": code == "429"}}
        responses[f"Error{code}"] = response
    return responses


def _responses(success: dict[str, Schema]) -> Schema:
    errors = {code: {"$ref": f"#/components/responses/Error{code}"} for code in ERRORS}
    return {**success, **errors}


def _ok(schema_name: str, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref(schema_name)}}}


def _body(schema_name: str, description: str, required: bool = True) -> Schema:
    return {
        "description": description,
        "required": required,
        "content": {JSON: {"schema": _ref(schema_name)}},
    }


def _create_body(kind: str) -> Schema:
    """A new object needs metadata.name, or metadata.generateName for a generated name."""
    named = {"required": ["name"], "properties": {"name": {"minLength": 1}}}
    generated = {"required": ["generateName"], "properties": {"generateName": {"minLength": 1}}}
    schema = {
        "allOf": [
            _ref(kind),
            {"required": ["metadata"], "properties": {"metadata": {"anyOf": [named, generated]}}},
        ]
    }
    return {
        "description": f"The {kind} to create",
        "required": True,
        "content": {JSON: {"schema": schema}},
    }


def _patch_body() -> Schema:
    return {
        "description": "A JSON merge patch or a JSON patch (chosen by Content-Type)",
        "required": True,
        "content": {
            MERGE_PATCH: {"schema": _ref("MergePatch")},
            JSON_PATCH: {"schema": _ref("JsonPatch")},
        },
    }


# --------------------------------------------------------------------------- paths


def _operation(op_id: str, summary: str, tag: str, responses: Schema, **extra: Any) -> Schema:
    return {"operationId": op_id, "summary": summary, "tags": [tag], **extra,
            "responses": _responses(responses)}  # fmt: skip


def _links(info: KindInfo) -> Schema:
    """From a created object to the operations on it (stateful API testing follows them)."""
    scope = "Namespaced" if info.namespaced else ""
    parameters = {"name": "$response.body#/metadata/name"}
    if info.namespaced:
        parameters["namespace"] = "$request.path.namespace"
    verbs = ["read", "replace", "patch", "delete"]
    if "status" in info.subresources:
        verbs.append("read|Status")
    links: Schema = {}
    for verb in verbs:
        op, _, suffix = verb.partition("|")
        links[f"{op.capitalize()}{suffix}"] = {
            "operationId": f"{op}{scope}{info.kind}{suffix}",
            "parameters": parameters,
        }
    return links


# Inline (not a $ref): kubectl looks for it by name among a PATCH operation's parameters to
# learn that the server validates fields itself, and then skips its own validation.
FIELD_VALIDATION: Schema = {
    "name": "fieldValidation",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["Strict", "Warn", "Ignore"]},
    "description": "Keel always validates strictly: an unknown or ill-typed field is a 422 "
    "naming its path, whatever this says (kubectl sends Strict)",
}
_ACTIONS = {"get": "get", "post": "post", "put": "put", "patch": "patch", "delete": "delete"}


def gvk(group: str, kind: str, version: str = "v1") -> dict[str, str]:
    return {"group": group, "kind": kind, "version": version}


def _mark_gvk(paths: dict[str, Schema], group_version_kind: dict[str, str]) -> None:
    """`x-kubernetes-group-version-kind` and `x-kubernetes-action` on each operation, as
    kube-apiserver publishes them (kubectl finds a kind's operations by them)."""
    for item in paths.values():
        for method, op in item.items():
            if method in _ACTIONS and isinstance(op, dict):
                action = _ACTIONS[method]
                if method == "get" and "watch" in str(op.get("summary", "")).lower():
                    action = "list"
                op["x-kubernetes-group-version-kind"] = dict(group_version_kind)
                op["x-kubernetes-action"] = action


def _kind_paths(info: KindInfo, with_watch: bool) -> dict[str, Schema]:
    paths = _plain_kind_paths(info, with_watch)
    _mark_gvk(paths, gvk(API_GROUP, info.kind))
    if "scale" in info.subresources:
        paths.update(_scale_paths(info))
    return paths


def _scale_paths(info: KindInfo) -> dict[str, Schema]:
    kind, plural = info.kind, info.plural
    prefix = f"/apis/{API_VERSION}/namespaces/{{namespace}}/{plural}/{{name}}/scale"
    params = [_param("namespace"), _param("name")]
    validated = [_param("fencingToken"), FIELD_VALIDATION]
    paths: dict[str, Schema] = {
        prefix: {
            "parameters": params,
            "get": _operation(
                f"readNamespaced{kind}Scale", f"Read the scale of a {kind}", kind,
                {"200": _ok("Scale", "spec.replicas and status.replicas")},
            ),
            "put": _operation(
                f"replaceNamespaced{kind}Scale",
                f"Set a {kind}'s replicas (409 when metadata.resourceVersion is stale)", kind,
                {"200": _ok("Scale", "The new scale")},
                parameters=validated, requestBody=_body("Scale", "spec.replicas"),
            ),
            "patch": _operation(
                f"patchNamespaced{kind}Scale", f"Patch a {kind}'s replicas", kind,
                {"200": _ok("Scale", "The new scale")},
                parameters=validated, requestBody=_patch_body(),
            ),
        }
    }  # fmt: skip
    _mark_gvk(paths, gvk("autoscaling", "Scale"))
    return paths


def _plain_kind_paths(info: KindInfo, with_watch: bool) -> dict[str, Schema]:
    kind, plural = info.kind, info.plural
    scope = "Namespaced" if info.namespaced else ""
    base = f"/apis/{API_VERSION}"
    prefix = f"{base}/namespaces/{{namespace}}/{plural}" if info.namespaced else f"{base}/{plural}"
    scope_params = [_param("namespace")] if info.namespaced else []
    item_params = [*scope_params, _param("name")]
    write_params = [_param("fencingToken")]
    validated = [*write_params, FIELD_VALIDATION]
    list_params = [_param(p) for p in ("labelSelector", "fieldSelector", "limit", "continue")]
    list_params.append(_param("resourceVersion"))
    if with_watch:
        list_params += [_param(p) for p in ("watch", "allowWatchBookmarks", "timeoutSeconds")]
    list_ok = {
        "200": {
            "description": f"The {kind} list"
            + ("; with watch=true a stream of WatchEvent JSON lines" if with_watch else ""),
            "content": {JSON: {"schema": _ref(f"{kind}List")}},
        }
    }
    tag = kind
    paths: dict[str, Schema] = {
        prefix: {
            "parameters": scope_params,
            "get": _operation(
                f"list{scope}{kind}", f"List or watch {plural}", tag, list_ok,
                parameters=list_params,
            ),
            "post": _operation(
                f"create{scope}{kind}", f"Create a {kind}", tag,
                {"201": {**_ok(kind, f"The created {kind}"), "links": _links(info)},
                 "200": _ok(kind, f"The {kind}")},
                parameters=validated, requestBody=_create_body(kind),
            ),
        },
        f"{prefix}/{{name}}": {
            "parameters": item_params,
            "get": _operation(
                f"read{scope}{kind}", f"Read a {kind}", tag, {"200": _ok(kind, f"The {kind}")},
                parameters=[_param("resourceVersion")],
            ),
            "put": _operation(
                f"replace{scope}{kind}",
                f"Replace a {kind} (409 when metadata.resourceVersion is stale)", tag,
                {"200": _ok(kind, f"The replaced {kind}")},
                parameters=validated, requestBody=_body(kind, f"The new {kind}"),
            ),
            "patch": _operation(
                f"patch{scope}{kind}", f"Patch a {kind}", tag,
                {"200": _ok(kind, f"The patched {kind}")},
                parameters=validated, requestBody=_patch_body(),
            ),
            "delete": _operation(
                f"delete{scope}{kind}",
                f"Delete a {kind} (with finalizers: marks it with deletionTimestamp)", tag,
                {"200": _ok(kind, f"The deleted {kind}, or the {kind} marked for deletion"),
                 "202": _ok(kind, f"The {kind}, marked for deletion")},
                parameters=write_params,
                requestBody=_body("DeleteOptions", "Preconditions", required=False),
            ),
        },
    }  # fmt: skip
    if info.namespaced:
        paths[f"{base}/{plural}"] = {
            "get": _operation(
                f"list{kind}ForAllNamespaces", f"List or watch {plural} of every namespace",
                tag, list_ok, parameters=list_params,
            )
        }  # fmt: skip
    if "status" in info.subresources:
        paths[f"{prefix}/{{name}}/status"] = {
            "parameters": item_params,
            "get": _operation(
                f"read{scope}{kind}Status", f"Read a {kind} (status subresource)", tag,
                {"200": _ok(kind, f"The {kind}")},
            ),
            "put": _operation(
                f"replace{scope}{kind}Status", f"Replace the status of a {kind}", tag,
                {"200": _ok(kind, f"The {kind}")},
                parameters=validated,
                requestBody=_body(kind, f"The {kind}; only its status is used"),
            ),
            "patch": _operation(
                f"patch{scope}{kind}Status", f"Patch the status of a {kind}", tag,
                {"200": _ok(kind, f"The {kind}")},
                parameters=validated, requestBody=_patch_body(),
            ),
        }  # fmt: skip
    if "binding" in info.subresources:
        paths[f"{prefix}/{{name}}/binding"] = {
            "parameters": item_params,
            "post": _operation(
                f"create{scope}{kind}Binding",
                f"Bind a {kind} to a Node (sets spec.nodeName once)", tag,
                {"201": _ok(kind, f"The bound {kind}"), "200": _ok(kind, f"The bound {kind}")},
                parameters=write_params, requestBody=_body("Binding", "The target Node"),
            ),
        }  # fmt: skip
    if "eviction" in info.subresources:
        paths[f"{prefix}/{{name}}/eviction"] = {
            "parameters": item_params,
            "post": _operation(
                f"create{scope}{kind}Eviction",
                f"Delete a {kind} gracefully if its Deployment's disruption budget allows "
                "(429 if not)", tag,
                {"201": _ok("Status", "What was evicted and what was checked")},
                parameters=write_params,
                requestBody=_body("Eviction", "Optional delete preconditions", required=False),
            ),
        }  # fmt: skip
    if kind == "Lease":
        paths[f"{prefix}/{{name}}/renew"] = {
            "parameters": item_params,
            "post": _operation(
                f"renew{scope}{kind}",
                "Renew a Lease: a store keep-alive, never a store write", tag,
                {"200": _ok(kind, "The Lease")},
                requestBody=_body("LeaseRenewal", "The holder and its fencing token"),
            ),
        }  # fmt: skip
    return paths


def _telemetry_paths() -> dict[str, Schema]:
    base = f"/apis/{TELEMETRY_GROUP}/v1"
    model_names = {kind: model.__name__ for kind, model in telemetry.MODELS.items()}
    paths: dict[str, Schema] = {}
    for kind in TELEMETRY_KINDS:
        record = model_names[kind]
        title = kind[0].upper() + kind[1:]
        namespaced = telemetry.NAMESPACED[kind]
        prefix = f"{base}/namespaces/{{namespace}}/{kind}" if namespaced else f"{base}/{kind}"
        scope = [_param("namespace")] if namespaced else []
        ok = {"200": _ok(record, f"The {record}")}
        paths[prefix] = {
            "parameters": scope,
            "get": _operation(f"list{title}", f"List live {kind}", "Telemetry",
                              {"200": _ok("TelemetryList", f"Live {kind}")}),
            "post": _operation(f"create{title}", f"Report {kind} (held in memory, with a TTL)",
                               "Telemetry", {"201": _ok(record, f"The {record}"), **ok},
                               requestBody=_body(record, f"The {record}")),
        }  # fmt: skip
        paths[f"{prefix}/{{name}}"] = {
            "parameters": [*scope, _param("name")],
            "get": _operation(f"read{title}", f"The latest of {kind} named so", "Telemetry", ok)
            if kind != telemetry.EVENTS
            else _operation(f"read{title}", "The live events of the object named so",
                            "Telemetry", {"200": _ok("TelemetryList", "Its events")}),
            "put": _operation(f"replace{title}", f"Report {kind} (held in memory, with a TTL)",
                              "Telemetry", {**ok, "201": _ok(record, f"The {record}")},
                              requestBody=_body(record, f"The {record}")),
        }  # fmt: skip
        if namespaced:
            paths[f"{base}/{kind}"] = {
                "get": _operation(f"list{title}ForAllNamespaces", f"List live {kind}",
                                  "Telemetry", {"200": _ok("TelemetryList", f"Live {kind}")}),
            }  # fmt: skip
    return paths


def _plain(description: str, media_type: str = "text/plain") -> Schema:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _system_paths() -> dict[str, Schema]:
    def discovery(op_id: str, summary: str) -> Schema:
        return {"get": _operation(op_id, summary, "Discovery", {"200": _ok("Discovery", summary)})}

    public: Schema = {"security": []}
    return {
        "/api": discovery("getCoreAPIVersions", "Core API versions"),
        "/apis": discovery("getAPIGroups", "API groups"),
        f"/apis/{API_VERSION}": discovery("getKeelResources", "Resources of keel.dev/v1"),
        f"/apis/{TELEMETRY_GROUP}/v1": discovery(
            "getTelemetryResources", "Resources of telemetry.keel.dev/v1"
        ),
        "/version": {"get": {"operationId": "getVersion", "summary": "Server version",
                             "tags": ["System"], **public,
                             "responses": {"200": {"description": "Version information",
                                                   "content": {JSON: {"schema": {
                                                       "type": "object"}}}}}}},
        "/healthz": {"get": {"operationId": "getHealthz", "summary": "Liveness", "tags": ["System"],
                             **public, "responses": {"200": _plain("ok")}}},
        "/readyz": {"get": {"operationId": "getReadyz", "summary": "Readiness", "tags": ["System"],
                            **public, "responses": {"200": _plain("ok"),
                                                    "503": _plain("not ready yet")}}},
        "/metrics": {
            "get": _operation("getMetrics", "Prometheus metrics (text format 0.0.4)", "System",
                              {"200": _plain("Metrics")}),
        },
        "/openapi/v3": {
            "get": _operation("getOpenAPI", "The index of group-versions and their documents",
                              "System",
                              {"200": {"description": "paths: group-version -> serverRelativeURL",
                                       "content": {JSON: {"schema": {"type": "object"}}}}}),
        },
        f"/openapi/v3/apis/{API_VERSION}": {
            "get": _operation("getOpenAPIKeel", "This document", "System",
                              {"200": {"description": "OpenAPI 3.0 document",
                                       "content": {JSON: {"schema": {"type": "object"}}}}}),
        },
        "/openapi/v3/api/v1": {
            "get": _operation("getOpenAPICore",
                              "The core group's document (Namespaces and Events)", "System",
                              {"200": {"description": "OpenAPI 3.0 document",
                                       "content": {JSON: {"schema": {"type": "object"}}}}}),
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- the document


def _tighten_kind(schema: Schema, info: KindInfo) -> Schema:
    """apiVersion and kind of a top-level kind take one value ("" for kind: filled in)."""
    schema = copy.deepcopy(schema)
    properties = schema["properties"]
    properties["apiVersion"] = {"type": "string", "enum": [API_VERSION], "default": API_VERSION}
    properties["kind"] = {"type": "string", "enum": [info.kind, ""], "default": info.kind}
    own = schema.get("description")
    schema["description"] = (f"{own} " if own else "") + f"Stored through consensus: {info.why}."
    return schema


# What OpenAPI 3.0 can say of labels: their values (keys are checked by the server: 3.0 has
# no propertyNames).
LABEL_VALUE: Schema = {
    "type": "string",
    "maxLength": 63,
    "pattern": r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",  # as resources.py
}
LABEL_KEYS = (
    "keys: an optional DNS-name prefix and '/', then up to 63 of [A-Za-z0-9-_.] "
    "beginning and ending with a letter or digit"
)


def _tighten_labels(schemas: dict[str, Schema]) -> None:
    for record in ("ObjectMeta", "TemplateMeta"):
        labels = schemas.get(record, {}).get("properties", {}).get("labels")
        if labels is not None:
            labels["additionalProperties"] = dict(LABEL_VALUE)
            labels["description"] = f"Labels; {LABEL_KEYS}"


# What `kubectl explain` shows for the fields people look up first (the models carry the
# rules; these say what the fields are for). "Schema.field" -> description.
FIELD_DESCRIPTIONS: dict[str, str] = {
    "Deployment.spec": "The desired state: how many Instances of which template, placed how, "
    "rolled out how.",
    "Deployment.status": "What the deployment controller last observed (it alone writes it).",
    "DeploymentSpec.replicas": "How many Instances to run (0 to 100000).",
    "DeploymentSpec.template": "The Instance every replica is made from; a change rolls out.",
    "DeploymentSpec.selector": "Which Instances are this Deployment's; must match the "
    "template's labels.",
    "DeploymentSpec.strategy": "How a new template replaces the old Instances.",
    "DeploymentSpec.placement": "Which clusters and nodes may run the Instances, spread how.",
    "DeploymentSpec.priority": "Higher first when the scheduler has to choose.",
    "DeploymentSpec.minReadySeconds": "An Instance counts as available once Ready this long.",
    "DeploymentSpec.progressDeadlineSeconds": "A rollout making no progress this long fails "
    "(and is rolled back with autoRollback).",
    "DeploymentSpec.revisionHistoryLimit": "Unused old Revisions kept for rollout undo.",
    "DeploymentSpec.bakeSeconds": "How long a rolled out revision must stay available to be "
    "marked stable.",
    "DeploymentSpec.autoRollback": "Return to the stable revision when a rollout fails.",
    "DeploymentSpec.paused": "No rollout progress while set; scaling still works.",
    "Strategy.type": "RollingUpdate (replace a few at a time) or Recreate (stop all, then "
    "start the new ones). Canary is reserved.",
    "Strategy.rollingUpdate": "The bounds of a RollingUpdate.",
    "Strategy.canary": "Reserved for the canary strategy; refused until it is supported.",
    "RollingUpdate.maxSurge": "Instances above replicas during a rollout: a number or a "
    "percentage of replicas (rounded up).",
    "RollingUpdate.maxUnavailable": "Instances below replicas that may be unavailable during a "
    "rollout or a drain: a number or a percentage (rounded down).",
}


def _describe_fields(schemas: dict[str, Schema]) -> None:
    for path, text in FIELD_DESCRIPTIONS.items():
        schema_name, field = path.split(".", 1)
        properties = schemas.get(schema_name, {}).get("properties", {})
        if field in properties:
            prop = properties[field]
            if "$ref" in prop:  # 3.0 ignores a $ref's siblings: wrap it, as Kubernetes does
                properties[field] = {"allOf": [prop], "description": text}
            else:
                prop["description"] = text


def build_openapi(
    kinds: Sequence[KindInfo] = KINDS, *, version: str = "0.1.0", with_watch: bool = True
) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of every kind's routes, telemetry and system endpoints.

    `with_watch=False` leaves out the watch parameters (for API fuzzers, which would open
    never-ending streams); the server publishes the full document.
    """
    models: list[type[Any]] = [info.model for info in kinds]
    models += [Status, Binding, Eviction, LeaseRenewal, Scale, *telemetry.MODELS.values()]
    schemas = model_schemas(models)
    for info in kinds:
        schemas[info.kind] = _tighten_kind(schemas[info.kind], info)
        schemas[info.kind]["x-kubernetes-group-version-kind"] = [gvk(API_GROUP, info.kind)]
    _tighten_labels(schemas)
    _describe_fields(schemas)
    schemas.update(_extra_schemas(kinds))
    paths: dict[str, Schema] = {}
    for info in kinds:
        paths.update(_kind_paths(info, with_watch))
    paths.update(_telemetry_paths())
    paths.update(_system_paths())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Keel API",
            "version": version,
            "description": "Kubernetes-style API of Keel's control plane: group keel.dev/v1 "
            "(persisted through consensus) and telemetry.keel.dev/v1 (in memory, with TTLs).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": info.kind} for info in kinds]
        + [{"name": "Telemetry"}, {"name": "Discovery"}, {"name": "System"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": _parameters(),
            "responses": _error_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the API server's token file",
                }
            },
        },
    }


# --------------------------------------------------------------------------- Kubernetes' layout

CORE_GVK = {"Namespace": gvk("", "Namespace"), "Event": gvk("", "Event")}


def core_openapi(keel_document: dict[str, Any]) -> dict[str, Any]:
    """`/openapi/v3/api/v1`: the core group's Namespaces (keel.dev's objects as apiVersion v1)
    and Events (telemetry), in the shape kubectl reads: operations and schemas carrying
    `x-kubernetes-group-version-kind`, writes taking `fieldValidation`."""
    schemas = copy.deepcopy(keel_document["components"]["schemas"])
    namespace = copy.deepcopy(schemas["Namespace"])
    namespace["properties"]["apiVersion"] = {"type": "string", "enum": ["v1"], "default": "v1"}
    namespace["x-kubernetes-group-version-kind"] = [CORE_GVK["Namespace"]]
    schemas["io.k8s.api.core.v1.Namespace"] = namespace
    schemas["io.k8s.api.core.v1.Event"] = {
        "type": "object",
        "description": "Something that happened to an object: telemetry, never stored.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": _ref("ObjectMeta"),
            "involvedObject": {"type": "object"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "type": {"type": "string"},
            "count": {"type": "integer"},
            "firstTimestamp": {"type": "string"},
            "lastTimestamp": {"type": "string"},
        },
        "x-kubernetes-group-version-kind": [CORE_GVK["Event"]],
    }
    ns_ref = "io.k8s.api.core.v1.Namespace"
    ok = {"200": _ok(ns_ref, "The Namespace")}
    validated = [FIELD_VALIDATION]
    paths: dict[str, Schema] = {
        "/api/v1/namespaces": {
            "get": _operation("listCoreV1Namespace", "List or watch namespaces", "Namespace",
                              {"200": {"description": "NamespaceList",
                                       "content": {JSON: {"schema": {"type": "object"}}}}}),
            "post": _operation("createCoreV1Namespace", "Create a Namespace", "Namespace",
                               {"201": _ok(ns_ref, "The created Namespace")},
                               parameters=validated, requestBody=_body(ns_ref, "The Namespace")),
        },
        "/api/v1/namespaces/{name}": {
            "parameters": [_param("name")],
            "get": _operation("readCoreV1Namespace", "Read a Namespace", "Namespace", ok),
            "put": _operation("replaceCoreV1Namespace", "Replace a Namespace", "Namespace", ok,
                              parameters=validated, requestBody=_body(ns_ref, "The Namespace")),
            "patch": _operation("patchCoreV1Namespace", "Patch a Namespace", "Namespace", ok,
                                parameters=validated, requestBody=_patch_body()),
            "delete": _operation("deleteCoreV1Namespace", "Delete a Namespace", "Namespace", ok),
        },
    }  # fmt: skip
    _mark_gvk(paths, CORE_GVK["Namespace"])
    events: dict[str, Schema] = {
        "/api/v1/namespaces/{namespace}/events": {
            "parameters": [_param("namespace")],
            "get": _operation("listCoreV1NamespacedEvent", "List the events of a namespace",
                              "Event", {"200": {"description": "EventList",
                                                "content": {JSON: {"schema": {"type": "object"}}}}},
                              parameters=[_param("fieldSelector")]),
        },
    }  # fmt: skip
    _mark_gvk(events, CORE_GVK["Event"])
    paths.update(events)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Keel API: core group", "version": keel_document["info"]["version"]},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": keel_document["components"]["parameters"],
            "responses": keel_document["components"]["responses"],
            "securitySchemes": keel_document["components"]["securitySchemes"],
        },
    }


def openapi_index(hashes: dict[str, str]) -> dict[str, Any]:
    """`/openapi/v3`: each group-version's document and the hash that names its content."""
    return {
        "paths": {
            gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
            for gv, digest in sorted(hashes.items())
        }
    }
