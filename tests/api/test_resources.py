"""Resource records: strict decoding with field paths, quantities, and the registry."""

from __future__ import annotations

import msgspec
import pytest

from keel.api.quantity import format_cpu, format_memory, parse_cpu, parse_memory
from keel.api.registry import BY_PLURAL, KINDS, StorageClass, lookup
from keel.api.resources import Deployment, Instance, Lease, Node
from keel.api.server import validation_cause

HELLO = b"""{"apiVersion": "keel.dev/v1", "kind": "Deployment",
 "metadata": {"name": "hello", "namespace": "default", "labels": {"app": "hello"}},
 "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "hello"}},
   "spec": {"command": ["python", "-m", "http.server"], "resources": {"cpu": "100m",
   "memory": "64Mi"}, "ports": [{"name": "http"}],
   "healthCheck": {"type": "http", "port": "http", "path": "/"}}}}}"""


def test_a_full_deployment_round_trips() -> None:
    deployment = msgspec.json.decode(HELLO, type=Deployment)
    assert deployment.spec.replicas == 3
    assert deployment.spec.template.spec.resources.millicpu == 100
    assert deployment.spec.strategy.type == "RollingUpdate"
    again = msgspec.json.decode(msgspec.json.encode(deployment), type=Deployment)
    assert again == deployment


@pytest.mark.parametrize(
    ("model", "body", "path"),
    [
        (
            Deployment,
            b'{"spec": {"replicas": -1, "template": {"spec": {"command": ["x"]}}}}',
            "$.spec.replicas",
        ),
        (
            Deployment,
            b'{"spec": {"template": {"spec": {"command": ["x"], "bogus": 1}}}}',
            "$.spec.template.spec",
        ),
        (Node, b'{"spec": {"capacity": {"cpu": "lots"}}}', "$.spec.capacity.cpu"),
        (
            Lease,
            b'{"spec": {"holderIdentity": "a", "leaseDurationSeconds": 1}}',
            "$.spec.leaseDurationSeconds",
        ),
        (Instance, b'{"spec": {"command": []}}', "$.spec.command"),
        (
            Instance,
            b'{"spec": {"command": ["x"], "restartPolicy": "Sometimes"}}',
            "$.spec.restartPolicy",
        ),
        (
            Instance,
            b'{"metadata": {"name": "Bad_Name"}, "spec": {"command": ["x"]}}',
            "$.metadata.name",
        ),
        (
            Instance,
            b'{"spec": {"command": ["x"], "ports": [{"name": "a"}, {"name": "a"}]}}',
            "$.spec",
        ),
    ],
)
def test_invalid_objects_are_rejected_naming_the_field(
    model: type[msgspec.Struct], body: bytes, path: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=model)
    assert str(caught.value).endswith(f"at `{path}`")


def test_kind_and_api_version_must_match_the_model() -> None:
    with pytest.raises(msgspec.ValidationError, match="kind: expected 'Node'"):
        msgspec.json.decode(b'{"kind": "Lease"}', type=Node)
    with pytest.raises(msgspec.ValidationError, match="apiVersion"):
        msgspec.json.decode(b'{"apiVersion": "v1"}', type=Node)


@pytest.mark.parametrize(
    ("text", "millicores"), [("500m", 500), ("2", 2000), ("0.25", 250), ("1k", 1_000_000)]
)
def test_cpu_quantities(text: str, millicores: int) -> None:
    assert parse_cpu(text) == millicores


@pytest.mark.parametrize(
    ("text", "size"),
    [("256Mi", 256 * 2**20), ("1G", 10**9), ("1.5Gi", 3 * 2**29), ("100", 100), ("1Ki", 1024)],
)
def test_memory_quantities(text: str, size: int) -> None:
    assert parse_memory(text) == size


def test_bad_quantity_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match="like '500m', '2', '256Mi' or '1G'"):
        parse_memory("12 apples")


def test_quantities_format_back() -> None:
    assert (format_cpu(1500), format_cpu(2000)) == ("1500m", "2")
    assert (format_memory(256 * 2**20), format_memory(1000)) == ("256Mi", "1000")


def test_registry_covers_every_kind_once_with_a_reason() -> None:
    assert {info.kind for info in KINDS} == {
        "Cluster",
        "Node",
        "Namespace",
        "Deployment",
        "Revision",
        "Instance",
        "Service",
        "Endpoints",
        "Lease",
        "ResourceQuota",
    }
    assert len(BY_PLURAL) == len(KINDS)
    assert all(info.why for info in KINDS)
    assert BY_PLURAL["leases"].storage is StorageClass.CONSENSUS_LEASED
    assert lookup("deploy") is BY_PLURAL["deployments"]
    assert lookup("Instance") is BY_PLURAL["instances"]
    assert lookup("nope") is None
    assert lookup("quota") is BY_PLURAL["resourcequotas"]
    assert BY_PLURAL["instances"].key("default", "web-1") == b"/registry/instances/default/web-1"
    assert BY_PLURAL["nodes"].key("", "n1") == b"/registry/nodes/n1"


def _deployment(ports: list[str], liveness: dict[str, object]) -> bytes:
    spec = {"command": ["x"], "ports": [{"name": p} for p in ports], "livenessCheck": liveness}
    return msgspec.json.encode({"spec": {"template": {"spec": spec}}})


@pytest.mark.parametrize(
    ("ports", "liveness", "field", "message"),
    [
        (["http"], {"type": "http", "port": "admin"}, "livenessCheck.port",
         "'admin' is not a port of this instance (declared: http)"),
        ([], {"type": "tcp"}, "livenessCheck.port",
         "required for a tcp check (the instance declares no ports)"),
        (["http"], {"type": "exec"}, "livenessCheck.command", "required for an exec check"),
        (["http"], {"type": "http", "successThreshold": 2}, "livenessCheck.successThreshold",
         "Expected `int` <= 1"),
    ],
)  # fmt: skip
def test_a_bad_liveness_check_is_rejected_naming_its_field(
    ports: list[str], liveness: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(_deployment(ports, liveness), type=Deployment)
    cause = validation_cause(str(caught.value))
    assert cause.field == f"spec.template.spec.{field}"
    assert cause.message == message


@pytest.mark.parametrize(
    "liveness",
    [
        {"type": "http", "port": "http", "path": "/healthz"},
        {"type": "tcp"},  # the first declared port
        {"type": "tcp", "port": 9000},  # a number: the process may listen on it undeclared
        {"type": "exec", "command": ["true"], "initialDelaySeconds": 30},
    ],
)
def test_a_liveness_check_that_reaches_a_port_is_accepted(liveness: dict[str, object]) -> None:
    deployment = msgspec.json.decode(_deployment(["http"], liveness), type=Deployment)
    check = deployment.spec.template.spec.liveness_check
    assert check is not None and check.type == liveness["type"]
