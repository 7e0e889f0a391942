"""A Deployment refused by a ResourceQuota says why, end to end: a real `keel apiserver`, a
real `keel controller-manager` (deployment and quota controllers) and the real CLI. The
ReplicaFailure condition appears naming the exceeded limit, is not rewritten while every
retry is refused alike (the Deployment's resourceVersion stays put), shows in `keel get -o
wide`, `keel rollout status` and `keel apply --wait`, and clears once the quota is raised."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import yaml
from support import V1, ApiServer, wait_for

MERGE = "application/merge-patch+json"


def keel(server: ApiServer, *args: str) -> subprocess.Popen[str]:
    """A client command, started (its output read with `communicate`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "keel", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KEEL_KUBECONFIG": str(server.kubeconfig)},
    )


def finished(process: subprocess.Popen[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = process.communicate(stdin, timeout=60)
    return process.returncode, out, err


def replica_failure(deployment: dict[str, Any]) -> dict[str, Any] | None:
    conditions = deployment.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "ReplicaFailure"), None)


def test_a_quota_refusal_sets_replica_failure_once_and_clears_when_raised(
    apiserver: ApiServer,
) -> None:
    http = apiserver.http()
    ns = f"rf-{uuid.uuid4().hex[:8]}"
    assert http.post(f"{V1}/namespaces", {"metadata": {"name": ns}}).status == 201
    quota = {"kind": "ResourceQuota", "metadata": {"name": "team-a"},
             "spec": {"hard": {"instances": "3"}}}  # fmt: skip
    assert http.post(f"{V1}/namespaces/{ns}/resourcequotas", quota).status == 201
    deployment = {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 5, "template": {"spec": {"command": ["sleep", "60"]}}},
    }
    assert http.post(f"{V1}/namespaces/{ns}/deployments", deployment).status == 201
    path = f"{V1}/namespaces/{ns}/deployments/web"
    instances = f"{V1}/namespaces/{ns}/instances"

    def current() -> dict[str, Any]:
        found = http.object(path)
        assert found is not None
        return found

    manager = apiserver.controller_manager(
        f"rf-{ns}", "--controllers", "deployment,quota", "--lease-ttl", "2"
    )
    try:

        def refused_at_the_limit() -> dict[str, Any] | None:
            if len(http.get(instances).json["items"]) != 3:
                return None
            return replica_failure(current())

        condition = wait_for("the ReplicaFailure condition", refused_at_the_limit, timeout=30)
        assert (condition["status"], condition["reason"]) == ("True", "FailedCreate")
        assert 'exceeded quota "team-a"' in condition["message"]
        assert "limited instances=3" in condition["message"]

        # Refused over and over (the controller retries with backoff), written once. The
        # CLI reads meanwhile (reads write nothing) and shows why.
        attempts = manager.log().count("create instance web-")
        versions = {current()["metadata"]["resourceVersion"]}
        readers = {
            "wide": keel(apiserver, "get", "deployments", "-n", ns, "-o", "wide"),
            "status": keel(apiserver, "rollout", "status", "deployment/web", "-n", ns),
            "describe": keel(apiserver, "describe", "deployment", "web", "-n", ns),
        }
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            versions.add(current()["metadata"]["resourceVersion"])
            time.sleep(0.1)
        assert manager.log().count("create instance web-") > attempts  # it did retry
        assert len(versions) == 1, f"the Deployment was rewritten while refused: {versions}"
        assert len(http.get(instances).json["items"]) == 3

        code, wide, err = finished(readers["wide"])
        assert code == 0, err
        assert "MESSAGE" in wide.splitlines()[0]
        assert "FailedCreate: " in wide and "limited instances=3" in wide
        code, status, err = finished(readers["status"])
        assert code == 0, err  # not failed: it may still go on
        assert "ReplicaFailure: FailedCreate: " in status
        assert "limited instances=3" in status
        code, described, err = finished(readers["describe"])
        assert code == 0, err
        assert "ReplicaFailure" in described and "FailedCreate" in described
        code, out, err = finished(
            keel(apiserver, "apply", "-f", "-", "--wait", "--timeout", "1"),
            yaml.safe_dump(deployment),
        )
        assert code != 0
        assert "warning: deployment/web cannot create instances: FailedCreate: " in out + err
        assert "timed out" in err and "limited instances=3" in err

        # Raising the limit: the quota change wakes the Deployment, creates pass, and the
        # condition goes.
        raised = {"spec": {"hard": {"instances": "5"}}}
        patched = http.patch(f"{V1}/namespaces/{ns}/resourcequotas/team-a", raised, MERGE)
        assert patched.status == 200
        wait_for("5 instances", lambda: len(http.get(instances).json["items"]) == 5, timeout=15)
        wait_for("the condition cleared", lambda: replica_failure(current()) is None, timeout=15)
    finally:
        manager.stop()
