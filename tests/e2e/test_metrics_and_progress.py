"""Real processes: `keel up` says what it starts and waits for, records where every
component serves /metrics, and the series a dashboard uses exist and move as a Deployment is
applied; `keel apply --wait` ends 0 once a rollout is complete and fails, naming the
instance and why, when one cannot become ready."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ApiServer, wait_for
from support.prometheus import Sample, parse, samples_of, value_of

GOOD = """\
apiVersion: keel.dev/v1
kind: Deployment
metadata: {name: sleeper, namespace: default}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      command: ["sleep", "600"]
      resources: {cpu: 10m, memory: 8Mi}
      terminationGracePeriodSeconds: 1
"""

CRASHING = """\
apiVersion: keel.dev/v1
kind: Deployment
metadata: {name: crashy, namespace: default}
spec:
  replicas: 1
  template:
    metadata: {labels: {app: crashy}}
    spec:
      command: ["sh", "-c", "echo starting; exit 1"]
      resources: {cpu: 10m, memory: 8Mi}
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`keel up` with one cluster of two nodes, ready (every node Ready)."""
    directory = tmp_path_factory.mktemp("metrics")
    up = ApiServer(
        directory / ".keel",
        "--clusters", "1", "--nodes-per-cluster", "2",
        subcommand="up", cwd=directory,
    ).start()  # fmt: skip
    try:
        wait_for("keel up to say it is ready", lambda: "keel up: ready in" in up.log(), timeout=60)
        yield up
    finally:
        up.stop(signal.SIGINT, timeout=40)


def targets(up: ApiServer) -> dict[str, str]:
    """component -> scrape URL, from the file `keel up` writes."""
    groups = json.loads((up.state_dir / "metrics-targets.json").read_text())
    return {
        g["labels"]["component"]: f"{g['labels'].get('__scheme__', 'http')}://"
        f"{g['targets'][0]}/metrics"
        for g in groups
    }


def scrape(url: str) -> tuple[dict[str, str], list[Sample]]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        _, types, samples = parse(answer.read().decode())
    return types, samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(value for _, _, value in samples_of(samples, name, **labels))


def keel(up: ApiServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args, "--kubeconfig", str(up.kubeconfig)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=up.cwd,
    )


def test_keel_up_says_what_it_waits_for_one_line_per_step(platform: ApiServer) -> None:
    log = platform.log()
    lines = [line for line in log.splitlines() if line.startswith("keel up: ")]
    steps = [
        "keel up: waiting for the controller-manager and the scheduler to take their leases",
        "keel up: controller-manager and scheduler are leading",
        "keel up: waiting for 2 node(s) Ready (0/2)",
        "keel up: 2/2 node(s) Ready",
    ]
    for step in steps:
        assert step in lines, log
    assert lines.index(steps[0]) < lines.index(steps[2]) < lines.index(steps[3])
    assert any(line.startswith("keel up: metrics at http://127.0.0.1:") for line in lines)
    assert "\r" not in log and "\033[" not in log  # not a terminal: no live line


def test_every_component_serves_the_series_a_dashboard_uses(platform: ApiServer) -> None:
    urls = targets(platform)
    assert set(urls) == {
        "apiserver", "controller-manager", "scheduler", "agent/node-1-1", "agent/node-1-2"
    }  # fmt: skip
    types, cm = scrape(urls["controller-manager"])
    assert types["keel_reconcile_duration_seconds"] == "histogram"
    for name in ("keel_workqueue_depth", "keel_workqueue_adds_total",
                 "keel_workqueue_retries_total", "keel_reconcile_errors_total"):  # fmt: skip
        assert samples_of(cm, name, controller="deployment"), name
    assert value_of(cm, "keel_leader_is_leader", lease="keel-system/controller-manager") == 1
    assert value_of(cm, "keel_fencing_rejections_total") == 0
    types, sched = scrape(urls["scheduler"])
    assert types["keel_scheduler_pending_to_bound_seconds"] == "histogram"
    assert value_of(sched, "keel_leader_is_leader", lease="keel-system/scheduler") == 1
    assert value_of(sched, "keel_scheduler_preemptions_total") == 0
    for name in (
        "keel_scheduler_pending_instances",
        "keel_scheduler_placements_total",
        "keel_scheduler_binding_conflicts_total",
        "keel_scheduler_unschedulable_total",
    ):
        assert samples_of(sched, name), name
    for node in ("node-1-1", "node-1-2"):
        types, agent = scrape(urls[f"agent/{node}"])
        assert types["keel_agent_instances"] == "gauge"
        assert samples_of(agent, "keel_agent_instances", phase="Running")
        assert samples_of(agent, "keel_agent_health_checks_total", result="failure")
        assert value_of(agent, "keel_agent_lease_held") == 1
        assert value_of(agent, "keel_agent_lease_acquisitions_total") >= 1
        assert samples_of(agent, "keel_agent_lease_renewals_total")
    api = platform.http("viewer").get("/metrics")
    assert api.status == 200
    _, _, api_samples = parse(api.body.decode())
    assert samples_of(api_samples, "keel_store_writes_total")


def test_applying_a_deployment_moves_the_series_and_wait_ends_when_it_is_rolled_out(
    platform: ApiServer,
) -> None:
    urls = targets(platform)
    agents = [url for name, url in urls.items() if name.startswith("agent/")]

    def running() -> float:
        return sum(total(scrape(url)[1], "keel_agent_instances", phase="Running") for url in agents)

    def renewals() -> float:
        return sum(total(scrape(url)[1], "keel_agent_lease_renewals_total") for url in agents)

    _, sched = scrape(urls["scheduler"])
    _, cm = scrape(urls["controller-manager"])
    placed = value_of(sched, "keel_scheduler_placements_total")
    latencies = value_of(sched, "keel_scheduler_pending_to_bound_seconds_count")
    reconciles = value_of(cm, "keel_reconcile_duration_seconds_count", controller="deployment")
    was_running, renewed = running(), renewals()

    done = keel(platform, "apply", "-f", "-", "--wait", "--timeout", "60", stdin=GOOD)
    assert done.returncode == 0, done.stderr
    assert "deployment.keel.dev/sleeper created" in done.stdout
    assert "1 object(s) ready in" in done.stdout
    assert "\r" not in done.stdout  # not a terminal: no live line

    _, sched = scrape(urls["scheduler"])
    _, cm = scrape(urls["controller-manager"])
    assert value_of(sched, "keel_scheduler_placements_total") >= placed + 2
    assert value_of(sched, "keel_scheduler_pending_to_bound_seconds_count") >= latencies + 2
    assert value_of(cm, "keel_reconcile_duration_seconds_count", controller="deployment") > (
        reconciles
    )
    assert running() >= was_running + 2
    wait_for("node lease renewals to be counted", lambda: renewals() > renewed, timeout=10)


def test_wait_fails_naming_the_instance_that_cannot_become_ready(platform: ApiServer) -> None:
    failed = keel(platform, "apply", "-f", "-", "--wait", "--timeout", "8", stdin=CRASHING)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "deployment.keel.dev/crashy created" in failed.stdout
    error = failed.stderr
    assert error.startswith("error: timed out after 8 s"), error
    assert 'deployment "crashy"' in error and "instance crashy-" in error, error
    assert "exited with code 1" in error, error
    urls = targets(platform)
    agents = [url for name, url in urls.items() if name.startswith("agent/")]
    wait_for(
        "an agent to count the crashing instance's restarts",
        lambda: sum(total(scrape(u)[1], "keel_agent_instance_restarts_total") for u in agents),
        timeout=10,
    )


def test_a_bad_metrics_address_is_refused_naming_the_flag(tmp_path: Path) -> None:
    for command in (["scheduler", "--identity", "x"], ["agent", "--node", "n", "--cluster", "c"]):
        result = subprocess.run(
            [sys.executable, "-m", "keel", *command, "--metrics-listen", "nowhere"],
            capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 2
        assert "--metrics-listen 'nowhere': expected HOST:PORT" in result.stderr


def test_on_a_terminal_wait_shows_one_live_line(platform: ApiServer) -> None:
    manifest = GOOD.replace("sleeper", "sleeper-tty").replace("replicas: 2", "replicas: 1")
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "keel", "apply", "-f", "-", "--wait", "--timeout", "60",
             "--kubeconfig", str(platform.kubeconfig)],
            stdin=subprocess.PIPE, stdout=secondary, stderr=subprocess.PIPE, cwd=platform.cwd,
        )  # fmt: skip
        os.close(secondary)
        _, error = process.communicate(manifest.encode(), timeout=90)
        output = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer has gone
            while chunk := os.read(primary, 4096):
                output += chunk
    finally:
        os.close(primary)
    assert process.returncode == 0, error.decode()
    text = output.decode()
    assert "\r\x1b[Kwaiting for 1 object(s) to become ready" in text, text
    assert "1 object(s) ready in" in text.splitlines()[-1], text
    assert text.count("\n") == 2, text  # "created" and the final line; the live line was erased


def test_a_metrics_port_in_use_is_refused_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "keel", "agent", "--node", "n", "--cluster", "c",
             "--server", "http://127.0.0.1:9", "--token", "t", "--state-dir", str(tmp_path),
             "--metrics-listen", listen],
            capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"--metrics-listen {listen}: " in result.stderr
    assert "in use" in result.stderr.lower(), result.stderr
