"""Field ownership, pure: the registry's owners are enforced on components (403 naming the
field, its owner and the writer), recorded for everyone; an unchanged write changes no
entry."""

from __future__ import annotations

import msgspec
import pytest

from keel.api.ownership import FieldsOwnedElsewhere, Writer, entries_of, owner_of, track
from keel.api.resources import (
    Condition,
    Deployment,
    DeploymentSpec,
    DeploymentStatus,
    Instance,
    InstanceSpec,
    InstanceStatus,
    InstanceTemplate,
    ObjectMeta,
)

NOW = "2026-12-03T00:00:00Z"


def deployment(replicas: int = 1) -> Deployment:
    return Deployment(
        kind="Deployment",
        metadata=ObjectMeta(name="web", namespace="default"),
        spec=DeploymentSpec(
            template=InstanceTemplate(spec=InstanceSpec(command=["x"])), replicas=replicas
        ),
    )


def with_status(dep: Deployment, ready: int) -> Deployment:
    return msgspec.structs.replace(dep, status=DeploymentStatus(ready_replicas=ready))


def test_a_create_records_its_manager() -> None:
    created = track("Deployment", None, deployment(), Writer("kubectl"), now=NOW)
    [entry] = entries_of(created)
    assert entry.manager == "kubectl" and ("f:spec", "f:replicas") in entry.fields


def test_the_deployment_controller_owns_deployment_status() -> None:
    before = track("Deployment", None, deployment(), Writer("kubectl"), now=NOW)
    after = with_status(before, 1)
    written = track("Deployment", before, after, Writer("deployment", enforced=True), now=NOW)
    owners = {e.manager for e in entries_of(written)}
    assert owners == {"kubectl", "deployment"}
    with pytest.raises(FieldsOwnedElsewhere) as refused:
        track("Deployment", before, after, Writer("nodelifecycle", enforced=True), now=NOW)
    assert refused.value.message == (
        'Deployment web: field .status.readyReplicas is owned by "deployment" (the deployment '
        'controller reports rollouts); field manager "nodelifecycle" may not write it'
    )
    # A user (not enforced) may repair it by hand; the write is recorded as theirs.
    by_hand = track("Deployment", before, after, Writer("admin"), now=NOW)
    assert {e.manager for e in entries_of(by_hand)} == {"kubectl", "admin"}


def instance(*conditions: Condition, node: str = "") -> Instance:
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(name="i", namespace="default"),
        spec=InstanceSpec(command=["x"], node_name=node),
        status=InstanceStatus(conditions=list(conditions)),
    )


def test_the_scheduler_binds_and_says_why_not_the_agent_the_rest() -> None:
    unschedulable = Condition(type="Scheduled", status="False", reason="Unschedulable")
    ready = Condition(type="Ready", status="True")
    base = instance()
    track("Instance", base, instance(unschedulable), Writer("scheduler", enforced=True), now=NOW)
    with pytest.raises(FieldsOwnedElsewhere, match=r'\.status\.conditions\[type="Scheduled"\]'):
        track("Instance", base, instance(unschedulable), Writer("agent", enforced=True), now=NOW)
    track("Instance", base, instance(ready), Writer("agent", enforced=True), now=NOW)
    with pytest.raises(FieldsOwnedElsewhere, match='is owned by "agent"'):
        track("Instance", base, instance(ready), Writer("scheduler", enforced=True), now=NOW)
    track("Instance", base, instance(node="n1"), Writer("scheduler", enforced=True), now=NOW)
    with pytest.raises(FieldsOwnedElsewhere, match="only the scheduler binds"):
        track("Instance", base, instance(node="n1"), Writer("deployment", enforced=True), now=NOW)


def test_the_scheduler_nominates_the_node_a_preemption_frees() -> None:
    base = instance()
    preempting = Condition(type="Scheduled", status="False", reason="Preempting")
    nominated = msgspec.structs.replace(
        instance(preempting),
        status=InstanceStatus(conditions=[preempting], nominated_node_name="n1"),
    )
    track("Instance", base, nominated, Writer("scheduler", enforced=True), now=NOW)
    only_nominated = msgspec.structs.replace(base, status=InstanceStatus(nominated_node_name="n1"))
    with pytest.raises(FieldsOwnedElsewhere, match=r'\.status\.nominatedNodeName is owned by "sc'):
        track("Instance", base, only_nominated, Writer("agent", enforced=True), now=NOW)


def test_the_most_specific_owner_wins() -> None:
    ready = owner_of("Node", ("f:status", "f:conditions", 'k:{"type":"Ready"}', "f:status"))
    assert ready is not None and ready.managers == {"agent", "nodelifecycle"}
    other = owner_of("Node", ("f:status", "f:addresses"))
    assert other is not None and other.managers == {"agent"}
    assert owner_of("Node", ("f:spec", "f:unschedulable")) is None


def test_a_write_that_changes_nothing_keeps_the_entries() -> None:
    before = track("Deployment", None, deployment(), Writer("kubectl"), now=NOW)
    again = track("Deployment", before, before, Writer("someone"), now="2030-01-01T00:00:00Z")
    assert again.metadata.managed_fields == before.metadata.managed_fields


def test_a_component_creating_an_object_leaves_its_status_defaults_to_the_owner() -> None:
    fresh = instance()  # status phase Pending: a default, not a write of the agent's field
    created = track("Instance", None, fresh, Writer("deployment", enforced=True), now=NOW)
    assert entries_of(created)[0].manager == "deployment"
    with pytest.raises(FieldsOwnedElsewhere, match="only the scheduler binds"):
        track("Instance", None, instance(node="n1"), Writer("deployment", enforced=True), now=NOW)
