"""A pure model of what the API server holds for one Deployment, driven by the deployment
controller's `plan`: revisions, instances and status as they would be after its actions.
Shared by the rollout plan tests and the rollout simulation. Holds no tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from keel.api.resources import (
    CLUSTERS_ANNOTATION,
    STABLE_ANNOTATION,
    Condition,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    InstanceStatus,
    InstanceTemplate,
    ObjectMeta,
    Revision,
    RollingUpdate,
    Strategy,
    TemplateMeta,
)
from keel.clock import rfc3339
from keel.controllers.deployment import (
    HASH_LABEL,
    Action,
    CreateInstance,
    CreateRevision,
    DeleteInstance,
    DeleteRevision,
    MarkStable,
    RecordEvent,
    RequeueAfter,
    UpdateStatus,
    plan,
)
from keel.controllers.progressive import Verdict

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def deployment(
    replicas: int = 3,
    *,
    command: str = "v1",
    surge: int | str = 1,
    unavailable: int | str = 0,
    **spec: object,
) -> Deployment:
    return Deployment(
        kind="Deployment",
        metadata=ObjectMeta(name="web", namespace="default", uid="dep-uid", generation=1),
        spec=DeploymentSpec(
            replicas=replicas,
            template=InstanceTemplate(
                metadata=TemplateMeta(labels={"app": "web"}), spec=InstanceSpec(command=[command])
            ),
            **{  # type: ignore[arg-type]
                "strategy": Strategy(
                    rolling_update=RollingUpdate(max_surge=surge, max_unavailable=unavailable)
                ),
                **spec,
            },
        ),
    )


def ready(instance: Instance, at: float, value: bool = True) -> Instance:
    condition = Condition(
        type="Ready", status="True" if value else "False", last_transition_time=rfc3339(at)
    )
    return msgspec.structs.replace(
        instance, status=InstanceStatus(phase="Running", conditions=[condition])
    )


@dataclass
class World:
    dep: Deployment
    now: float = T0
    revisions: dict[str, Revision] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    events: list[RecordEvent] = field(default_factory=list)
    writes: int = 0  # store writes the actions made (creates, deletes, patches, status)
    # Instances that become Ready as soon as they exist (a healthy release), by hash.
    healthy: set[str] = field(default_factory=set)
    uids: int = 0
    # Clusters (name -> labels): when set, a created Instance is placed at once on node
    # "node-{cluster}" of the allowed cluster (its pin, or any) running fewest Instances.
    clusters: dict[str, dict[str, str]] = field(default_factory=dict)
    node_clusters: dict[str, str] = field(default_factory=dict)
    analysis: Verdict | None = None  # the verdict the shell would hand the plan

    def look(self, instances: Sequence[Instance] | None = None) -> list[Action]:
        """One plan, on `instances` (a stale view) or on what the server holds."""
        seen = list(self.instances.values()) if instances is None else list(instances)
        return plan(
            self.dep,
            list(self.revisions.values()),
            seen,
            self.now,
            self.restarts,
            clusters=self.clusters,
            node_clusters=self.node_clusters,
            analysis=self.analysis,
        )

    def place(self, instance: Instance) -> Instance:
        if not self.clusters:
            return instance
        pin = instance.metadata.annotations.get(CLUSTERS_ANNOTATION)
        allowed = pin.split(",") if pin is not None else sorted(self.clusters)
        load = {c: 0 for c in allowed}
        for other in self.instances.values():
            cluster = self.node_clusters.get(other.spec.node_name)
            if cluster in load:
                load[cluster] += 1
        cluster = min(allowed, key=lambda c: (load[c], c))
        node = f"node-{cluster}"
        self.node_clusters[node] = cluster
        return msgspec.structs.replace(
            instance, spec=msgspec.structs.replace(instance.spec, node_name=node)
        )

    def cluster_of(self, instance: Instance) -> str:
        return self.node_clusters.get(instance.spec.node_name, "")

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            match action:
                case CreateInstance(instance=instance):
                    if instance.metadata.name not in self.instances:
                        self.uids += 1
                        meta = msgspec.structs.replace(instance.metadata, uid=f"u{self.uids}")
                        created = self.place(msgspec.structs.replace(instance, metadata=meta))
                        if instance.metadata.labels.get(HASH_LABEL) in self.healthy:
                            created = ready(created, self.now)
                        self.instances[instance.metadata.name] = created
                        self.writes += 1
                case DeleteInstance(name=name, uid=uid):
                    found = self.instances.get(name)
                    if found is not None and found.metadata.uid == uid:
                        del self.instances[name]
                        self.writes += 1
                case CreateRevision(revision=revision):
                    if revision.metadata.name not in self.revisions:
                        self.uids += 1
                        meta = msgspec.structs.replace(revision.metadata, uid=f"u{self.uids}")
                        self.revisions[revision.metadata.name] = msgspec.structs.replace(
                            revision, metadata=meta
                        )
                        self.writes += 1
                case DeleteRevision(name=name):
                    if self.revisions.pop(name, None) is not None:
                        self.writes += 1
                case MarkStable(name=name, since=since):
                    rev = self.revisions[name]
                    annotations = {**rev.metadata.annotations, STABLE_ANNOTATION: since}
                    meta = msgspec.structs.replace(rev.metadata, annotations=annotations)
                    self.revisions[name] = msgspec.structs.replace(rev, metadata=meta)
                    self.writes += 1
                case UpdateStatus(status=status):
                    self.dep = msgspec.structs.replace(self.dep, status=status)
                    self.writes += 1
                case RecordEvent():
                    self.events.append(action)
                case RequeueAfter():
                    pass

    def step(self) -> list[Action]:
        actions = self.look()
        self.apply(actions)
        return actions

    def settle(self, rounds: int = 20) -> None:
        """Look until nothing but timers is left."""
        for _ in range(rounds):
            if not [a for a in self.step() if not isinstance(a, RequeueAfter)]:
                return
        raise AssertionError("the plan did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def make_ready(self, revision: str | None = None) -> None:
        for name, instance in self.instances.items():
            if revision is not None and instance.metadata.labels.get(HASH_LABEL) != revision:
                continue
            if not any(
                c.type == "Ready" and c.status == "True" for c in instance.status.conditions
            ):
                self.instances[name] = ready(instance, self.now)

    def change(self, **spec: object) -> None:
        """A user's edit of the spec (generation + 1)."""
        new_spec = msgspec.structs.replace(self.dep.spec, **spec)
        meta = msgspec.structs.replace(
            self.dep.metadata, generation=self.dep.metadata.generation + 1
        )
        self.dep = msgspec.structs.replace(self.dep, spec=new_spec, metadata=meta)

    def template(self, command: str) -> None:
        self.change(template=deployment(command=command).spec.template)

    def hashes(self) -> list[str]:
        return sorted(i.metadata.labels[HASH_LABEL] for i in self.instances.values())

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.dep.status.conditions if c.type == kind), None)
