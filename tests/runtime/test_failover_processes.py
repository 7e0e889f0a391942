"""Real-process failover: two `keel controller-manager` replicas against one API server.

Pausing (SIGSTOP) or killing (SIGKILL) the leader lets the standby take the lease within
TTL + 1 s with a higher fencing token; a paused leader that resumes keeps writing without
asking its clock (the fencing probe, loaded with `--controller`), is refused by the store with
409 FencingTokenRejected, steps down, and does not take the lease back.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controllers.keel_processes import ApiServer, ManagerProcess, lease_of, wait_for
from runtime.fencing_probe import ANNOTATION

TTL = 2
CONTROLLERS = "namespace,gc"
PROBE = "runtime.fencing_probe:fencing_probe"


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "apiserver").start()
    yield server
    server.stop()


@pytest.fixture
def replicas(apiserver: ApiServer, tmp_path: Path) -> Iterator[list[ManagerProcess]]:
    """cm-a, which becomes the leader, then cm-b, standing by; both stopped afterwards."""
    kubeconfig = apiserver.controller_kubeconfig()
    started: list[ManagerProcess] = []

    def start(identity: str) -> ManagerProcess:
        replica = ManagerProcess(
            tmp_path, kubeconfig, identity,
            "--lease-ttl", str(TTL), "--controllers", CONTROLLERS, "--controller", PROBE,
        )  # fmt: skip
        started.append(replica)
        return replica

    a = start("cm-a")
    wait_for(lambda: holder(apiserver) == "cm-a", "cm-a to lead")
    b = start("cm-b")
    wait_for(lambda: "standing by" in b.log(), "cm-b to stand by, watching the lease")
    try:
        yield [a, b]
    finally:
        for replica in started:
            replica.stop()


def holder(server: ApiServer) -> str | None:
    lease = lease_of(server)
    return lease["spec"]["holderIdentity"] if lease else None


def token(lease: dict[str, Any] | None) -> int:
    assert lease is not None
    return int(lease["status"]["fencingToken"])


def takeover(server: ApiServer, new_holder: str, since: float) -> tuple[float, dict[str, Any]]:
    def taken() -> dict[str, Any] | None:
        lease = lease_of(server)
        return lease if lease and lease["spec"]["holderIdentity"] == new_holder else None

    lease = wait_for(taken, f"{new_holder} to take the lease", timeout=TTL + 10)
    elapsed = time.monotonic() - since
    assert lease is not None
    return elapsed, lease


def leading_lines(replica: ManagerProcess) -> list[str]:
    return re.findall(r"leading keel-system/controller-manager with fencing token \d+",
                      replica.log())  # fmt: skip


def test_paused_leader_is_replaced_and_fenced_out_when_it_resumes(
    apiserver: ApiServer, replicas: list[ManagerProcess]
) -> None:
    a, b = replicas
    old_token = token(lease_of(apiserver))

    paused_at = time.monotonic()
    a.signal(signal.SIGSTOP)
    elapsed, lease = takeover(apiserver, "cm-b", paused_at)
    new_token = token(lease)
    print(f"SIGSTOP failover: {elapsed:.2f}s (token {old_token} -> {new_token})")
    assert elapsed <= TTL + 1.0
    assert new_token > old_token

    a.signal(signal.SIGCONT)
    # Its probe writes on, believing nothing; the store refuses the stale token.
    wait_for(lambda: "FencingTokenRejected" in a.log(), "cm-a's write to be rejected")
    wait_for(lambda: "stepped down" in a.log(), "cm-a to step down")
    # cm-b keeps acting under its token while cm-a stays a follower.
    wait_for(
        lambda: f"cm-b token {new_token}" in probe_annotation(apiserver),
        "cm-b's own writes after the resume",
    )
    current = lease_of(apiserver)
    assert current is not None and current["spec"]["holderIdentity"] == "cm-b"
    assert token(current) == new_token
    assert leading_lines(a) == [f"leading keel-system/controller-manager with fencing token "
                                f"{old_token}"]  # fmt: skip
    assert a.process.poll() is None and b.process.poll() is None


def test_killed_leader_is_replaced_within_ttl_plus_one_second(
    apiserver: ApiServer, replicas: list[ManagerProcess]
) -> None:
    a, b = replicas
    old_token = token(lease_of(apiserver))

    killed_at = time.monotonic()
    a.signal(signal.SIGKILL)
    elapsed, lease = takeover(apiserver, "cm-b", killed_at)
    new_token = token(lease)
    print(f"SIGKILL failover: {elapsed:.2f}s (token {old_token} -> {new_token})")
    assert elapsed <= TTL + 1.0
    assert new_token > old_token
    wait_for(
        lambda: f"cm-b token {new_token}" in probe_annotation(apiserver),
        "cm-b to act as the leader",
    )
    assert b.process.poll() is None


def test_a_leader_that_exits_hands_over_at_once(
    apiserver: ApiServer, replicas: list[ManagerProcess]
) -> None:
    a, _b = replicas
    old_token = token(lease_of(apiserver))
    stopped_at = time.monotonic()
    assert a.stop() == 0  # SIGTERM: stops its work, then releases the lease
    elapsed, lease = takeover(apiserver, "cm-b", stopped_at)
    print(f"SIGTERM handover: {elapsed:.2f}s")
    assert token(lease) > old_token
    assert elapsed < TTL  # released, not expired
    assert "controller-manager stopped" in a.log()


def probe_annotation(server: ApiServer) -> str:
    import json
    import urllib.request

    import yaml

    admin = yaml.safe_load(server.kubeconfig.read_text())["users"][0]["user"]["token"]
    request = urllib.request.Request(
        f"{server.url}/apis/keel.dev/v1/namespaces/keel-system",
        headers={"Authorization": f"Bearer {admin}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        namespace = json.loads(response.read())
    return str(namespace["metadata"].get("annotations", {}).get(ANNOTATION, ""))


def test_shards_of_a_killed_replica_move_to_the_survivor(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    kubeconfig = apiserver.controller_kubeconfig()
    shards = 4
    a = ManagerProcess(tmp_path, kubeconfig, "sa", "--shards", str(shards), "--lease-ttl", "2")
    b = ManagerProcess(tmp_path, kubeconfig, "sb", "--shards", str(shards), "--lease-ttl", "2")
    try:

        def holders() -> list[str]:
            found = [lease_of(apiserver, f"controller-manager-shard-{k}") for k in range(shards)]
            return [lease["spec"]["holderIdentity"] if lease else "" for lease in found]

        wait_for(lambda: sorted(holders()) == ["sa", "sa", "sb", "sb"], "an even split")
        killed_at = time.monotonic()
        a.signal(signal.SIGKILL)
        wait_for(lambda: holders() == ["sb"] * shards, "sb to hold every shard", TTL + 10)
        elapsed = time.monotonic() - killed_at
        print(f"SIGKILL shard takeover: {elapsed:.2f}s")
        assert elapsed <= TTL + 1.0
        assert b.process.poll() is None
    finally:
        a.stop()
        b.stop()
