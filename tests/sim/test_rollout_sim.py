"""Rollouts under a faulty view: the deployment controller's cache sees Instance events
late, twice, out of order or not at all, while a user rolls out releases (some of them
crash-looping, rolled back automatically). The controller's shell runs the same pure `plan`
on its cache, confirms instance actions with a live read (`confirm`), and so, whatever the
events: never more than replicas + maxSurge Instances exist, and no available Instance is
removed while that would leave fewer than replicas - maxUnavailable available."""

from __future__ import annotations

import random

import msgspec
import pytest
from controllers.rollout_world import World, deployment

from keel.api.disruption import rollout_budget
from keel.api.resources import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    Analysis,
    Canary,
    CanaryPause,
    CanaryStep,
    Instance,
    RollingUpdate,
    Strategy,
    Wave,
)
from keel.controllers.deployment import (
    HASH_LABEL,
    confirm,
    is_available,
    needs_confirmation,
    template_hash,
)
from keel.controllers.progressive import Verdict


class StaleCache:
    """The informer's view: a replay of the server's Instance history with faults. Each
    look delivers some of the pending events: some dropped (seen only at a later relist),
    some duplicated, some delivered before older ones (reordered: the older then wins)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.view: dict[str, Instance] = {}
        self.pending: list[tuple[str, Instance | None]] = []

    def observe(self, truth: dict[str, Instance], before: dict[str, Instance]) -> None:
        for name in sorted(truth.keys() | before.keys()):
            if truth.get(name) != before.get(name):
                self.pending.append((name, truth.get(name)))

    def deliver(self, truth: dict[str, Instance]) -> list[Instance]:
        rng = self.rng
        if rng.random() < 0.05:  # a relist: the view is the truth again
            self.view = dict(truth)
            self.pending.clear()
            return list(self.view.values())
        batch = [e for e in self.pending if rng.random() < 0.6]
        self.pending = [e for e in self.pending if e not in batch]
        if rng.random() < 0.3:
            rng.shuffle(batch)  # reordered: an older state may land last
        for name, obj in batch:
            if rng.random() < 0.1:
                continue  # dropped
            for _ in range(2 if rng.random() < 0.2 else 1):  # duplicated
                if obj is None:
                    self.view.pop(name, None)
                else:
                    self.view[name] = obj
        return list(self.view.values())


def available(world: World) -> int:
    return sum(
        1
        for i in world.instances.values()
        if is_available(i, world.now, world.dep.spec.min_ready_seconds)
    )


def progressive(
    rng: random.Random, kind: str, surge: int | str, unavailable: int | str
) -> Strategy:
    budget = RollingUpdate(max_surge=surge, max_unavailable=unavailable)
    steps = [
        CanaryStep(set_weight=rng.choice([10, 30, 50])),
        CanaryStep(pause=CanaryPause(duration=rng.choice([None, 3]))),
        CanaryStep(set_weight=rng.choice([60, 100])),
        CanaryStep(analysis=Analysis(window_seconds=5)),
    ]
    waves = [Wave(clusters=["a"], bake_seconds=2), Wave(clusters=["b", "c"], bake_seconds=2)]
    match kind:
        case "canary":
            return Strategy(type="Canary", canary=Canary(steps=steps), rolling_update=budget)
        case "waves":
            return Strategy(rolling_update=budget, waves=waves)
        case _:
            return Strategy(
                type="Canary", canary=Canary(steps=steps), rolling_update=budget, waves=waves
            )


def mark(world: World, key: str, value: str) -> None:
    annotations = {**world.dep.metadata.annotations, key: value}
    meta = msgspec.structs.replace(world.dep.metadata, annotations=annotations)
    world.dep = msgspec.structs.replace(world.dep, metadata=meta)


@pytest.mark.parametrize("seed", range(40))
def test_no_event_sequence_surges_past_the_budget_or_drops_availability(seed: int) -> None:
    run(seed, "rolling")


@pytest.mark.parametrize("kind", ["canary", "waves", "canary+waves"])
@pytest.mark.parametrize("seed", range(15))
def test_canary_and_waves_keep_the_budget_under_any_event_sequence(seed: int, kind: str) -> None:
    run(seed, kind)


def run(seed: int, kind: str) -> None:
    rng = random.Random(seed)
    replicas = rng.choice([2, 3, 5])
    surge = rng.choice([1, 2, "25%"])
    unavailable = rng.choice([0, 1, "25%"])
    extra: dict[str, object] = {}
    if kind != "rolling":
        extra["strategy"] = progressive(rng, kind, surge, unavailable)
    world = World(
        deployment(
            replicas,
            surge=surge,
            unavailable=unavailable,
            auto_rollback=True,
            bake_seconds=5,
            progress_deadline_seconds=60,
            **extra,
        )
    )
    if "waves" in kind:
        world.clusters = {"a": {}, "b": {}, "c": {}}
    world.healthy.add(template_hash(world.dep))
    max_surge, max_unavailable = rollout_budget(world.dep)
    floor = replicas - max_unavailable
    cache = StaleCache(rng)
    bad: set[str] = set()
    version = 1
    for tick in range(400):
        world.now += rng.choice([0.2, 0.5, 1.0, 2.0])
        # The world: new Instances of healthy revisions become Ready, bad ones crash.
        for name, instance in list(world.instances.items()):
            revision = instance.metadata.labels[HASH_LABEL]
            if revision in bad:
                world.restarts[name] = world.restarts.get(name, 0) + (rng.random() < 0.5)
            elif not instance.status.conditions and rng.random() < 0.5:
                world.make_ready(revision)
        # The shell's analysis verdict, and now and then a user's promote or abort.
        if kind != "rolling":
            revision = template_hash(world.dep)
            world.analysis = Verdict(
                "Failed" if revision in bad else rng.choice(["Running", "Passed"]), "sampled"
            )
            if rng.random() < 0.02:
                mark(world, PROMOTE_ANNOTATION, f"{revision}/{world.dep.status.current_step}.0")
            if rng.random() < 0.005:
                mark(world, ABORT_ANNOTATION, revision)
        # The user: now and then a new release, a third of them bad.
        if tick % 60 == 30:
            version += 1
            command = f"v{version}"
            if rng.random() < 0.35:
                bad.add(template_hash(deployment(command=command)))
            else:
                world.healthy.add(template_hash(deployment(command=command)))
            world.template(command)
        before = dict(world.instances)
        available_before = available(world)
        # The controller: plan on the stale view, confirm with a live read.
        seen = cache.deliver(world.instances)
        actions = world.look(seen)
        if needs_confirmation(actions):
            actions = confirm(actions, world.look())
        world.apply(actions)
        cache.observe(world.instances, before)
        live = [i for i in world.instances.values() if not i.metadata.deletion_timestamp]
        assert len(live) <= replicas + max_surge, (seed, tick, sorted(world.instances))
        if available_before >= floor:
            assert available(world) >= floor, (seed, tick, "removed available instances")
        else:
            assert available(world) >= available_before, (seed, tick, "removed while short")
    # And it converges: the last release (or the stable one, if it was bad) runs in full,
    # once promoted past any indefinite pause.
    if kind != "rolling":
        mark(world, PROMOTE_ANNOTATION, f"{template_hash(world.dep)}/full")
    for _ in range(100):
        world.now += 1.0
        world.make_ready()
        actions = world.look(cache.deliver(world.instances))
        if needs_confirmation(actions):
            actions = confirm(actions, world.look())
        before = dict(world.instances)
        world.apply(actions)
        cache.observe(world.instances, before)
    target = (
        world.dep.status.stable_revision
        if world.dep.status.phase == "RolledBack"
        else template_hash(world.dep)
    )
    assert world.hashes() == [target] * replicas, (seed, world.dep.status.phase)
    assert msgspec.structs.asdict(world.dep.status)["phase"] in ("Complete", "RolledBack")
