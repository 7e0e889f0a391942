"""`LocalProcessDriver` on its own, with real processes: what the agent relies on through the
`ProcessDriver` seam (env and ports reach the process, its output reaches the log, SIGTERM
ends the group with a known exit code, a new driver adopts but cannot read exit codes, health
checks run with the process's env and say why they failed, a missing command is a start
failure, not an exception)."""

from __future__ import annotations

import asyncio
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import group_alive, kill_group
from support import wait_for

from keel.agent import CheckResult, Exited, LocalProcessDriver, Started, StartFailed, Workload
from keel.api.resources import HealthCheck, InstanceSpec, LivenessCheck, PortSpec

SLEEPER = [
    "sh",
    "-c",
    f'echo "node=$KEEL_NODE port=$PORT_HTTP"; {sys.executable} -c "import time; time.sleep(60)"',
]


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Process groups a test started: killed afterwards, whatever the test did."""
    started: list[int] = []
    yield started
    for pid in started:
        kill_group(pid)


def workload(tmp_path: Path, command: list[str], **spec: object) -> Workload:
    return Workload(
        namespace="default",
        name="w",
        spec=InstanceSpec(command=command, ports=[PortSpec(name="http")], **spec),  # type: ignore[arg-type]
        ports={"http": 18080},
        log_path=str(tmp_path / "logs" / "w.log"),
        env={"KEEL_NODE": "n1"},
    )


def test_start_signal_and_poll_a_real_process_group(tmp_path: Path, pids: list[int]) -> None:
    driver = LocalProcessDriver()
    work = workload(tmp_path, SLEEPER)
    started = driver.start(work)
    assert isinstance(started, Started)
    pids.append(started.pid)
    assert driver.alive(started.pid, started.proc_start)
    assert driver.poll(started.pid, started.proc_start) is None
    log = Path(work.log_path)
    wait_for("the process's output", lambda: "node=n1 port=18080" in log.read_text())
    wait_for("memory use", lambda: driver.usage(started.pid).memory_bytes > 0)

    assert driver.signal(started.pid, "TERM")
    exited = wait_for("the exit", lambda: driver.poll(started.pid, started.proc_start))
    assert exited == Exited(-15)  # the shell, killed by SIGTERM
    assert not driver.alive(started.pid, started.proc_start)
    wait_for("the whole group gone", lambda: not group_alive(started.pid))
    assert driver.usage(started.pid).memory_bytes == 0


def test_a_new_driver_adopts_a_process_but_not_its_exit_code(
    tmp_path: Path, pids: list[int]
) -> None:
    started = LocalProcessDriver().start(workload(tmp_path, SLEEPER))
    assert isinstance(started, Started)
    pids.append(started.pid)
    adopter = LocalProcessDriver()  # a restarted agent
    assert adopter.poll(started.pid, started.proc_start) is None
    assert not adopter.alive(started.pid, started.proc_start + 1)  # a reused PID
    adopter.signal(started.pid, "KILL")
    exited = wait_for("the exit", lambda: adopter.poll(started.pid, started.proc_start))
    assert exited == Exited(None)


def test_a_missing_command_is_a_start_failure(tmp_path: Path) -> None:
    failed = LocalProcessDriver().start(workload(tmp_path, ["/nonexistent/serve"]))
    assert isinstance(failed, StartFailed)
    assert "No such file" in failed.message


def test_exec_health_check_sees_the_process_env(tmp_path: Path) -> None:
    driver = LocalProcessDriver()
    work = workload(tmp_path, SLEEPER)
    passing = HealthCheck(type="exec", command=["sh", "-c", 'test "$PORT_HTTP" = 18080'])
    failing = HealthCheck(type="exec", command=["sh", "-c", 'test "$KEEL_NODE" = n2'])
    refused = HealthCheck(type="tcp", port=1)  # nothing listens on port 1
    assert asyncio.run(driver.check_health(work, passing)) == CheckResult(True)
    assert asyncio.run(driver.check_health(work, failing)) == CheckResult(
        False, """exec sh -c test "$KEEL_NODE" = n2: exit code 1"""
    )
    assert asyncio.run(driver.check_health(work, refused)) == CheckResult(
        False, "tcp :1: connection refused"
    )


def test_a_failed_http_check_says_which_status_it_got(tmp_path: Path) -> None:
    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        work = workload(tmp_path, SLEEPER)
        driver = LocalProcessDriver()
        ok = LivenessCheck(type="http", port=port, path="/ok")
        sick = LivenessCheck(type="http", port=port, path="/healthz")
        assert asyncio.run(driver.check_health(work, ok)).ok
        assert asyncio.run(driver.check_health(work, sick)) == CheckResult(
            False, f"GET :{port}/healthz: HTTP 500"
        )
        server.shutdown()


def test_ports_and_log_rotation_never_fail(tmp_path: Path) -> None:
    driver = LocalProcessDriver()
    spec = InstanceSpec(command=["x"], ports=[PortSpec(name="a"), PortSpec(name="b", port=9)])
    ports = driver.assign_ports(spec, taken=())
    assert ports["b"] == 9 and 0 < ports["a"] < 65536
    driver.rotate_log(str(tmp_path / "missing" / "x.log"))  # no file: nothing to do
