"""The ReplicaFailure condition of a Deployment whose creates are refused (a ResourceQuota):
the pure transition (`create_outcome`, `settle_creates`) and the plan around it, driven the
way the controller's shell drives them. It is written on transitions only: set with the
refusal's message, kept as it is while retries are refused alike, cleared once creates pass
(or nothing is left to create)."""

from __future__ import annotations

from itertools import product
from typing import get_args

import msgspec
from test_deployment import apply, deployment, ready, scaled

from keel.api.resources import Deployment, DeploymentCondition, Instance
from keel.clock import rfc3339
from keel.controllers.deployment import (
    REPLICA_FAILURE,
    REPLICA_FAILURE_TRANSITIONS,
    CreateInstance,
    CreateOutcome,
    UpdateStatus,
    create_outcome,
    new_revision,
    plan,
    settle_creates,
    template_hash,
)


def refusal(name: str, used: int, limit: int) -> str:
    return (
        f'instances "{name}" is forbidden: exceeded quota "team-a": requested instances=1, '
        f"used instances={used}, limited instances={limit}"
    )


def reconcile(
    dep: Deployment, instances: list[Instance], limit: int, now: float
) -> tuple[Deployment, list[Instance], int]:
    """One reconcile as the shell runs it, against a namespace that admits `limit`
    Instances: the plan's creates until the first refusal, then the status settled by what
    they met, written only if it differs. Returns the new state and the status writes (0/1)."""
    revisions = [new_revision(dep, template_hash(dep), 1)]
    actions = plan(dep, revisions, instances, now)
    planned = next((a.status for a in actions if isinstance(a, UpdateStatus)), dep.status)
    creates, refused = 0, None
    admitted: list[CreateInstance] = []
    for action in actions:
        if not isinstance(action, CreateInstance) or refused is not None:
            continue
        creates += 1
        if len(instances) + len(admitted) >= limit:
            refused = refusal(action.instance.metadata.name, limit, limit)
        else:
            admitted.append(action)
    _, instances = apply(dep, instances, admitted)
    outcome = create_outcome(dep, instances, creates=creates, refused=refused)
    settled = settle_creates(dep, planned, outcome, refused=refused, now=now)
    if settled == dep.status:
        return dep, instances, 0
    return msgspec.structs.replace(dep, status=settled), instances, 1


def failure(dep: Deployment) -> DeploymentCondition | None:
    return next((c for c in dep.status.conditions if c.type == REPLICA_FAILURE), None)


def test_every_condition_and_outcome_has_a_row() -> None:
    outcomes = get_args(CreateOutcome)
    assert set(REPLICA_FAILURE_TRANSITIONS) == set(product((False, True), outcomes))


def test_a_refused_create_sets_the_condition_naming_the_limit() -> None:
    dep, instances, writes = reconcile(deployment(5), [], limit=3, now=100.0)
    assert len(instances) == 3
    assert writes == 1
    condition = failure(dep)
    assert condition is not None
    assert (condition.status, condition.reason) == ("True", "FailedCreate")
    assert "limited instances=3" in condition.message
    assert condition.last_transition_time == rfc3339(100.0)
    assert condition.observed_generation == 1


def test_retries_refused_alike_write_nothing() -> None:
    dep, instances, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    instances = [ready(i) for i in instances]
    dep, instances, _ = reconcile(dep, instances, limit=3, now=101.0)  # ready counts move
    total = 0
    for retry in range(20):
        dep, instances, writes = reconcile(dep, instances, limit=3, now=102.0 + retry)
        total += writes
    assert total == 0
    condition = failure(dep)
    assert condition is not None
    assert condition.last_transition_time == rfc3339(100.0)


def test_the_condition_clears_once_creates_pass_again() -> None:
    dep, instances, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    dep, instances, writes = reconcile(dep, instances, limit=5, now=110.0)  # quota raised
    assert len(instances) == 5
    assert writes == 1
    assert failure(dep) is None
    dep, instances, writes = reconcile(dep, instances, limit=5, now=111.0)
    assert (writes, failure(dep)) == (0, None)


def test_scaling_down_to_what_exists_clears_the_condition() -> None:
    dep, instances, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    dep, instances, writes = reconcile(scaled(dep, 3), instances, limit=3, now=110.0)
    assert writes == 1
    assert failure(dep) is None


def test_another_refusal_replaces_the_message_and_keeps_the_transition_time() -> None:
    dep, _, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    planned = dep.status
    other = refusal(f"web-{template_hash(dep)}-3", 2, 2)
    outcome = create_outcome(dep, [], creates=1, refused=other)
    settled = settle_creates(dep, planned, outcome, refused=other, now=200.0)
    condition = next(c for c in settled.conditions if c.type == REPLICA_FAILURE)
    assert condition.message == other
    assert condition.last_transition_time == rfc3339(100.0)


def test_short_without_a_create_tried_keeps_what_it_knows() -> None:
    dep, instances, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    outcome = create_outcome(dep, instances, creates=0, refused=None)
    assert outcome == "short"
    assert settle_creates(dep, dep.status, outcome, refused=None, now=200.0) == dep.status


def test_the_plan_carries_the_condition_without_rewriting_it() -> None:
    dep, instances, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    dep, instances, _ = reconcile(dep, instances, limit=3, now=101.0)
    revisions = [new_revision(dep, template_hash(dep), 1)]
    statuses = [
        a.status for a in plan(dep, revisions, instances, 105.0) if isinstance(a, UpdateStatus)
    ]
    assert statuses == []  # the plan alone sees nothing to write either


# ------------------------------------------------------------------ what the CLI shows


def test_rollout_status_wait_and_get_wide_say_why_creates_are_refused() -> None:
    from keel.api.columns import TABLES, Extras
    from keel.api.registry import BY_KIND
    from keel.cli._wait import readiness
    from keel.cli.rollout import describe

    dep, instances, _ = reconcile(deployment(5), [], limit=3, now=100.0)
    dep, _, _ = reconcile(dep, instances, limit=3, now=101.0)
    line, done = describe(dep)
    assert done is None  # not failed: freed usage may end it
    assert line.endswith("ReplicaFailure: FailedCreate: " + refusal(
        f"web-{template_hash(dep)}-3", 3, 3
    ))  # fmt: skip
    verdict = readiness(BY_KIND["Deployment"], dep)
    assert not verdict.ready and not verdict.failed
    assert verdict.warning.startswith("deployment/web cannot create instances: FailedCreate: ")
    assert "limited instances=3" in verdict.reason
    table = TABLES["Deployment"]
    assert table.wide_row is not None
    wide = dict(zip(table.wide_headers, table.wide_row(dep, Extras()), strict=True))
    assert wide["MESSAGE"].startswith("FailedCreate: ") and "limited instances=3" in wide["MESSAGE"]

    cleared, _, _ = reconcile(dep, instances, limit=5, now=110.0)
    assert "ReplicaFailure" not in describe(cleared)[0]
    assert readiness(BY_KIND["Deployment"], cleared).warning == ""
    assert (
        dict(zip(table.wide_headers, table.wide_row(cleared, Extras()), strict=True))["MESSAGE"]
        == "<none>"
    )
