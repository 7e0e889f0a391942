"""The API server's pure parts: selectors, patches, path parsing, update and delete rules."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.api.patch import PatchError, PatchTestFailed, json_patch, merge_patch, parse_pointer
from keel.api.registry import BY_KIND, BY_PLURAL
from keel.api.resources import (
    STOP_CONFIRMED,
    Deployment,
    DeploymentSpec,
    DeploymentStatus,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    Lease,
    LeaseSpec,
    ObjectMeta,
)
from keel.api.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    supported_fields,
)
from keel.api.server import (
    decode_body,
    decode_continue,
    encode_continue,
    full_builtins,
    nesting_depth,
    parse_path,
    pointer_field,
    validation_cause,
)
from keel.api.storage import (
    ApiError,
    Fencing,
    Preconditions,
    bind_instance,
    check_preconditions,
    finished_deleting,
    plan_delete,
    prepare_create,
    prepare_update,
)

DEPLOYMENTS = BY_KIND["Deployment"]
INSTANCES = BY_KIND["Instance"]
LEASES = BY_KIND["Lease"]


def a_deployment(replicas: int = 2, **meta: Any) -> Deployment:
    return Deployment(
        kind="Deployment",
        metadata=ObjectMeta(
            **{"name": "web", "namespace": "default", "uid": "u1", "generation": 1, **meta}
        ),
        spec=DeploymentSpec(
            template=InstanceTemplate(spec=InstanceSpec(command=["sleep"])), replicas=replicas
        ),
    )


# ------------------------------------------------------------------------- label selectors


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app!=web", {"app": "web"}, False),
        ("env in (a, b)", {"env": "b"}, True),
        ("env in (a,b)", {}, False),
        ("env notin (a,b)", {}, True),
        ("env notin (a,b)", {"env": "a"}, False),
        ("tier", {"tier": ""}, True),
        ("!tier", {"tier": "x"}, False),
        ("app=web,env in (a),!canary", {"app": "web", "env": "a"}, True),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    "selector", ["env in (a", "a b", "env in ()", "bad key!=x", "app=in valid", "x,,y", "a)"]
)
def test_malformed_label_selectors_are_refused_with_a_reason(selector: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert str(info.value)


label_keys = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
label_values = st.from_regex(r"[a-z0-9]{1,4}", fullmatch=True)


@given(st.dictionaries(label_keys, label_values, max_size=4), label_keys, label_values)
def test_equality_and_inequality_are_complements(
    labels: dict[str, str], key: str, value: str
) -> None:
    eq = parse_label_selector(f"{key}={value}").matches(labels)
    ne = parse_label_selector(f"{key}!={value}").matches(labels)
    assert eq != ne
    assert parse_label_selector(f"{key} in ({value})").matches(labels) == eq


def test_field_selectors_match_the_supported_fields() -> None:
    fields = supported_fields(Instance)
    assert fields == {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"}
    assert supported_fields(Deployment) == {"metadata.name", "metadata.namespace", "status.phase"}
    inst = Instance(metadata=ObjectMeta(name="i"), spec=InstanceSpec(command=["x"], node_name="n"))
    assert parse_field_selector("spec.nodeName=n,status.phase=Pending", fields).matches(inst)
    assert not parse_field_selector("metadata.name!=i", fields).matches(inst)
    with pytest.raises(SelectorError, match=r"spec\.nodeName"):
        parse_field_selector("spec.nodeName=n", supported_fields(Deployment))
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name", fields)


# ------------------------------------------------------------------------- patches

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(json_objects, json_objects)
def test_merge_patch_is_idempotent_and_leaves_its_input_alone(
    target: dict[str, Any], patch: dict[str, Any]
) -> None:
    before = copy.deepcopy(target)
    once = merge_patch(target, patch)
    assert target == before
    assert merge_patch(once, patch) == once


def test_merge_patch_examples_from_rfc_7386() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


@given(json_objects, json_values)
def test_json_patch_add_then_remove_restores_the_document(
    document: dict[str, Any], value: Any
) -> None:
    key = "new-key/~"
    document.pop(key, None)
    pointer = "/new-key~1~0"
    added = json_patch(document, [{"op": "add", "path": pointer, "value": value}])
    assert added[key] == value
    assert json_patch(added, [{"op": "remove", "path": pointer}]) == document


def test_json_patch_examples_from_rfc_6902() -> None:
    doc = {"foo": ["bar", "baz"], "q": {"x": 1}}
    assert json_patch(doc, [{"op": "add", "path": "/foo/1", "value": "qux"}])["foo"] == [
        "bar",
        "qux",
        "baz",
    ]
    assert json_patch(doc, [{"op": "add", "path": "/foo/-", "value": 1}])["foo"][-1] == 1
    moved = json_patch(doc, [{"op": "move", "from": "/q/x", "path": "/y"}])
    assert moved == {"foo": ["bar", "baz"], "q": {}, "y": 1}
    copied = json_patch(doc, [{"op": "copy", "from": "/foo", "path": "/bar"}])
    assert copied["bar"] == ["bar", "baz"]
    assert json_patch(doc, [{"op": "replace", "path": "", "value": 3}]) == 3
    assert doc == {"foo": ["bar", "baz"], "q": {"x": 1}}


def test_json_patch_is_all_or_nothing_and_names_the_failing_operation() -> None:
    doc = {"a": 1}
    with pytest.raises(PatchError, match="operation 1") as info:
        json_patch(
            doc, [{"op": "replace", "path": "/a", "value": 2}, {"op": "remove", "path": "/b"}]
        )
    assert info.value.path == "/b"
    assert doc == {"a": 1}
    with pytest.raises(PatchTestFailed, match="/a"):
        json_patch(doc, [{"op": "test", "path": "/a", "value": True}])
    for bad in (
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "add", "path": "/a"}],
        [{"op": "move", "from": "/a", "path": "/a/b"}],
        {"op": "add"},
        [{"op": "add", "path": "/list/01", "value": 1}],
    ):
        with pytest.raises(PatchError):
            json_patch({"a": {"b": 1}, "list": [1, 2]}, bad)


def test_pointers_unescape_and_become_field_paths() -> None:
    assert parse_pointer("/a~1b/~0c/0") == ["a/b", "~c", "0"]
    assert parse_pointer("") == []
    assert pointer_field("/spec/ports/0/name") == "spec.ports[0].name"


# ------------------------------------------------------------------------- request parsing


def test_paths_resolve_to_kind_namespace_name_and_subresource() -> None:
    t = parse_path("namespaces/ns1/deployments/web/status")
    assert (t.info.kind, t.namespace, t.name, t.subresource) == (
        "Deployment",
        "ns1",
        "web",
        "status",
    )
    t = parse_path("namespaces/ns1")
    assert (t.info.kind, t.namespace, t.name) == ("Namespace", None, "ns1")
    t = parse_path("namespaces/ns1/status")
    assert (t.info.kind, t.name, t.subresource) == ("Namespace", "ns1", "status")
    t = parse_path("deployments")
    assert (t.info.kind, t.namespace, t.name) == ("Deployment", None, None)
    assert parse_path("namespaces/ns/leases/l/renew").subresource == "renew"
    for bad in (
        "widgets",
        "deployments/web",  # namespaced kind without a namespace
        "namespaces/ns/nodes/n1",  # cluster-scoped kind within a namespace
        "namespaces/ns/deployments/web/binding",
        "namespaces/ns/deployments/web/status/extra",
        "",
    ):
        with pytest.raises(ApiError) as info:
            parse_path(bad)
        assert info.value.code == 404


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("Expected `int`, got `str` - at `$.spec.replicas`", "spec.replicas"),
        ("Object contains unknown field `foo` - at `$.spec`", "spec.foo"),
        ("Object missing required field `spec`", "spec"),
        ("metadata.labels: invalid label key 'a b' - at `$.metadata`", "metadata.labels"),
        (
            "healthCheck.command: required - at `$.spec.template.spec.healthCheck`",
            "spec.template.spec.healthCheck.command",
        ),
        ("ports: names must be unique - at `$.spec`", "spec.ports"),
    ],
)
def test_validation_messages_become_causes_naming_the_field(message: str, field: str) -> None:
    assert validation_cause(message).field == field


def test_a_body_is_decoded_strictly_and_checked_against_the_url() -> None:
    body = {"metadata": {"name": "web"}, "spec": {"template": {"spec": {"command": ["x"]}}}}
    raw = json.dumps(body).encode()
    obj = decode_body(DEPLOYMENTS, raw, namespace="ns", name=None, max_bytes=1 << 20)
    assert (obj.kind, obj.metadata.namespace) == ("Deployment", "ns")
    with pytest.raises(ApiError) as info:
        decode_body(DEPLOYMENTS, raw, namespace="ns", name="other", max_bytes=1 << 20)
    assert info.value.code == 400
    with pytest.raises(ApiError) as info:
        decode_body(DEPLOYMENTS, b"[1]", namespace="ns", name=None, max_bytes=1 << 20)
    assert info.value.code == 400
    with pytest.raises(ApiError) as info:
        decode_body(DEPLOYMENTS, raw, namespace="ns", name=None, max_bytes=10)
    assert info.value.code == 413


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\abé'),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\abé'), inner, max_size=3)
    ),
    max_leaves=30,
)


@given(_JSON_VALUES, st.booleans())
def test_nesting_depth_counts_arrays_and_objects_but_not_brackets_in_strings(
    value: Any, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(text) == _depth(value)


@given(st.integers(1, 2**62), st.binary(min_size=1, max_size=40))
def test_continue_tokens_round_trip(revision: int, key: bytes) -> None:
    assert decode_continue(encode_continue(revision, key)) == (revision, key)


def test_full_builtins_keeps_default_fields_for_patching() -> None:
    doc = full_builtins(a_deployment(replicas=1))
    assert doc["spec"]["replicas"] == 1
    assert doc["status"]["readyReplicas"] == 0
    assert msgspec.convert(doc, Deployment) == a_deployment(replicas=1)


def test_fencing_headers_parse_or_are_400() -> None:
    fencing = Fencing.parse("keel-system/controller-manager=42")
    assert (fencing.namespace, fencing.lease, fencing.token) == (
        "keel-system",
        "controller-manager",
        42,
    )
    assert fencing.key == b"/registry/leases/keel-system/controller-manager"
    for bad in ("x=1", "ns/l", "ns/l=", "ns/l=-1", "/l=1"):
        with pytest.raises(ApiError) as info:
            Fencing.parse(bad)
        assert info.value.code == 400


# ------------------------------------------------------------------------- write rules


def test_create_sets_identity_and_ignores_client_bookkeeping() -> None:
    proposed = a_deployment(resource_version="99", generation=7, deletion_timestamp="x")
    created = prepare_create(DEPLOYMENTS, proposed, namespace="ns", name="web", uid="u2", now=0)
    meta = created.metadata
    assert (meta.uid, meta.generation, meta.resource_version) == ("u2", 1, "")
    assert meta.creation_timestamp == "1970-01-01T00:00:00Z"
    assert meta.deletion_timestamp is None
    lease_obj = Lease(
        metadata=ObjectMeta(name="l"), spec=LeaseSpec(holder_identity="a", lease_duration_seconds=5)
    )
    assert prepare_create(
        LEASES, lease_obj, namespace="ns", name="l", uid="u", now=1
    ).status.acquire_time


def test_generation_counts_spec_changes_only() -> None:
    current = a_deployment(2)
    relabelled = msgspec.structs.replace(
        current, metadata=msgspec.structs.replace(current.metadata, labels={"a": "b"})
    )
    assert (
        prepare_update(DEPLOYMENTS, current, relabelled, subresource=None).metadata.generation == 1
    )
    scaled = prepare_update(DEPLOYMENTS, current, a_deployment(3), subresource=None)
    assert scaled.metadata.generation == 2


def test_status_updates_change_only_status_and_main_updates_keep_it() -> None:
    current = a_deployment(2)
    proposed = msgspec.structs.replace(
        a_deployment(9, labels={"x": "y"}), status=DeploymentStatus(ready_replicas=2)
    )
    status_only = prepare_update(DEPLOYMENTS, current, proposed, subresource="status")
    assert status_only.spec.replicas == 2
    assert status_only.metadata.labels == {}
    assert status_only.status.ready_replicas == 2
    main = prepare_update(DEPLOYMENTS, status_only, proposed, subresource=None)
    assert main.spec.replicas == 9
    assert main.status.ready_replicas == 2


def test_identity_and_deletion_mark_survive_updates() -> None:
    current = a_deployment(2, deletion_timestamp="2026-01-01T00:00:00Z", finalizers=["f"])
    proposed = a_deployment(2, uid="evil", finalizers=[])
    updated = prepare_update(DEPLOYMENTS, current, proposed, subresource=None)
    assert updated.metadata.uid == "u1"
    assert updated.metadata.deletion_timestamp == "2026-01-01T00:00:00Z"
    assert finished_deleting(updated)


def test_bound_node_and_lease_holder_are_immutable() -> None:
    bound = Instance(
        kind="Instance",
        metadata=ObjectMeta(name="i"),
        spec=InstanceSpec(command=["x"], node_name="n1"),
    )
    moved = msgspec.structs.replace(bound, spec=msgspec.structs.replace(bound.spec, node_name="n2"))
    with pytest.raises(ApiError) as info:
        prepare_update(INSTANCES, bound, moved, subresource=None)
    assert info.value.code == 422
    assert info.value.details is not None
    assert info.value.details.causes[0].field == "spec.nodeName"
    assert prepare_update(INSTANCES, moved, bound, subresource="binding").spec.node_name == "n1"
    held = Lease(
        metadata=ObjectMeta(name="l"), spec=LeaseSpec(holder_identity="a", lease_duration_seconds=5)
    )
    taken = msgspec.structs.replace(
        held, spec=LeaseSpec(holder_identity="b", lease_duration_seconds=5)
    )
    with pytest.raises(ApiError):
        prepare_update(LEASES, held, taken, subresource=None)


@pytest.mark.parametrize(
    ("finalizers", "marked", "action"),
    [
        ([], None, "delete"),
        ([], "2026-01-01T00:00:00Z", "delete"),
        (["f"], None, "mark"),
        (["f"], "2026-01-01T00:00:00Z", "wait"),
    ],
)
def test_delete_honours_finalizers(finalizers: list[str], marked: str | None, action: str) -> None:
    obj = a_deployment(finalizers=finalizers, deletion_timestamp=marked)
    decided, result = plan_delete(obj, now=100.0)
    assert decided == action
    if action == "mark":
        assert result.metadata.deletion_timestamp == "1970-01-01T00:01:40Z"
    namespace = BY_PLURAL["namespaces"].model(metadata=ObjectMeta(name="n", finalizers=["f"]))
    assert plan_delete(namespace, 0)[1].status.phase == "Terminating"  # type: ignore[attr-defined]


def an_instance(
    *, exclusive: bool, node: str = "", finalizers: list[str] | None = None
) -> Instance:
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(name="i", namespace="default", uid="u1", finalizers=finalizers or []),
        spec=InstanceSpec(command=["x"], node_name=node, exclusive=exclusive),
    )


# (exclusive, finalizers before) -> finalizers once bound
@pytest.mark.parametrize(
    ("exclusive", "before", "after"),
    [
        (True, [], [STOP_CONFIRMED]),
        (True, ["mine"], ["mine", STOP_CONFIRMED]),
        (True, [STOP_CONFIRMED], [STOP_CONFIRMED]),  # added once
        (False, [], []),  # a plain instance is deleted at once, as before
        (False, ["mine"], ["mine"]),
    ],
)
def test_binding_an_exclusive_instance_adds_the_stop_confirmed_finalizer(
    exclusive: bool, before: list[str], after: list[str]
) -> None:
    current = an_instance(exclusive=exclusive, finalizers=before)
    bound = bind_instance(INSTANCES, current, "n1")
    assert bound.metadata.finalizers == after
    # The binding subresource writes spec.nodeName and these finalizers, nothing else.
    written = prepare_update(INSTANCES, current, bound, subresource="binding")
    assert written.metadata.finalizers == after
    assert written.spec.node_name == "n1"  # type: ignore[attr-defined]


def test_an_exclusive_instance_created_bound_gets_the_finalizer_too() -> None:
    for node, wanted in (("n1", [STOP_CONFIRMED]), ("", [])):
        created = prepare_create(INSTANCES, an_instance(exclusive=True, node=node),
                                 namespace="default", name="i", uid="u1", now=0.0)  # fmt: skip
        assert created.metadata.finalizers == wanted


def test_a_bound_exclusive_instance_is_only_marked_by_a_delete() -> None:
    bound = bind_instance(INSTANCES, an_instance(exclusive=True), "n1")
    decided, marked = plan_delete(bound, now=100.0)
    assert decided == "mark" and marked.metadata.deletion_timestamp
    assert plan_delete(marked, now=200.0)[0] == "wait"
    with pytest.raises(ApiError) as info:  # no second binding of a terminating instance
        bind_instance(INSTANCES, marked, "n2")
    assert info.value.code == 409
    released = msgspec.structs.replace(
        marked, metadata=msgspec.structs.replace(marked.metadata, finalizers=[])
    )
    assert finished_deleting(prepare_update(INSTANCES, marked, released, subresource=None))


def test_delete_preconditions_are_conflicts() -> None:
    obj = a_deployment(resource_version="5")
    check_preconditions(DEPLOYMENTS, obj, Preconditions(uid="u1", resource_version="5"))
    for pre in (Preconditions(uid="u0"), Preconditions(resource_version="4")):
        with pytest.raises(ApiError) as info:
            check_preconditions(DEPLOYMENTS, obj, pre)
        assert (info.value.code, info.value.reason) == (409, "Conflict")
