"""`keel controller-manager` as a process: it does real work, exits cleanly on SIGINT and
SIGTERM (releasing its lease and writing its checkpoints), runs controllers loaded with
`--controller MODULE:FACTORY`, and refuses bad options, among them a factory it cannot load."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from controllers.extra_controller import LABEL
from controllers.keel_processes import (
    KEEL,
    ApiServer,
    ManagerProcess,
    lease_of,
    wait_for,
    with_tests_on_path,
)

from keel.controllers.namespace import FINALIZER


def namespace(server: ApiServer, name: str) -> dict[str, Any]:
    import json
    import urllib.request

    import yaml

    admin = yaml.safe_load(server.kubeconfig.read_text())["users"][0]["user"]["token"]
    request = urllib.request.Request(
        f"{server.url}/apis/keel.dev/v1/namespaces/{name}",
        headers={"Authorization": f"Bearer {admin}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        found: dict[str, Any] = json.loads(response.read())
        return found


def namespace_finalizers(server: ApiServer, name: str) -> list[str]:
    return list(namespace(server, name)["metadata"].get("finalizers", []))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_exits_cleanly_releasing_its_lease_and_saving_checkpoints(
    apiserver: ApiServer, tmp_path: Path, sig: signal.Signals
) -> None:
    state = tmp_path / "state"
    replica = ManagerProcess(
        tmp_path, apiserver.controller_kubeconfig(), f"cli-{sig.name.lower()}",
        "--controllers", "namespace,gc", "--state-dir", str(state),
    )  # fmt: skip
    try:
        wait_for(lambda: "leading keel-system/controller-manager" in replica.log(), "leadership")
        # Real work: the system namespaces get the namespace finalizer.
        wait_for(lambda: FINALIZER in namespace_finalizers(apiserver, "default"), "a finalizer")
        replica.signal(sig)
        assert replica.process.wait(timeout=30) == 0, replica.log()
    finally:
        replica.stop()
    assert lease_of(apiserver) is None  # given back, not left to expire
    assert "controller-manager stopped" in replica.log()
    assert (state / "namespaces.checkpoint").exists()


def test_unknown_controllers_are_refused(apiserver: ApiServer) -> None:
    command = [
        *KEEL, "controller-manager", "--kubeconfig", str(apiserver.controller_kubeconfig()),
        "--identity", "x", "--controllers", "namespace,bogus",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "unknown controller(s) bogus" in result.stderr


def test_a_controller_loaded_by_import_path_runs_beside_the_built_in_ones(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    replica = ManagerProcess(
        tmp_path, apiserver.controller_kubeconfig(), "extra",
        "--controllers", "namespace", "--controller", "controllers.extra_controller:controllers",
    )  # fmt: skip
    try:
        wait_for(lambda: namespace(apiserver, "default")["metadata"].get("labels", {}).get(
            LABEL) == "extra", "the extra controller's label")  # fmt: skip
        assert FINALIZER in namespace_finalizers(apiserver, "default")
    finally:
        assert replica.stop() == 0, replica.log()
    assert "controllers: namespace,controllers.extra_controller:controllers" in replica.log()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected MODULE:FACTORY"),
        ("no_such_module_here:factory", "cannot import no_such_module_here"),
        ("runtime.fencing_probe:no_such_factory", "has no callable no_such_factory"),
    ],
)
def test_a_controller_factory_that_cannot_be_loaded_is_refused(
    tmp_path: Path, spec: str, message: str
) -> None:
    # Refused before it reads the kubeconfig or talks to any server.
    command = [
        *KEEL, "controller-manager", "--kubeconfig", str(tmp_path / "absent"),
        "--identity", "x", "--controller", spec,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=with_tests_on_path()
    )
    assert result.returncode == 2
    assert message in result.stderr
