"""API discovery documents, classic and aggregated, from the registry (pure).

Classic: `/api` (APIVersions), `/api/v1`, `/apis` (APIGroupList), `/apis/{group}[/v1]`
(APIGroup, APIResourceList). Aggregated (`apidiscovery.k8s.io/v2` and `v2beta1`, what kubectl
1.26+ asks for first): `/api` and `/apis` as one APIGroupDiscoveryList each, answered when the
Accept header asks for it. The core group holds what tools written for Kubernetes look for
there: Namespaces (the same objects as keel.dev's, one source of truth) and Events (from
telemetry, never stored).
"""

from __future__ import annotations

from typing import Any

from keel.api.registry import KINDS, TELEMETRY_GROUP, TELEMETRY_KINDS, KindInfo
from keel.api.resources import API_GROUP

ALL_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
AGGREGATED_AS = "APIGroupDiscoveryList"
AGGREGATED_GROUP = "apidiscovery.k8s.io"
AGGREGATED_VERSIONS = ("v2", "v2beta1")
# Kinds `kubectl get all` shows, as Kubernetes puts Deployments and Pods in category "all".
ALL_CATEGORY = frozenset({"Deployment", "Instance", "Service"})
# Short names the core group takes: keel.dev's Namespace does not repeat them, or kubectl
# would warn that "ns" could also match a lower priority resource.
CORE_SHORT_NAMES = frozenset({"ns", "ev"})
TELEMETRY_KIND_NAMES = {
    "nodeheartbeats": ("NodeHeartbeat", "nodeheartbeat", False),
    "instanceusages": ("InstanceUsage", "instanceusage", True),
    "events": ("Event", "event", True),
}


def _subresources(info: KindInfo) -> list[tuple[str, str, str, str, list[str]]]:
    """(name, group, version, kind, verbs) of each subresource of a kind."""
    out: list[tuple[str, str, str, str, list[str]]] = []
    names = (*info.subresources, "renew") if info.kind == "Lease" else info.subresources
    for sub in names:
        out.append(
            {
                "status": (sub, "", "", info.kind, ["get", "patch", "update"]),
                "binding": (sub, "", "", "Binding", ["create"]),
                "eviction": (sub, "", "", "Eviction", ["create"]),
                "renew": (sub, "", "", "LeaseRenewal", ["create"]),
                "scale": (sub, "autoscaling", "v1", "Scale", ["get", "patch", "update"]),
            }[sub]
        )
    return out


def _short_names(info: KindInfo) -> list[str]:
    return [n for n in info.short_names if n not in CORE_SHORT_NAMES]


def _categories(info: KindInfo) -> list[str]:
    return ["all"] if info.kind in ALL_CATEGORY else []


# --------------------------------------------------------------------------- classic


def keel_resources() -> list[dict[str, Any]]:
    """The APIResourceList entries of keel.dev/v1."""
    resources: list[dict[str, Any]] = []
    for info in KINDS:
        entry: dict[str, Any] = {
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": ALL_VERBS,
            "shortNames": _short_names(info),
            "storageClass": info.storage.value,
        }
        if _categories(info):
            entry["categories"] = _categories(info)
        resources.append(entry)
        for sub, group, version, kind, verbs in _subresources(info):
            item: dict[str, Any] = {
                "name": f"{info.plural}/{sub}",
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": kind,
                "verbs": verbs,
            }
            if group:
                item.update(group=group, version=version)
            resources.append(item)
    return resources


def core_resources() -> list[dict[str, Any]]:
    """The APIResourceList entries of the core group (v1)."""
    return [
        {
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ALL_VERBS,
            "shortNames": ["ns"],
        },
        {
            "name": "namespaces/status",
            "singularName": "",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ["get", "patch", "update"],
        },
        {
            "name": "events",
            "singularName": "event",
            "namespaced": True,
            "kind": "Event",
            "verbs": ["list"],
            "shortNames": ["ev"],
        },
    ]


def telemetry_resources() -> list[dict[str, Any]]:
    resources = []
    for name, why in TELEMETRY_KINDS.items():
        kind, singular, namespaced = TELEMETRY_KIND_NAMES[name]
        resources.append(
            {
                "name": name,
                "singularName": singular,
                "namespaced": namespaced,
                "kind": kind,
                "verbs": ["create", "get", "list", "update"],
                "storageClass": "memory",
                "description": why,
            }
        )
    return resources


def resource_list(group_version: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def group(name: str) -> dict[str, Any]:
    version = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [version], "preferredVersion": version}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "apiVersion": "v1",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def group_list() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group(API_GROUP), group(TELEMETRY_GROUP)],
    }


# --------------------------------------------------------------------------- aggregated


def aggregated_version(accept: str) -> str | None:
    """The apidiscovery.k8s.io version an Accept header asks for first, or None when it
    takes the classic documents. Parameters may come in any order (`as=...;g=...;v=...`)."""
    for media in accept.split(","):
        parts = [p.strip() for p in media.split(";")]
        if parts[0] not in ("application/json", "*/*"):
            continue
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if params.get("as") == AGGREGATED_AS and params.get("g") == AGGREGATED_GROUP:
            if params.get("v") in AGGREGATED_VERSIONS:
                return params["v"]
        elif parts[0] == "application/json" and not params.get("as"):
            return None  # plain JSON preferred over any aggregated form that follows
    return None


def content_type(version: str) -> str:
    return f"application/json;g={AGGREGATED_GROUP};v={version};as={AGGREGATED_AS}"


def _aggregated_resource(group_name: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Classic APIResourceList entries folded into aggregated APIResourceDiscovery items."""
    out: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry["name"]
        if "/" in name:
            parent, sub = name.split("/", 1)
            owner = by_name[parent]
            owner.setdefault("subresources", []).append(
                {
                    "subresource": sub,
                    "responseKind": {
                        "group": entry.get("group", group_name),
                        "version": entry.get("version", "v1"),
                        "kind": entry["kind"],
                    },
                    "verbs": entry["verbs"],
                }
            )
            continue
        item: dict[str, Any] = {
            "resource": name,
            "responseKind": {"group": group_name, "version": "v1", "kind": entry["kind"]},
            "scope": "Namespaced" if entry["namespaced"] else "Cluster",
            "singularResource": entry["singularName"],
            "verbs": entry["verbs"],
        }
        if entry.get("shortNames"):
            item["shortNames"] = entry["shortNames"]
        if entry.get("categories"):
            item["categories"] = entry["categories"]
        by_name[name] = item
        out.append(item)
    return out


def _discovery_group(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": None},
        "versions": [
            {
                "version": "v1",
                "resources": _aggregated_resource(name, entries),
                "freshness": "Current",
            }
        ],
    }


def aggregated_core(version: str) -> dict[str, Any]:
    """`/api` as an APIGroupDiscoveryList: the core group (named "")."""
    return {
        "kind": AGGREGATED_AS,
        "apiVersion": f"{AGGREGATED_GROUP}/{version}",
        "metadata": {},
        "items": [_discovery_group("", core_resources())],
    }


def aggregated_groups(version: str) -> dict[str, Any]:
    """`/apis` as an APIGroupDiscoveryList: keel.dev and telemetry.keel.dev."""
    return {
        "kind": AGGREGATED_AS,
        "apiVersion": f"{AGGREGATED_GROUP}/{version}",
        "metadata": {},
        "items": [
            _discovery_group(API_GROUP, keel_resources()),
            _discovery_group(TELEMETRY_GROUP, telemetry_resources()),
        ],
    }
