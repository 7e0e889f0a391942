"""Objects as the API's JSON, for the tests that talk to a real server over HTTP, and the
store-write counters its /metrics exports."""

from __future__ import annotations

from typing import Any

from support import HttpClient


def store_writes(client: HttpClient) -> dict[tuple[str, str], float]:
    """keel_store_writes_total samples from /metrics: (kind, verb) -> count."""
    found: dict[tuple[str, str], float] = {}
    for line in client.get("/metrics").body.decode().splitlines():
        if line.startswith("keel_store_writes_total{"):
            labels, _, value = line[len("keel_store_writes_total{") :].rpartition("} ")
            parts = dict(p.split("=", 1) for p in labels.split(","))
            found[(parts["kind"].strip('"'), parts["verb"].strip('"'))] = float(value)
    return found


def deployment(name: str, replicas: int = 1, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "template": {"spec": {"command": ["sleep", "1"]}}},
    }


def instance(name: str, node: str = "", **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"command": ["sleep", "1"]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Instance",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def lease(name: str, holder: str, seconds: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds},
    }
