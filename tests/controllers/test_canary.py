"""Canary steps and waves across clusters, pure: the split arithmetic, the analysis verdict,
and whole rollouts driven through the deployment plan (counts at each step, promote, abort,
failed analysis, a failing wave that never touches the later ones, autoRollback)."""

from __future__ import annotations

import msgspec
import pytest
from rollout_world import World, deployment

from keel.api.resources import (
    ABORT_ANNOTATION,
    CLUSTERS_ANNOTATION,
    PROMOTE_ANNOTATION,
    Analysis,
    AnalysisProbe,
    Canary,
    CanaryPause,
    CanaryStep,
    LabelSelector,
    RollingUpdate,
    Strategy,
    Wave,
)
from keel.controllers.deployment import HASH_LABEL, RequeueAfter, template_hash
from keel.controllers.progressive import (
    Sample,
    Verdict,
    canary_count,
    evaluate,
    resolve_waves,
    shares,
    split,
    weight_at,
)

# ------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize(
    ("weight", "base", "expected"),
    [(0, 10, 0), (1, 10, 1), (10, 10, 1), (20, 10, 2), (25, 10, 3), (50, 3, 2), (100, 7, 7)],
)
def test_canary_count_rounds_up_and_runs_at_least_one(
    weight: int, base: int, expected: int
) -> None:
    assert canary_count(weight, base) == expected


def test_weight_in_force_is_the_last_set_weight_and_100_when_done() -> None:
    steps = [
        CanaryStep(set_weight=20),
        CanaryStep(pause=CanaryPause()),
        CanaryStep(set_weight=50),
        CanaryStep(analysis=Analysis()),
    ]
    assert [weight_at(steps, i) for i in range(5)] == [20, 20, 50, 50, 100]
    assert weight_at([CanaryStep(pause=CanaryPause())], 0) == 0


@pytest.mark.parametrize(
    ("replicas", "waves", "expected"),
    [
        (3, [["a"], ["b"], ["c"]], [1, 1, 1]),
        (10, [["a"], ["b", "c"]], [3, 7]),
        (4, [["a"], ["b"], ["c"]], [2, 1, 1]),
        (2, [["a"], ["b"], ["c"]], [1, 1, 0]),
        (5, [[], ["b"]], [0, 5]),
    ],
)
def test_wave_shares_are_proportional_to_clusters(
    replicas: int, waves: list[list[str]], expected: list[int]
) -> None:
    assert shares(replicas, waves) == expected
    assert sum(expected) == (replicas if any(waves) else 0)


def test_waves_resolve_by_name_and_by_label_without_repeating_a_cluster() -> None:
    clusters = {"eu-1": {"tier": "canary"}, "eu-2": {"tier": "prod"}, "us-1": {"tier": "prod"}}
    waves = [
        Wave(clusters=["eu-1"]),
        Wave(cluster_selector=LabelSelector(match_labels={"tier": "prod"})),
        Wave(cluster_selector=LabelSelector(match_labels={"tier": "canary"})),
    ]
    assert resolve_waves(waves, clusters) == [("eu-1",), ("eu-2", "us-1"), ()]


def test_split_runs_the_canary_inside_the_first_wave_and_pins_stable_to_later_waves() -> None:
    strategy = Strategy(
        type="Canary",
        canary=Canary(steps=[CanaryStep(set_weight=50)]),
        waves=[Wave(clusters=["a"]), Wave(clusters=["b"]), Wave(clusters=["c"])],
    )
    waves = [("a",), ("b",), ("c",)]
    at_canary = split(strategy, 6, update="v2", stable="v1", step=0, wave=0, waves=waves)
    assert [(g.count, g.clusters) for g in at_canary.update] == [(1, ("a",))]
    assert (at_canary.stable.count, at_canary.stable.clusters) == (5, ("b", "c"))
    second = split(strategy, 6, update="v2", stable="v1", step=1, wave=1, waves=waves)
    assert [(g.count, g.clusters) for g in second.update] == [(2, ("a",)), (2, ("b",))]
    assert second.stable.count == 2 and second.started == {"a", "b"}
    assert second.later == (("c",),)


# ------------------------------------------------------------------ analysis


def samples(
    *ready: int, restarts: tuple[int, ...] = (), probes: tuple[bool, ...] = ()
) -> list[Sample]:
    return [
        Sample(
            at=float(i),
            ready=r,
            total=2,
            restarts=restarts[i] if i < len(restarts) else 0,
            probe_ok=probes[i] if i < len(probes) else None,
        )
        for i, r in enumerate(ready)
    ]


def test_analysis_runs_until_its_window_ends_then_passes() -> None:
    gates = Analysis(window_seconds=30, min_ready_ratio=0.75)
    assert evaluate(gates, samples(2, 2), 0, 10).phase == "Running"
    assert evaluate(gates, samples(2, 2, 1), 0, 30).phase == "Passed"  # 83% ready


def test_analysis_fails_on_low_readiness_at_the_end_of_the_window() -> None:
    verdict = evaluate(Analysis(window_seconds=30, min_ready_ratio=0.9), samples(2, 1, 1), 0, 30)
    assert verdict.phase == "Failed" and "ready 67% of the window" in verdict.message


def test_analysis_fails_at_once_on_restarts_or_probe_failures() -> None:
    gates = Analysis(
        window_seconds=300, max_restarts=1, max_probe_failures=1, probe=AnalysisProbe(type="http")
    )
    assert evaluate(gates, samples(2, 2, restarts=(4, 5)), 0, 1).phase == "Running"
    restarted = evaluate(gates, samples(2, 2, restarts=(4, 6)), 0, 1)
    assert restarted.phase == "Failed" and "restarted 2 times (maxRestarts 1)" in restarted.message
    probed = evaluate(gates, samples(2, 2, 2, probes=(False, True, False)), 0, 2)
    assert probed.phase == "Failed" and "probe failed 2 times" in probed.message


def test_an_analysis_without_samples_fails_when_its_window_ends() -> None:
    assert evaluate(Analysis(window_seconds=5), [], 0, 5).phase == "Failed"


# ------------------------------------------------------------------ canary rollouts


def canary(*steps: CanaryStep, surge: int = 1, unavailable: int = 0, **extra: object) -> Strategy:
    return Strategy(
        type="Canary",
        canary=Canary(steps=list(steps)),
        rolling_update=RollingUpdate(max_surge=surge, max_unavailable=unavailable),
        **extra,  # type: ignore[arg-type]
    )


def rolled_out(replicas: int, strategy: Strategy, **spec: object) -> World:
    """v1 rolled out, available and stable, under `strategy`."""
    world = World(deployment(replicas, strategy=strategy, **spec))
    world.healthy.add(template_hash(world.dep))
    world.settle()
    world.advance(world.dep.spec.bake_seconds)
    world.settle()
    assert world.dep.status.stable_revision == template_hash(world.dep)
    return world


def release(world: World, command: str = "v2", *, healthy: bool = True) -> str:
    world.template(command)
    new = template_hash(world.dep)
    if healthy:
        world.healthy.add(new)
    return new


def counts(world: World) -> dict[str, int]:
    found: dict[str, int] = {}
    for instance in world.instances.values():
        revision = instance.metadata.labels[HASH_LABEL]
        found[revision] = found.get(revision, 0) + 1
    return found


def drive(world: World, rounds: int = 40) -> None:
    """Settle, checking the budget at every look: never more than replicas + maxSurge, never
    fewer available than replicas - maxUnavailable (all are Ready once created here)."""
    replicas = world.dep.spec.replicas
    surge = world.dep.spec.strategy.rolling_update.max_surge
    assert isinstance(surge, int)
    for _ in range(rounds):
        actions = world.step()
        assert len(world.instances) <= replicas + surge
        if not [a for a in actions if not isinstance(a, RequeueAfter)]:
            return
    raise AssertionError("did not settle")


def promote(world: World, value: str) -> None:
    annotations = {**world.dep.metadata.annotations, PROMOTE_ANNOTATION: value}
    meta = msgspec.structs.replace(world.dep.metadata, annotations=annotations)
    world.dep = msgspec.structs.replace(world.dep, metadata=meta)


def abort(world: World, revision: str) -> None:
    annotations = {**world.dep.metadata.annotations, ABORT_ANNOTATION: revision}
    meta = msgspec.structs.replace(world.dep.metadata, annotations=annotations)
    world.dep = msgspec.structs.replace(world.dep, metadata=meta)


STEPS = (
    CanaryStep(set_weight=20),
    CanaryStep(pause=CanaryPause()),
    CanaryStep(set_weight=50),
    CanaryStep(pause=CanaryPause(duration=60)),
)


def test_a_canary_holds_its_weight_at_an_indefinite_pause_and_continues_on_promote() -> None:
    world = rolled_out(10, canary(*STEPS))
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    status = world.dep.status
    assert counts(world) == {v1: 8, v2: 2}
    assert (status.phase, status.current_step) == ("Progressing", 1)
    assert world.condition("Progressing").reason == "CanaryStepComplete"  # type: ignore[union-attr]
    # An indefinite pause: no deadline, no writes, however long.
    writes = world.writes
    world.advance(3 * world.dep.spec.progress_deadline_seconds)
    drive(world)
    assert world.writes == writes and world.dep.status.phase == "Progressing"
    promote(world, f"{v2}/1.0")
    drive(world)
    assert counts(world) == {v1: 5, v2: 5} and world.dep.status.current_step == 3
    world.advance(59)
    drive(world)
    assert world.dep.status.current_step == 3
    world.advance(1)
    drive(world)
    assert counts(world) == {v2: 10} and world.dep.status.phase == "Complete"
    world.advance(world.dep.spec.bake_seconds)
    drive(world)
    assert world.dep.status.stable_revision == v2
    reasons = [e.reason for e in world.events]
    assert reasons.count("CanaryStepComplete") == 3 and "Promoted" in reasons


def test_promote_full_skips_every_remaining_step() -> None:
    world = rolled_out(4, canary(*STEPS))
    v2 = release(world)
    drive(world)
    assert world.dep.status.current_step == 1
    promote(world, f"{v2}/full")
    drive(world)
    assert counts(world) == {v2: 4} and world.dep.status.phase == "Complete"


def test_a_stale_promote_for_an_earlier_step_or_template_does_nothing() -> None:
    world = rolled_out(4, canary(*STEPS))
    v2 = release(world)
    promote(world, f"{v2}/0.0")  # step 0 was a setWeight, long done
    drive(world)
    assert world.dep.status.current_step == 1
    promote(world, "otherhash/full")
    drive(world)
    assert world.dep.status.current_step == 1


def test_the_first_rollout_has_no_stable_revision_and_skips_the_steps() -> None:
    world = World(deployment(4, strategy=canary(*STEPS)))
    world.healthy.add(template_hash(world.dep))
    drive(world)
    assert world.dep.status.phase == "Complete"


def test_abort_restores_the_stable_revision_and_does_not_retry() -> None:
    world = rolled_out(5, canary(*STEPS))
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    assert counts(world) == {v1: 4, v2: 1}
    abort(world, v2)
    drive(world)
    status = world.dep.status
    assert counts(world) == {v1: 5}
    assert (status.phase, status.failed_revision) == ("RolledBack", v2)
    assert world.condition("RolledBack").reason == "RolloutAborted"  # type: ignore[union-attr]
    writes = world.writes
    world.advance(3600)
    drive(world)
    assert world.writes == writes


def test_a_failed_analysis_removes_the_canary_and_restores_stable_in_full() -> None:
    gates = Analysis(window_seconds=30)
    world = rolled_out(5, canary(CanaryStep(set_weight=40), CanaryStep(analysis=gates)))
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    assert counts(world) == {v1: 3, v2: 2} and world.dep.status.current_step == 1
    world.analysis = Verdict("Running", "1 samples")
    drive(world)
    assert counts(world) == {v1: 3, v2: 2}
    world.analysis = Verdict("Failed", "canary instances restarted 4 times (maxRestarts 0)")
    drive(world)
    assert counts(world) == {v1: 5}
    rolled = world.condition("RolledBack")
    assert rolled is not None and rolled.reason == "AnalysisFailed"
    assert "restarted 4 times" in rolled.message
    assert world.dep.status.failed_revision == v2


def test_a_passed_analysis_moves_on() -> None:
    gates = Analysis(window_seconds=30)
    world = rolled_out(5, canary(CanaryStep(set_weight=40), CanaryStep(analysis=gates)))
    v2 = release(world)
    drive(world)
    world.analysis = Verdict("Passed", "3 samples, ready 100%, gates held")
    drive(world)
    assert counts(world) == {v2: 5} and world.dep.status.phase == "Complete"


def test_canary_instances_that_never_become_ready_fail_the_deadline() -> None:
    world = rolled_out(4, canary(*STEPS), progress_deadline_seconds=30)
    v1 = template_hash(world.dep)
    v2 = release(world, healthy=False)
    drive(world)
    world.advance(30)
    drive(world)
    assert world.dep.status.phase == "Failed" and world.dep.status.current_step == 0
    # Stable instances were not removed for replacements that never became available.
    assert counts(world)[v1] == 4 and counts(world)[v2] == 1


def test_a_canary_with_auto_rollback_that_crash_loops_is_rolled_back() -> None:
    world = rolled_out(4, canary(*STEPS), auto_rollback=True)
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    (canary_instance,) = [i for i in world.instances.values() if v2 in i.metadata.name]
    world.restarts[canary_instance.metadata.name] = 3
    drive(world)
    assert counts(world) == {v1: 4} and world.dep.status.phase == "RolledBack"


# ------------------------------------------------------------------ waves


CLUSTERS = {"c1": {"region": "eu"}, "c2": {"region": "eu"}, "c3": {"region": "us"}}


def waves_world(replicas: int = 3, *, steps: tuple[CanaryStep, ...] = (), **spec: object) -> World:
    waves = [
        Wave(clusters=["c1"], bake_seconds=20),
        Wave(clusters=["c2"], bake_seconds=20),
        Wave(clusters=["c3"]),
    ]
    if steps:
        strategy = canary(*steps, waves=waves)
    else:
        strategy = Strategy(
            rolling_update=RollingUpdate(max_surge=1, max_unavailable=0), waves=waves
        )
    world = World(deployment(replicas, strategy=strategy, **spec))
    world.clusters = dict(CLUSTERS)
    world.healthy.add(template_hash(world.dep))
    world.settle()
    world.advance(world.dep.spec.bake_seconds)
    world.settle()
    assert world.dep.status.stable_revision == template_hash(world.dep)
    return world


def by_cluster(world: World) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instance in sorted(world.instances.values(), key=lambda i: i.metadata.name):
        found.setdefault(world.cluster_of(instance), []).append(
            instance.metadata.labels[HASH_LABEL]
        )
    return found


def test_waves_roll_out_one_group_of_clusters_at_a_time_after_each_bakes() -> None:
    world = waves_world(6)
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    assert by_cluster(world) == {"c1": [v2, v2], "c2": [v1, v1], "c3": [v1, v1]}
    assert world.dep.status.current_wave == 0
    pinned = {
        i.metadata.annotations.get(CLUSTERS_ANNOTATION)
        for i in world.instances.values()
        if v2 in i.metadata.name
    }
    assert pinned == {"c1"}
    world.advance(19)
    drive(world)
    assert world.dep.status.current_wave == 0
    world.advance(1)
    drive(world)
    assert world.dep.status.current_wave == 1
    assert by_cluster(world) == {"c1": [v2, v2], "c2": [v2, v2], "c3": [v1, v1]}
    world.advance(20)
    drive(world)
    assert by_cluster(world) == {"c1": [v2, v2], "c2": [v2, v2], "c3": [v2, v2]}
    assert world.dep.status.phase == "Complete"
    assert [e.reason for e in world.events].count("WaveComplete") == 3


def failing_in(world: World, cluster: str, revision: str) -> None:
    for name, instance in list(world.instances.items()):
        if (
            world.cluster_of(instance) == cluster
            and instance.metadata.labels[HASH_LABEL] == revision
        ):
            world.restarts[name] = 5


def test_a_failing_wave_stops_the_rollout_and_never_touches_the_last_wave() -> None:
    world = waves_world(3)
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    world.advance(20)
    drive(world)
    assert world.dep.status.current_wave == 1
    last_wave = {n for n, i in world.instances.items() if world.cluster_of(i) == "c3"}
    failing_in(world, "c2", v2)
    drive(world)
    status = world.dep.status
    assert (status.phase, status.current_wave) == ("Failed", 1)
    assert world.condition("Progressing").reason == "WaveFailed"  # type: ignore[union-attr]
    world.advance(3600)
    drive(world)
    assert {n for n, i in world.instances.items() if world.cluster_of(i) == "c3"} == last_wave
    assert by_cluster(world)["c3"] == [v1]


def test_a_failing_wave_with_auto_rollback_returns_every_wave_to_stable() -> None:
    world = waves_world(3, auto_rollback=True)
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    failing_in(world, "c1", v2)
    drive(world)
    assert counts(world) == {v1: 3} and world.dep.status.phase == "RolledBack"
    assert world.condition("RolledBack").reason == "WaveFailed"  # type: ignore[union-attr]


def test_max_failures_tolerates_that_many_failed_instances_in_a_wave() -> None:
    world = World(
        deployment(
            4,
            strategy=Strategy(
                rolling_update=RollingUpdate(max_surge=1, max_unavailable=0),
                waves=[
                    Wave(clusters=["c1", "c2"], max_failures=1, bake_seconds=0),
                    Wave(clusters=["c3"]),
                ],
            ),
        )
    )
    world.clusters = dict(CLUSTERS)
    world.healthy.add(template_hash(world.dep))
    world.settle()
    world.advance(world.dep.spec.bake_seconds)
    world.settle()
    v2 = release(world)
    drive(world)
    (one, *_) = [n for n, i in world.instances.items() if i.metadata.labels[HASH_LABEL] == v2]
    world.restarts[one] = 5
    drive(world)
    assert world.dep.status.phase != "Failed"


def test_a_canary_runs_inside_the_first_wave() -> None:
    world = waves_world(6, steps=(CanaryStep(set_weight=50), CanaryStep(pause=CanaryPause())))
    v1 = template_hash(world.dep)
    v2 = release(world)
    drive(world)
    assert by_cluster(world) == {"c1": [v1, v2], "c2": [v1, v1], "c3": [v1, v1]}
    promote(world, f"{v2}/1.0")
    drive(world)
    assert by_cluster(world) == {"c1": [v2, v2], "c2": [v1, v1], "c3": [v1, v1]}
    assert (world.dep.status.current_step, world.dep.status.current_wave) == (2, 0)
