"""`keel up` as the supervisor of its children, over a real etcd: they start as fresh
processes however busy the parent's gRPC channels are, and a child that crashes is restarted
with what it wrote, and how it ended, kept in its log."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import V1, ApiServer, wait_for

from keel.dev.etcd_cluster import EtcdCluster

# What gRPC prints when a process with open channels forks (fork_posix.cc and friends).
GRPC_FORK_WARNING = re.compile(r"fork_posix|fork\(\) handlers|[Ff]ork support")

StartUp = Callable[..., ApiServer]


def children_of(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: PID -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode()
    return found


def child_pid(up: ApiServer, command: str) -> int | None:
    return next((pid for pid, line in children_of(up.pid).items() if command in line), None)


@pytest.fixture
def start_up(tmp_path: Path, new_etcd_cluster: Callable[[int], EtcdCluster]) -> Iterator[StartUp]:
    """`keel up ARGS` over a private one-member etcd, started; stopped with Ctrl-C at the end,
    and any child still running then is killed by its PID."""
    started: list[ApiServer] = []
    children: set[int] = set()

    def start(*args: str) -> ApiServer:
        etcd = new_etcd_cluster(1)
        up = ApiServer(tmp_path / ".keel", *args, store=etcd.url, subcommand="up", cwd=tmp_path)
        started.append(up.start())
        return up

    yield start
    for up in started:
        if up.running:
            children.update(children_of(up.pid))
        up.stop(signal.SIGINT, timeout=40)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ready_nodes(up: ApiServer) -> list[str]:
    answer = up.http().get(f"{V1}/nodes")
    if answer.status != 200:
        return []
    return [
        node["metadata"]["name"]
        for node in answer.json["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
    ]


def test_children_start_cleanly_while_the_parent_holds_grpc_channels(start_up: StartUp) -> None:
    up = start_up("--clusters", "1", "--nodes-per-cluster", "2")
    children = wait_for(
        "controller-manager, scheduler and 2 agents",
        lambda: len(c := children_of(up.pid)) == 4 and c,
    )
    # Seconds of real work later (agents registered and heartbeating), the same processes run.
    wait_for("2 ready nodes", lambda: len(ready_nodes(up)) == 2)
    assert children_of(up.pid) == children
    output = up.log()
    assert not GRPC_FORK_WARNING.search(output), output
    assert "restarting" not in output, output


def test_a_crashed_child_is_restarted_and_its_log_keeps_the_crashed_run(
    start_up: StartUp,
) -> None:
    up = start_up("--clusters", "0")
    log = up.state_dir / "logs" / "scheduler.log"
    crashed = wait_for("the scheduler", lambda: child_pid(up, "keel scheduler"))
    wait_for("the scheduler to log its start", lambda: "scheduler started" in log.read_text())

    os.kill(crashed, signal.SIGSEGV)

    restarted = wait_for(
        "a new scheduler", lambda: (pid := child_pid(up, "keel scheduler")) != crashed and pid
    )
    wait_for("its start in the log", lambda: log.read_text().count("scheduler started") == 2)
    ending = f"scheduler (pid {crashed}) was killed by signal 11 (SIGSEGV)"
    wait_for("keel up to report the crash", lambda: ending in up.log())
    text = log.read_text()
    first_run, crash, second_run = (
        text.index("scheduler started"),
        text.index(ending),
        text.rindex("scheduler started"),
    )
    assert first_run < crash < second_run, text
    assert "restart 1" in text[crash:second_run], text
    assert restarted in children_of(up.pid)
