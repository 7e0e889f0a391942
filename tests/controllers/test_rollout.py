"""The rollout machinery of the deployment plan, pure: Revisions, minReadySeconds, pause,
the progress deadline, conditions, stable revisions, automatic rollback and pruning; the
transition table itself; and validation of the fields that are not acted on yet."""

from __future__ import annotations

import re

import msgspec
import pytest
from rollout_world import World, deployment

from keel.api.resources import STABLE_ANNOTATION, Deployment
from keel.controllers.deployment import (
    CreateInstance,
    DeleteInstance,
    RecordEvent,
    RequeueAfter,
    template_hash,
)
from keel.controllers.rollout import TRANSITIONS, lookup


def healthy_world(replicas: int = 3, **spec: object) -> World:
    """v1 rolled out, available and stable."""
    world = World(deployment(replicas, **spec))
    world.healthy.add(template_hash(world.dep))
    world.settle()
    world.advance(world.dep.spec.min_ready_seconds)
    world.settle()
    world.advance(world.dep.spec.bake_seconds)
    world.settle()
    assert world.dep.status.stable_revision == template_hash(world.dep)
    return world


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize(
    ("phase", "signal", "next_phase", "reason"),
    [
        ("Complete", "NewTemplate", "Progressing", "NewRevisionCreated"),
        ("RolledBack", "NewTemplate", "Progressing", "NewRevisionCreated"),
        ("Progressing", "Pause", "Paused", "DeploymentPaused"),
        ("Paused", "Resume", "Progressing", "DeploymentResumed"),
        ("Progressing", "Complete", "Complete", "NewRevisionAvailable"),
        ("Complete", "Baked", "Complete", "RevisionStable"),
        ("Complete", "Incomplete", "Progressing", "InstancesUnavailable"),
        ("Progressing", "Deadline", "Failed", "ProgressDeadlineExceeded"),
        ("Progressing", "DeadlineRollback", "RollingBack", "ProgressDeadlineExceeded"),
        ("Progressing", "CrashLoopRollback", "RollingBack", "CrashLoop"),
        ("Complete", "CrashLoopRollback", "RollingBack", "CrashLoop"),
        ("RollingBack", "Complete", "RolledBack", "RolledBack"),
        ("Failed", "Complete", "Complete", "NewRevisionAvailable"),
    ],
)
def test_transition_table_rows(phase: str, signal: str, next_phase: str, reason: str) -> None:
    row = lookup(phase, signal)  # type: ignore[arg-type]
    assert row is not None and (row.next, row.reason) == (next_phase, reason)


@pytest.mark.parametrize(
    ("phase", "signal"),
    [
        ("Paused", "Deadline"),  # a paused rollout cannot fail
        ("Paused", "CrashLoopRollback"),
        ("RollingBack", "Deadline"),  # a rollback is never rolled back
        ("RolledBack", "CrashLoopRollback"),
        ("RolledBack", "Complete"),
        ("Complete", "Deadline"),  # done is done
    ],
)
def test_transitions_that_do_not_exist(phase: str, signal: str) -> None:
    assert lookup(phase, signal) is None  # type: ignore[arg-type]


def test_every_rollback_row_remembers_the_bad_revision() -> None:
    for (_, _), row in TRANSITIONS.items():
        assert row.remember_failed == (row.next == "RollingBack")


# ------------------------------------------------------------------ revisions


def test_every_template_gets_an_immutable_numbered_revision_owned_by_the_deployment() -> None:
    world = healthy_world()
    v1 = template_hash(world.dep)
    world.template("v2")
    world.step()
    v2 = template_hash(world.dep)
    revisions = {r.metadata.name: r for r in world.revisions.values()}
    assert set(revisions) == {f"web-{v1}", f"web-{v2}"}
    assert revisions[f"web-{v1}"].spec.revision == 1
    assert revisions[f"web-{v2}"].spec.revision == 2
    owner = revisions[f"web-{v2}"].metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("Deployment", "web", "dep-uid")
    status = world.dep.status
    assert (status.update_revision, status.stable_revision, status.current_revision) == (
        v2,
        v1,
        v1,
    )


def test_a_revision_is_marked_stable_once_after_the_bake_time() -> None:
    world = World(deployment(2, bake_seconds=30))
    world.healthy.add(template_hash(world.dep))
    world.settle()
    assert world.dep.status.phase == "Complete" and world.dep.status.stable_revision == ""
    world.advance(29)
    world.settle()
    assert world.dep.status.stable_revision == ""
    world.advance(1)
    world.settle()
    (revision,) = world.revisions.values()
    assert world.dep.status.stable_revision == template_hash(world.dep)
    assert STABLE_ANNOTATION in revision.metadata.annotations
    writes = world.writes
    world.advance(100)
    world.settle()
    assert world.writes == writes  # idle: nothing written, the annotation not again


def test_revision_history_limit_prunes_the_oldest_unused_revisions() -> None:
    world = healthy_world(1, revision_history_limit=2)
    for version in ("v2", "v3", "v4", "v5"):
        world.healthy.add(template_hash(deployment(command=version)))
        world.template(version)
        world.settle()
    numbers = sorted(r.spec.revision for r in world.revisions.values())
    # 5 is the update revision and 1 the stable one (none baked since): both in use; of the
    # unused 2, 3 and 4, the limit keeps the newest two
    assert numbers == [1, 3, 4, 5]


# ------------------------------------------------------------------ minReadySeconds


def test_min_ready_seconds_counts_from_the_ready_transition() -> None:
    world = World(deployment(2, min_ready_seconds=5))
    world.settle()
    world.make_ready()
    actions = world.step()
    assert world.dep.status.ready_replicas == 2 and world.dep.status.available_replicas == 0
    assert [a.seconds for a in actions if isinstance(a, RequeueAfter)] == [5]
    world.advance(5)
    world.settle()
    assert world.dep.status.available_replicas == 2
    assert world.dep.status.phase == "Complete"


def test_rolling_update_waits_for_min_ready_before_removing_old_instances() -> None:
    world = healthy_world(2, min_ready_seconds=10)
    v2 = template_hash(deployment(command="v2"))
    world.healthy.add(v2)
    world.template("v2")
    world.settle()
    assert world.hashes().count(v2) == 1 and len(world.instances) == 3  # surge 1, none removed
    world.advance(10)
    world.settle()
    assert world.hashes().count(v2) == 2 and len(world.instances) == 3
    world.advance(10)
    world.settle()
    assert world.hashes() == [v2, v2]


# ------------------------------------------------------------------ paused


def test_paused_makes_no_progress_but_scaling_works() -> None:
    world = healthy_world(2)
    v1 = template_hash(world.dep)
    world.change(paused=True)
    world.template("v2")
    world.settle()
    assert world.hashes() == [v1, v1]
    assert world.dep.status.phase == "Paused"
    assert world.condition("Progressing").status == "Unknown"  # type: ignore[union-attr]
    world.change(replicas=4)
    world.settle()
    assert world.hashes() == [v1] * 4  # scaled with the revision that runs
    world.advance(10_000)
    world.settle()
    assert world.dep.status.phase == "Paused"  # no deadline while paused
    world.healthy.add(template_hash(world.dep))
    world.change(paused=False)
    world.settle()
    assert world.hashes() == [template_hash(world.dep)] * 4
    assert world.dep.status.phase == "Complete"


# ------------------------------------------------------------------ deadline


def test_progress_deadline_sets_progressing_false_and_an_event() -> None:
    world = healthy_world(2, progress_deadline_seconds=60)
    world.template("v2")  # never becomes ready
    world.settle()
    world.advance(59)
    world.settle()
    assert world.dep.status.phase == "Progressing"
    world.advance(1)
    world.settle()
    progressing = world.condition("Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    assert world.dep.status.phase == "Failed"
    assert any(e.reason == "ProgressDeadlineExceeded" and e.warning for e in world.events)
    writes = world.writes
    world.advance(600)
    world.settle()
    assert world.writes == writes


def test_progress_resets_the_deadline() -> None:
    world = healthy_world(3, progress_deadline_seconds=60)
    v2 = template_hash(deployment(command="v2"))
    world.template("v2")
    world.settle()
    for _ in range(3):
        world.advance(50)
        world.make_ready(v2)
        world.settle()
        assert world.dep.status.phase in ("Progressing", "Complete")
    assert world.dep.status.phase == "Complete"


# ------------------------------------------------------------------ automatic rollback


def test_a_crash_looping_release_is_rolled_back_to_the_stable_revision_and_not_retried() -> None:
    world = healthy_world(3, auto_rollback=True)
    v1 = template_hash(world.dep)
    world.template("v2")
    v2 = template_hash(world.dep)
    world.settle()
    (new,) = [
        i for i in world.instances.values() if i.metadata.labels.values() and v2 in i.metadata.name
    ]
    world.restarts[new.metadata.name] = 3
    world.settle()
    status = world.dep.status
    assert status.phase == "RolledBack" and status.failed_revision == v2
    assert world.hashes() == [v1] * 3
    rolled = world.condition("RolledBack")
    assert rolled is not None and rolled.reason == "CrashLoop"
    assert world.condition("Progressing").reason == "RolledBack"  # type: ignore[union-attr]
    assert [e.reason for e in world.events if e.warning] == ["CrashLoop", "RolledBack"]
    # The spec still asks for v2: it is not retried, nothing is written while idle.
    writes = world.writes
    world.advance(3600)
    world.settle()
    assert world.writes == writes and world.hashes() == [v1] * 3
    # A new template is a new rollout.
    world.template("v3")
    world.healthy.add(template_hash(world.dep))
    world.settle()
    assert world.dep.status.phase == "Complete" and world.dep.status.failed_revision == ""
    assert world.condition("RolledBack") is None


def test_a_release_past_its_deadline_is_rolled_back_with_auto_rollback() -> None:
    world = healthy_world(2, auto_rollback=True, progress_deadline_seconds=30)
    v1 = template_hash(world.dep)
    world.template("v2")
    world.settle()
    world.advance(30)
    world.settle()
    assert world.dep.status.phase == "RolledBack"
    assert world.condition("RolledBack").reason == "ProgressDeadlineExceeded"  # type: ignore[union-attr]
    assert world.hashes() == [v1, v1]


def test_failed_instances_of_the_new_revision_count_as_a_crash_loop() -> None:
    world = healthy_world(2, auto_rollback=True)
    world.template("v2")
    world.settle()
    for name, instance in list(world.instances.items()):
        if template_hash(world.dep) in name:
            status = msgspec.structs.replace(instance.status, phase="Failed")
            world.instances[name] = msgspec.structs.replace(instance, status=status)
    world.settle()
    assert world.dep.status.phase == "RolledBack"


def test_without_a_stable_revision_there_is_nothing_to_roll_back_to() -> None:
    world = World(deployment(2, auto_rollback=True, progress_deadline_seconds=30))
    world.settle()
    world.advance(30)
    world.settle()
    assert world.dep.status.phase == "Failed"


def test_rollback_keeps_within_surge_and_availability() -> None:
    world = healthy_world(4, auto_rollback=True, surge=1, unavailable=1)
    v2 = template_hash(deployment(command="v2"))
    world.healthy.add(v2)  # ready at first: old ones get replaced
    world.template("v2")
    for _ in range(3):
        world.step()
        assert len(world.instances) <= 5
    world.restarts.update({n: 5 for n in world.instances if v2 in n})
    for _ in range(30):
        actions = world.step()
        assert len(world.instances) <= 5
        ready = sum(
            1
            for i in world.instances.values()
            if i.status.conditions and i.status.conditions[0].status == "True"
        )
        assert ready >= 3
        if not [a for a in actions if isinstance(a, CreateInstance | DeleteInstance)]:
            world.healthy.add(world.dep.status.stable_revision)
            world.make_ready(world.dep.status.stable_revision)
    assert world.dep.status.phase == "RolledBack"


def test_undo_is_a_template_change_back_to_the_stable_revision() -> None:
    world = healthy_world(2, auto_rollback=True)
    v1_template = world.dep.spec.template
    world.template("v2")
    world.settle()
    world.restarts.update({n: 3 for n in world.instances if template_hash(world.dep) in n})
    world.settle()
    assert world.dep.status.phase == "RolledBack"
    world.change(template=v1_template)
    world.settle()
    assert world.dep.status.phase == "Complete" and world.dep.status.failed_revision == ""
    assert not any(
        e.reason == "NewRevisionCreated" and "revision 3" in e.message for e in world.events
    )


# ------------------------------------------------------------------ conditions, idleness


def test_conditions_carry_the_observed_generation() -> None:
    world = healthy_world(2)
    world.change(replicas=3)
    world.settle()
    for condition in world.dep.status.conditions:
        assert condition.observed_generation == world.dep.metadata.generation


def test_a_settled_deployment_writes_nothing() -> None:
    world = healthy_world(3)
    writes = world.writes
    for _ in range(5):
        world.advance(1000)
        world.settle()
    assert world.writes == writes
    assert all(not isinstance(a, RecordEvent) for a in world.look())


# ------------------------------------------------------------------ validation


def _decode(spec: dict[str, object]) -> Deployment:
    body = {
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"command": ["x"]}},
            **spec,
        },
    }
    return msgspec.convert(body, Deployment)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"strategy": {"type": "Canary"}}, "canary: required with type Canary"),
        ({"strategy": {"canary": {"steps": [{"setWeight": 5}]}}}, "canary: only with type Canary"),
        (
            {"strategy": {"type": "Canary", "canary": {"steps": []}}},
            "Expected `array` of length >= 1",
        ),
        (
            {"strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 5, "pause": {}}]}}},
            "exactly one of setWeight, pause or analysis (found: setWeight, pause)",
        ),
        (
            {"strategy": {"type": "Canary", "canary": {"steps": [{}]}}},
            "exactly one of setWeight, pause or analysis (found: none)",
        ),
        (
            {"strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 120}]}}},
            "Expected `int` <= 100 - at `$.spec.strategy.canary.steps[0].setWeight`",
        ),
        (
            {"strategy": {"type": "Recreate", "waves": [{"clusters": ["a"]}]}},
            "waves: not with type Recreate",
        ),
        (
            {"strategy": {"waves": [{"clusters": ["a"]}, {"clusters": ["a", "b"]}]}},
            "waves: cluster a is in more than one wave",
        ),
        (
            {"strategy": {"waves": [{}]}},
            "a wave names its clusters or selects them",
        ),
        (
            {"strategy": {"waves": [{"clusters": ["a"], "unknown": 1}]}},
            "Object contains unknown field `unknown`",
        ),
        (
            {
                "strategy": {
                    "type": "Canary",
                    "canary": {"steps": [{"analysis": {"probe": {"type": "exec"}}}]},
                }
            },
            "probe.command: required for an exec probe",
        ),
        ({"selector": {"matchLabels": {"app": "other"}}}, "selector: does not match"),
        ({"selector": {"matchLabels": {}}}, "selector.matchLabels: must name at least one"),
    ],
)
def test_fields_that_would_not_act_are_rejected_by_name(
    spec: dict[str, object], message: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        _decode(spec)


def test_a_matching_selector_is_accepted_and_selects_instances() -> None:
    dep = _decode({"selector": {"matchLabels": {"app": "web"}}})
    assert dep.spec.selector is not None


def test_rollout_status_waits_while_a_complete_rollout_has_replicas_being_replaced() -> None:
    import msgspec

    from keel.api.resources import (
        Deployment,
        DeploymentSpec,
        DeploymentStatus,
        InstanceSpec,
        InstanceTemplate,
        ObjectMeta,
        TemplateMeta,
    )
    from keel.cli.rollout import describe

    deployment = Deployment(
        metadata=ObjectMeta(name="hello", namespace="default", generation=1),
        spec=DeploymentSpec(
            replicas=3,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": "hello"}), spec=InstanceSpec(command=["x"])
            ),
        ),
    )
    status = DeploymentStatus(
        observed_generation=1, replicas=3, updated_replicas=3, ready_replicas=2,
        available_replicas=2, phase="Complete",
    )  # fmt: skip
    line, done = describe(msgspec.structs.replace(deployment, status=status))
    assert done is None
    assert "2 of 3 updated replicas are available" in line
    full = msgspec.structs.replace(status, ready_replicas=3, available_replicas=3)
    line, done = describe(msgspec.structs.replace(deployment, status=full))
    assert done is True
    assert "successfully rolled out" in line
