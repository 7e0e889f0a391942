"""End to end: `keel up` runs the whole platform with real processes, and examples/hello.yaml
becomes three HTTP servers that survive crashes, scale, fail over and come back after a
restart of the platform."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import AgentProcess, ApiServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello.yaml"
V1 = "/apis/keel.dev/v1"


def keel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Platform:
    """`keel up` run in `dir` (state in dir/.keel), and what a user sees of it over HTTP."""

    dir: Path
    up: ApiServer

    @classmethod
    def create(cls, directory: Path, *args: str, nodes: tuple[str, ...] = ()) -> Platform:
        """Not started yet; `nodes` get a node token each, for agents the test starts."""
        up = ApiServer(directory / ".keel", *args, subcommand="up", cwd=directory, nodes=nodes)
        return cls(directory, up)

    @property
    def state(self) -> Path:
        return self.up.state_dir

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        content_type: str = "application/json",
    ) -> Any:
        """The answer's JSON (or bytes); None for an error or when nothing answers."""
        client = self.up.http("admin" if auth else None)
        try:
            answer = client.request(method, path, body, content_type=content_type, timeout=5)
        except OSError:
            return None
        if answer.status >= 400:
            return None
        return answer.json if answer.body.startswith(b"{") else answer.body

    def get(self, path: str, *, auth: bool = True) -> Any:
        return self.request("GET", path, auth=auth)

    def instances(self) -> list[dict[str, Any]]:
        listed = self.get(f"{V1}/namespaces/default/instances?labelSelector=app%3Dhello")
        return list(listed["items"]) if listed else []

    def ready_instances(self) -> list[dict[str, Any]]:
        ready = []
        for inst in self.instances():
            status = inst.get("status", {})
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            if status.get("phase") == "Running" and conditions.get("Ready") == "True":
                ready.append(inst)
        return ready

    def store_writes(self) -> int:
        metrics = self.get("/metrics")
        assert isinstance(metrics, bytes)
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in metrics.decode().splitlines()
            if line.startswith("keel_store_writes_total{")
        )

    def workload_pids(self) -> dict[str, int]:
        pids = {}
        for path in glob.glob(str(self.state / "agents" / "*" / "instances" / "*.json")):
            record = json.loads(Path(path).read_text())
            if record.get("pid"):
                pids[record["name"]] = int(record["pid"])
        return pids

    def our_processes(self) -> list[int]:
        """PIDs of every process whose command line mentions this platform's directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if str(self.dir).encode() in cmdline or cwd.startswith(str(self.dir)):
                found.append(int(entry.name))
        return found

    def stop(self) -> int | None:
        """Ctrl-C; the exit code."""
        return self.up.stop(signal.SIGINT, timeout=40)


def answers_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_of(instance: dict[str, Any]) -> int:
    return int(instance["status"]["ports"][0]["port"])


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    plat = Platform.create(
        tmp_path_factory.mktemp("up"), "--clusters", "2", "--nodes-per-cluster", "2"
    )
    plat.up.start()
    yield plat
    plat.stop()
    for pid in plat.our_processes():
        os.kill(pid, signal.SIGKILL)


def ready_nodes(platform: Platform) -> list[str]:
    listed = platform.get(f"{V1}/nodes")
    names = []
    for node in listed["items"] if listed else []:
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            names.append(node["metadata"]["name"])
    return names


def test_hello_becomes_three_ready_instances_answering_http(platform: Platform) -> None:
    wait_for("4 ready nodes", lambda: len(ready_nodes(platform)) == 4)
    applied = keel("apply", "-f", str(HELLO), cwd=platform.dir)
    assert applied.returncode == 0, applied.stderr
    assert "deployment.keel.dev/hello created" in applied.stdout
    ready = wait_for(
        "3 ready instances",
        lambda: len(platform.ready_instances()) == 3 and platform.ready_instances(),
    )
    nodes = {inst["spec"]["nodeName"] for inst in ready}
    assert len(nodes) == 3, "replicas are spread over nodes"
    for inst in ready:
        assert answers_http(port_of(inst))
    endpoints = wait_for(
        "3 ready endpoints",
        lambda: (
            (ep := platform.get(f"{V1}/namespaces/default/endpoints/hello"))
            and sum(a["ready"] for s in ep["subsets"] for a in s["addresses"]) == 3
            and ep
        ),
    )
    assert {a["port"] for s in endpoints["subsets"] for a in s["addresses"]} == {
        port_of(inst) for inst in ready
    }
    table = keel("get", "instances", cwd=platform.dir).stdout
    assert table.count("Running") == 3


def test_a_workload_killed_with_sigkill_is_restarted(platform: Platform) -> None:
    pids = wait_for(
        "workload pids", lambda: len(platform.workload_pids()) == 3 and platform.workload_pids()
    )
    name, pid = sorted(pids.items())[0]
    os.kill(pid, signal.SIGKILL)
    wait_for("a new process", lambda: platform.workload_pids().get(name) not in (None, pid))
    instance = next(i for i in platform.instances() if i["metadata"]["name"] == name)
    wait_for("it answers again", lambda: answers_http(port_of(instance)), timeout=30)


def test_scaling_to_five_and_back_to_two(platform: Platform) -> None:
    path = f"{V1}/namespaces/default/deployments/hello"
    platform.request(
        "PATCH", path, {"spec": {"replicas": 5}}, content_type="application/merge-patch+json"
    )
    wait_for("5 ready", lambda: len(platform.ready_instances()) == 5)
    platform.request(
        "PATCH", path, {"spec": {"replicas": 2}}, content_type="application/merge-patch+json"
    )
    wait_for("2 instances", lambda: len(platform.instances()) == 2)
    wait_for("exactly 2 workload processes", lambda: len(platform.workload_pids()) == 2)
    deployment = wait_for(
        "status 2/2", lambda: (d := platform.get(path)) and d["status"]["readyReplicas"] == 2 and d
    )
    assert deployment["status"]["replicas"] == 2


def settle(platform: Platform) -> None:
    """hello (applied by the first test, or here when a test runs alone) fully ready, its
    revision stable, and the last status transitions landed."""
    path = f"{V1}/namespaces/default/deployments/hello"
    if platform.get(path) is None:
        wait_for("4 ready nodes", lambda: len(ready_nodes(platform)) == 4)
        assert keel("apply", "-f", str(HELLO), cwd=platform.dir).returncode == 0
    replicas = platform.get(path)["spec"]["replicas"]
    wait_for("settled", lambda: len(platform.ready_instances()) == replicas)
    # A rollout's last transition: its revision is marked stable once it has stayed fully
    # available for bakeSeconds (10 s by default).
    wait_for(
        "hello's revision stable",
        lambda: (s := platform.get(path)["status"])["stableRevision"] == s["updateRevision"],
        timeout=30,
    )

    def quiet_for_a_second() -> bool:
        before = platform.store_writes()
        time.sleep(1.0)
        return platform.store_writes() == before

    wait_for("the last status transitions to land", quiet_for_a_second, timeout=30)


def test_an_idle_platform_makes_no_store_writes_for_8_seconds(platform: Platform) -> None:
    # Longer than every periodic loop of an idle platform (lease keep-alives every 1 s,
    # hello's health checks every 2 s and liveness checks every 5 s); 20 s under `make soak`.
    settle(platform)
    before = platform.store_writes()
    time.sleep(8)  # the property is about a stretch of time: nothing to poll for
    assert platform.store_writes() == before


@pytest.mark.slow
def test_an_idle_platform_makes_no_store_writes_for_20_seconds(platform: Platform) -> None:
    settle(platform)
    before = platform.store_writes()
    time.sleep(20)  # the property is about a stretch of time: nothing to poll for
    assert platform.store_writes() == before


def test_ctrl_c_stops_everything_and_a_restart_brings_the_same_workloads_back(
    platform: Platform,
) -> None:
    names = sorted(i["metadata"]["name"] for i in platform.ready_instances())
    assert len(names) == 2
    processes = platform.our_processes() + list(platform.workload_pids().values())
    started = time.monotonic()
    assert platform.stop() == 0
    assert time.monotonic() - started < 30
    left = [
        p
        for p in processes
        if Path(f"/proc/{p}").exists()
        and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
    ]
    assert not left, f"processes left behind after Ctrl-C: {left}"
    platform.up.start()
    wait_for(
        "the same 2 instances ready again",
        lambda: sorted(i["metadata"]["name"] for i in platform.ready_instances()) == names,
        timeout=60,
    )


@pytest.fixture
def bare_platform(tmp_path: Path) -> Iterator[tuple[Platform, Callable[[str], AgentProcess]]]:
    """`keel up` without agents, and agents this test starts and kills itself."""
    plat = Platform.create(
        tmp_path, "--clusters", "1", "--nodes-per-cluster", "0", nodes=("na", "nb", "nc")
    )
    plat.up.start()
    agents: list[AgentProcess] = []

    def start_agent(node: str) -> AgentProcess:
        agent = plat.up.agent(
            node, plat.state / "agents" / node, "--lease-duration", "4", cluster="cluster-1"
        )
        agents.append(agent)
        return agent.start()

    yield plat, start_agent
    for agent in agents:
        agent.stop()
    plat.stop()
    for pid in plat.our_processes():
        os.kill(pid, signal.SIGKILL)


def test_instances_of_a_killed_agent_run_elsewhere_and_a_restarted_agent_readopts(
    bare_platform: tuple[Platform, Callable[[str], AgentProcess]],
) -> None:
    plat, start_agent = bare_platform
    agents = {node: start_agent(node) for node in ("na", "nb", "nc")}
    assert keel("apply", "-f", str(HELLO), cwd=plat.dir).returncode == 0
    ready = wait_for("3 ready", lambda: len(plat.ready_instances()) == 3 and plat.ready_instances())
    # restarting an agent re-adopts its workloads: same processes, no restart
    pids = wait_for("pids", lambda: len(plat.workload_pids()) == 3 and plat.workload_pids())
    agents["nc"].kill()
    agents["nc"].start()
    time.sleep(3)  # give a wrongly restarting agent the chance to restart something
    assert plat.workload_pids() == pids
    assert all(answers_http(port_of(i)) for i in ready)
    # kill -9 an agent: its instance is running elsewhere within 15 s
    victim = ready[0]["spec"]["nodeName"]
    agents[victim].kill()
    killed_at = time.monotonic()
    moved = wait_for(
        "the instance running on another node",
        lambda: (
            len(live := [i for i in plat.ready_instances() if i["spec"]["nodeName"] != victim]) == 3
            and live
        ),
        timeout=30,
    )
    elapsed = time.monotonic() - killed_at
    assert elapsed < 15, f"failover took {elapsed:.1f} s"
    assert all(answers_http(port_of(i)) for i in moved)
