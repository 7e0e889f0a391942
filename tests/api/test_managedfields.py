"""Field ownership, pure: field sets in FieldsV1, apply (conflicts, force, co-ownership,
removal of fields a manager stops applying) and updates moving ownership to the writer."""

from __future__ import annotations

from typing import Any

import pytest

from keel.api.managedfields import (
    APPLY,
    UPDATE,
    Entry,
    apply,
    decode_entries,
    encode_entries,
    fields_of,
    from_fieldsv1,
    readable,
    record_update,
    to_fieldsv1,
)

NOW = "2026-12-03T00:00:00Z"


def dep(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": 2, **spec},
    }


def test_fields_name_members_keyed_items_and_set_members() -> None:
    doc = {
        "metadata": {"name": "x", "finalizers": ["a"], "labels": {"app": "web"}},
        "spec": {"ports": [{"name": "http", "port": 80}], "command": ["sh", "-c"]},
    }
    assert fields_of(doc) == {
        ("f:metadata", "f:finalizers", 'v:"a"'),
        ("f:metadata", "f:labels", "f:app"),
        ("f:spec", "f:ports", 'k:{"name":"http"}', "."),
        ("f:spec", "f:ports", 'k:{"name":"http"}', "f:name"),
        ("f:spec", "f:ports", 'k:{"name":"http"}', "f:port"),
        ("f:spec", "f:command"),  # an atomic list: one field
    }


def test_fieldsv1_round_trips_and_reads_like_kubernetes() -> None:
    fields = fields_of(dep())
    assert from_fieldsv1(to_fieldsv1(fields)) == fields
    assert to_fieldsv1(fields) == {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {"f:replicas": {}},
    }
    assert readable(("f:spec", "f:ports", 'k:{"name":"http"}', "f:port")) == (
        '.spec.ports[name="http"].port'
    )
    entries = [Entry("kubectl", APPLY, fields, NOW, "keel.dev/v1")]
    assert decode_entries(encode_entries(entries)) == entries


def test_a_first_apply_creates_and_owns_what_it_sets() -> None:
    result = apply(None, dep(), [], manager="kubectl", force=False, now=NOW)
    assert result.object["spec"] == {"replicas": 2}
    [entry] = result.entries
    assert (entry.manager, entry.operation) == ("kubectl", APPLY)
    assert ("f:spec", "f:replicas") in entry.fields


def test_changing_a_field_another_manager_owns_conflicts_unless_forced() -> None:
    first = apply(None, dep(), [], manager="alice", force=False, now=NOW)
    clash = apply(first.object, dep(replicas=5), first.entries, manager="bob", force=False, now=NOW)
    assert [c.describe() for c in clash.conflicts] == ['.spec.replicas (owned by "alice")']
    assert clash.object["spec"]["replicas"] == 2  # nothing applied
    forced = apply(first.object, dep(replicas=5), first.entries, manager="bob", force=True, now=NOW)
    assert forced.object["spec"]["replicas"] == 5 and not forced.conflicts
    owners = {e.manager: e.fields for e in forced.entries}
    assert ("f:spec", "f:replicas") in owners["bob"]
    assert ("f:spec", "f:replicas") not in owners["alice"]


def test_applying_the_same_value_shares_ownership() -> None:
    first = apply(None, dep(), [], manager="alice", force=False, now=NOW)
    second = apply(first.object, dep(), first.entries, manager="bob", force=False, now=NOW)
    assert not second.conflicts
    owners = [e.manager for e in second.entries if ("f:spec", "f:replicas") in e.fields]
    assert owners == ["alice", "bob"]


def test_a_field_no_longer_applied_is_removed_unless_someone_else_owns_it() -> None:
    first = apply(None, dep(paused=True), [], manager="alice", force=False, now=NOW)
    dropped = apply(first.object, dep(), first.entries, manager="alice", force=False, now=NOW)
    assert "paused" not in dropped.object["spec"]
    # Labels: merged, not replaced; one dropped by its only applier goes.
    labelled = dep()
    labelled["metadata"]["labels"] = {"app": "web", "tier": "front"}
    again = apply(dropped.object, labelled, dropped.entries, manager="alice", force=False, now=NOW)
    assert again.object["metadata"]["labels"] == {"app": "web", "tier": "front"}
    shared = apply(again.object, labelled, again.entries, manager="bob", force=False, now=NOW)
    back = apply(shared.object, dep(), shared.entries, manager="alice", force=False, now=NOW)
    assert back.object["metadata"]["labels"] == {"app": "web", "tier": "front"}  # bob's too


def test_an_update_moves_the_fields_it_changes_to_the_writer() -> None:
    first = apply(None, dep(), [], manager="kubectl", force=False, now=NOW)
    after = dep(replicas=7)
    entries = record_update(first.object, after, first.entries, manager="hpa", now=NOW)
    owners = {(e.manager, e.operation): e.fields for e in entries}
    assert ("f:spec", "f:replicas") in owners[("hpa", UPDATE)]
    assert ("f:spec", "f:replicas") not in owners[("kubectl", APPLY)]
    # ...so the next apply of another value by kubectl conflicts with hpa.
    clash = apply(after, dep(replicas=2), entries, manager="kubectl", force=False, now=NOW)
    assert [c.manager for c in clash.conflicts] == ["hpa"]


def test_an_update_that_changes_nothing_leaves_the_entries_alone() -> None:
    entries = [Entry("kubectl", APPLY, fields_of(dep()), "2026-01-01T00:00:00Z")]
    assert record_update(dep(), dep(), entries, manager="x", now=NOW) == entries


@pytest.mark.parametrize(
    ("current", "applied", "expected"),
    [
        ([{"type": "Ready", "status": "True"}], [{"type": "Synced", "status": "False"}],
         [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]),
        ([{"type": "Ready", "status": "True"}], [{"type": "Ready", "status": "False"}],
         [{"type": "Ready", "status": "False"}]),
    ],
)  # fmt: skip
def test_keyed_lists_merge_item_by_item(
    current: list[dict[str, str]], applied: list[dict[str, str]], expected: list[dict[str, str]]
) -> None:
    base = {"status": {"conditions": current}}
    result = apply(base, {"status": {"conditions": applied}}, [], manager="m", force=False, now=NOW)
    assert result.object["status"]["conditions"] == expected
