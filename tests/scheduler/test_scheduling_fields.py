"""The scheduling fields of an Instance template through a real API server: Kubernetes'
shapes are accepted, and a mistake is a 422 naming the field and what was expected."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from support import ApiServer

from keel.api.resources import Instance

PATH = "/apis/keel.dev/v1/namespaces/default/instances"

GOOD: dict[str, Any] = {
    "command": ["sleep", "60"],
    "priority": 100,
    "preemptionPolicy": "Never",
    "resources": {"cpu": "500m", "memory": "64Mi", "extended": {"gpu": "1"}},
    "tolerations": [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "maint", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 30},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 5,
                    "preference": {"matchExpressions": [{"key": "fast", "operator": "Exists"}]},
                }
            ],
        },
        "instanceAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}
            ]
        },
        "instanceAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "instanceAffinityTerm": {
                        "labelSelector": {
                            "matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]
                        },
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        },
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "cluster",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}},
        }
    ],
}


def body(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {**GOOD, **changes},
    }


def test_kubernetes_shapes_are_accepted_and_kept(apiserver: ApiServer, name: str) -> None:
    answer = apiserver.http().post(PATH, body(name))
    assert answer.status == 201, answer.json
    spec = msgspec.convert(answer.json, Instance).spec
    assert spec.tolerations[1].toleration_seconds == 30
    assert spec.resources.extended_units == {"gpu": 1}
    assert spec.affinity is not None and spec.affinity.instance_anti_affinity is not None
    assert spec.topology_spread_constraints[0].max_skew == 1


BAD = [
    (
        {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
        "spec.tolerations[0]",
        "must be empty for operator Exists",
    ),
    (
        {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        "spec.tolerations[0]",
        "only for effect NoExecute",
    ),
    (
        {"tolerations": [{"operator": "Equal", "value": "x"}]},
        "spec.tolerations[0]",
        "an empty key needs operator Exists",
    ),
    ({"preemptionPolicy": "Sometimes"}, "spec.preemptionPolicy", "Invalid enum value 'Sometimes'"),
    (
        {
            "affinity": {
                "instanceAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {}, "topologyKey": "rack"}
                    ]
                }
            }
        },
        "spec.affinity.instanceAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]",
        "'rack' is not a topology key",
    ),
    (
        {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "d", "operator": "In"}]}
                        ]
                    }
                }
            }
        },
        "matchExpressions[0]",
        "values: required for operator In",
    ),
    (
        {
            "topologySpreadConstraints": [
                {
                    "maxSkew": 0,
                    "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {},
                }
            ]
        },
        "spec.topologySpreadConstraints[0].maxSkew",
        ">= 1",
    ),
    ({"resources": {"extended": {"gpu": "500m"}}}, "spec.resources", "not a whole number"),
    ({"resources": {"extended": {"cpu": "1"}}}, "spec.resources", "not extended resources"),
]


@pytest.mark.parametrize(("changes", "field", "message"), BAD)
def test_mistakes_are_422_naming_the_field(
    apiserver: ApiServer, name: str, changes: dict[str, Any], field: str, message: str
) -> None:
    answer = apiserver.http().post(PATH, body(name, **changes))
    assert answer.status == 422, answer.json
    causes = answer.json["details"]["causes"]
    text = answer.json["message"] + " ".join(f"{c['field']}: {c['message']}" for c in causes)
    assert field in text, text
    assert message in text, text
