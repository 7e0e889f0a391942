"""The everyday client commands (apply, get, describe, delete, logs, top), run as real
subprocesses against a real `keel up`."""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from conftest import DEADLINE, Platform

from keel.api.resources import (
    Condition,
    Deployment,
    Instance,
    InstanceStatus,
    Node,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    ResourceList,
)
from keel.client import Conflict, NotFound


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment(name: str, namespace: str, replicas: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"command": ["sleep", "1000"], "ports": [{"name": "http", "port": 0}]},
            },
            **extra,
        },
    }


def service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


def instance(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "solo"}},
        "spec": {"command": ["sleep", "1000"], "ports": [{"name": "http", "port": 0}]},
    }


def set_status(platform: Platform, namespace: str, name: str, status: InstanceStatus) -> None:
    """Write an Instance's status as its agent would, retrying if a controller wrote first."""
    with platform.client() as client:
        for _ in range(20):
            live = client.get(Instance, name, namespace=namespace)
            try:
                client.update_status(
                    Instance(metadata=live.metadata, spec=live.spec, status=status)
                )
                return
            except Conflict:
                continue
    raise AssertionError(f"could not write the status of {namespace}/{name}")


def fake_node(platform: Platform, name: str, *, ready: bool = True) -> None:
    """A Node nothing schedules onto, kept Ready by a held node lease (no agent behind it)."""
    with platform.client() as client:
        node = client.create(
            Node(
                metadata=ObjectMeta(name=name),
                spec=NodeSpec(
                    cluster="cluster-1",
                    capacity=ResourceList(cpu="4", memory="8Gi"),
                    unschedulable=True,
                ),
            )
        )
        client.acquire_lease("keel-node-lease", name, name, 120)
        if ready:
            client.update_status(
                Node(
                    metadata=node.metadata,
                    spec=node.spec,
                    status=NodeStatus(conditions=[Condition(type="Ready", status="True")]),
                )
            )


def write(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def table(text: str) -> list[dict[str, str]]:
    """Rows of a printed table as {header: cell} (cells hold no double spaces)."""
    lines = [line for line in text.splitlines() if line.strip()]
    headers = re.split(r"\s{2,}", lines[0].strip())
    return [
        dict(zip(headers, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[1:]
    ]


# --------------------------------------------------------------------------- apply


def test_apply_creates_then_reports_unchanged_then_configured(
    platform: Platform, tmp_path: Path
) -> None:
    ns = platform.namespace()
    manifest = write(tmp_path / "web.yaml", deployment("web", ns, replicas=2))

    assert platform.keel("apply", "-f", str(manifest)).stdout == "deployment.keel.dev/web created\n"
    again = platform.keel("apply", "-f", str(manifest))
    assert again.stdout == "deployment.keel.dev/web unchanged\n"

    write(manifest, deployment("web", ns, replicas=4))
    assert platform.keel("apply", "-f", str(manifest)).stdout == (
        "deployment.keel.dev/web configured\n"
    )
    with platform.client() as client:
        live = client.get("deployments", "web", namespace=ns)
        assert live.spec.replicas == 4  # type: ignore[attr-defined]
        assert live.metadata.generation == 2


def test_apply_keeps_the_live_status_and_binding(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    node = f"host-{ns}"
    fake_node(platform, node)
    manifest = write(tmp_path / "solo.yaml", instance("solo", ns))
    platform.keel("apply", "-f", str(manifest))
    with platform.client() as client:
        client.bind(ns, "solo", node)  # the scheduler's field, bound by hand here
    set_status(platform, ns, "solo", InstanceStatus(phase="Running", host_ip="127.0.0.1"))

    # The binding and the agent's status are not the business of a manifest without them.
    assert (
        platform.keel("apply", "-f", str(manifest)).stdout == "instance.keel.dev/solo unchanged\n"
    )

    changed = instance("solo", ns)
    changed["metadata"]["labels"] = {"app": "solo", "tier": "web"}
    write(manifest, changed)
    assert platform.keel("apply", "-f", str(manifest)).stdout == (
        "instance.keel.dev/solo configured\n"
    )
    with platform.client() as client:
        live = client.get(Instance, "solo", namespace=ns)
    assert live.metadata.labels == {"app": "solo", "tier": "web"}
    assert live.spec.node_name == node
    assert live.status.phase == "Running"
    assert live.status.host_ip == "127.0.0.1"


def test_apply_refuses_a_namespace_that_contradicts_the_manifest(
    platform: Platform, tmp_path: Path
) -> None:
    ns = platform.namespace()
    manifest = write(tmp_path / "m.yaml", service("first", ns), service("second", "elsewhere"))
    result = platform.keel("apply", "-f", str(manifest), "-n", ns, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {manifest}: document 2: metadata.namespace: 'elsewhere' differs from -n '{ns}'\n"
    )
    assert platform.keel("get", "services", "-n", ns).stdout == ""  # nothing applied


def test_apply_of_a_directory_and_multi_document_files(platform: Platform, tmp_path: Path) -> None:
    ns = f"dir-{time.monotonic_ns() % 10**8}"
    folder = tmp_path / "manifests"
    folder.mkdir()
    write(folder / "a-app.yaml", deployment("api", ns), service("api", ns))
    # The namespace sorts after the objects that live in it: apply creates it first anyway.
    write(
        folder / "b-namespace.yml",
        {"apiVersion": "keel.dev/v1", "kind": "Namespace", "metadata": {"name": ns}},
    )
    (folder / "c-extra.json").write_text(json.dumps(instance("one-off", ns)))
    (folder / "notes.txt").write_text("not a manifest")

    result = platform.keel("apply", "-f", str(folder))
    assert result.stdout.splitlines() == [
        f"namespace.keel.dev/{ns} created",
        "deployment.keel.dev/api created",
        "service.keel.dev/api created",
        "instance.keel.dev/one-off created",
    ]
    again = platform.keel("apply", "-f", str(folder)).stdout.splitlines()
    assert all(line.endswith(" unchanged") for line in again)
    assert len(again) == 4

    piped = yaml.safe_dump_all([service("api", ns), service("extra", ns)])
    assert platform.keel("apply", "-f", "-", stdin=piped).stdout.splitlines() == [
        "service.keel.dev/api unchanged",
        "service.keel.dev/extra created",
    ]


def test_invalid_document_names_file_index_and_field_and_writes_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    ns = platform.namespace()
    bad = deployment("broken", ns)
    bad["spec"]["replicas"] = -1
    manifest = write(tmp_path / "two.yaml", service("fine", ns), bad)

    result = platform.keel("apply", "-f", str(manifest), check=False)
    assert result.returncode == 1
    assert result.stderr == (f"error: {manifest}: document 2: spec.replicas: Expected int >= 0\n")
    with platform.client() as client:
        for kind, name in (("services", "fine"), ("deployments", "broken")):
            try:
                client.get(kind, name, namespace=ns)
            except NotFound:
                continue
            raise AssertionError(f"{kind}/{name} was written although the apply failed")

    unknown = deployment("typo", ns)
    unknown["spec"]["replicaz"] = 3
    write(manifest, unknown)
    typo = platform.keel("apply", "-f", str(manifest), check=False)
    assert typo.returncode == 1
    assert f"{manifest}: document 1: spec.replicaz:" in typo.stderr
    assert "unknown field" in typo.stderr


def test_apply_into_a_missing_namespace_says_so(platform: Platform, tmp_path: Path) -> None:
    manifest = write(tmp_path / "lost.yaml", deployment("lost", "no-such-ns"))
    result = platform.keel("apply", "-f", str(manifest), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {manifest}: document 1: ")
    assert 'namespaces "no-such-ns" not found' in result.stderr


# --------------------------------------------------------------------------- get


def test_get_shows_useful_columns_per_kind(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    platform.keel(
        "apply",
        "-f",
        str(write(tmp_path / "m.yaml", deployment("shop", ns, 3), instance("solo", ns))),
    )
    node_name = f"node-{ns}"
    fake_node(platform, node_name)
    with platform.client() as client:
        client.put_telemetry(
            "instanceusages",
            {"instance": "solo", "node": node_name, "cpu": "10m", "memory": "1Mi", "restarts": 3},
            namespace=ns,
        )
        lease = client.acquire_lease(ns, "leader", "me", 30)

    deployments = table(platform.keel("get", "deployments", "-n", ns).stdout)
    assert [row["NAME"] for row in deployments] == ["shop"]
    assert re.fullmatch(r"\d+/3", deployments[0]["READY"])
    assert set(deployments[0]) == {"NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"}

    instances = table(platform.keel("get", "inst", "solo", "-n", ns).stdout)
    assert list(instances[0]) == ["NAME", "NODE", "PHASE", "READY", "PORTS", "RESTARTS", "AGE"]
    assert instances[0]["RESTARTS"] == "3"
    assert instances[0]["PORTS"] == "http:*"

    nodes = {row["NAME"]: row for row in table(platform.keel("get", "no").stdout)}
    assert nodes[node_name]["CLUSTER"] == "cluster-1"
    assert nodes[node_name]["STATUS"] == "Ready,SchedulingDisabled"
    assert (nodes[node_name]["CPU"], nodes[node_name]["MEMORY"]) == ("4", "8Gi")

    leases = table(platform.keel("get", "leases", "-n", ns).stdout)
    assert leases[0]["HOLDER"] == "me"
    assert leases[0]["TOKEN"] == str(lease.status.fencing_token)

    everywhere = table(platform.keel("get", "deploy", "-A").stdout)
    assert [row["NAMESPACE"] for row in everywhere if row["NAME"] == "shop"] == [ns]

    wide = table(platform.keel("get", "instances", "-n", ns, "-o", "wide").stdout)
    assert {"IP", "DEPLOYMENT", "MESSAGE"} <= set(wide[0])

    selected = table(platform.keel("get", "instance", "-n", ns, "-l", "app=solo").stdout)
    assert [row["NAME"] for row in selected] == ["solo"]

    namespaces = [row["NAME"] for row in table(platform.keel("get", "namespaces").stdout)]
    assert ns in namespaces
    assert "cluster-1" in platform.keel("get", "clusters").stdout

    empty = platform.keel("get", "services", "-n", ns)
    assert empty.stdout == ""
    assert "No resources found" in empty.stderr


def test_get_json_and_yaml_round_trip_through_apply(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    platform.keel(
        "apply", "-f", str(write(tmp_path / "m.yaml", deployment("rt", ns), service("rt", ns)))
    )
    as_json = json.loads(platform.keel("get", "deploy", "rt", "-n", ns, "-o", "json").stdout)
    assert as_json["kind"] == "Deployment"
    assert as_json["metadata"]["name"] == "rt"
    assert as_json["spec"]["replicas"] == 2

    as_list = yaml.safe_load(platform.keel("get", "svc", "-n", ns, "-o", "yaml").stdout)
    assert as_list["kind"] == "List"
    assert [item["metadata"]["name"] for item in as_list["items"]] == ["rt"]

    one = tmp_path / "rt.json"
    one.write_text(json.dumps(as_json))
    both = tmp_path / "list.yaml"
    both.write_text(platform.keel("get", "svc", "-n", ns, "-o", "yaml").stdout)
    # Server-side apply: the full object names every field, so keel now owns them all (its
    # managedFields change once); applied again, nothing changes.
    assert platform.keel("apply", "-f", str(one)).stdout == "deployment.keel.dev/rt configured\n"
    assert platform.keel("apply", "-f", str(one)).stdout == "deployment.keel.dev/rt unchanged\n"
    platform.keel("apply", "-f", str(both))
    assert platform.keel("apply", "-f", str(both)).stdout == "service.keel.dev/rt unchanged\n"
    with platform.client() as client:
        live = client.get(Deployment, "rt", namespace=ns)
    managers = {(m.manager, m.operation) for m in live.metadata.managed_fields}
    assert ("keel", "Apply") in managers  # and the deployment controller's status, if written
    assert managers <= {("keel", "Apply"), ("deployment", "Update")}

    as_json["spec"]["replicas"] = 5
    one.write_text(json.dumps(as_json))
    assert platform.keel("apply", "-f", str(one)).stdout == "deployment.keel.dev/rt configured\n"


def test_get_watch_streams_a_row_per_change(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    manifest = write(tmp_path / "w.yaml", deployment("watched", ns, replicas=1))
    platform.keel("apply", "-f", str(manifest))
    watch = platform.start("get", "deployments", "-n", ns, "-w")
    try:
        watch.wait_for_line(lambda line: line.startswith("NAME"))
        watch.wait_for_line(lambda line: line.startswith("watched") and "/1 " in line)
        write(manifest, deployment("watched", ns, replicas=7))
        platform.keel("apply", "-f", str(manifest))
        watch.wait_for_line(lambda line: line.startswith("watched") and "/7 " in line)
        platform.keel("apply", "-f", str(write(tmp_path / "x.yaml", deployment("later", ns))))
        watch.wait_for_line(lambda line: line.startswith("later"))
    finally:
        watch.stop()

    single = platform.start("get", "deploy", "watched", "-n", ns, "-w", "-o", "json")
    try:
        single.wait_for_line(lambda line: line == "{")
        write(manifest, deployment("watched", ns, replicas=2))
        platform.keel("apply", "-f", str(manifest))
        single.wait_for_line(lambda line: '"replicas": 2' in line)
    finally:
        single.stop()


# --------------------------------------------------------------------------- describe


def test_describe_shows_spec_conditions_owner_and_events(
    platform: Platform, tmp_path: Path
) -> None:
    ns = platform.namespace()
    platform.keel("apply", "-f", str(write(tmp_path / "i.yaml", instance("probe", ns))))
    set_status(
        platform,
        ns,
        "probe",
        InstanceStatus(
            phase="Running",
            conditions=[
                Condition(
                    type="Ready",
                    status="False",
                    reason="HealthCheckFailed",
                    message="GET /healthz: connection refused",
                    last_transition_time=now(),
                )
            ],
        ),
    )
    with platform.client() as client:
        client.record_event(
            {
                "involvedObject": {"kind": "Instance", "name": "probe", "namespace": ns},
                "reason": "Unhealthy",
                "message": "health check failed 3 times",
                "type": "Warning",
                "time": now(),
                "source": "agent",
            }
        )

    text = platform.keel("describe", "instance", "probe", "-n", ns).stdout
    assert re.search(r"^Name:\s+probe$", text, re.M)
    assert re.search(r"^Command:\s+sleep 1000$", text, re.M)
    assert re.search(r"^Phase:\s+Running$", text, re.M)
    assert re.search(r"Ready\s+False\s+HealthCheckFailed\s+GET /healthz: connection refused", text)
    assert re.search(r"Warning\s+Unhealthy\s+\d+s\s+agent\s+health check failed 3 times", text)

    missing = platform.keel("describe", "instance", "nope", "-n", ns, check=False)
    assert missing.returncode == 1
    assert missing.stderr == 'error: instances "nope" not found\n'


def test_describe_names_the_owner(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    platform.keel("apply", "-f", str(write(tmp_path / "s.yaml", service("owner", ns))))
    with platform.client() as client:
        owner = client.get("services", "owner", namespace=ns)
    child = instance("owned", ns)
    child["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "keel.dev/v1",
            "kind": "Service",
            "name": "owner",
            "uid": owner.metadata.uid,
            "controller": True,
        }
    ]
    platform.keel("apply", "-f", str(write(tmp_path / "c.yaml", child)))
    text = platform.keel("describe", "inst", "owned", "-n", ns).stdout
    assert re.search(r"^Owner:\s+Service/owner \(controller\)$", text, re.M)

    platform.keel("apply", "-f", str(write(tmp_path / "d.yaml", deployment("sized", ns, 2))))
    deploy = platform.keel("describe", "deploy", "sized", "-n", ns).stdout
    assert re.search(r"^Replicas:\s+2 desired \| \d+ updated", deploy, re.M)
    assert re.search(r"^Command:\s+sleep 1000$", deploy, re.M)


def test_get_and_describe_quota_show_used_against_hard(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    quota = {
        "apiVersion": "keel.dev/v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "team", "namespace": ns},
        "spec": {"hard": {"cpu": "2", "instances": "2", "gpu": "4"}},
    }
    sized = instance("sized", ns)
    sized["spec"]["resources"] = {"cpu": "1500m"}
    platform.keel("apply", "-f", str(write(tmp_path / "q.yaml", quota, sized)))
    rows = table(platform.keel("get", "quota", "-n", ns).stdout)
    assert list(rows[0]) == ["NAME", "CPU", "MEMORY", "INSTANCES", "AGE"]
    assert (rows[0]["NAME"], rows[0]["CPU"], rows[0]["MEMORY"], rows[0]["INSTANCES"]) == (
        "team", "1500m/2", "-", "1/2",
    )  # fmt: skip
    wide = table(platform.keel("get", "resourcequotas", "-n", ns, "-o", "wide").stdout)
    assert wide[0]["OTHER"] == "gpu=0/4"
    text = platform.keel("describe", "quota", "team", "-n", ns).stdout
    assert re.search(r"^cpu\s+1500m\s+2$", text, re.M), text
    assert re.search(r"^instances\s+1\s+2$", text, re.M), text

    over = instance("over", ns)
    over["spec"]["resources"] = {"cpu": "1"}
    refused = platform.keel("apply", "-f", str(write(tmp_path / "o.yaml", over)), check=False)
    assert refused.returncode != 0
    assert 'exceeded quota "team": requested cpu=1, used cpu=1500m, limited cpu=2' in (
        refused.stderr
    )


# --------------------------------------------------------------------------- delete


def test_delete_by_name_and_by_file(platform: Platform, tmp_path: Path) -> None:
    ns = platform.namespace()
    manifest = write(tmp_path / "d.yaml", deployment("gone", ns), service("gone", ns))
    platform.keel("apply", "-f", str(manifest))
    platform.keel(
        "apply", "-f", str(write(tmp_path / "i.yaml", instance("a", ns), instance("b", ns)))
    )

    result = platform.keel("delete", "instances", "a", "b", "-n", ns)
    assert result.stdout.splitlines() == [
        "instance.keel.dev/a deleted",
        "instance.keel.dev/b deleted",
    ]
    by_file = platform.keel("delete", "-f", str(manifest))
    assert sorted(by_file.stdout.splitlines()) == [
        "deployment.keel.dev/gone deleted",
        "service.keel.dev/gone deleted",
    ]
    with platform.client() as client:
        left = {i.metadata.name for i in client.list("instances", namespace=ns).items}
        assert not left & {"a", "b"}
        assert client.list("services", namespace=ns).items == []

    again = platform.keel("delete", "deploy", "gone", "-n", ns, check=False)
    assert again.returncode == 1
    assert again.stderr == 'error: deployments "gone" not found\n'


# --------------------------------------------------------------------------- logs


def test_logs_prints_and_follows_the_agents_file_across_rotation(platform: Platform) -> None:
    ns = platform.namespace()
    logs = platform.state_dir / "agents" / "node-a" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{ns}_talker.log"
    path.write_text("hello 1\nhello 2\n")

    assert platform.keel("logs", "talker", "-n", ns).stdout == "hello 1\nhello 2\n"
    assert platform.keel("logs", "talker", "-n", ns, "--tail", "1").stdout == "hello 2\n"

    follow = platform.start("logs", "talker", "-n", ns, "-f")
    try:
        follow.wait_for_line(lambda line: line == "hello 2")
        with path.open("a") as f:
            f.write("hello 3\n")
        follow.wait_for_line(lambda line: line == "hello 3")
        # The agent rotates: the file moves to .1 and a new one starts.
        with path.open("a") as f:
            f.write("last of old\n")
        shutil.move(path, logs / f"{ns}_talker.log.1")
        path.write_text("first of new\n")
        follow.wait_for_line(lambda line: line == "first of new")
        assert "last of old" in follow.seen
    finally:
        follow.stop()

    # An agent publishes where it writes; that wins over the usual place.
    elsewhere = platform.state_dir.parent / f"custom-{ns}.log"
    elsewhere.write_text("from the published path\n")
    with platform.client() as client:
        client.put_telemetry(
            "instanceusages",
            {
                "instance": "talker",
                "node": "node-a",
                "cpu": "1m",
                "memory": "1Mi",
                "restarts": 0,
                "logPath": str(elsewhere),
            },
            namespace=ns,
        )
    assert platform.keel("logs", "talker", "-n", ns).stdout == "from the published path\n"

    missing = platform.keel("logs", "silent", "-n", ns, check=False)
    assert missing.returncode == 1
    assert missing.stderr == 'error: instances "silent" not found\n'


# --------------------------------------------------------------------------- top


def test_top_shows_usage_reported_as_telemetry(platform: Platform) -> None:
    ns = platform.namespace()
    node = f"busy-{ns}"
    with platform.client() as client:
        client.put_telemetry(
            "nodeheartbeats",
            {"node": node, "cpuUsage": "1500m", "memoryUsage": "512Mi", "time": now()},
        )
        client.put_telemetry(
            "instanceusages",
            {"instance": "hungry", "node": node, "cpu": 0.25, "memory": 2**27, "restarts": 1},
            namespace=ns,
        )
    nodes = {row["NAME"]: row for row in table(platform.keel("top", "nodes").stdout)}
    assert nodes[node]["CPU(cores)"] == "1500m"
    assert nodes[node]["MEMORY(bytes)"] == "512Mi"

    instances = table(platform.keel("top", "instances", "-n", ns).stdout)
    assert instances == [
        {
            "NAME": "hungry",
            "NODE": node,
            "CPU(cores)": "250m",
            "MEMORY(bytes)": "128Mi",
            "RESTARTS": "1",
        }
    ]


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_and_exit_1(platform: Platform, tmp_path: Path) -> None:
    unknown = platform.keel("get", "widgets", check=False)
    assert (unknown.returncode, unknown.stderr) == (
        1,
        'error: the server doesn\'t have a resource type "widgets"\n',
    )
    missing = platform.keel(
        "get", "deploy", "-n", "default", "--kubeconfig", str(tmp_path / "x"), check=False
    )
    assert missing.returncode == 1
    assert missing.stderr == f"error: {tmp_path / 'x'}: no such kubeconfig\n"

    dead = tmp_path / "dead.kubeconfig"
    config = yaml.safe_load(platform.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"
    dead.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    down = platform.keel("get", "nodes", "--kubeconfig", str(dead), check=False)
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the API server at http://127.0.0.1:9: ")
    assert down.stderr.count("\n") == 1
    assert time.monotonic() - started < DEADLINE

    nofile = platform.keel("apply", "-f", str(tmp_path / "none.yaml"), check=False)
    assert nofile.stderr == f"error: {tmp_path / 'none.yaml'}: no such file or directory\n"


def test_kubeconfig_defaults_to_dot_keel_in_the_working_directory(platform: Platform) -> None:
    # The platform's state dir is `<root>/.keel`: run from <root> without $KEEL_KUBECONFIG.
    root = platform.state_dir.parent
    result = platform.keel("get", "namespaces", cwd=root, env={"KEEL_KUBECONFIG": ""})
    assert "default" in result.stdout
