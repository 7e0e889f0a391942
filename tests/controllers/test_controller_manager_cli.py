"""`keel controller-manager` as a process: it does real work, exits cleanly on SIGINT and
SIGTERM (releasing its lease and writing its checkpoints), runs controllers loaded with
`--controller MODULE:FACTORY`, and refuses bad options, among them a factory it cannot load."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from controllers.extra_controller import LABEL
from support import V1, ApiServer, KeelProcess, lease_of, wait_for

from keel.controllers.namespace import FINALIZER


def namespace(server: ApiServer, name: str) -> dict[str, Any]:
    found = server.http().object(f"{V1}/namespaces/{name}")
    assert found is not None, f"namespace {name} is missing"
    return found


def namespace_finalizers(server: ApiServer, name: str) -> list[str]:
    return list(namespace(server, name)["metadata"].get("finalizers", []))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_exits_cleanly_releasing_its_lease_and_saving_checkpoints(
    apiserver: ApiServer, tmp_path: Path, sig: signal.Signals
) -> None:
    state = tmp_path / "state"
    replica = apiserver.controller_manager(
        f"cli-{sig.name.lower()}", "--controllers", "namespace,gc", "--state-dir", str(state)
    )
    try:
        wait_for("leadership", lambda: "leading keel-system/controller-manager" in replica.log())
        # Real work: the system namespaces get the namespace finalizer.
        wait_for("a finalizer", lambda: FINALIZER in namespace_finalizers(apiserver, "default"))
        replica.signal(sig)
        assert replica.wait(timeout=30) == 0, replica.log()
    finally:
        replica.stop()
    assert lease_of(apiserver.http()) is None  # given back, not left to expire
    assert "controller-manager stopped" in replica.log()
    assert (state / "namespaces.checkpoint").exists()


def test_unknown_controllers_are_refused(apiserver: ApiServer) -> None:
    replica = apiserver.controller_manager("x", "--controllers", "namespace,bogus")
    assert replica.wait(timeout=60) != 0
    assert "unknown controller(s) bogus" in replica.log()


def test_a_controller_loaded_by_import_path_runs_beside_the_built_in_ones(
    apiserver: ApiServer,
) -> None:
    replica = apiserver.controller_manager(
        "extra", "--controllers", "namespace",
        "--controller", "controllers.extra_controller:controllers",
    )  # fmt: skip
    try:
        wait_for(
            "the extra controller's label",
            lambda: (
                namespace(apiserver, "default")["metadata"].get("labels", {}).get(LABEL) == "extra"
            ),
        )
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
    refused = KeelProcess(
        "controller-manager", "--kubeconfig", str(tmp_path / "absent"),
        "--identity", "x", "--controller", spec,
        log_dir=tmp_path,
    ).start()  # fmt: skip
    assert refused.wait(timeout=60) == 2
    assert message in refused.log()
