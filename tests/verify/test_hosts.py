"""keel verify's host fabric: namespaces that reach each other, partitions that silently drop
packets (for established connections too) and heal, slow fsyncs, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from random import Random

import pytest
from support import wait_for

from keel.verify.faults import SlowDisk, SlowDiskError, strace_argv
from keel.verify.hosts import (
    DEFAULT_REGISTRY,
    IFNAMSIZ,
    Device,
    Drop,
    Fabric,
    FilterChange,
    Host,
    bridge,
    choose_subnet,
    cleanup_all,
    drop_filters,
    filter_changes,
    halves,
    isolate,
    majority_minority,
    namespace_pids,
    new_prefix,
    owns,
    partition_rules,
    plan_layout,
)

needs_netns = pytest.mark.usefixtures("netns_required")
needs_strace = needs_netns


PORT = 7000
# A TCP echo server: one thread per connection, echoing each chunk back.
ECHO_SERVER = f"""
import socket, threading
def serve(c):
    while data := c.recv(1024):
        c.sendall(data)
s = socket.create_server(("0.0.0.0", {PORT}))
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""
# Connect to argv[1]:argv[2] and print what happened; unless only asked to connect, also
# check that a ping comes back.
PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        if sys.argv[4:] != ["connect"]:
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
        print("ok")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


# ---- pure parts -----------------------------------------------------------------------------


def layout_hosts(n: int = 5) -> tuple[Host, ...]:
    return plan_layout("kvab12", n, "10.77.3.0/24").hosts


def test_layout_names_fit_interfaces_and_addresses_sit_behind_the_bridge() -> None:
    layout = plan_layout("kv1234", 9, "10.77.3.0/24")
    assert layout.bridge == "kv1234br" and layout.gateway == "10.77.3.1"
    h1 = layout.hosts[0]
    assert (h1.name, h1.namespace, h1.address, h1.link) == (
        "h1",
        "kv1234h1",
        "10.77.3.11",
        "kv1234v1",
    )
    assert all(len(n) <= IFNAMSIZ for h in layout.hosts for n in (h.link, layout.peer(h)))
    assert h1.command(["echo", "hi"]) == ["ip", "netns", "exec", "kv1234h1", "echo", "hi"]
    with pytest.raises(ValueError, match="longer than 15"):
        plan_layout("kvabcdefgh", 10_000, "10.77.0.0/16")
    with pytest.raises(ValueError, match="prefix"):
        plan_layout("KV-1", 3, "10.77.3.0/24")
    with pytest.raises(ValueError, match="no room"):
        plan_layout("kv1234", 3, "10.77.3.0/29")
    assert len(new_prefix()) == 6 and plan_layout(new_prefix(), 99, "10.77.3.0/24")


def test_only_names_of_the_run_itself_are_owned() -> None:
    assert all(owns("kv12", n) for n in ["kv12br", "kv12h1", "kv12v10", "kv12p3"])
    assert not any(
        owns("kv12", n) for n in ["kv123br", "kv12", "kv12h", "kv12eth0", "xkv12br", "eth0"]
    )


def test_subnet_choice_avoids_routes_in_use() -> None:
    first = choose_subnet("kvab12", [])
    assert first.prefixlen == 24 and first.subnet_of(choose_subnet.__defaults__[0])  # type: ignore[index]
    second = choose_subnet("kvab12", [first])
    assert second != first and not second.overlaps(first)


def test_partition_cuts_every_pair_across_groups_and_no_other() -> None:
    h1, h2, h3, h4, h5 = layout_hosts()
    rules = partition_rules([[h1], [h2, h3], [h4]], [h1, h2, h3, h4, h5])
    assert rules[h1] == [h2.address, h3.address, h4.address]
    assert rules[h2] == [h1.address, h4.address]
    assert rules[h4] == [h1.address, h2.address, h3.address]
    assert rules[h5] == []  # in no group: still talks to everyone, and everyone to it
    assert all(h5.address not in cut for cut in rules.values())
    assert all(a.address in rules[b] for a in rules for b in rules if b.address in rules[a])
    with pytest.raises(ValueError, match=r"groups\[1\]: h1 is already in group 0"):
        partition_rules([[h1], [h1, h2]], [h1, h2])
    with pytest.raises(ValueError, match="not a host"):
        partition_rules([[h1], [h3]], [h1, h2])


def test_partition_shapes_are_seeded_and_split_as_named() -> None:
    hosts = list(layout_hosts())
    assert isolate(hosts[2], hosts) == [[hosts[2]], [h for h in hosts if h != hosts[2]]]
    minority, majority = majority_minority(hosts, Random(7))
    assert (len(minority), len(majority)) == (2, 3)
    assert majority_minority(hosts, Random(7)) == [minority, majority]
    assert {h for g in halves(hosts, Random(1)) for h in g} == set(hosts)
    left, right = bridge(hosts, Random(3))
    (middle,) = set(hosts) - set(left) - set(right)
    rules = partition_rules([left, right], hosts)
    assert rules[middle] == [] and all(rules[h] for h in left + right)


def test_filters_drop_where_the_bridge_delivers_and_moves_between_partitions_add_first() -> None:
    layout = plan_layout("kvab12", 3, "10.77.3.0/24")
    h1, h2, h3 = layout.hosts
    wanted = drop_filters(layout, partition_rules([[h1], [h2, h3]], layout.hosts), [])
    assert wanted[Device(None, "kvab12v2")] == {11: Drop("src", h1.address)}
    assert wanted[Device(None, "kvab12v1")] == {
        12: Drop("src", h2.address),
        13: Drop("src", h3.address),
    }
    runner = drop_filters(layout, {}, [h3])
    assert runner[Device(None, "kvab12v3")] == {1: Drop("src", "10.77.3.1")}
    assert runner[Device("kvab12h3", "eth0")] == {1: Drop("dst", "10.77.3.1")}

    moved = drop_filters(layout, partition_rules([[h1, h2], [h3]], layout.hosts), [])
    changes = filter_changes(wanted, moved)
    kinds = ["add" if c.drop else "del" for c in changes]
    assert kinds == sorted(kinds)  # every addition before any deletion
    assert FilterChange(Device(None, "kvab12v1"), 12, None) in changes
    assert filter_changes(moved, moved) == []
    healed = drop_filters(layout, {}, [])
    assert all(c.drop is None for c in filter_changes(moved, healed))


def test_strace_command_attaches_every_thread_and_delays_in_microseconds() -> None:
    assert strace_argv(42, 200_000, ["fsync"]) == [
        "strace", "-f", "-p", "42", "-o", "/dev/null",
        "-e", "trace=fsync", "-e", "inject=fsync:delay_enter=200000",
    ]  # fmt: skip


# ---- real namespaces, real packets ------------------------------------------------------------


def leftovers(prefix: str) -> list[str]:
    """Interfaces and namespaces of the root namespace that carry the run's prefix."""

    def names(argv: list[str], key: str) -> list[str]:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return [entry[key] for entry in json.loads(out or "[]")]

    found = names(["ip", "-j", "link"], "ifname") + names(["ip", "-j", "netns", "list"], "name")
    return sorted(name for name in found if owns(prefix, name))


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    # The default registry, so that `keel verify --cleanup` finds what a killed test run left.
    made = Fabric.create(new_prefix(), 3, run_dir=tmp_path)
    try:
        yield made
    finally:
        made.destroy()
        assert leftovers(made.prefix) == []


@pytest.fixture
def echo(fabric: Fabric) -> Iterator[Host]:
    """An echo server listening in h2."""
    h2 = fabric.host("h2")
    server = subprocess.Popen(h2.command([sys.executable, "-c", ECHO_SERVER]))
    fabric.record_pid(server.pid)
    wait_for("the echo server in h2", lambda: probe(None, h2.address) == "ok")
    yield h2
    server.kill()
    server.wait()


def probe(
    source: Host | None, address: str, timeout: float = 1.0, port: int = PORT, echo: bool = True
) -> str:
    """Connect from `source` (None: the runner) to an echo server: ok, timeout or refused."""
    argv = [sys.executable, "-c", PROBE, address, str(port), str(timeout)]
    argv += [] if echo else ["connect"]
    if source is not None:
        argv = source.command(argv)
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


@needs_netns
def test_hosts_reach_each_other_and_the_runner_reaches_every_host(
    fabric: Fabric, echo: Host
) -> None:
    h1, h2, h3 = fabric.hosts
    assert probe(h1, h2.address) == "ok"
    assert probe(h3, h2.address) == "ok"
    assert probe(None, h2.address) == "ok"
    assert probe(h2, "127.0.0.1") == "ok"  # lo is up inside a host
    assert probe(h1, h3.address) == "refused"  # reachable, nothing listening


@needs_netns
def test_partition_drops_packets_silently_and_heal_restores(fabric: Fabric, echo: Host) -> None:
    h1, h2, h3 = fabric.hosts
    fabric.partition([[h1], [h2, h3]])
    assert probe(h1, h2.address) == "timeout"  # dropped, not refused
    assert probe(h2, h1.address, timeout=0.5) == "timeout"
    assert probe(h3, h2.address) == "ok"
    assert probe(None, h2.address) == "ok"  # the runner still sees every host
    fabric.partition([[h1, h2], [h3]])  # a new partition replaces the old one
    assert probe(h1, h2.address) == "ok"
    assert probe(h3, h2.address) == "timeout"
    fabric.heal()
    assert [probe(h, h2.address) for h in (h1, h3, None)] == ["ok", "ok", "ok"]


@needs_netns
def test_partition_stalls_an_established_connection_until_healed(
    fabric: Fabric, echo: Host
) -> None:
    h1, h2, _ = fabric.hosts
    # A client in h1 holding one connection to h2: each input line is sent, its echo printed.
    client_code = f"""
import socket, sys
c = socket.create_connection(("{h2.address}", {PORT}))
for line in sys.stdin:
    c.sendall(line.encode())
    print(c.recv(64).decode().strip(), flush=True)
"""
    client = subprocess.Popen(
        h1.command([sys.executable, "-c", client_code]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin and client.stdout
    try:
        client.stdin.write("before\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "before"
        fabric.partition([[h1], [h2]])
        client.stdin.write("during\n")
        client.stdin.flush()
        os.set_blocking(client.stdout.fileno(), False)
        time.sleep(1.5)  # observing an absence: nothing may arrive during the partition
        assert client.stdout.readline() == ""
        os.set_blocking(client.stdout.fileno(), True)
        fabric.heal()
        # TCP retransmits the stalled bytes once the path is back.
        assert client.stdout.readline().strip() == "during"
        assert client.poll() is None
    finally:
        client.kill()
        client.wait()


@needs_netns
def test_a_host_isolated_from_the_runner_times_out_both_ways(fabric: Fabric, echo: Host) -> None:
    h1, h2, h3 = fabric.hosts
    listener = socket.create_server((fabric.gateway, 0))  # in the runner
    port = listener.getsockname()[1]
    try:
        assert probe(h2, fabric.gateway, port=port, echo=False) == "ok"
        fabric.isolate_from_runner(h2)
        assert probe(None, h2.address) == "timeout"
        assert probe(h2, fabric.gateway, port=port, echo=False) == "timeout"
        assert probe(h1, h2.address) == "ok"  # other hosts still reach it
        assert probe(None, h3.address) == "refused"  # the runner still reaches h3
        fabric.heal()
        assert probe(None, h2.address) == "ok"
        assert probe(h2, fabric.gateway, port=port, echo=False) == "ok"
    finally:
        listener.close()


@needs_netns
def test_destroy_twice_leaves_nothing_with_the_prefix(tmp_path: Path) -> None:
    made = Fabric.create(new_prefix(), 2, run_dir=tmp_path)
    record = DEFAULT_REGISTRY / f"{made.prefix}.json"
    try:
        assert len(leftovers(made.prefix)) == 5  # bridge, 2 veths, 2 namespaces
        assert record.exists() and (tmp_path / "fabric.json").exists()
        first = made.destroy()
        assert sorted(first.namespaces) == [f"{made.prefix}h1", f"{made.prefix}h2"]
        assert made.destroy().links == []
        assert leftovers(made.prefix) == []
        assert not record.exists() and not (tmp_path / "fabric.json").exists()
    finally:
        made.destroy()


@needs_netns
def test_cleanup_removes_a_crashed_runs_hosts_and_kills_its_processes(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    crashed = Fabric.create(new_prefix(), 2, registry=registry)
    prefix, h1 = crashed.prefix, crashed.host("h1")
    inside = subprocess.Popen(h1.command(["sleep", "1000"]))
    outside = subprocess.Popen(["sleep", "1000"])  # recorded by the run, outside any host
    bystander = subprocess.Popen(["sleep", "1000"])  # not the run's: must survive
    crashed.record_pid(outside.pid)
    in_ns = wait_for("sleep inside h1", lambda: namespace_pids(h1.namespace))
    del crashed  # the run dies without destroying anything
    try:
        removed = cleanup_all(registry)
        assert removed.prefixes == [prefix]
        assert set(in_ns) | {outside.pid} <= set(removed.processes)
        assert bystander.pid not in removed.processes
        assert sorted(removed.namespaces) == [f"{prefix}h1", f"{prefix}h2"]
        assert leftovers(prefix) == []
        assert outside.wait(timeout=5) == -signal.SIGKILL
        inside.wait(timeout=5)
        assert bystander.poll() is None
        assert not cleanup_all(registry)  # nothing left to do
    finally:
        for proc in (inside, outside, bystander):
            proc.kill()
            proc.wait()


# ---- slow disk ----------------------------------------------------------------------------------

# Loops fsync in a thread started before strace attaches, printing each fsync's duration.
FSYNC_LOOP = """
import os, sys, tempfile, threading, time
fd, _ = tempfile.mkstemp(dir=sys.argv[1])
def loop():
    while True:
        os.write(fd, b"x")
        start = time.monotonic()
        os.fsync(fd)
        print(f"{time.monotonic() - start:.4f}", flush=True)
        time.sleep(0.02)
threading.Thread(target=loop).start()
"""


@needs_strace
async def test_slow_disk_delays_every_threads_fsync_until_detached(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FSYNC_LOOP, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def durations(n: int) -> list[float]:
        return [float(await stdout.readline()) for _ in range(n)]

    try:
        async with asyncio.timeout(60):
            before = await durations(5)
            async with SlowDisk(proc.pid, delay_ms=200):
                await durations(1)  # may have begun before strace attached
                slowed = await durations(3)
            await durations(1)  # may have begun while strace still held it
            after = await durations(5)
        assert all(d >= 0.2 for d in slowed), slowed
        assert max(before) < 0.1 and max(after) < 0.1, (before, after)
        assert proc.returncode is None
    finally:
        proc.kill()
        await proc.wait()


@needs_strace
async def test_slow_disk_reports_a_process_it_cannot_attach_to() -> None:
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    disk = SlowDisk(gone.pid, delay_ms=10)
    with pytest.raises(SlowDiskError, match="strace -f -p"):
        await disk.start()
