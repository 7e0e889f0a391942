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
from typing import Any

import pytest
from runtime.fencing_probe import ANNOTATION
from support import V1, ApiServer, KeelProcess, lease_of, wait_for

TTL = 2
CONTROLLERS = "namespace,gc"
PROBE = "runtime.fencing_probe:fencing_probe"


@pytest.fixture
def apiserver(own_apiserver: ApiServer) -> ApiServer:
    return own_apiserver


@pytest.fixture
def replicas(apiserver: ApiServer) -> Iterator[list[KeelProcess]]:
    """cm-a, which becomes the leader, then cm-b, standing by; both stopped afterwards."""
    started: list[KeelProcess] = []

    def start(identity: str) -> KeelProcess:
        replica = apiserver.controller_manager(
            identity, "--lease-ttl", str(TTL), "--controllers", CONTROLLERS, "--controller", PROBE
        )
        started.append(replica)
        return replica

    a = start("cm-a")
    wait_for("cm-a to lead", lambda: holder(apiserver) == "cm-a")
    b = start("cm-b")
    wait_for("cm-b to stand by, watching the lease", lambda: "standing by" in b.log())
    try:
        yield [a, b]
    finally:
        for replica in started:
            replica.stop()


def holder(server: ApiServer) -> str | None:
    lease = lease_of(server.http())
    return lease["spec"]["holderIdentity"] if lease else None


def token(lease: dict[str, Any] | None) -> int:
    assert lease is not None
    return int(lease["status"]["fencingToken"])


def takeover(server: ApiServer, new_holder: str, since: float) -> tuple[float, dict[str, Any]]:
    def taken() -> dict[str, Any] | None:
        lease = lease_of(server.http())
        return lease if lease and lease["spec"]["holderIdentity"] == new_holder else None

    lease = wait_for(f"{new_holder} to take the lease", taken, timeout=TTL + 10)
    elapsed = time.monotonic() - since
    assert lease is not None
    return elapsed, lease


def leading_lines(replica: KeelProcess) -> list[str]:
    return re.findall(r"leading keel-system/controller-manager with fencing token \d+",
                      replica.log())  # fmt: skip


def test_paused_leader_is_replaced_and_fenced_out_when_it_resumes(
    apiserver: ApiServer, replicas: list[KeelProcess]
) -> None:
    a, b = replicas
    old_token = token(lease_of(apiserver.http()))

    paused_at = time.monotonic()
    a.signal(signal.SIGSTOP)
    elapsed, lease = takeover(apiserver, "cm-b", paused_at)
    new_token = token(lease)
    print(f"SIGSTOP failover: {elapsed:.2f}s (token {old_token} -> {new_token})")
    assert elapsed <= TTL + 1.0
    assert new_token > old_token

    a.signal(signal.SIGCONT)
    # Its probe writes on, believing nothing; the store refuses the stale token.
    wait_for("cm-a's write to be rejected", lambda: "FencingTokenRejected" in a.log())
    wait_for("cm-a to step down", lambda: "stepped down" in a.log())
    # cm-b keeps acting under its token while cm-a stays a follower.
    wait_for(
        "cm-b's own writes after the resume",
        lambda: f"cm-b token {new_token}" in probe_annotation(apiserver),
    )
    current = lease_of(apiserver.http())
    assert current is not None and current["spec"]["holderIdentity"] == "cm-b"
    assert token(current) == new_token
    assert leading_lines(a) == [f"leading keel-system/controller-manager with fencing token "
                                f"{old_token}"]  # fmt: skip
    assert a.running and b.running


def test_killed_leader_is_replaced_within_ttl_plus_one_second(
    apiserver: ApiServer, replicas: list[KeelProcess]
) -> None:
    a, b = replicas
    old_token = token(lease_of(apiserver.http()))

    killed_at = time.monotonic()
    a.signal(signal.SIGKILL)
    elapsed, lease = takeover(apiserver, "cm-b", killed_at)
    new_token = token(lease)
    print(f"SIGKILL failover: {elapsed:.2f}s (token {old_token} -> {new_token})")
    assert elapsed <= TTL + 1.0
    assert new_token > old_token
    wait_for(
        "cm-b to act as the leader",
        lambda: f"cm-b token {new_token}" in probe_annotation(apiserver),
    )
    assert b.running


def test_a_leader_that_exits_hands_over_at_once(
    apiserver: ApiServer, replicas: list[KeelProcess]
) -> None:
    a, _b = replicas
    old_token = token(lease_of(apiserver.http()))
    stopped_at = time.monotonic()
    assert a.stop() == 0  # SIGTERM: stops its work, then releases the lease
    elapsed, lease = takeover(apiserver, "cm-b", stopped_at)
    print(f"SIGTERM handover: {elapsed:.2f}s")
    assert token(lease) > old_token
    assert elapsed < TTL  # released, not expired
    assert "controller-manager stopped" in a.log()


def probe_annotation(server: ApiServer) -> str:
    namespace = server.http().object(f"{V1}/namespaces/keel-system")
    assert namespace is not None
    return str(namespace["metadata"].get("annotations", {}).get(ANNOTATION, ""))


def test_shards_of_a_killed_replica_move_to_the_survivor(
    apiserver: ApiServer,
) -> None:
    shards = 4
    a = apiserver.controller_manager("sa", "--shards", str(shards), "--lease-ttl", "2")
    b = apiserver.controller_manager("sb", "--shards", str(shards), "--lease-ttl", "2")
    try:

        def holders() -> list[str]:
            found = [
                lease_of(apiserver.http(), f"controller-manager-shard-{k}") for k in range(shards)
            ]
            return [lease["spec"]["holderIdentity"] if lease else "" for lease in found]

        wait_for("an even split", lambda: sorted(holders()) == ["sa", "sa", "sb", "sb"])
        killed_at = time.monotonic()
        a.signal(signal.SIGKILL)
        wait_for("sb to hold every shard", lambda: holders() == ["sb"] * shards, timeout=TTL + 10)
        elapsed = time.monotonic() - killed_at
        print(f"SIGKILL shard takeover: {elapsed:.2f}s")
        assert elapsed <= TTL + 1.0
        assert b.running
    finally:
        a.stop()
        b.stop()
