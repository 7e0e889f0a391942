"""Every resource kind of keel.dev/v1 as a frozen, strictly validated msgspec Struct.

Decoding is the validation: unknown fields, wrong types and out-of-range values raise
`msgspec.ValidationError` naming the JSON path (`$.spec.replicas`). Field names are camelCase
on the wire. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from keel.api.quantity import parse_cpu, parse_memory, parse_quantity

API_GROUP = "keel.dev"
API_VERSION = "keel.dev/v1"

# DNS-1123 subdomain for names (as Kubernetes); label keys and values as Kubernetes.
NAME_RE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
Name = Annotated[str, msgspec.Meta(pattern=NAME_RE, max_length=253)]
OptionalName = Annotated[
    str, msgspec.Meta(pattern=r"^(|[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$", max_length=253)
]
_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
Quantity = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[int, msgspec.Meta(ge=0)]
Timestamp = str  # RFC 3339, UTC, set by the server


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Base of every wire record. Defaults are written out, so a reader sees
    `spec.replicas: 1` rather than nothing (metadata alone omits empty fields, as
    Kubernetes does)."""


def _check_labels(field: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key):
            raise ValueError(f"{field}: invalid label key {key!r}")
        if not _LABEL_VALUE_RE.match(value):
            raise ValueError(f"{field}: invalid label value {value!r} for {key!r}")


# --------------------------------------------------------------------------- metadata


class OwnerReference(Model, frozen=True):
    api_version: str
    kind: str
    name: Name
    uid: str
    controller: bool = False
    block_owner_deletion: bool = False


class ManagedFieldsEntry(Model, frozen=True, omit_defaults=True):
    """Who owns which fields (Kubernetes' shape), written by the API server only."""

    manager: str = ""
    operation: Literal["Apply", "Update", ""] = ""  # always written ("Apply" or "Update")
    api_version: str = ""
    time: Timestamp | None = None
    fields_type: str = ""  # "FieldsV1", always written
    fields_v1: dict[str, Any] = msgspec.field(default_factory=dict, name="fieldsV1")
    subresource: str = ""


class ObjectMeta(Model, frozen=True, omit_defaults=True):
    name: OptionalName = ""
    generate_name: str = ""
    namespace: OptionalName = ""
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    owner_references: list[OwnerReference] = []
    finalizers: list[str] = []
    managed_fields: list[ManagedFieldsEntry] = []

    def __post_init__(self) -> None:
        _check_labels("metadata.labels", self.labels)


class Condition(Model, frozen=True):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: Timestamp | None = None
    observed_generation: int = 0


class LabelSelector(Model, frozen=True):
    match_labels: dict[str, str] = {}


# An extended resource's name: a label-key-like name ("gpu", "example.com/fpga").
_RESOURCE_NAME_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$"
)


class ResourceList(Model, frozen=True):
    """cpu and memory, plus any other named resource a Node offers and an Instance requests
    (`extended: {gpu: "1"}`): counted as whole units, fit checked like cpu and memory."""

    cpu: Quantity = "0"
    memory: Quantity = "0"
    extended: dict[str, Quantity] = {}

    def __post_init__(self) -> None:
        for name, value in self.extended.items():
            if name in ("cpu", "memory"):
                raise ValueError(f"extended.{name}: cpu and memory are not extended resources")
            if not _RESOURCE_NAME_RE.match(name):
                raise ValueError(
                    f"extended: invalid resource name {name!r} (expected a name like 'gpu' "
                    "or 'example.com/fpga')"
                )
            if parse_quantity(value) != parse_quantity(value).to_integral_value():
                raise ValueError(f"extended.{name}: {value!r} is not a whole number of units")

    @property
    def millicpu(self) -> int:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def extended_units(self) -> dict[str, int]:
        return {name: parse_memory(value) for name, value in self.extended.items()}


class Resource(Model, frozen=True):
    """Base of every top-level kind. Subclasses set `kind` and the spec/status types."""

    kind_name: ClassVar[str] = ""
    api_version: str = API_VERSION
    kind: str = ""
    metadata: ObjectMeta = ObjectMeta()

    def __post_init__(self) -> None:
        if self.api_version != API_VERSION:
            raise ValueError(f"apiVersion: expected {API_VERSION!r}, got {self.api_version!r}")
        if self.kind and self.kind != self.kind_name:
            raise ValueError(f"kind: expected {self.kind_name!r}, got {self.kind!r}")


# --------------------------------------------------------------------------- membership


class Taint(Model, frozen=True):
    key: str
    effect: Literal["NoSchedule", "NoExecute", "PreferNoSchedule"]
    value: str = ""


class NodeSpec(Model, frozen=True):
    cluster: OptionalName = ""
    capacity: ResourceList = ResourceList()
    unschedulable: bool = False
    taints: list[Taint] = []


class NodeAddress(Model, frozen=True):
    type: Literal["InternalIP", "ExternalIP", "Hostname"]
    address: str


class NodeStatus(Model, frozen=True):
    conditions: list[Condition] = []
    allocatable: ResourceList | None = None
    addresses: list[NodeAddress] = []


class Node(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Node"
    spec: NodeSpec = NodeSpec()
    status: NodeStatus = NodeStatus()


class ClusterSpec(Model, frozen=True):
    region: str = ""
    zone: str = ""


class ClusterStatus(Model, frozen=True):
    conditions: list[Condition] = []
    nodes: int = 0
    ready_nodes: int = 0


class Cluster(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Cluster"
    spec: ClusterSpec = ClusterSpec()
    status: ClusterStatus = ClusterStatus()


class NamespaceScheduling(Model, frozen=True):
    """How the scheduler treats the namespace as a tenant (`spec.scheduling`)."""

    # The namespace's share of the cluster under weighted dominant-resource fairness:
    # among pending Instances of equal priority, the tenant whose dominant share divided by
    # its weight is lowest goes first, so a namespace of weight 2 converges to twice the
    # dominant share of one of weight 1 (keel.scheduler.fairness).
    weight: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=1_000_000,
            description="The namespace's weight in the scheduler's dominant-resource "
            "fairness (default 1): weight 2 gets twice the share of weight 1 under contention.",
        ),
    ] = 1.0


class NamespaceSpec(Model, frozen=True):
    finalizers: list[str] = []
    scheduling: NamespaceScheduling = NamespaceScheduling()


class NamespaceStatus(Model, frozen=True):
    phase: Literal["Active", "Terminating"] = "Active"


class Namespace(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Namespace"
    spec: NamespaceSpec = NamespaceSpec()
    status: NamespaceStatus = NamespaceStatus()


# --------------------------------------------------------------------------- workloads


class PortSpec(Model, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")]
    port: Port = 0  # 0: the agent assigns one


class HealthCheck(Model, frozen=True):
    """A readiness check (`healthCheck`): while it fails the instance is not Ready and is left
    out of Endpoints; it never restarts the process."""

    type: Literal["http", "tcp", "exec"]
    path: str = "/"
    port: str | int = ""  # a port name or number
    command: list[str] = []
    period_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 1
    failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    success_threshold: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    initial_delay_seconds: Seconds = 0

    def __post_init__(self) -> None:
        if self.type == "exec" and not self.command:
            raise ValueError("command: required for an exec check")


class LivenessCheck(HealthCheck, frozen=True):
    """A liveness check (`livenessCheck`): once it has failed `failureThreshold` times in a
    row, the agent stops the process (its termination grace period applies) and the restart
    policy decides what follows. One success resets the count, so `successThreshold` is 1."""

    success_threshold: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1


# ------------------------------------------------------------- scheduling constraints
#
# The shapes of Kubernetes' pod scheduling fields, with `instance` for `pod`. What each one
# does is keel.scheduler.policy's business; here they are only validated.

SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


def _check_requirement(field: str, operator: str, values: list[str]) -> None:
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"{field}.values: required for operator {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"{field}.values: must be empty for operator {operator}")


class NodeSelectorRequirement(Model, frozen=True):
    """`key` (a Node label) `operator` `values`."""

    key: Annotated[str, msgspec.Meta(min_length=1)]
    operator: SelectorOperator
    values: list[str] = []

    def __post_init__(self) -> None:
        _check_requirement("matchExpressions", self.operator, self.values)


class NodeSelectorTerm(Model, frozen=True):
    """All of its expressions must hold (an empty term matches no Node, as Kubernetes')."""

    match_expressions: list[NodeSelectorRequirement] = []


class NodeSelector(Model, frozen=True):
    """Any one of its terms must hold."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], msgspec.Meta(min_length=1)]


class PreferredSchedulingTerm(Model, frozen=True):
    weight: Annotated[int, msgspec.Meta(ge=1, le=100)]
    preference: NodeSelectorTerm


class NodeAffinity(Model, frozen=True):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = []


class LabelSelectorRequirement(Model, frozen=True):
    key: Annotated[str, msgspec.Meta(min_length=1)]
    operator: SelectorOperator
    values: list[str] = []

    def __post_init__(self) -> None:
        _check_requirement("matchExpressions", self.operator, self.values)


class InstanceLabelSelector(Model, frozen=True):
    """Instances whose labels have every `matchLabels` pair and satisfy every expression
    (an empty selector selects every Instance of the namespace)."""

    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []

    def __post_init__(self) -> None:
        _check_labels("labelSelector.matchLabels", self.match_labels)


# The failure domains a topologyKey may name, and the Kubernetes names accepted for them.
TOPOLOGY_KEYS = {
    "node": "node",
    "kubernetes.io/hostname": "node",
    "cluster": "cluster",
    "keel.dev/cluster": "cluster",
    "zone": "zone",
    "topology.kubernetes.io/zone": "zone",
    "region": "region",
    "topology.kubernetes.io/region": "region",
}


def _check_topology_key(field: str, key: str) -> None:
    if key not in TOPOLOGY_KEYS:
        raise ValueError(
            f"{field}: {key!r} is not a topology key (expected node, cluster, zone or region)"
        )


class InstanceAffinityTerm(Model, frozen=True):
    """The Instances of the same namespace `labelSelector` selects, counted per domain of
    `topologyKey`: node, cluster, zone or region."""

    label_selector: InstanceLabelSelector
    topology_key: str

    def __post_init__(self) -> None:
        _check_topology_key("topologyKey", self.topology_key)


class WeightedInstanceAffinityTerm(Model, frozen=True):
    weight: Annotated[int, msgspec.Meta(ge=1, le=100)]
    instance_affinity_term: InstanceAffinityTerm


class InstanceAffinity(Model, frozen=True):
    required_during_scheduling_ignored_during_execution: list[InstanceAffinityTerm] = []
    preferred_during_scheduling_ignored_during_execution: list[WeightedInstanceAffinityTerm] = []


class Affinity(Model, frozen=True):
    node_affinity: NodeAffinity | None = None
    instance_affinity: InstanceAffinity | None = None
    instance_anti_affinity: InstanceAffinity | None = None


class Toleration(Model, frozen=True):
    """Tolerates the Node taints it matches: same key (empty key with Exists: every key),
    same value (Equal) or any (Exists), same effect (empty: every effect). For NoExecute,
    `tolerationSeconds` bounds how long a running Instance stays after the taint appears."""

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        if self.operator == "Exists" and self.value:
            raise ValueError("tolerations.value: must be empty for operator Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("tolerations.key: an empty key needs operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerations.tolerationSeconds: only for effect NoExecute")


class TopologySpreadConstraint(Model, frozen=True):
    """The Instances `labelSelector` selects may differ by at most `maxSkew` between the
    domains of `topologyKey` (among the Nodes the Instance may use)."""

    max_skew: Annotated[int, msgspec.Meta(ge=1)]
    topology_key: str
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    label_selector: InstanceLabelSelector

    def __post_init__(self) -> None:
        _check_topology_key("topologySpreadConstraints.topologyKey", self.topology_key)


class InstanceSpec(Model, frozen=True):
    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    node_name: OptionalName = ""
    env: dict[str, str] = {}
    working_dir: str = ""
    resources: ResourceList = ResourceList()
    ports: list[PortSpec] = []
    health_check: HealthCheck | None = None
    liveness_check: LivenessCheck | None = None
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    exclusive: bool = False
    # Higher goes first and may preempt lower (preemptionPolicy); see keel.scheduler.
    priority: Annotated[int, msgspec.Meta(ge=-1_000_000_000, le=1_000_000_000)] = 0
    preemption_policy: Literal["PreemptLowerPriority", "Never"] = "PreemptLowerPriority"
    tolerations: list[Toleration] = []
    affinity: Affinity | None = None
    topology_spread_constraints: list[TopologySpreadConstraint] = []
    termination_grace_period_seconds: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 10

    def __post_init__(self) -> None:
        names = [p.name for p in self.ports]
        if len(names) != len(set(names)):
            raise ValueError("ports: port names must be unique")
        if self.liveness_check is not None:
            _check_target("livenessCheck", self.liveness_check, names)


def _check_target(field: str, check: HealthCheck, ports: list[str]) -> None:
    """An http or tcp check must reach a port: a declared port's name, a number, or (empty)
    the first declared port. A liveness check that can never pass would restart the process
    forever, so a typo is an error here rather than a crash loop later."""
    if check.type == "exec":
        return
    target = check.port
    if isinstance(target, int) or target.isdigit():
        return
    declared = ", ".join(ports) if ports else "none"
    if not target and not ports:
        raise ValueError(
            f"{field}.port: required for a {check.type} check (the instance declares no ports)"
        )
    if target and target not in ports:
        raise ValueError(
            f"{field}.port: {target!r} is not a port of this instance (declared: {declared})"
        )


class PortStatus(Model, frozen=True):
    name: str
    port: Port


class InstanceStatus(Model, frozen=True):
    phase: Literal["Pending", "Scheduled", "Running", "Succeeded", "Failed"] = "Pending"
    conditions: list[Condition] = []
    host_ip: str = ""
    ports: list[PortStatus] = []
    started_at: Timestamp | None = None
    message: str = ""
    # The Node the scheduler preempts lower-priority Instances on for this one, until bound.
    nominated_node_name: str = ""


# The finalizer the API server adds when it binds an `exclusive` Instance. Deleting such an
# Instance only marks it (deletionTimestamp): its name stays taken, so no replacement of the
# same name can be created or bound, until the copy on the node is certainly stopped: its
# agent reported a terminal phase, or its node lease has been gone long enough for the agent
# to have fenced itself. The node-lifecycle controller then removes it. Removing it by hand
# is a forced delete: the old copy may still be running.
STOP_CONFIRMED = "keel.dev/stop-confirmed"


# The annotation the cluster failover controller puts on an Instance it moves gracefully off
# an Unreachable cluster (placement.clusterFailover: Graceful); its value is the RFC 3339
# time the move began. Such an Instance is outgoing: the Deployment controller no longer
# counts it towards replicas (it creates a replacement under a free index) and deletes it
# once enough replacements are Ready; the failover controller deletes it when the grace
# period (failoverGraceSeconds from that time) ends. It never comes back by itself.
FAILOVER_PENDING = "keel.dev/failover-pending"


class Instance(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Instance"
    spec: InstanceSpec
    status: InstanceStatus = InstanceStatus()


class TemplateMeta(Model, frozen=True):
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    def __post_init__(self) -> None:
        _check_labels("template.metadata.labels", self.labels)


class InstanceTemplate(Model, frozen=True):
    spec: InstanceSpec
    metadata: TemplateMeta = TemplateMeta()


IntOrPercent = (
    Annotated[str, msgspec.Meta(pattern=r"^[0-9]+%?$")] | Annotated[int, msgspec.Meta(ge=0)]
)


class RollingUpdate(Model, frozen=True):
    max_surge: IntOrPercent = "25%"
    max_unavailable: IntOrPercent = "25%"


class CanaryPause(Model, frozen=True):
    # None: paused until `keel rollout promote`.
    duration: Annotated[int, msgspec.Meta(ge=0, le=86_400)] | None = None


class AnalysisProbe(Model, frozen=True):
    """A check of the canary Instances, run by the deployment controller at every sample:
    `http` GETs `path` on `port` of each Ready canary Instance (2xx or 3xx passes); `exec`
    runs `command` with KEEL_CANARY_INSTANCES and KEEL_CANARY_ENDPOINTS (host:port, space
    separated) in its environment (exit status 0 passes)."""

    type: Literal["http", "exec"]
    path: str = "/"
    port: str | int = ""  # a port name or number of the template ("": its first port)
    command: list[str] = []
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=60)] = 2

    def __post_init__(self) -> None:
        if self.type == "exec" and not self.command:
            raise ValueError("probe.command: required for an exec probe")


class Analysis(Model, frozen=True):
    """Pass/fail gates over a window of samples (one every `intervalSeconds`): it fails as
    soon as a gate cannot hold any more, and passes when the window ends with every gate
    held."""

    window_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 30
    interval_seconds: Annotated[int, msgspec.Meta(ge=1, le=600)] = 5
    # The mean share of canary Instances Ready over the window's samples must reach this.
    min_ready_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    # More restarts than this (agent telemetry, summed over the canary Instances, counted
    # from the start of the window) fail the analysis.
    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 0
    probe: AnalysisProbe | None = None
    # More failed probe samples than this fail the analysis.
    max_probe_failures: Annotated[int, msgspec.Meta(ge=0)] = 0


class CanaryStep(Model, frozen=True):
    """One of: setWeight (percent of replicas on the new revision, at least one when
    non-zero), pause (for a duration, or until promoted) or analysis."""

    set_weight: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    pause: CanaryPause | None = None
    analysis: Analysis | None = None

    def __post_init__(self) -> None:
        given = [
            n
            for n, v in (
                ("setWeight", self.set_weight),
                ("pause", self.pause),
                ("analysis", self.analysis),
            )
            if v is not None
        ]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                f"a canary step holds exactly one of setWeight, pause or analysis (found: {found})"
            )

    @property
    def kind(self) -> Literal["setWeight", "pause", "analysis"]:
        if self.set_weight is not None:
            return "setWeight"
        return "pause" if self.pause is not None else "analysis"


class Canary(Model, frozen=True):
    steps: Annotated[list[CanaryStep], msgspec.Meta(min_length=1)]


class Wave(Model, frozen=True):
    """A group of clusters that a rollout reaches together: by name or by label selector
    (over Cluster labels). The next wave starts once this one has run the new revision,
    fully available, for `bakeSeconds`; more than `maxFailures` failed Instances (Failed,
    or crash-looping) stop the rollout here."""

    name: str = ""
    clusters: list[Name] = []
    cluster_selector: LabelSelector | None = None
    max_failures: Annotated[int, msgspec.Meta(ge=0)] = 0
    bake_seconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 30

    def __post_init__(self) -> None:
        if bool(self.clusters) == (self.cluster_selector is not None):
            raise ValueError(
                "a wave names its clusters or selects them (clusterSelector), not both"
            )
        if self.cluster_selector is not None and not self.cluster_selector.match_labels:
            raise ValueError("clusterSelector.matchLabels: must name at least one label")


class Strategy(Model, frozen=True):
    type: Literal["RollingUpdate", "Canary", "Recreate"] = "RollingUpdate"
    # The surge and unavailability budget of RollingUpdate, and of Canary and waves too.
    rolling_update: RollingUpdate = RollingUpdate()
    canary: Canary | None = None
    waves: list[Wave] = []

    def __post_init__(self) -> None:
        if self.type == "Canary" and self.canary is None:
            raise ValueError("canary: required with type Canary (a list of steps)")
        if self.type != "Canary" and self.canary is not None:
            raise ValueError(f"canary: only with type Canary (type is {self.type})")
        if self.type == "Recreate" and self.waves:
            raise ValueError("waves: not with type Recreate (it replaces every Instance at once)")
        seen: set[str] = set()
        for wave in self.waves:
            twice = seen & set(wave.clusters)
            if twice:
                raise ValueError(f"waves: cluster {sorted(twice)[0]} is in more than one wave")
            seen |= set(wave.clusters)


class Placement(Model, frozen=True):
    clusters: list[Name] = []
    spread_across: Literal["cluster", "node", "none"] = "node"
    node_selector: dict[str, str] = {}
    # What happens to this Deployment's Instances on a cluster that turns Unreachable (the
    # cluster controller, keel.controllers.cluster): moved at once, replaced before they go,
    # or left where they are.
    cluster_failover: Literal["Immediate", "Graceful", "Never"] = "Immediate"
    # Graceful: how long an outgoing Instance may wait for its replacement to become Ready.
    failover_grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 300
    # Move Instances back towards an even spread (spreadAcross) once clusters recover.
    rebalance: bool = False


class DeploymentSpec(Model, frozen=True):
    template: InstanceTemplate
    replicas: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 1
    # Which Instances are this Deployment's (besides its ownerReference); must match the
    # template's labels, or the Deployment would disown every Instance it creates.
    selector: LabelSelector | None = None
    strategy: Strategy = Strategy()
    placement: Placement = Placement()
    priority: int = 0
    # An Instance counts as available once it has been Ready this long.
    min_ready_seconds: Seconds = 0
    # A rollout making no progress this long fails (Progressing=False,
    # ProgressDeadlineExceeded), and is rolled back when autoRollback is set.
    progress_deadline_seconds: Annotated[int, msgspec.Meta(ge=1)] = 600
    # How many unused old Revisions are kept for `keel rollout undo`.
    revision_history_limit: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10
    # How long a fully rolled out revision must stay fully available before it is marked
    # stable: the revision an automatic rollback returns to.
    bake_seconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 10
    # Revert to the stable revision when a rollout exceeds its progress deadline or its new
    # Instances crash-loop; the bad template is not retried until it changes again.
    auto_rollback: bool = False
    # No rollout progress while set; scaling still works.
    paused: bool = False

    def __post_init__(self) -> None:
        if self.selector is None:
            return
        wanted = self.selector.match_labels
        if not wanted:
            raise ValueError("selector.matchLabels: must name at least one label")
        labels = self.template.metadata.labels
        unmatched = sorted(k for k, v in wanted.items() if labels.get(k) != v)
        if unmatched:
            shown = ", ".join(f"{k}={wanted[k]}" for k in unmatched)
            raise ValueError(
                f"selector: does not match template.metadata.labels ({shown} missing); "
                "the Deployment would not select the Instances it creates"
            )


class DeploymentCondition(Condition, frozen=True):
    """A Deployment's condition, as Kubernetes': `lastUpdateTime` moves on progress (the
    progress deadline counts from it), `lastTransitionTime` only when the status changes."""

    last_update_time: Timestamp | None = None


# The rollout's state (status.phase): see keel.controllers.rollout for the transition table.
RolloutPhase = Literal[
    "", "Progressing", "Paused", "Complete", "Failed", "RollingBack", "RolledBack"
]


class DeploymentStatus(Model, frozen=True):
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    current_revision: str = ""
    update_revision: str = ""
    # The last revision that was fully rolled out and stayed available for bakeSeconds.
    stable_revision: str = ""
    # A template hash that was rolled back automatically: not retried until the template
    # changes again.
    failed_revision: str = ""
    phase: RolloutPhase = ""
    # Canary and waves: the step (index into strategy.canary.steps; len(steps) once every
    # step is done) and the wave (index into strategy.waves) the rollout stands at, and
    # when it got there. Written on transitions only.
    current_step: int = 0
    current_wave: int = 0
    step_started_at: Timestamp | None = None
    conditions: list[DeploymentCondition] = []


class Deployment(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Deployment"
    spec: DeploymentSpec
    status: DeploymentStatus = DeploymentStatus()


class RevisionSpec(Model, frozen=True):
    revision: Annotated[int, msgspec.Meta(ge=1)]
    template: InstanceTemplate
    deployment: Name = "unknown"


# The annotation the deployment controller puts on a Revision, once, when it becomes stable
# (fully rolled out and available for bakeSeconds); its value is the RFC 3339 time.
STABLE_ANNOTATION = "keel.dev/stable-since"
# On a Deployment, set by `keel rollout promote|abort`: "{templateHash}/{step}" skips the
# canary step (or wave) the rollout stands at, "{templateHash}/full" every remaining one;
# abort: "{templateHash}" returns to the stable revision and leaves that template failed.
PROMOTE_ANNOTATION = "keel.dev/promote"
ABORT_ANNOTATION = "keel.dev/abort"
# On an Instance: the clusters it may run in (comma separated), set by a wave rollout.
CLUSTERS_ANNOTATION = "keel.dev/clusters"


class Revision(Resource, frozen=True, kw_only=True):
    """An immutable snapshot of a Deployment's template, named `{deployment}-{hash}`."""

    kind_name: ClassVar[str] = "Revision"
    spec: RevisionSpec


# --------------------------------------------------------------------------- services


class ServicePort(Model, frozen=True):
    name: str = ""
    port: Port = 0
    target_port: str | int = ""  # instance port name or number
    protocol: Literal["TCP", "UDP"] = "TCP"


class ServiceSpec(Model, frozen=True):
    selector: dict[str, str] | None = None  # None: external registrations
    ports: list[ServicePort] = []


class Service(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Service"
    spec: ServiceSpec = ServiceSpec()
    status: dict[str, Any] = {}


class EndpointAddress(Model, frozen=True):
    ip: str
    port: Port
    instance: str = ""
    node: str = ""
    ready: bool = True
    lease: str = ""  # external registrations: the Lease that keeps it alive


class EndpointSubset(Model, frozen=True):
    addresses: list[EndpointAddress] = []
    name: str = ""


class Endpoints(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Endpoints"
    subsets: list[EndpointSubset] = []


# --------------------------------------------------------------------------- leases


# The label a registration Lease carries: the Service it registers an endpoint of, so
# `keel get leases -l keel.dev/service=web` lists them (spec.registration.service decides).
SERVICE_LABEL = "keel.dev/service"
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)


def valid_host(address: str) -> bool:
    """An IPv4 or IPv6 literal, or a DNS name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return bool(_HOSTNAME_RE.match(address))
    return True


class EndpointRegistration(Model, frozen=True):
    """An external endpoint of a Service, listed in its Endpoints while this Lease lives:
    renewals keep it (keep-alives, not writes); when they stop, the store expires the Lease
    and the endpoints controller drops the address. Only `ready` may change later."""

    service: Name
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    port_name: str = ""  # the Service port it serves ("": the Service's first port)
    ready: bool = True  # False: listed with ready: false (its check fails), as Instances are

    def __post_init__(self) -> None:
        if not valid_host(self.address):
            raise ValueError(f"address: expected an IP address or a DNS name, got {self.address!r}")


class LeaseSpec(Model, frozen=True, omit_defaults=True):
    holder_identity: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    lease_duration_seconds: Annotated[int, msgspec.Meta(ge=2, le=3600)]
    registration: EndpointRegistration | None = None  # an external endpoint of a Service


class LeaseStatus(Model, frozen=True):
    fencing_token: int = 0
    acquire_time: Timestamp | None = None


class Lease(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "Lease"
    spec: LeaseSpec
    status: LeaseStatus = LeaseStatus()


class LeaseRenewal(Model, frozen=True):
    holder_identity: str
    fencing_token: int


# --------------------------------------------------------------------------- quotas


# A resource a quota limits: cpu, memory, instances, or an extended resource
# (`gpu`, `example.com/fpga`), spelled as a label key.
RESOURCE_NAME_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$"
)


class ResourceQuotaSpec(Model, frozen=True):
    """Hard limits on what a namespace's Instances may request in total (see
    `keel.api.quota`): `cpu` and `memory` are quantities, `instances` a count, any other
    name an extended resource (a whole number)."""

    hard: dict[str, Quantity] = {}

    def __post_init__(self) -> None:
        for name, value in self.hard.items():
            if not RESOURCE_NAME_RE.match(name):
                raise ValueError(
                    f"spec.hard: invalid resource name {name!r} (cpu, memory, instances or "
                    "an extended resource such as gpu or example.com/fpga)"
                )
            if name not in ("cpu", "memory") and ("." in value or value.endswith(("m", "i"))):
                raise ValueError(f"spec.hard.{name}: expected a whole number, got {value!r}")


class ResourceQuotaStatus(Model, frozen=True):
    """`hard`: the limits enforced (spec.hard as last seen); `used`: what the namespace's
    Instances request, the admission ledger (raised by every admitted create, recomputed
    by the quota controller after deletions)."""

    hard: dict[str, Quantity] = {}
    used: dict[str, Quantity] = {}


class ResourceQuota(Resource, frozen=True, kw_only=True):
    kind_name: ClassVar[str] = "ResourceQuota"
    spec: ResourceQuotaSpec = ResourceQuotaSpec()
    status: ResourceQuotaStatus = ResourceQuotaStatus()


# --------------------------------------------------------------------------- API records


class Binding(Model, frozen=True):
    """POST body of instances/{name}/binding."""

    target: NodeTarget
    api_version: str = API_VERSION
    kind: str = "Binding"
    metadata: ObjectMeta = ObjectMeta()


class NodeTarget(Model, frozen=True):
    name: Name
    kind: str = "Node"


class PlanBinding(Model, frozen=True):
    """One binding of a BindingPlan: Instance `namespace`/`name` onto Node `node`, only if
    the Instance is still at `resourceVersion` (when given)."""

    namespace: Name
    name: Name
    node: Name
    resource_version: str = ""


class PlanResult(Model, frozen=True, omit_defaults=True):
    """What became of one binding: bound (and the Instance's new resourceVersion), or the
    refusal as a Status would give it (code, reason, message)."""

    namespace: str
    name: str
    node: str
    bound: bool = False
    uid: str = ""  # the bound Instance's
    resource_version: str = ""
    code: int = 0
    reason: str = ""
    message: str = ""


class BindingPlan(Model, frozen=True, omit_defaults=True):
    """POST body of /apis/keel.dev/v1/bindingplans: bindings the API server commits in one
    store transaction (those still valid), answered with one result per binding, in order
    (a scheduler's plan, as Nomad's plan queue applies them). Never stored."""

    bindings: list[PlanBinding] = []
    api_version: str = API_VERSION
    kind: str = "BindingPlan"
    results: list[PlanResult] = []


class Precondition(Model, frozen=True, omit_defaults=True):
    uid: str = ""
    resource_version: str = ""


# DELETE's propagationPolicy (as Kubernetes'): Background deletes the owner now and lets the
# garbage collector take its dependents; Foreground keeps the owner (finalizer
# FOREGROUND_FINALIZER) until every dependent whose ownerReference sets blockOwnerDeletion
# is gone; Orphan removes the owner's references from its dependents first (ORPHAN_FINALIZER).
PropagationPolicy = Literal["Background", "Foreground", "Orphan"]
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"


class DeleteOptions(Model, frozen=True, omit_defaults=True):
    preconditions: Precondition | None = None
    propagation_policy: PropagationPolicy | None = None


class Eviction(Model, frozen=True):
    """POST body of instances/{name}/eviction (as Kubernetes' policy/v1 Eviction): delete the
    Instance gracefully if its Deployment's disruption budget allows. The body may be empty;
    `deleteOptions.preconditions.uid` evicts only that incarnation of the name."""

    api_version: str = API_VERSION
    kind: str = "Eviction"
    metadata: ObjectMeta = ObjectMeta()
    delete_options: DeleteOptions | None = None


class StatusCause(Model, frozen=True):
    field: str = ""
    message: str = ""
    reason: str = ""


class StatusDetails(Model, frozen=True, omit_defaults=True):
    name: str = ""
    kind: str = ""
    causes: list[StatusCause] = []
    retry_after_seconds: int = 0


class ListMeta(Model, frozen=True, omit_defaults=True):
    resource_version: str = ""
    continue_: str = msgspec.field(default="", name="continue")
    remaining_item_count: int | None = None


class Status(Model, frozen=True):
    """Kubernetes' error (and success) record."""

    status: Literal["Success", "Failure"] = "Failure"
    message: str = ""
    reason: str = ""
    code: int = 500
    details: StatusDetails | None = None
    api_version: str = "v1"
    kind: str = "Status"
    metadata: ListMeta = ListMeta()


KINDS: tuple[type[Resource], ...] = (
    Cluster,
    Node,
    Namespace,
    Deployment,
    Revision,
    Instance,
    Service,
    Endpoints,
    Lease,
    ResourceQuota,
)
