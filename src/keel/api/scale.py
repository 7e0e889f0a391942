"""The `scale` subresource of Deployments in the autoscaling/v1 Scale shape (what `kubectl
scale` and autoscalers speak). Pure: a Deployment's Scale, a Scale decoded strictly, and the
Deployment a Scale asks for (its resourceVersion, when given, is the write's precondition).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from keel.api.resources import Deployment

SCALE_API_VERSION = "autoscaling/v1"
Replicas = Annotated[int, msgspec.Meta(ge=0, le=100_000)]


class _Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    pass


class ScaleMeta(_Record, frozen=True):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    creation_timestamp: str | None = None
    # accepted and ignored: a Scale has no labels of its own
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ScaleSpec(_Record, frozen=True):
    replicas: Replicas = 0


class ScaleStatus(_Record, frozen=True):
    replicas: int = 0
    selector: str = ""


class Scale(_Record, frozen=True):
    """autoscaling/v1 Scale: only spec.replicas is written."""

    spec: ScaleSpec
    api_version: str = SCALE_API_VERSION
    kind: str = "Scale"
    metadata: ScaleMeta = ScaleMeta()
    status: ScaleStatus = ScaleStatus()


def selector_of(deployment: Deployment) -> str:
    """The label selector of a Deployment's Instances, as Scale.status.selector writes it."""
    spec = deployment.spec
    labels = spec.selector.match_labels if spec.selector is not None else {}
    labels = labels or spec.template.metadata.labels
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def scale_of(deployment: Deployment) -> dict[str, Any]:
    meta = deployment.metadata
    metadata: dict[str, Any] = {
        "name": meta.name,
        "namespace": meta.namespace,
        "uid": meta.uid,
        "resourceVersion": meta.resource_version,
    }
    if meta.creation_timestamp:
        metadata["creationTimestamp"] = meta.creation_timestamp
    return {
        "apiVersion": SCALE_API_VERSION,
        "kind": "Scale",
        "metadata": metadata,
        "spec": {"replicas": deployment.spec.replicas},
        "status": {"replicas": deployment.status.replicas, "selector": selector_of(deployment)},
    }


def check_identity(scale: Scale, name: str, namespace: str) -> str | None:
    """What is wrong with a Scale's apiVersion, kind, name or namespace, or None."""
    if scale.api_version not in (SCALE_API_VERSION, "autoscaling/v2"):
        return f"apiVersion: expected {SCALE_API_VERSION}, got {scale.api_version!r}"
    if scale.kind != "Scale":
        return f"kind: expected Scale, got {scale.kind!r}"
    if scale.metadata.name and scale.metadata.name != name:
        return f"the Scale's name ({scale.metadata.name!r}) does not match the URL's ({name!r})"
    if scale.metadata.namespace and scale.metadata.namespace != namespace:
        return (
            f"the Scale's namespace ({scale.metadata.namespace!r}) does not match the URL's "
            f"({namespace!r})"
        )
    return None


def scaled(deployment: Deployment, scale: Scale) -> Deployment:
    """The Deployment with the Scale's replicas; the Scale's resourceVersion (if any) becomes
    the update's precondition (a stale one: 409 Conflict)."""
    spec = msgspec.structs.replace(deployment.spec, replicas=scale.spec.replicas)
    meta = deployment.metadata
    if scale.metadata.resource_version:
        meta = msgspec.structs.replace(meta, resource_version=scale.metadata.resource_version)
    return msgspec.structs.replace(deployment, spec=spec, metadata=meta)
