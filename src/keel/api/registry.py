"""The consensus boundary, declared in one place: every kind, where it is stored, and who
owns which of its fields. The API server enforces it; `keel boundary` reports against it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from keel.api.resources import (
    API_VERSION,
    Cluster,
    Deployment,
    Endpoints,
    Instance,
    Lease,
    Namespace,
    Node,
    Resource,
    ResourceQuota,
    Revision,
    Service,
)

REGISTRY_PREFIX = b"/registry/"


class StorageClass(enum.Enum):
    CONSENSUS = "consensus"  # a store key per object; every write is a consensus write
    CONSENSUS_LEASED = "consensus-leased"  # as above, and bound to a store lease (TTL)
    MEMORY = "memory"  # telemetry: in the API server's memory with a TTL, never stored


class Owner(enum.Enum):
    """Who may write a part of an object (admin may always)."""

    USER = "user"  # any principal allowed to write the kind (admin, and the roles listed)
    CONTROLLER = "controller"
    SCHEDULER = "scheduler"
    NODE_AGENT = "node-agent"  # the agent of the object's node (node:NAME)
    HOLDER = "holder"  # the lease holder, by its renewals
    NOBODY = "nobody"  # immutable after creation


@dataclass(frozen=True)
class FieldOwner:
    """The field managers that may write the fields under `path` (FieldsV1 keys from the
    object's root; the most specific rule wins). Components are held to it; users are not."""

    path: tuple[str, ...]
    managers: frozenset[str]
    why: str


def _owner(path: tuple[str, ...], managers: set[str], why: str) -> FieldOwner:
    return FieldOwner(path, frozenset(managers), why)


# Which component owns which fields: two components never write the same field, except
# where a row names several (and says why).
FIELD_OWNERS: dict[str, tuple[FieldOwner, ...]] = {
    "Deployment": (
        _owner(("f:status",), {"deployment"}, "the deployment controller reports rollouts"),
    ),
    "Instance": (
        _owner(("f:spec", "f:nodeName"), {"scheduler"}, "only the scheduler binds"),
        _owner(("f:status",), {"agent"}, "the node's agent reports what it runs"),
        _owner(
            ("f:status", "f:conditions", 'k:{"type":"Scheduled"}'),
            {"scheduler"},
            "the scheduler says why an Instance is not placed",
        ),
        _owner(
            ("f:status", "f:nominatedNodeName"),
            {"scheduler"},
            "the scheduler nominates the node a preemption frees",
        ),
    ),
    "Node": (
        _owner(("f:status",), {"agent"}, "a node's agent reports its node"),
        _owner(
            ("f:status", "f:conditions", 'k:{"type":"Ready"}'),
            {"agent", "nodelifecycle"},
            "the agent reports Ready; the node lifecycle controller marks a silent node "
            "NotReady (Kubernetes' split, kept on purpose)",
        ),
    ),
    "Cluster": (
        _owner(("f:status",), {"cluster"}, "the cluster controller reports reachability"),
        _owner(
            ("f:status", "f:conditions", 'k:{"type":"NodeEvictions"}'),
            {"cluster-evictions"},
            "the eviction controller reports whether evictions are held back",
        ),
    ),
    "Namespace": (
        _owner(("f:status",), {"namespace"}, "the namespace controller finalizes namespaces"),
    ),
    "Endpoints": (
        _owner(("f:subsets",), {"endpoints"}, "the endpoints controller lists ready addresses"),
    ),
    "ResourceQuota": (
        _owner(("f:status",), {"quota"}, "admission and the quota controller keep the ledger"),
    ),
}


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    namespaced: bool
    model: type[Resource]
    storage: StorageClass
    spec_owner: Owner
    status_owner: Owner
    why: str  # why this state needs consensus: the boundary is argued, not assumed
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    writers: tuple[str, ...] = ("controller",)  # non-admin roles that may create/update/delete

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return API_VERSION

    def key_prefix(self, namespace: str | None = None) -> bytes:
        """Store prefix of this kind, or of one namespace of it."""
        base = REGISTRY_PREFIX + self.plural.encode() + b"/"
        if self.namespaced and namespace:
            return base + namespace.encode() + b"/"
        return base

    def key(self, namespace: str, name: str) -> bytes:
        if self.namespaced:
            return self.key_prefix(namespace) + name.encode()
        return self.key_prefix() + name.encode()


KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        "Cluster",
        "clusters",
        False,
        Cluster,
        StorageClass.CONSENSUS,
        spec_owner=Owner.USER,
        status_owner=Owner.CONTROLLER,
        subresources=("status",),
        why="membership: placement decisions must agree on which clusters exist",
        writers=("controller", "node"),
    ),
    KindInfo(
        "Node",
        "nodes",
        False,
        Node,
        StorageClass.CONSENSUS,
        spec_owner=Owner.NODE_AGENT,
        status_owner=Owner.NODE_AGENT,
        subresources=("status",),
        short_names=("no",),
        why="membership and Ready transitions: failover decides on them",
        writers=("controller", "node"),
    ),
    KindInfo(
        "Namespace",
        "namespaces",
        False,
        Namespace,
        StorageClass.CONSENSUS,
        spec_owner=Owner.USER,
        status_owner=Owner.CONTROLLER,
        subresources=("status",),
        short_names=("ns",),
        why="desired state: the scope every namespaced object lives in",
    ),
    KindInfo(
        "Deployment",
        "deployments",
        True,
        Deployment,
        StorageClass.CONSENSUS,
        spec_owner=Owner.USER,
        status_owner=Owner.CONTROLLER,
        subresources=("status", "scale"),
        short_names=("deploy",),
        why="desired state",
    ),
    KindInfo(
        "Revision",
        "revisions",
        True,
        Revision,
        StorageClass.CONSENSUS,
        spec_owner=Owner.NOBODY,
        status_owner=Owner.NOBODY,
        short_names=("rev",),
        why="desired state: the template a rollout moves to or back to",
    ),
    KindInfo(
        "Instance",
        "instances",
        True,
        Instance,
        StorageClass.CONSENSUS,
        spec_owner=Owner.USER,
        status_owner=Owner.NODE_AGENT,
        subresources=("status", "binding", "eviction"),
        short_names=("inst",),
        why="bindings (which node runs it) and phase/readiness transitions",
    ),
    KindInfo(
        "Service",
        "services",
        True,
        Service,
        StorageClass.CONSENSUS,
        spec_owner=Owner.USER,
        status_owner=Owner.CONTROLLER,
        subresources=("status",),
        short_names=("svc",),
        why="desired state",
    ),
    KindInfo(
        "Endpoints",
        "endpoints",
        True,
        Endpoints,
        StorageClass.CONSENSUS,
        spec_owner=Owner.CONTROLLER,
        status_owner=Owner.CONTROLLER,
        short_names=("ep",),
        why="authoritative endpoints: clients must not route to a stale set",
    ),
    KindInfo(
        "ResourceQuota",
        "resourcequotas",
        True,
        ResourceQuota,
        StorageClass.CONSENSUS,
        spec_owner=Owner.USER,
        status_owner=Owner.CONTROLLER,
        subresources=("status",),
        short_names=("quota",),
        why="admission ledger: status.used is compared and raised in the same transaction "
        "as every Instance create, so concurrent creates never exceed spec.hard together",
    ),
    KindInfo(
        "Lease",
        "leases",
        True,
        Lease,
        StorageClass.CONSENSUS_LEASED,
        spec_owner=Owner.HOLDER,
        status_owner=Owner.NOBODY,
        short_names=("le",),
        why="ownership: at most one holder, with a fencing token the store enforces",
        writers=("controller", "scheduler", "node"),
    ),
)

BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in KINDS}
BY_KIND: dict[str, KindInfo] = {info.kind: info for info in KINDS}


def lookup(name: str) -> KindInfo | None:
    """A kind by plural, singular, kind name or short name (case-insensitive)."""
    wanted = name.lower()
    for info in KINDS:
        if wanted in (info.plural, info.singular, info.kind.lower(), *info.short_names):
            return info
    return None


# Telemetry: held in memory by the API server (StorageClass.MEMORY), listed here so the
# boundary report covers it too.
TELEMETRY_GROUP = "telemetry.keel.dev"
TELEMETRY_KINDS: dict[str, str] = {
    "nodeheartbeats": "node heartbeats and usage (a renewal is a keep-alive, not a write)",
    "instanceusages": "per-instance cpu/memory usage and restart counts",
    "events": "events of every object (what happened, for `keel describe`)",
}
