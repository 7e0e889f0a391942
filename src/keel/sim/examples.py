"""Sample controllers and scenarios for the simulation harness: a correct level-based one
(N Instances per Deployment, deterministic names, create-if-absent, set-not-increment) and
deliberately broken variants that the harness's checkers must catch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

from keel.api.resources import (
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    OwnerReference,
)
from keel.client import AlreadyExists, NotFound
from keel.runtime.controller import Context, Related, Result
from keel.sim.harness import Setup, SimEnv
from keel.sim.network import Mutation

__all__ = [
    "SLOT_LABEL",
    "IncrementingReplicas",
    "RandomNameReplicas",
    "Replicas",
    "churn_workload",
    "deployments_setup",
    "exclusive_slot",
    "replicas_converged",
]

SLOT_LABEL = "sim.keel.dev/slot"
OWNER_LABEL = "sim.keel.dev/deployment"


def _owner(deployment: Deployment) -> OwnerReference:
    return OwnerReference(
        api_version="keel.dev/v1",
        kind="Deployment",
        name=deployment.metadata.name,
        uid=deployment.metadata.uid,
        controller=True,
    )


def _instance(deployment: Deployment, name: str, generate: str, slot: int) -> Instance:
    template = deployment.spec.template
    return Instance(
        metadata=ObjectMeta(
            name=name,
            generate_name=generate,
            namespace=deployment.metadata.namespace,
            labels={
                **template.metadata.labels,
                OWNER_LABEL: deployment.metadata.name,
                SLOT_LABEL: str(slot),
            },
            owner_references=[_owner(deployment)],
        ),
        spec=template.spec,
    )


STATUS_MANAGER = "deployment"


class Replicas:
    """Keeps `spec.replicas` Instances named `{deployment}-{slot}` per Deployment and sets
    `status.replicas`. Safe under duplicated, stale and reordered events: creates are
    create-if-absent by name, deletes tolerate NotFound, the status is set, not counted."""

    name = "sim-replicas"
    primary = Deployment
    related: ClassVar[Sequence[Related]] = (Related(Instance),)

    def owned(self, ctx: Context, deployment: Deployment) -> list[Instance]:
        found: list[Instance] = ctx.cache(Instance).by_index("owner", deployment.metadata.uid)
        return sorted(found, key=lambda obj: obj.metadata.name)

    async def reconcile(self, ctx: Context, key: str) -> Result:
        deployment: Deployment | None = ctx.cache(Deployment).get(key)
        if deployment is None or deployment.metadata.deletion_timestamp:
            return Result()
        namespace, name = deployment.metadata.namespace, deployment.metadata.name
        owned = self.owned(ctx, deployment)
        wanted = {f"{name}-{slot}": slot for slot in range(deployment.spec.replicas)}
        have = {obj.metadata.name for obj in owned}
        for instance_name, slot in wanted.items():
            if instance_name not in have:
                await self.create(ctx, deployment, instance_name, slot)
        extra = [obj for obj in owned if obj.metadata.name not in wanted]
        if extra:
            # Destructive, so decided on a fresh read: the cached Deployment may be older
            # than the cached Instances (its watch lags), and scaling down on a stale spec
            # would delete Instances only to create them again (the harness found this).
            deployment = await ctx.client.get(Deployment, name, namespace=namespace)
            wanted = {f"{name}-{slot}": slot for slot in range(deployment.spec.replicas)}
            for obj in extra:
                if obj.metadata.name not in wanted:
                    with contextlib.suppress(NotFound):
                        await ctx.client.delete(Instance, obj.metadata.name, namespace=namespace)
        await self.report(ctx, deployment, len(wanted))
        return Result()

    async def create(self, ctx: Context, deployment: Deployment, name: str, slot: int) -> None:
        try:  # noqa: SIM105 (the comment below is the point)
            await ctx.client.create(_instance(deployment, name, "", slot))
        except AlreadyExists:
            pass  # created before (a duplicate event, or our cache is behind): done

    async def report(self, ctx: Context, deployment: Deployment, replicas: int) -> None:
        if deployment.status.replicas != replicas:
            # A stand-in for the deployment controller: it writes the status as that
            # controller's field manager (the registry's owner of Deployment status).
            await ctx.client.as_manager(STATUS_MANAGER).patch(
                Deployment,
                deployment.metadata.name,
                {"status": {"replicas": replicas}},
                namespace=deployment.metadata.namespace,
                subresource="status",
            )


class RandomNameReplicas(Replicas):
    """Broken: names new Instances with generateName, so a stale cache (a delayed event, a
    replica that took over) makes it create a second Instance for a slot it already filled."""

    name = "sim-random-replicas"

    async def reconcile(self, ctx: Context, key: str) -> Result:
        deployment: Deployment | None = ctx.cache(Deployment).get(key)
        if deployment is None:
            return Result()
        owned = self.owned(ctx, deployment)
        filled = {obj.metadata.labels.get(SLOT_LABEL) for obj in owned}
        for slot in range(deployment.spec.replicas):
            if str(slot) not in filled:
                generate = f"{deployment.metadata.name}-"
                await ctx.client.create(_instance(deployment, "", generate, slot))
        await self.report(ctx, deployment, deployment.spec.replicas)
        return Result()


class IncrementingReplicas(Replicas):
    """Broken: counts Instances into `status.replicas` by incrementing on every reconcile
    that creates one, instead of setting the observed number; replays inflate it."""

    name = "sim-incrementing-replicas"

    async def create(self, ctx: Context, deployment: Deployment, name: str, slot: int) -> None:
        with contextlib.suppress(AlreadyExists):
            await ctx.client.create(_instance(deployment, name, "", slot))
        fresh = await ctx.client.get(
            Deployment, deployment.metadata.name, namespace=deployment.metadata.namespace
        )
        await ctx.client.as_manager(STATUS_MANAGER).patch(
            Deployment,
            deployment.metadata.name,
            {"status": {"replicas": fresh.status.replicas + 1}},
            namespace=deployment.metadata.namespace,
            subresource="status",
        )

    async def report(self, ctx: Context, deployment: Deployment, replicas: int) -> None:
        return None


# ---------------------------------------------------------------------- scenario


def deployments_setup(
    count: int = 3, replicas: int = 3, *, exclusive: bool = True, namespace: str = "default"
) -> Setup:
    """A setup creating `count` Deployments of `replicas` each (names `app-K`)."""

    async def setup(env: SimEnv) -> None:
        for index in range(count):
            await env.admin.create(
                _deployment(f"app-{index}", replicas, namespace, exclusive=exclusive)
            )

    return setup


def churn_workload(
    *, period: float = 1.0, until: float = 25.0, max_replicas: int = 6, namespace: str = "default"
) -> Setup:
    """A user busy during the fault period: every `period` seconds (jittered) it scales a
    Deployment up, touches one's annotations, or adds a new Deployment. Never scales down,
    so every Instance slot is created once in a correct run."""

    async def workload(env: SimEnv) -> None:
        rng, admin = env.rng, env.admin
        start = env.clock.now()
        added = 0
        while env.clock.now() - start < until:
            await env.clock.sleep(rng.uniform(0.5, 1.5) * period)
            deployments = env.api.objects(Deployment, namespace)
            roll = rng.random()
            if roll < 0.15 or not deployments:
                added += 1
                await admin.create(_deployment(f"churn-{added}", 1, namespace))
                continue
            target = deployments[rng.randrange(len(deployments))]
            name = target.metadata.name
            patch: dict[str, Any]
            if roll < 0.6 and target.spec.replicas < max_replicas:
                patch = {"spec": {"replicas": target.spec.replicas + 1}}
            else:
                patch = {"metadata": {"annotations": {"touched": str(rng.randrange(10**6))}}}
            await admin.patch(Deployment, name, patch, namespace=namespace)

    return workload


def _deployment(name: str, replicas: int, namespace: str, *, exclusive: bool = True) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(
                spec=InstanceSpec(command=["sleep", "inf"], exclusive=exclusive)
            ),
        ),
    )


def replicas_converged(env: SimEnv) -> list[str]:
    """What differs from the desired state: each Deployment owns exactly one Instance per
    slot `0 .. N-1` (whatever their names) and reports `status.replicas == N`."""
    problems: list[str] = []
    instances = env.api.objects(Instance)
    for deployment in env.api.objects(Deployment):
        name, uid = deployment.metadata.name, deployment.metadata.uid
        slots = sorted(
            obj.metadata.labels.get(SLOT_LABEL, "?")
            for obj in instances
            if any(ref.uid == uid for ref in obj.metadata.owner_references)
        )
        wanted = sorted(str(slot) for slot in range(deployment.spec.replicas))
        if slots != wanted:
            problems.append(f"{name}: instances for slots {slots}, want {wanted}")
        if deployment.status.replicas != deployment.spec.replicas:
            problems.append(
                f"{name}: status.replicas={deployment.status.replicas}, "
                f"want {deployment.spec.replicas}"
            )
    return problems


def exclusive_slot(mutation: Mutation) -> str | None:
    """Creating an exclusive Instance for a Deployment's slot is dangerous: it must happen
    at most once (two would run the same exclusive work twice)."""
    obj = mutation.obj
    if mutation.verb != "create" or not isinstance(obj, Instance) or not obj.spec.exclusive:
        return None
    owner = obj.metadata.labels.get(OWNER_LABEL)
    slot = obj.metadata.labels.get(SLOT_LABEL)
    if owner is None or slot is None:
        return None
    return f"create exclusive Instance {obj.metadata.namespace}/{owner} slot {slot}"
