"""The disruption budget an eviction is judged by: pure decisions, no server."""

from __future__ import annotations

from keel.api.disruption import decide_eviction
from keel.api.resources import (
    Condition,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceStatus,
    InstanceTemplate,
    ObjectMeta,
    OwnerReference,
    RollingUpdate,
    Strategy,
)

TEMPLATE = InstanceTemplate(spec=InstanceSpec(command=["sleep", "1"]))


def web(replicas: int = 3, max_unavailable: int | str = 1, uid: str = "web-uid") -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="web", namespace="default", uid=uid),
        spec=DeploymentSpec(
            replicas=replicas,
            template=TEMPLATE,
            strategy=Strategy(rolling_update=RollingUpdate(max_unavailable=max_unavailable)),
        ),
    )


def replica(
    name: str, *, ready: bool = True, owner: str | None = "web-uid", terminating: bool = False
) -> Instance:
    refs = []
    if owner is not None:
        refs = [
            OwnerReference(
                api_version="keel.dev/v1", kind="Deployment", name="web", uid=owner, controller=True
            )
        ]
    status = "True" if ready else "False"
    return Instance(
        metadata=ObjectMeta(
            name=name,
            namespace="default",
            uid=f"{name}-uid",
            owner_references=refs,
            deletion_timestamp="2026-01-01T00:00:00Z" if terminating else None,
        ),
        spec=InstanceSpec(command=["sleep", "1"], node_name="n1"),
        status=InstanceStatus(phase="Running", conditions=[Condition(type="Ready", status=status)]),
    )


def test_a_ready_replica_may_go_while_enough_stay_available() -> None:
    replicas = [replica("web-0"), replica("web-1"), replica("web-2")]
    decision = decide_eviction(replicas[0], web(), replicas)
    assert decision.allowed
    assert decision.budget is not None and decision.budget.available == 3
    assert set(decision.counted) == {"web-0", "web-1", "web-2"}


def test_a_second_ready_replica_is_refused_until_the_first_is_replaced() -> None:
    replicas = [replica("web-0", terminating=True), replica("web-1"), replica("web-2")]
    decision = decide_eviction(replicas[1], web(), replicas)
    assert not decision.allowed
    assert decision.message == (
        "would violate the disruption budget of deployment web: "
        "2 of 3 available, at most 1 may be unavailable"
    )
    replaced = [*replicas, replica("web-3")]
    assert decide_eviction(replicas[1], web(), replaced).allowed


def test_max_unavailable_as_a_percentage_rounds_down_as_the_rollout_does() -> None:
    replicas = [replica(f"web-{i}") for i in range(4)]
    assert decide_eviction(replicas[0], web(4, "50%"), replicas).allowed  # 2 may go
    assert not decide_eviction(replicas[0], web(3, "25%"), replicas[:3]).allowed  # 0 may go


def test_an_unready_replica_may_always_go_it_serves_nobody() -> None:
    replicas = [replica("web-0", ready=False), replica("web-1", ready=False), replica("web-2")]
    decision = decide_eviction(replicas[0], web(), replicas)
    assert decision.allowed
    assert "not ready" in decision.message


def test_an_instance_without_an_owning_deployment_is_evicted_unchecked() -> None:
    solo = replica("solo", owner=None)
    decision = decide_eviction(solo, None, [solo])
    assert decision.allowed and decision.budget is None
    assert "no owning Deployment" in decision.message


def test_an_instance_whose_deployment_is_gone_or_replaced_is_evicted_unchecked() -> None:
    orphan = replica("web-0")
    assert decide_eviction(orphan, None, [orphan]).budget is None
    assert decide_eviction(orphan, web(uid="another-incarnation"), [orphan]).budget is None


def test_replicas_of_other_deployments_do_not_count() -> None:
    ours = [replica("web-0"), replica("web-1", ready=False), replica("web-2", ready=False)]
    theirs = [replica(f"other-{i}", owner="other-uid") for i in range(5)]
    decision = decide_eviction(ours[0], web(), ours + theirs)
    assert not decision.allowed
    assert decision.budget is not None and decision.budget.available == 1
