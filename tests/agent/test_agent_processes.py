"""The agent against a real API server with real workload processes: instances run, answer on
the ports the agent assigned, restart after kill -9 or a failing liveness check (a failing
readiness check only turns Ready off), survive agent crashes and control-plane outages, stop
when deleted, self-fence when the lease goes stale, and leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import group_alive, instance, kill_group, pid_alive, ready
from support import AgentProcess, ApiServer, wait_for

from keel.api.resources import HealthCheck, Instance, Lease, LivenessCheck, Node, PortSpec
from keel.client import NotFound, SyncClient

PY = sys.executable
HTTP_SERVER = ["sh", "-c", f"exec {PY} -m http.server --bind 127.0.0.1 $PORT_HTTP"]
# Ignores SIGTERM, so only the SIGKILL after the grace period ends it.
STUBBORN = [PY, "-c", "import signal,time; signal.signal(15, signal.SIG_IGN); time.sleep(600)"]
SLEEPER = [PY, "-c", "import time; time.sleep(600)"]
# Answers GET /NAME with 500 while the file NAME.fail exists in its working dir, else 200.
FAILABLE = [PY, "-c", """if True:
    import http.server, os
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            failing = os.path.exists(self.path.strip("/") + ".fail")
            self.send_response(500 if failing else 200)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""]  # fmt: skip


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with ApiServer(tmp_path / "api", nodes=["n1", "n2"]) as server:
        yield server


@pytest.fixture
def client(api: ApiServer) -> Iterator[SyncClient]:
    with api.sync_client() as c:
        yield c


@pytest.fixture
def agent(api: ApiServer, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def make(node: str = "n1", *extra: str) -> AgentProcess:
        process = api.agent(
            node, tmp_path / "agents" / node,
            "--heartbeat-interval", "0.5", "--capacity", "cpu=4,memory=8Gi", *extra,
        ).start()  # fmt: skip
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop(timeout=40)
        # Belt and braces: nothing a test's agent started may outlive the test.
        for path in (process.state_dir / "instances").glob("*.json"):
            kill_group(json.loads(path.read_text()).get("pid", 0))


def state(agent: AgentProcess, name: str, namespace: str = "default") -> dict[str, Any]:
    path = agent.state_dir / "instances" / f"{namespace}_{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


def running_pid(agent: AgentProcess, name: str) -> int:
    pid = int(state(agent, name).get("pid", 0))
    return pid if pid and pid_alive(pid) else 0


def get(client: SyncClient, name: str) -> Instance:
    return client.get(Instance, name, namespace="default")


def in_phase(client: SyncClient, name: str, phase: str) -> Instance | None:
    obj = get(client, name)
    return obj if obj.status.phase == phase else None


def wait_ready(client: SyncClient, name: str, timeout: float = 30.0) -> Instance:
    def check() -> Instance | None:
        obj = get(client, name)
        return obj if obj.status.phase == "Running" and ready(obj) else None

    return wait_for(f"{name} Running and Ready", check, timeout=timeout)


def http_status(port: int) -> int:
    """The status of GET / on the port, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


def test_http_instance_runs_ready_and_answers_on_its_assigned_port(
    api: ApiServer, client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    client.create(
        instance(
            "web",
            "n1",
            HTTP_SERVER,
            ports=[PortSpec(name="http")],
            health_check=HealthCheck(type="http", path="/", period_seconds=1),
        )
    )
    obj = wait_ready(client, "web")
    assert obj.status.host_ip == "127.0.0.1"
    assert obj.status.started_at
    (port,) = obj.status.ports
    assert port.name == "http" and port.port > 0
    assert http_status(port.port) == 200

    node = client.get(Node, "n1")
    assert node.spec.cluster == "c1"
    assert node.spec.capacity.cpu == "4" and node.spec.capacity.memory == "8Gi"
    assert [a.address for a in node.status.addresses] == ["127.0.0.1"]
    lease = client.get(Lease, "n1", namespace="keel-node-lease")
    assert lease.spec.holder_identity == "n1"

    # The workload's output lands in its log file under the agent's state dir.
    log = node_agent.state_dir / "logs" / "default_web.log"
    wait_for("request logged", lambda: "GET / HTTP" in log.read_text(), timeout=10)
    usage = wait_for("usage telemetry", lambda: _telemetry(client, "web"), timeout=10)
    assert usage["node"] == "n1" and usage["restarts"] == 0 and usage["memory"] > 0
    events = client.events("default", "web")
    assert any(e["reason"] == "Started" for e in events)


def _telemetry(client: SyncClient, name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = client.get_telemetry("instanceusages", name, namespace="default")
    except NotFound:
        return None
    return data


def test_killed_workload_is_restarted_and_counted_in_telemetry(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    client.create(instance("web", "n1", HTTP_SERVER, ports=[PortSpec(name="http", port=0)]))
    first = wait_ready(client, "web")
    pid = wait_for("a pid", lambda: running_pid(node_agent, "web"), timeout=10)

    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(
        "a new process", lambda: (p := running_pid(node_agent, "web")) != pid and p, timeout=15
    )
    assert new_pid != pid
    usage = wait_for(
        "restarts >= 1 in telemetry",
        lambda: (u := _telemetry(client, "web")) and u["restarts"] >= 1 and u,
        timeout=15,
    )
    assert usage["restarts"] == 1
    # Same port after the restart: the assignment is kept for the instance's life.
    again = wait_ready(client, "web")
    assert again.status.ports == first.status.ports
    wait_for("answers again", lambda: http_status(again.status.ports[0].port) == 200, timeout=10)


def test_never_policy_ends_succeeded_or_failed(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    agent("n1")
    client.create(instance("ok", "n1", ["sh", "-c", "exit 0"], restart_policy="Never"))
    client.create(instance("bad", "n1", ["sh", "-c", "exit 3"], restart_policy="Never"))
    client.create(instance("missing", "n1", ["/nonexistent/cmd"], restart_policy="Never"))
    wait_for("ok Succeeded", lambda: get(client, "ok").status.phase == "Succeeded", timeout=20)
    bad = wait_for("bad Failed", lambda: in_phase(client, "bad", "Failed"))
    assert bad.status.message == "exited with code 3"
    assert not ready(bad)
    missing = wait_for("missing Failed", lambda: in_phase(client, "missing", "Failed"))
    assert "cannot start" in missing.status.message


def test_restarted_agent_readopts_the_running_process(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    client.create(instance("web", "n1", HTTP_SERVER, ports=[PortSpec(name="http")]))
    client.create(instance("solo", "n1", SLEEPER, exclusive=True))
    before = wait_ready(client, "web")
    wait_ready(client, "solo")
    pid = wait_for("a pid", lambda: running_pid(node_agent, "web"), timeout=10)
    solo = running_pid(node_agent, "solo")

    node_agent.kill()  # SIGKILL: a crash
    assert pid_alive(pid)
    node_agent.start()
    wait_for("re-adoption", lambda: "re-adopted running process" in node_agent.log(), timeout=20)
    # The saved lease is renewed (no 10 s wait for it to expire): the same incarnation.
    wait_for(
        "lease renewed", lambda: "renewed the saved node lease" in node_agent.log(), timeout=10
    )
    after = wait_ready(client, "web")
    assert running_pid(node_agent, "web") == pid
    # A fresh saved lease kept the exclusive instance running through the agent restart.
    assert running_pid(node_agent, "solo") == solo
    assert after.status.started_at == before.status.started_at
    assert state(node_agent, "web")["starts"] == 1
    assert http_status(after.status.ports[0].port) == 200

    # An adopted process is not the agent's child: its death is seen through /proc.
    os.kill(pid, signal.SIGKILL)
    wait_for("restart", lambda: (p := running_pid(node_agent, "web")) != pid and p, timeout=15)


def test_exec_health_check_drives_the_ready_condition(
    client: SyncClient, agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent("n1")
    work = tmp_path / "work"
    work.mkdir()
    check = HealthCheck(
        type="exec", command=["test", "-f", "healthy"], period_seconds=1, failure_threshold=2
    )
    client.create(instance("probed", "n1", SLEEPER, working_dir=str(work), health_check=check))
    running = wait_for("Running", lambda: in_phase(client, "probed", "Running"), timeout=20)
    assert not ready(running)
    (work / "healthy").touch()
    wait_ready(client, "probed")
    (work / "healthy").unlink()
    wait_for("not Ready", lambda: not ready(get(client, "probed")), timeout=20)
    assert get(client, "probed").status.phase == "Running"


def test_tcp_health_check_passes_once_the_port_listens(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    agent("n1")
    delayed = ["sh", "-c", f"sleep 2; exec {PY} -m http.server --bind 127.0.0.1 $PORT"]
    client.create(
        instance(
            "late",
            "n1",
            delayed,
            ports=[PortSpec(name="main")],
            health_check=HealthCheck(type="tcp", port="main", period_seconds=1),
        )
    )
    running = wait_for("Running", lambda: in_phase(client, "late", "Running"), timeout=20)
    assert not ready(running)
    obj = wait_ready(client, "late")
    assert http_status(obj.status.ports[0].port) == 200


def failable(name: str, work: Path, live: LivenessCheck, grace: int) -> Instance:
    return instance(
        name,
        "n1",
        FAILABLE,
        working_dir=str(work),
        ports=[PortSpec(name="http")],
        health_check=HealthCheck(type="http", path="/ready", period_seconds=1),
        liveness_check=live,
        termination_grace_period_seconds=grace,
    )


def test_a_failing_liveness_check_restarts_the_process_and_says_why(
    client: SyncClient, agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    node_agent = agent("n1")
    work = tmp_path / "work"
    work.mkdir()
    period, threshold, grace = 1, 2, 2
    live = LivenessCheck(type="http", path="/live", period_seconds=period,
                         failure_threshold=threshold, initial_delay_seconds=2)  # fmt: skip
    client.create(failable("web", work, live, grace))
    port = wait_ready(client, "web").status.ports[0].port
    pid = wait_for("a pid", lambda: running_pid(node_agent, "web"), timeout=10)

    (work / "live.fail").touch()
    failing_at = time.monotonic()
    new_pid = wait_for(
        "a new process", lambda: (p := running_pid(node_agent, "web")) != pid and p, timeout=30
    )
    took = time.monotonic() - failing_at
    # The new process gets `initialDelaySeconds` before its first liveness check.
    (work / "live.fail").unlink()
    print(f"liveness restart {took:.2f}s after the check started failing")
    # Failed checks, SIGTERM (the server exits at once), the first 1 s backoff, some slack.
    assert took <= period * threshold + grace + 1.0 + 2.0
    assert not pid_alive(pid)

    wait_ready(client, "web")
    assert running_pid(node_agent, "web") == new_pid and state(node_agent, "web")["starts"] == 2
    usage = wait_for(
        "restart counted", lambda: (u := _telemetry(client, "web")) and u["restarts"] == 1
    )
    assert usage
    messages = [(e["reason"], e["message"]) for e in client.events("default", "web")]
    assert ("Unhealthy", f"Killing: liveness check failed: GET :{port}/live: HTTP 500") in messages
    assert ("Restarted", f"pid {new_pid}, ports {{'http': {port}}}") in messages


def test_a_failing_readiness_check_turns_ready_off_without_a_restart(
    client: SyncClient, agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    node_agent = agent("n1")
    work = tmp_path / "work"
    work.mkdir()
    live = LivenessCheck(type="http", path="/live", period_seconds=1, failure_threshold=2)
    client.create(failable("web", work, live, 2))
    wait_ready(client, "web")
    pid = wait_for("a pid", lambda: running_pid(node_agent, "web"), timeout=10)

    (work / "ready.fail").touch()
    wait_for("not Ready", lambda: not ready(get(client, "web")), timeout=20)
    # Long enough for a restart (two failed checks a second apart), were readiness to cause one.
    time.sleep(4.0)
    assert running_pid(node_agent, "web") == pid and state(node_agent, "web")["starts"] == 1
    assert get(client, "web").status.phase == "Running"
    (work / "ready.fail").unlink()
    wait_ready(client, "web")


def test_deleting_the_instance_stops_its_whole_process_group(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    # A shell with a child of its own: both are in the instance's process group.
    client.create(instance("tree", "n1", ["sh", "-c", "sleep 600 & sleep 600; wait"]))
    client.create(instance("stubborn", "n1", STUBBORN, termination_grace_period_seconds=1))
    wait_ready(client, "tree")
    wait_ready(client, "stubborn")
    tree = running_pid(node_agent, "tree")
    stubborn = running_pid(node_agent, "stubborn")
    assert tree and stubborn and group_alive(tree)

    client.delete(Instance, "tree", namespace="default")
    client.delete(Instance, "stubborn", namespace="default")
    wait_for("tree's group gone", lambda: not group_alive(tree), timeout=15)
    # SIGTERM is ignored: the SIGKILL after the 1 s grace period ends it.
    started = time.monotonic()
    wait_for("stubborn gone", lambda: not group_alive(stubborn), timeout=15)
    assert time.monotonic() - started < 10
    wait_for("records forgotten", lambda: not state(node_agent, "stubborn"), timeout=10)
    events = client.events("default", "stubborn")
    assert any(e["reason"] == "Killed" for e in events)


def test_exclusive_instance_is_self_fenced_when_the_lease_cannot_be_renewed(
    api: ApiServer, client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1", "--lease-duration", "4", "--fence-margin", "2")
    client.create(instance("solo", "n1", SLEEPER, exclusive=True))
    client.create(instance("shared", "n1", SLEEPER))
    wait_ready(client, "solo")
    wait_ready(client, "shared")
    solo = running_pid(node_agent, "solo")
    shared = running_pid(node_agent, "shared")

    api.pause()  # SIGSTOP: renewals hang, as in a partition
    paused = time.monotonic()
    try:
        wait_for("solo stopped", lambda: not group_alive(solo), timeout=10)
        # Before the lease (4 s from the last renewal, which preceded the pause) could expire.
        assert time.monotonic() - paused < 4.0
        assert pid_alive(shared), "a control-plane outage must leave other workloads running"
    finally:
        api.resume()
    # Lease renewed or re-acquired: the exclusive instance runs again, the other never stopped.
    wait_for("solo back", lambda: running_pid(node_agent, "solo"), timeout=30)
    assert running_pid(node_agent, "shared") == shared
    wait_ready(client, "solo")


def test_sigterm_stops_every_workload_and_leaves_no_process_behind(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    client.create(instance("tree", "n1", ["sh", "-c", "sleep 600 & sleep 600; wait"]))
    client.create(instance("stubborn", "n1", STUBBORN, termination_grace_period_seconds=1))
    client.create(instance("web", "n1", HTTP_SERVER, ports=[PortSpec(name="http")]))
    for name in ("tree", "stubborn", "web"):
        wait_ready(client, name)
    groups = [running_pid(node_agent, n) for n in ("tree", "stubborn", "web")]
    assert all(groups)

    node_agent.signal(signal.SIGTERM)
    assert node_agent.wait(timeout=20) == 0
    assert not [g for g in groups if group_alive(g)]
    # The lease was released: the node stops being Ready at once.
    with pytest.raises(NotFound):
        client.get(Lease, "n1", namespace="keel-node-lease")


def test_instance_deleted_while_the_agent_was_down_is_stopped_when_it_returns(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    client.create(instance("gone", "n1", SLEEPER, termination_grace_period_seconds=2))
    client.create(instance("kept", "n1", SLEEPER))
    wait_ready(client, "gone")
    wait_ready(client, "kept")
    gone, kept = running_pid(node_agent, "gone"), running_pid(node_agent, "kept")
    node_agent.kill()
    client.delete(Instance, "gone", namespace="default")
    node_agent.start()
    wait_for("gone stopped", lambda: not group_alive(gone), timeout=20)
    wait_for("gone forgotten", lambda: not state(node_agent, "gone"), timeout=10)
    assert running_pid(node_agent, "kept") == kept


def test_leave_running_hands_workloads_to_the_next_agent(
    client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1", "--leave-running")
    client.create(instance("web", "n1", HTTP_SERVER, ports=[PortSpec(name="http")]))
    wait_ready(client, "web")
    pid = running_pid(node_agent, "web")
    node_agent.signal(signal.SIGTERM)
    assert node_agent.wait(timeout=20) == 0
    assert pid_alive(pid)
    node_agent.start()
    wait_for("re-adoption", lambda: "re-adopted running process" in node_agent.log(), timeout=20)
    assert running_pid(node_agent, "web") == pid


def test_workloads_keep_running_and_restarting_while_the_api_server_is_down(
    api: ApiServer, client: SyncClient, agent: Callable[..., AgentProcess]
) -> None:
    node_agent = agent("n1")
    client.create(instance("web", "n1", HTTP_SERVER, ports=[PortSpec(name="http")]))
    obj = wait_ready(client, "web")
    pid = running_pid(node_agent, "web")
    api.stop()
    try:
        os.kill(pid, signal.SIGKILL)  # a crash during the outage is still restarted
        new_pid = wait_for("restart", lambda: (p := running_pid(node_agent, "web")) != pid and p)
        wait_for(
            "answers during the outage",
            lambda: http_status(obj.status.ports[0].port) == 200,
            timeout=10,
        )
    finally:
        api.start()
    wait_ready(client, "web")
    assert running_pid(node_agent, "web") == new_pid
