"""Several `keel scheduler --shards N` processes place at once over shared hollow Nodes
(Omega): together they fill the Nodes exactly, never past their room (the API server
refuses the later of two bindings to the last room, and that scheduler looks again);
a scheduler killed with SIGKILL in the middle of its plans loses nothing and binds
nothing twice: its shards move to the survivor, which binds the rest."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ApiServer, KeelProcess, wait_for

from keel.api.resources import Instance, InstanceSpec, Namespace, Node, ObjectMeta, ResourceList
from keel.client import SyncClient

NODES = 20
SLOTS_PER_NODE = 10  # cpu=1 per Node, 100m per Instance


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int, series: str) -> float:
    """The sum of a series' samples on a scheduler's /metrics (-1 until it serves)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(series) and not line.startswith("#")
    )


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[ApiServer, SyncClient]]:
    with ApiServer(tmp_path / "api") as api:
        manager = api.controller_manager("cm-1", "--controllers", "nodelifecycle")
        hollow = KeelProcess(
            "dev", "hollow-nodes", "--count", str(NODES), "--clusters", "2",
            "--capacity", "cpu=1,memory=4Gi", "--kubeconfig", str(api.kubeconfig),
            log_dir=tmp_path, name="hollow",
        ).start()  # fmt: skip
        try:
            with api.sync_client() as client:
                wait_for(
                    f"{NODES} Ready hollow nodes",
                    lambda: (
                        sum(
                            any(
                                c.type == "Ready" and c.status == "True"
                                for c in n.status.conditions
                            )
                            for n in client.list(Node).items
                        )
                        == NODES
                    ),
                    timeout=60,
                )
                yield api, client
        finally:
            for process in (hollow, manager):
                process.stop(timeout=30)


def create_instances(client: SyncClient, ns: str, count: int) -> None:
    """`count` bare Instances of 100m, created from 8 threads (a burst, as a flood would)."""
    client.create(Namespace(metadata=ObjectMeta(name=ns)))
    names = [f"i{index:04d}" for index in range(count)]

    def create(part: list[str]) -> None:
        for name in part:
            client.create(
                Instance(
                    metadata=ObjectMeta(name=name, namespace=ns),
                    spec=InstanceSpec(
                        command=["/nonexistent/never-started"],
                        resources=ResourceList(cpu="100m", memory="16Mi"),
                    ),
                )
            )

    threads = [threading.Thread(target=create, args=(names[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def placement(client: SyncClient, ns: str) -> tuple[Counter[str], int]:
    """Instances per Node, and how many are still unbound."""
    items = client.list(Instance, namespace=ns).items
    return Counter(i.spec.node_name for i in items if i.spec.node_name), sum(
        not i.spec.node_name for i in items
    )


def test_two_schedulers_share_the_nodes_and_never_overcommit(
    platform: tuple[ApiServer, SyncClient],
) -> None:
    api, client = platform
    ports = [free_port(), free_port()]
    schedulers = [
        api.scheduler(f"sched-{n}", "--shards", "4", "--metrics-listen", f"127.0.0.1:{port}")
        for n, port in enumerate(ports)
    ]
    try:
        wait_for(  # both hold shards before the flood, so both place
            "both schedulers hold shards",
            lambda: all(scrape(p, "keel_leader_is_leader") >= 1 for p in ports),
            timeout=30,
        )
        wanted = NODES * SLOTS_PER_NODE + 30  # 30 more than fit
        create_instances(client, "par", wanted)
        per_node, unbound = wait_for(
            "every slot taken",
            lambda: (
                (found := placement(client, "par"))[0].total() == NODES * SLOTS_PER_NODE and found
            ),
            timeout=90,
        )
        assert max(per_node.values()) == SLOTS_PER_NODE  # full, never over
        assert len(per_node) == NODES
        assert unbound == 30
        placed = [scrape(p, "keel_scheduler_placements_total") for p in ports]
        assert all(count > 0 for count in placed), placed  # both placed
        assert sum(placed) == NODES * SLOTS_PER_NODE
        plans = sum(scrape(p, "keel_scheduler_binding_plans_total") for p in ports)
        assert 0 < plans < sum(placed)  # bindings went in plans of several
    finally:
        for process in schedulers:
            process.stop(timeout=30)


def test_a_scheduler_killed_mid_plan_loses_nothing_and_binds_nothing_twice(
    platform: tuple[ApiServer, SyncClient],
) -> None:
    api, client = platform
    port = free_port()
    victim = api.scheduler("victim", "--shards", "4", "--metrics-listen", f"127.0.0.1:{port}")
    survivor = api.scheduler("survivor", "--shards", "4")
    watch_done = threading.Event()
    bindings: Counter[str] = Counter()

    def watch_bindings() -> None:
        seen: dict[str, str] = {}
        with api.sync_client() as own:
            for event in own.watch(Instance, namespace="kill"):
                name, node = event.object.metadata.name, event.object.spec.node_name
                if node and seen.get(name) != node:
                    bindings[name] += 1  # a node set, or changed: a second would show here
                    seen[name] = node
                if watch_done.is_set():
                    return

    try:
        wait_for(
            "the victim holds shards",
            lambda: scrape(port, "keel_leader_is_leader") >= 1,
            timeout=30,
        )
        watcher = threading.Thread(target=watch_bindings, daemon=True)
        watcher.start()
        total = NODES * SLOTS_PER_NODE
        creator = threading.Thread(target=create_instances, args=(client, "kill", total))
        creator.start()
        wait_for(
            "the victim has bound some",
            lambda: scrape(port, "keel_scheduler_placements_total") >= 20,
            timeout=60,
        )
        victim.kill()  # SIGKILL: plans in flight, bindings decided and not yet sent
        creator.join()
        per_node, _ = wait_for(
            "every Instance bound by the survivor",
            lambda: (found := placement(client, "kill"))[1] == 0 and found,
            timeout=90,
        )
        assert per_node.total() == total  # nothing lost
        assert max(per_node.values()) == SLOTS_PER_NODE  # nothing over
        wait_for(
            "the watch saw every binding",
            lambda: len(bindings) >= total,
            timeout=30,
        )
        assert len(bindings) == total
        assert set(bindings.values()) == {1}  # each bound once, to one node
    finally:
        watch_done.set()
        for process in (victim, survivor):
            process.stop(timeout=30)
